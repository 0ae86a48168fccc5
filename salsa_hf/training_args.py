"""``SaLSaTrainingArguments``: ``TrainingArguments`` whose ``optim`` also accepts the SaLSa optimizers."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from .optimizer import DEFAULT_INIT_STEP_SIZE, PRESETS, SaLSa
from .peers import PEER_OPTIMIZERS

SALSA_OPTIMIZERS = tuple(PRESETS)
ALL_OPTIMIZERS = SALSA_OPTIMIZERS + tuple(PEER_OPTIMIZERS) + tuple(name.value for name in OptimizerNames)

# TrainingArguments fields that a SaLSa run does not use (set away from the class's default: warn).
_SCHEDULE_FIELDS = ("learning_rate", "lr_scheduler_type", "warmup_steps")


def _salsa_field(name: str, help_text: str, default_text: str | None = None) -> Any:
    """A field for SaLSa's argument ``name``; None means "the preset's value", stated in the help."""
    default_text = default_text or repr(inspect.signature(SaLSa).parameters[name].default)
    differing = {preset: values[name] for preset, values in PRESETS.items() if name in values}
    others = ", ".join(f"{value!r} for {preset}" for preset, value in differing.items())
    text = f"{help_text} Default: {default_text}" + (f" ({others})" if others else "") + "."
    return field(default=None, metadata={"help": text})


@dataclass
class SaLSaArguments:
    """The SaLSa optimizers and their settings, for any ``TrainingArguments`` subclass:
    ``@dataclass class MyConfig(SaLSaArguments, SFTConfig)`` (``SaLSaTrainingArguments`` is this
    over ``TrainingArguments``).

    ``optim`` accepts ``salsa`` (SaLSa with Adam), ``salsa_sgd``, ``sls`` and ``sls_sgd`` (plain
    stochastic Armijo), the peers ``prodigy`` and ``salsa_authors`` (see ``peers.py``), and every
    optimizer ``TrainingArguments`` knows, so one script compares them all. Adam's ``adam_beta1/2``, ``adam_epsilon`` and ``weight_decay`` are shared with AdamW.
    ``learning_rate``, ``lr_scheduler_type`` and ``warmup_steps`` are not used by SaLSa.
    """

    optim: str = field(
        default="salsa",
        metadata={"help": "The optimizer to use.", "choices": list(ALL_OPTIMIZERS)},
    )
    salsa_c: float | None = _salsa_field("c", "Armijo constant, in (0, 1).")
    salsa_beta3: float | None = _salsa_field("beta3", "Smoothing of the Armijo test, in [0, 1).")
    salsa_delta: float | None = _salsa_field("delta", "Backtracking factor, in (0, 1).")
    salsa_growth: float | None = _salsa_field("growth", "Step-size growth factor, >= 1.")
    salsa_grow_on: str | None = _salsa_field(
        "grow_on", "When the step size may grow: 'step' (each step) or 'search' (before each search)."
    )
    salsa_init_step_size: float | None = _salsa_field(
        "init_step_size", "First trial step size, > 0.",
        f"{DEFAULT_INIT_STEP_SIZE['adam']} for the Adam preconditioner, {DEFAULT_INIT_STEP_SIZE['sgd']} for SGD",
    )
    salsa_max_backtracks: int | None = _salsa_field("max_backtracks", "Trials per line search, >= 1.")
    salsa_warmup_searches: int | None = _salsa_field("warmup_searches", "The first this many steps always search.")
    salsa_smoothing: bool | None = _salsa_field("smoothing", "Smooth the Armijo test (False: plain Armijo).")
    salsa_adaptive_frequency: bool | None = _salsa_field(
        "adaptive_frequency", "Search only every few steps, by the paper's rule (False: every step)."
    )
    salsa_search_step: str | None = _salsa_field(
        "search_step", "Step taken on a search step: 'momentum' (Adam step) or 'trial' (the accepted trial point)."
    )
    salsa_search_direction: str | None = _salsa_field(
        "search_direction",
        "Direction searched: 'previous' (the update of the steps before, tested on this batch), 'update' "
        "(this step's update) or 'gradient' (the paper's -P g).",
    )
    salsa_smooth_over: str | None = _salsa_field(
        "smooth_over", "The smoothing's clock: 'step' (beta3 per optimizer step) or 'search' (per search, the paper)."
    )
    salsa_max_interval: int | None = _salsa_field("max_interval", "Longest interval between searches, >= 1.")
    salsa_interval_rule: str | None = _salsa_field(
        "interval_rule", "How the interval adapts: 'agreement' (doubles after a search that took its first trial, "
        "halves after one that backtracked) or 'steady' (the paper's rule, from the accepted step sizes)."
    )
    salsa_backtracking: str | None = _salsa_field(
        "backtracking", "'accelerating' (the j-th rejection multiplies by delta**j) or 'constant' (by delta)."
    )
    salsa_loss_trend: bool | None = _salsa_field(
        "loss_trend", "Grow the step size only when the training loss fell by more than its noise since the "
        "trend last moved it; shrink it by the same factor when the loss rose by more; else hold."
    )
    salsa_cooldown: float | None = _salsa_field(
        "cooldown", "Share of the run's steps at the end over which the step taken decays linearly to 0, in [0, 1] "
        "(1: the Trainer's linear schedule over the whole run)."
    )

    def __post_init__(self):
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch would warn on every loader
        if self.optim not in ALL_OPTIMIZERS:
            raise ValueError(f"optim {self.optim!r} is not known; choose one of: {', '.join(ALL_OPTIMIZERS)}")
        if self.optim not in SALSA_OPTIMIZERS + tuple(PEER_OPTIMIZERS):
            super().__post_init__()
            return
        defaults = {f.name: f.default for f in fields(self)}  # the subclass's own (SFTConfig: lr 2e-5)
        ignored = [] if self.optim in PEER_OPTIMIZERS else [
            name for name in _SCHEDULE_FIELDS if getattr(self, name) != defaults[name]
        ]
        if ignored:
            warnings.warn(
                f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} not used with optim="
                f"{self.optim!r}: SaLSa's line search sets the step size (its own salsa_cooldown decays it).",
                UserWarning,
                stacklevel=3,
            )
        # TrainingArguments only knows its own optimizer names; validate with one, keep ours.
        name, self.optim = self.optim, OptimizerNames.ADAMW_TORCH.value
        try:
            super().__post_init__()
        finally:
            self.optim = name

    @property
    def optim_name(self) -> str:
        """``optim`` as a plain string (TrainingArguments turns its own names into an enum)."""
        return getattr(self.optim, "value", self.optim)

    @property
    def uses_salsa(self) -> bool:
        return self.optim in SALSA_OPTIMIZERS

    def salsa_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SaLSa``: the preset, Adam's settings, and every field that is set."""
        overrides = {
            f.name.removeprefix("salsa_"): getattr(self, f.name)
            for f in fields(self)
            if f.name.startswith("salsa_") and getattr(self, f.name) is not None
        }
        return {
            **PRESETS[self.optim],
            "betas": (self.adam_beta1, self.adam_beta2),
            "eps": self.adam_epsilon,
            **overrides,
        }


@dataclass
class SaLSaTrainingArguments(SaLSaArguments, TrainingArguments):
    """``TrainingArguments`` plus the SaLSa optimizers and their settings (``SaLSaArguments``)."""
