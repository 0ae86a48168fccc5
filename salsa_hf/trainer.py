"""``SaLSaTrainer``: transformers' Trainer with SaLSa's line search in each optimizer step.

The Trainer's loop stays as it is: it runs ``training_step`` on each micro-batch (forward, backward,
accumulation), clips the gradients, and calls ``optimizer.step()``. This subclass records each
micro-batch with the random state its forward saw, and on the last one hands SaLSa the step's loss
and a closure that re-evaluates exactly those micro-batches (same dropout masks, same autocast, same
loss scaling) at trial parameters. Under several processes both are averaged over the processes, so
every rank takes the same decision and the replicas stay identical.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer, TrainerCallback

from .bookkeeping import Bookkeeping
from .lora import lora_param_groups, lora_settings
from .optimizer import SaLSa
from .peers import PEER_OPTIMIZERS
from .presets import PRESETS
from .reference import SaLSaPaper
from .rng import RngState
from .training_args import SaLSaArguments

LOG_PREFIX = "salsa/"
MODEL_TAGS = ("salsa", "line-search")


class StepSizeReport(LRScheduler):
    """The scheduler of a SaLSa run: it schedules nothing and reports SaLSa's current step size."""

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self.get_lr()


@dataclass
class TracedStep:
    step: int
    loss: float
    step_size: float  # the step taken (after any cool-down)
    searched: bool
    found: float  # the step size the line search holds (the cool-down's scale)


class StepTrace(TrainerCallback):
    """Per optimizer step of a line search: the loss, the step size taken, whether it searched.

    It also says, before the first step, why the first steps take longer."""

    def __init__(self):
        self.steps: list[TracedStep] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = _unwrap(optimizer)
        if _is_line_search(inner) and inner.search.step == 0 and state.is_world_process_zero:
            print("SaLSa: the first line searches find the step size's scale, so the first steps take "
                  "longer than the rest.", flush=True)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        inner = _unwrap(optimizer)
        loss = getattr(inner.search, "last_loss", None) if _is_line_search(inner) else None
        if loss is not None:
            search = inner.search
            self.steps.append(TracedStep(state.global_step, loss, inner.param_groups[0]["lr"], search.last_searched,
                                         search.step_size))


# What of the Trainer's private API the mixin relies on (tests/test_trainer.py holds each):
# - ``training_step`` (overridden), ``_prepare_inputs``, ``compute_loss_context_manager``,
#   ``compute_loss``: the trial replays the micro-batch as the training forward computed it;
# - ``model_accepts_loss_kwargs``, ``compute_loss_func``, ``current_gradient_accumulation_steps``
#   and, where it exists (not in 5.17), ``loss_is_scaled_for_ga``: the loss scaling copied from
#   ``training_step``;
# - ``accelerator.sync_gradients`` (the last micro-batch of a step), ``accelerator.scaler``
#   (the GradScaler's scale), ``accelerator.reduce`` (the mean over processes);
# - ``_created_lr_scheduler``: set with the scheduler we create, as ``create_scheduler`` does;
# - ``get_cp_size``/``get_sp_size``, ``is_deepspeed_enabled``, ``is_fsdp_enabled``: refusals;
# - the model card's ``- optimizer:``, ``- learning_rate:`` and ``- lr_scheduler_*`` lines (regexes).


