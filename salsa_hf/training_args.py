"""``SaLSaTrainingArguments``: ``TrainingArguments`` whose ``optim`` also accepts the SaLSa optimizers."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from .presets import PRESETS
from .peers import PEER_OPTIMIZERS

SALSA_OPTIMIZERS = tuple(PRESETS)
ALL_OPTIMIZERS = SALSA_OPTIMIZERS + tuple(PEER_OPTIMIZERS) + tuple(name.value for name in OptimizerNames)

# TrainingArguments fields that a SaLSa run does not use (set away from the class's default: warn).
_SCHEDULE_FIELDS = ("learning_rate", "lr_scheduler_type", "warmup_steps")


def _salsa_field(name: str, help_text: str, default_text: str | None = None) -> Any:
    """A field for the optimizers' argument ``name``; None means "the optimizer's own value", stated in the help."""
    takers = [(preset, cls, settings) for preset, (cls, settings) in PRESETS.items()
              if name in inspect.signature(cls).parameters]
    values = {preset: settings.get(name, inspect.signature(cls).parameters[name].default)
              for preset, cls, settings in takers}
    if default_text is None:
        default_text = "; ".join(f"{value!r} for {preset}" for preset, value in values.items())
    only = "" if len(takers) == len(PRESETS) else f" Only for optim {', '.join(values)}."
    return field(default=None, metadata={"help": f"{help_text}{only} Default: {default_text}."})


@dataclass
class SaLSaArguments:
    """The SaLSa optimizers and their settings, for any ``TrainingArguments`` subclass:
    ``@dataclass class MyConfig(SaLSaArguments, SFTConfig)`` (``SaLSaTrainingArguments`` is this
    over ``TrainingArguments``).

    ``optim`` accepts ``salsa`` (SaLSa with Adam), the paper's algorithm as the talk writes it
    (``salsa_paper``, ``salsa_sgd``) and its plain stochastic Armijo baselines (``sls``,
    ``sls_sgd``), the peers ``prodigy`` and ``salsa_authors`` (see ``peers.py``), and every
    optimizer ``TrainingArguments`` knows, so one script compares them all. Adam's
    ``adam_beta1/2``, ``adam_epsilon`` and ``weight_decay`` are shared with AdamW.
    ``learning_rate``, ``lr_scheduler_type`` and ``warmup_steps`` are not used by SaLSa. Every
    ``salsa_*`` value is checked when the arguments are made, and one that the chosen optimizer
    does not take is refused.
    """

    optim: str = field(
        default="salsa",
        metadata={"help": "The optimizer to use.", "choices": list(ALL_OPTIMIZERS)},
    )
    salsa_c: float | None = _salsa_field("c", "Armijo constant, in (0, 1); lower accepts larger steps (the one to tune).")
    salsa_beta3: float | None = _salsa_field("beta3", "Smoothing of the Armijo test, in [0, 1).")
    salsa_growth: float | None = _salsa_field(
        "growth", "salsa: factor of each search's larger trial and of its backtracking, > 1; the paper: growth per step."
    )
    salsa_init_step_size: float | None = _salsa_field("init_step_size", "Where the first search starts, > 0.")
    salsa_warmup_searches: int | None = _salsa_field("warmup_searches", "The first this many steps always search.")
    salsa_max_interval: int | None = _salsa_field("max_interval", "Longest interval between searches, >= 1.")
    salsa_cooldown: float | None = _salsa_field(
        "cooldown", "Share of the run's steps at the end over which the step taken decays linearly to 0, in [0, 1] "
        "(1: the Trainer's linear schedule over the whole run)."
    )
    salsa_delta: float | None = _salsa_field("delta", "Backtracking factor, in (0, 1).")
    salsa_max_backtracks: int | None = _salsa_field("max_backtracks", "Trials per line search, >= 1.")

    def __post_init__(self):
        no_accelerator = self.use_cpu or not torch.accelerator.is_available()
        if self.dataloader_pin_memory and no_accelerator:
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch would warn on every loader
        if getattr(self, "bf16", False) is None and no_accelerator:
            # TRL's configs read an unset bf16 as "on", which TrainingArguments refuses without an
            # accelerator: with none, the unset default means off.
            self.bf16 = False
        if self.optim not in ALL_OPTIMIZERS:
            raise ValueError(f"optim {self.optim!r} is not known; choose one of: {', '.join(ALL_OPTIMIZERS)}")
        self._check_salsa_fields()
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

    def _check_salsa_fields(self) -> None:
        """Refuse, naming the flag, a ``salsa_*`` value the chosen optimizer would refuse or not use."""
        given = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name.startswith("salsa_") and getattr(self, f.name) is not None}
        name = getattr(self.optim, "value", self.optim)
        if name not in SALSA_OPTIMIZERS:
            if given:
                raise ValueError(f"{', '.join('--' + k for k in given)} set, but optim {name!r} is not a SaLSa "
                                 f"optimizer (those are {', '.join(SALSA_OPTIMIZERS)}): it would be ignored")
            return
        cls, _ = PRESETS[name]
        takes = inspect.signature(cls).parameters
        foreign = [k for k in given if k.removeprefix("salsa_") not in takes]
        if foreign:
            own = ", ".join(f"--salsa_{k}" for k in takes if f"salsa_{k}" in {f.name for f in fields(self)})
            raise ValueError(f"{', '.join('--' + k for k in foreign)} is not a setting of optim {name!r} "
                             f"({cls.__name__}); its settings are {own}")
        try:  # the optimizer's own checks, on a stand-in parameter
            cls([torch.nn.Parameter(torch.zeros(1))], **self.salsa_kwargs())
        except ValueError as err:
            message = str(err)
            argument = message.split(" ", 1)[0]
            flag = {"betas[0]": "--adam_beta1", "betas[1]": "--adam_beta2", "eps": "--adam_epsilon",
                    "weight_decay": "--weight_decay"}.get(argument, f"--salsa_{argument}")
            raise ValueError(f"{flag}{message[len(argument):]}") from None

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
            **PRESETS[self.optim][1],
            "betas": (self.adam_beta1, self.adam_beta2),
            "eps": self.adam_epsilon,
            **overrides,
        }


@dataclass
class SaLSaTrainingArguments(SaLSaArguments, TrainingArguments):
    """``TrainingArguments`` plus the SaLSa optimizers and their settings (``SaLSaArguments``)."""