class SaLSaMixin:
    """SaLSa's line search in the optimizer steps of any ``Trainer`` subclass:
    ``class MyTrainer(SaLSaMixin, SomeTrainer)`` (``SaLSaTrainer`` is this over ``Trainer``).

    Use it with arguments that include ``SaLSaArguments`` (``SaLSaTrainingArguments(optim="salsa")``,
    or ``salsa_sgd``, ``sls``, ``sls_sgd``), or hand it a ``SaLSa`` instance through ``optimizers=``. Any optimizer with ``prepare_step(loss,
    evaluate)`` and a ``search`` state is driven the same way (the authors' SaLSa adapter is one).
    With any other optimizer it is the plain ``Trainer``, except that evaluation leaves the training
    random streams where they were.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (inputs, num_items_in_batch, random state before its forward) of the current step's micro-batches.
        self._micro_batches: list[tuple[dict[str, Any], Any, RngState]] = []
        self._step_loss: torch.Tensor | None = None
        self.step_trace = StepTrace()  # read by the scripts' summary and plot
        self.callback_handler.callbacks.insert(0, self.step_trace)  # first: its note comes before the progress bar

    def train(self, *args, **kwargs):
        if self._uses_line_search():
            if self.is_deepspeed_enabled:
                raise ValueError(
                    "SaLSa cannot run under DeepSpeed: its engine takes the optimizer step inside backward(), "
                    "where the line search cannot reach the loss or evaluate trial points. Scale out with DDP "
                    "(torchrun, several processes) or FSDP instead."
                )
            fsdp_version = getattr(getattr(self.accelerator.state, "fsdp_plugin", None), "fsdp_version", None)
            if self.is_fsdp_enabled and fsdp_version != 2:
                raise ValueError(
                    f"SaLSa needs FSDP2 (fsdp_config={{'version': 2}}), got FSDP version {fsdp_version}: FSDP1 "
                    "flattens each process's shard into a plain tensor, so the line search's inner products "
                    "would cover one shard and every process would take its own step size."
                )
            parallel = {"context": self.get_cp_size(), "sequence": self.get_sp_size()}
            split = {kind: size for kind, size in parallel.items() if size > 1}
            if split:
                raise ValueError(
                    f"SaLSa cannot run with {' and '.join(f'{k} parallelism (size {v})' for k, v in split.items())}: "
                    "each process holds a slice of every sequence inside a context the Trainer enters for the "
                    "training forward only, so the line search's trial forwards would see other inputs. Scale out "
                    "with DDP or FSDP2 instead."
                )
            if hasattr(self.model, "add_model_tags"):  # every card written from the model (PEFT's too) names SaLSa
                self.model.add_model_tags(list(MODEL_TAGS))
        return super().train(*args, **kwargs)

    def _uses_line_search(self) -> bool:
        """Whether this run's optimizer is, or will be created as, a line search."""
        if self.optimizer is not None:
            return _is_line_search(_unwrap(self.optimizer))
        return isinstance(self.args, SaLSaArguments) and self.args.uses_salsa

    # ---- optimizer and scheduler ----------------------------------------------------------------

    def create_optimizer(self, model=None):
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        # The Trainer's groups, each LoRA A factor slowed (not for the paper's algorithm, which has none).
        if created and isinstance(optimizer, SaLSa) and not isinstance(optimizer, SaLSaPaper):
            groups = lora_param_groups(model or self.model, optimizer.param_groups)
            optimizer.param_groups.clear()
            for group in groups:  # each checked again, and its "lr" set at its share
                optimizer.add_param_group({k: v for k, v in group.items() if k != "lr"})
        return optimizer

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        if isinstance(args, SaLSaArguments) and args.uses_salsa:
            cls = PRESETS[args.optim_name][0]
            # An adapter's own settings, with the same exception as its groups in create_optimizer
            # (not for the paper's algorithm); a --salsa_* flag set wins.
            adapter = lora_settings(model) if model is not None and not issubclass(cls, SaLSaPaper) else {}
            return cls, {**adapter, **args.salsa_kwargs()}
        if isinstance(args, SaLSaArguments) and args.optim_name in PEER_OPTIMIZERS:
            return PEER_OPTIMIZERS[args.optim_name](args, model)
        return Trainer.get_optimizer_cls_and_kwargs(args, model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        inner = _unwrap(optimizer or self.optimizer)
        if isinstance(inner, SaLSa):
            inner.set_total_steps(num_training_steps)  # where the cool-down ends
        if self.lr_scheduler is None and _is_line_search(inner):
            self.lr_scheduler = StepSizeReport(inner)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    @property
    def salsa(self) -> SaLSa | None:
        """The SaLSa optimizer of this run, or None when another optimizer is in use."""
        optimizer = _unwrap(self.optimizer)
        return optimizer if isinstance(optimizer, SaLSa) else None

    @property
    def line_search(self):
        """The run's line-search optimizer (SaLSa or an adapter with its protocol), or None."""
        optimizer = _unwrap(self.optimizer)
        return optimizer if _is_line_search(optimizer) else None

    # ---- the step ---------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        optimizer = self.line_search
        if optimizer is None:
            return super().training_step(model, inputs, num_items_in_batch)
        rng = RngState.capture()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._micro_batches.append((inputs, num_items_in_batch, rng))
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss
        if self.accelerator.sync_gradients:  # the last micro-batch: the optimizer steps next
            micro_batches, self._micro_batches = self._micro_batches, []
            step_loss, self._step_loss = self._step_loss, None
            # Handed over before the Trainer unscales and clips: SaLSa measures what the clipping did.
            scaler = getattr(self.accelerator, "scaler", None)
            grad_scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
            optimizer.prepare_step(self._mean_over_processes(step_loss), self._trial_closure(model, micro_batches),
                                   grad_scale=grad_scale)
        return loss

    def _trial_closure(self, model, micro_batches):
        after = RngState.capture()
        records = None  # taken at the first trial: most steps run none

        def evaluate() -> torch.Tensor:
            nonlocal records
            records = records or Bookkeeping.capture(self, model)
            total = 0.0
            for inputs, num_items_in_batch, rng in micro_batches:
                rng.restore()
                total = total + self._loss_as_trained(model, inputs, num_items_in_batch)
            # The training goes on as if no trial had run: same random streams, token counts, metric
            # lists and buffers (see bookkeeping.py).
            after.restore()
            records.restore()
            return self._mean_over_processes(total)

        return evaluate

    def _loss_as_trained(self, model, inputs, num_items_in_batch) -> torch.Tensor:
        """The micro-batch loss exactly as ``Trainer.training_step`` computes and scales it."""
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        # transformers' own declaration of a loss scaled already (older 5.x releases lack it).
        scaled_for_accumulation = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_for_accumulation is None:
            scaled_for_accumulation = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        if not scaled_for_accumulation:
            loss = loss / self.current_gradient_accumulation_steps
        return loss.detach()

    def _mean_over_processes(self, loss: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return loss
        return self.accelerator.reduce(loss.detach().clone(), reduction="mean")

    def evaluate(self, *args, **kwargs):
        # Every DataLoader iterator draws its base seed from torch's global generator, so a plain
        # Trainer's mid-training evaluation shifts the training dropout masks. Restoring the streams
        # makes a run with evaluation take exactly the steps of a run without.
        rng = RngState.capture()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            rng.restore()

    # ---- logging and the model card ---------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        optimizer = self.line_search
        if optimizer is not None and "loss" in logs:
            search = optimizer.search
            logs["learning_rate"] = optimizer.param_groups[0]["lr"]  # the step taken (after any cool-down)
            logs.update({
                f"{LOG_PREFIX}step_size": search.step_size,
                f"{LOG_PREFIX}interval": search.interval,
                f"{LOG_PREFIX}searches": search.searches,
                f"{LOG_PREFIX}backtracks": search.backtracks,
                f"{LOG_PREFIX}extra_forward_fraction": search.extra_forward_fraction,
                f"{LOG_PREFIX}skipped_steps": search.skipped_steps,
                f"{LOG_PREFIX}failed_searches": search.failed_searches,
            })
        super().log(logs, start_time)

    def create_model_card(self, *args, tags: str | list[str] | None = None, **kwargs) -> None:
        salsa = self.salsa
        if salsa is None:
            return super().create_model_card(*args, tags=tags, **kwargs)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [t for t in MODEL_TAGS if t not in tags]
        super().create_model_card(*args, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, encoding="utf-8") as f:
            card = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(salsa_model_card(card, salsa, getattr(self.args, "optim", "salsa"), self.model))


class SaLSaTrainer(SaLSaMixin, Trainer):
    """A ``Trainer`` whose optimizer steps run SaLSa's line search (see ``SaLSaMixin``)."""


def salsa_model_card(card: str, salsa: SaLSa, name: str, model: torch.nn.Module | None = None) -> str:
    """The Trainer's card with its learning-rate lines replaced by what SaLSa did."""
    search = salsa.search
    settings = ", ".join(f"{key}={value}" for key, value in salsa.settings.items())
    optimizer = f"- optimizer: {type(salsa).__name__} ({name}: {settings})"
    card, replaced = re.subn(r"^- optimizer: .*?(?=^- |\Z)", optimizer + "\n", card, flags=re.M | re.S)
    card = re.sub(r"^- learning_rate: .*$", "- learning_rate: none (SaLSa's line search sets the step size)", card, flags=re.M)
    card = re.sub(r"^- lr_scheduler_(type|warmup_steps): .*\n", "", card, flags=re.M)
    summary = (
        "\n### SaLSa line search\n\n"
        + ("" if replaced else optimizer + "\n")  # a card without the Trainer's hyperparameters (TRL's)
        + f"- final step size: {search.step_size:.4g}\n"
        f"- optimizer steps: {search.step} ({search.skipped_steps} skipped for a non-finite loss or gradient)\n"
        f"- line searches: {search.searches} (search interval at the end: {search.interval} steps; "
        f"{search.failed_searches} found no acceptable step)\n"
        f"- backtracks: {search.backtracks}\n"
        f"- extra compute: {search.extra_forward_fraction:.1%} extra forward passes over the training forwards\n"
        + (_trained_parameters_line(model) if model is not None else "")
    )
    marker = "\n### Framework versions"
    return card.replace(marker, summary + marker, 1) if marker in card else card + summary


def _trained_parameters_line(model: torch.nn.Module) -> str:
    """How many parameters SaLSa trained and, for a PEFT model, which adapter they belong to."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = f"- parameters trained: {trained:,} of {sum(p.numel() for p in model.parameters()):,}"
    adapters = getattr(model, "peft_config", None) or {}
    for adapter, config in adapters.items():
        kind = getattr(config.peft_type, "value", config.peft_type)
        details = ", ".join(
            f"{key}={getattr(config, key)}" for key in ("r", "lora_alpha", "lora_dropout") if hasattr(config, key)
        )
        targets = sorted(config.target_modules) if isinstance(config.target_modules, (set, list)) else config.target_modules
        line += f"; PEFT adapter {adapter!r}: {kind} ({details}, target modules {targets})"
    return line + "\n"


def _is_line_search(optimizer) -> bool:
    """Whether the optimizer takes its steps through ``prepare_step(loss, evaluate)``."""
    return callable(getattr(optimizer, "prepare_step", None)) and hasattr(optimizer, "search")


def _unwrap(optimizer):
    """The optimizer inside accelerate's wrapper, if any."""
    return getattr(optimizer, "optimizer", optimizer)
