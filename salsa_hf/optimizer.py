"""SaLSa: Stable Armijo Line Search Adaptation (Kenneweg et al., IJCNN 2024), as a torch Optimizer.

One step size for the whole model, found by an Armijo line search on the mini-batch loss along
Adam's own update and re-checked every few steps; between searches the optimizer is Adam (or SGD
with momentum) at that step size. ``docs/algorithm.md`` is the specification; in short:

- The first search finds the scale from any ``init_step_size``, doubling or halving until the
  Armijo test changes its answer.
- Every later search spends one trial, one notch (``growth``) above the step size. With the loss,
  its slope and the trial's loss, a quadratic along the update gives the curvature, and the
  Armijo test's boundary ``2 (1 - c) p / q``; its smoothed form (slope and curvature averaged
  over the searches with ``beta3``, the paper's smoothing of both sides of the test) decides:
  grow to the trial, hold, or come down a notch. So the search senses the boundary from both
  sides for one forward pass, and the step size moves one notch a search.
- The interval between searches doubles after a hold and halves after a cut.
- The step taken decays linearly over the run (``cooldown`` of ``total_steps``), relative to the
  step size found, as the Trainer's default schedule does.

The tensor math lives in ``functional.py``; this file holds the decisions and the state. The
paper's algorithm as written is ``reference.SaLSaPaper``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional as F
from .rng import RngState

LossClosure = Callable[[], Tensor]

PRECONDITIONERS = ("adam", "sgd")
# Where the first search starts; it doubles or halves from there, so this only saves trials.
DEFAULT_INIT_STEP_SIZE = {"adam": 1e-4, "sgd": 0.1}
MAX_TRIALS = 40  # per search: the first one may walk from 1e-7 to 1e-1 (20 doublings) and back
SCALE_FACTOR = 2.0  # the first search's step between trials
# Line-search entries older versions saved that carry nothing now: ``average_weight`` was the
# averages' bias correction, 1.0 from the first search on, which starts them from its own values.
RETIRED_STATE = {"average_weight"}
# Keys a param group may carry; the line-search settings are global (one step size for the model).
# ``relative_step``: the group moves at that multiple of the step size, in the trials and the step.
GROUP_KEYS = {"params", "betas", "eps", "weight_decay", "relative_step", "name"}


@dataclass
class LineSearchState:
    """Every scalar SaLSa carries between steps; saved whole in ``state_dict()``."""

    step_size: float
    step: int = 0  # steps taken (a skipped step does not count)
    slope_avg: float = 0.0  # EMA(beta3, per search) of the slope p
    curvature_avg: float = 0.0  # EMA(beta3, per search) of the curvature q
    interval: int = 1  # steps between searches
    steps_since_search: int = 0
    searches: int = 0  # searches that accepted a step size
    grown: int = 0  # searches whose larger trial passed
    held: int = 0  # searches that kept the step size: the larger trial failed, the step size passed
    shrunk: int = 0  # searches that cut the step size
    backtracks: int = 0  # rejected trials, all searches together
    trial_forwards: int = 0  # loss evaluations spent by searches
    training_forwards: int = 0  # loss evaluations with backward, one per step() call
    skipped_steps: int = 0  # non-finite loss or gradient at the current point
    failed_searches: int = 0  # the first search: MAX_TRIALS trials, none accepted
    uphill_searches: int = 0  # searches where the update did not descend on the batch: no trial
    last_loss: float | None = None  # the last step's training loss
    # What the last step() did, for logging.
    last_searched: bool = False
    last_backtracks: int = 0
    last_slope: float = 0.0  # the last search's slope p (0: no search yet)
    # The last search's own Armijo boundary 2 (1 - c) p / q, at its last finite trial, before any
    # smoothing (inf: no curvature seen; None: no trial): what that one batch alone would say.
    last_boundary: float | None = None

    @property
    def extra_forward_fraction(self) -> float:
        """Loss evaluations spent by the line search per training forward pass."""
        return self.trial_forwards / max(self.training_forwards, 1)


def check_number(name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = True,
                 high_open: bool = True, integer: bool = False) -> None:
    """Raise a ValueError naming ``name``, ``value`` and the allowed range unless value lies in it."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        what = "an integer" if integer else "a number"
        upper = "" if high == math.inf else f"{high:g}{')' if high_open else ']'}"
        allowed = f"in {'(' if low_open else '['}{low:g}, {upper}" if upper else f"{'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{name} must be {what} {allowed}, got {value!r}")


class SaLSa(Optimizer):
    """Learning-rate-free Adam (or momentum SGD) with a smoothed Armijo line search.

    Args:
        params: parameters or param groups (groups may set ``betas``, ``eps``, ``weight_decay``, and
            ``relative_step``: the group moves at that multiple of the step size, default 1).
        preconditioner: ``"adam"`` or ``"sgd"`` (momentum SGD; its step size is not normalised).
        c: the Armijo constant in (0, 1), **the one setting worth tuning**: the share of the
            predicted decrease a step must achieve. Lower accepts larger steps.
        beta3: smoothing of the test's slope and curvature over the searches, in [0, 1) (0:
            each search tests its own batch alone).
        growth: the notch, > 1: each search tries the step size times it, and the step size
            grows or shrinks by it.
        init_step_size: where the first search starts, > 0; it doubles or halves from there.
        betas, eps, weight_decay: Adam's (``betas[0]`` is the SGD variant's momentum); the
            weight decay is decoupled and scaled by the step size, as AdamW's.
        warmup_searches: the first this many steps always search.
        max_interval: the longest interval between searches, >= 1.
        total_steps: the steps the run will take, if known (``SaLSaTrainer`` sets it); enables
            the decay of the step taken.
        cooldown: the share of ``total_steps`` at the end over which the step taken decays
            linearly to 0, in [0, 1] (1: the Trainer's linear schedule over the whole run).
        foreach: multi-tensor kernels (False: the per-tensor reference path, held equal by tests).
    """

    def __init__(
        self,
        params,
        *,
        preconditioner: str = "adam",
        c: float = 0.8,
        beta3: float = 0.9,
        growth: float = 1.25,
        init_step_size: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_searches: int = 10,
        max_interval: int = 20,
        total_steps: int | None = None,
        cooldown: float = 1.0,
        foreach: bool = True,
    ):
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
        check_number("c", c, 0, 1)
        check_number("beta3", beta3, 0, 1, low_open=False)
        check_number("growth", growth, 1)
        if init_step_size is None:
            init_step_size = DEFAULT_INIT_STEP_SIZE[preconditioner]
        check_number("init_step_size", init_step_size, 0)
        check_number("warmup_searches", warmup_searches, 0, low_open=False, integer=True)
        check_number("max_interval", max_interval, 1, low_open=False, integer=True)
        check_number("cooldown", cooldown, 0, 1, low_open=False, high_open=False)
        if not isinstance(foreach, bool):
            raise ValueError(f"foreach must be True or False, got {foreach!r}")
        self.preconditioner = preconditioner
        self.c, self.beta3, self.growth = c, beta3, growth
        self.init_step_size = init_step_size
        self.warmup_searches, self.max_interval = warmup_searches, max_interval
        self.cooldown = cooldown
        self.set_total_steps(total_steps)
        self.foreach = foreach
        self.search = LineSearchState(step_size=init_step_size)
        self._prepared: tuple[Tensor, LossClosure, float | None] | None = None
        self._warned_zero_gradient = False
        # "lr" mirrors the current step size, so schedulers and loggers that read it see SaLSa's.
        defaults = {"lr": init_step_size, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "relative_step": 1.0}
        super().__init__(params, defaults)
        if not any(p.requires_grad for group in self.param_groups for p in group["params"]):
            raise ValueError(
                "SaLSa got no trainable parameters: every parameter it was given has requires_grad=False "
                "(a frozen model, or a PEFT adapter that was not attached); give it at least one trainable one"
            )

    @classmethod
    def from_name(cls, name: str, params, **overrides) -> Optimizer:
        """One of the named optimizers of ``PRESETS`` (SaLSa, or the paper's reference), any argument overridden."""
        from .presets import from_name

        return from_name(name, params, **overrides)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        unknown = set(param_group) - GROUP_KEYS
        if unknown:
            raise ValueError(
                f"param group keys {sorted(unknown)} are not per-group settings of SaLSa "
                f"(allowed: {sorted(GROUP_KEYS)}); the step size and line-search settings are global"
            )
        group = {**self.defaults, **param_group}
        beta1, beta2 = group["betas"]
        check_number("betas[0]", beta1, 0, 1, low_open=False)
        check_number("betas[1]", beta2, 0, 1, low_open=False)
        check_number("eps", group["eps"], 0, low_open=False)
        check_number("weight_decay", group["weight_decay"], 0, low_open=False)
        check_number("relative_step", group["relative_step"], 0)
        super().add_param_group(param_group)
        self._mirror_step_size()  # loggers read the new group's share from the start

    def set_total_steps(self, total_steps: int | None) -> None:
        """Tell SaLSa how many steps the run takes (None: unknown, no cool-down)."""
        if total_steps is not None:
            check_number("total_steps", total_steps, 1, low_open=False, integer=True)
        self.total_steps = total_steps

    @property
    def step_scale(self) -> float:
        """The cool-down's factor on the next step: 1, then linearly down to ``1 / cooldown_steps``."""
        cooldown_steps = 0 if self.total_steps is None else math.ceil(self.cooldown * self.total_steps)
        if not cooldown_steps:
            return 1.0
        upcoming = self.search.step + self.search.skipped_steps + 1
        return min(1.0, max(0.0, (self.total_steps - upcoming + 1) / cooldown_steps))

    @property
    def effective_step_size(self) -> float:
        """The step size the next step takes: the line search's, times the cool-down's factor."""
        return self.search.step_size * self.step_scale

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor's arguments as this optimizer holds them (the model card lists them)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in ("self", "params")]
        values = {**self.defaults, **{n: getattr(self, n) for n in names if hasattr(self, n)}}
        return {n: values[n] for n in names if n in values and n not in ("foreach", "total_steps")}

    # ---- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["line_search"] = dataclasses.asdict(self.search)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "line_search" not in state_dict:
            raise ValueError("not a SaLSa state dict: the 'line_search' entry is missing")
        search = {k: v for k, v in state_dict.pop("line_search").items() if k not in RETIRED_STATE}
        known = {f.name for f in dataclasses.fields(LineSearchState)}
        if set(search) - known:
            raise ValueError(
                f"this SaLSa state dict has line-search entries {sorted(set(search) - known)} that this version "
                "does not know: it was saved by another version of salsa-hf (or by reference.SaLSaPaper)"
            )
        saved = [len(group["params"]) for group in state_dict["param_groups"]]
        here = [len(group["params"]) for group in self.param_groups]
        if saved != here:
            raise ValueError(
                f"this SaLSa state dict has param groups of {saved} parameters, this optimizer of {here}: it was "
                "saved with another grouping (another model, or a LoRA run saved before salsa-hf gave LoRA's A "
                "factors a group of their own); resume with the grouping it was saved with, or start the "
                "optimizer afresh from the checkpoint's weights"
            )
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # saved by an earlier version: every group moved at the step size
            group.setdefault("relative_step", 1.0)
        self.search = LineSearchState(**search)
        self._mirror_step_size()

    # ---- stepping -------------------------------------------------------------------------------

    def prepare_step(self, loss: Tensor, evaluate: LossClosure, grad_scale: float = 1.0) -> None:
        """Hand over a step whose gradients someone else computed (the Trainer does).

        ``loss`` is the mini-batch loss at the current parameters, whose gradients are already in
        ``.grad`` (times ``grad_scale``, a GradScaler's scale, if any); ``evaluate()`` returns that
        same mini-batch loss at the current parameters with the same random state (dropout masks),
        without backward. The next ``step()`` uses them. Gradient clipping between the two calls
        is measured and undone in the line search's slope: the trials measure the loss, whose
        slope is that of the unclipped gradient (a clipped one would make the test lax by the
        clipping factor).
        """
        norm_sq = None
        if self._search_due():
            norm_sq = self._gradient_norm_sq() / grad_scale**2
        self._prepared = (loss.detach(), evaluate, norm_sq)

    def _gradient_norm_sq(self) -> float:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        return F.preconditioned_dot(grads, grads, None, 1.0, 0.0, foreach=self.foreach)

    @torch.no_grad()
    def step(self, closure: LossClosure | None = None) -> Tensor:
        """One SaLSa step.

        With ``closure`` (returns the mini-batch loss, does not call backward) the optimizer zeroes
        the gradients, back-propagates the closure's loss, and replays the closure for trial
        points with the same random state. Afterwards the random streams stand where one closure
        call left them. Without ``closure``, the step handed over by ``prepare_step`` is taken.
        """
        if closure is None:
            if self._prepared is None:
                raise RuntimeError(
                    "SaLSa.step() needs the mini-batch loss to run its line search: call "
                    "step(closure) with a closure that returns the loss, or prepare_step(loss, "
                    "evaluate) first. With transformers, use salsa_hf.SaLSaTrainer instead of Trainer "
                    "(for another Trainer class: class MyTrainer(salsa_hf.SaLSaMixin, ThatTrainer))."
                )
            (loss, evaluate, norm_sq), self._prepared = self._prepared, None
            clipped_sq = self._gradient_norm_sq() if norm_sq else 0.0
            slope_scale = math.sqrt(norm_sq / clipped_sq) if norm_sq and clipped_sq > 0 else 1.0
            return self._step(loss, evaluate, slope_scale)

        self.zero_grad(set_to_none=True)
        before = RngState.capture()
        with torch.enable_grad():
            loss = closure()
            loss.backward()
        after = RngState.capture()

        def evaluate() -> Tensor:
            before.restore()
            return closure()

        try:
            return self._step(loss.detach(), evaluate)
        finally:
            # Each replay ends where the first call ended, unless the closure draws differently
            # without grad: restoring makes the promise hold for any closure.
            after.restore()

    def _step(self, loss: Tensor, evaluate: LossClosure, slope_scale: float = 1.0) -> Tensor:
        """One step, in the order of ``docs/algorithm.md``."""
        search = self.search
        search.training_forwards += 1
        search.last_searched, search.last_backtracks = False, 0
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        loss_value = float(loss)
        # 1. A non-finite loss or gradient: skip, touching nothing (not even new state).
        if not math.isfinite(loss_value) or not F.all_finite(grads):
            search.skipped_steps += 1
            return loss
        groups = self._active_groups()
        search.last_loss = loss_value
        due = self._search_due()
        scale = self.step_scale  # the cool-down's factor on the step taken (the search tests the undecayed one)
        # 2. This batch's gradient joins the moments.
        search.step += 1
        for group in groups:
            beta1, beta2 = group["betas"]
            F.update_moments_(group["grads"], group["exp_avgs"], group["exp_avg_sqs"], beta1, beta2,
                              foreach=self.foreach)
        # 3. A search, when due, along the very step Adam takes; its trials leave the parameters at
        # ``w - offset * P m_hat``.
        offset, accepted = 0.0, search.step_size
        if due:
            offset, accepted = self._search(loss_value, groups, evaluate, slope_scale)
        search.steps_since_search = 0 if due else search.steps_since_search + 1
        # 4. The Adam step at the step size that passed, decayed by the cool-down (none after a failed
        # search); 5. decoupled weight decay.
        step_size = 0.0 if accepted is None else accepted * scale
        self._move(groups, offset - step_size)
        for group in groups:
            F.scale_(group["params"], 1 - step_size * group["relative_step"] * group["weight_decay"],
                     foreach=self.foreach)
        self._mirror_step_size()
        return loss

    def _search_due(self) -> bool:
        """Whether the coming step searches (``search.step`` counts the steps taken so far)."""
        search = self.search
        return search.step < self.warmup_searches or search.steps_since_search + 1 >= search.interval

    def _search(self, loss: float, groups: list[dict], evaluate: LossClosure,
                slope_scale: float) -> tuple[float, float | None]:
        """Move the step size by the smoothed Armijo test along the update ``d = -P m_hat``.

        ``slope_scale`` turns the slope of the (clipped) gradients into the slope of the loss the
        trials measure. Returns how far along ``d`` the trials left the parameters, and the step
        size this step takes (None: no step).
        """
        search = self.search
        search.last_searched = True
        slope = self._slope(groups) * slope_scale
        search.last_slope, search.last_boundary = slope, None
        if slope == 0.0:
            self._warn_if_zero_gradient()
        if not slope > 0.0:  # a zero gradient, or momentum against it: nothing to test; the step is Adam's
            search.uphill_searches += 1
            return 0.0, search.step_size
        if search.searches == 0:
            return self._find_scale(loss, groups, evaluate, slope)
        # One trial, one notch above the step size; the Armijo test at it, smoothed, decides.
        current = search.step_size
        trial = current * self.growth
        self._move(groups, -trial)
        trial_loss = float(evaluate())
        search.trial_forwards += 1
        curvature = self._curvature(loss, trial_loss, trial, slope)
        search.searches += 1
        search.last_boundary = self._boundary(slope, curvature)
        if math.isfinite(curvature):
            keep = self.beta3
            search.slope_avg = keep * search.slope_avg + (1 - keep) * slope
            search.curvature_avg = keep * search.curvature_avg + (1 - keep) * curvature
            boundary = self._boundary(search.slope_avg, search.curvature_avg)
        else:  # a non-finite trial loss: the boundary lies below the trial, and says no more; an
            # infinite curvature in the averages would cut every later search and stop the run
            boundary = 0.0
        if boundary >= trial:  # the larger step passes: take it, and keep it
            search.grown += 1
            search.step_size = trial
            return trial, trial
        search.backtracks += 1
        search.last_backtracks = 1
        if boundary >= current:  # the boundary lies between: hold, and search less often
            search.held += 1
            search.interval = min(self.max_interval, 2 * search.interval)
            return trial, current
        # The step size is past the boundary: one notch down, and search sooner. This step takes no
        # more than this batch's own boundary (0 when the trial's loss was not finite).
        search.shrunk += 1
        search.step_size = current / self.growth
        search.interval = max(1, search.interval // 2)
        return trial, min(search.step_size, search.last_boundary)

    def _find_scale(self, loss: float, groups: list[dict], evaluate: LossClosure,
                    slope: float) -> tuple[float, float | None]:
        """The first search: double (or halve) from ``init_step_size`` until the Armijo test
        changes its answer, and keep the largest step size that passed."""
        search = self.search
        trial, at, accepted, rejected, start_curvature = search.step_size, 0.0, None, 0, math.inf
        for _ in range(MAX_TRIALS):
            self._move(groups, -(trial - at))
            at = trial
            trial_loss = float(evaluate())
            search.trial_forwards += 1
            curvature = self._curvature(loss, trial_loss, trial, slope)
            if math.isfinite(curvature):
                start_curvature = curvature
            if self._boundary(slope, curvature) >= trial:  # the Armijo test, in the quadratic model's words
                accepted = trial
                if rejected:
                    break
                trial *= SCALE_FACTOR
            else:
                rejected += 1
                if accepted is not None:
                    break
                trial /= SCALE_FACTOR
        search.backtracks += rejected
        search.last_backtracks = rejected
        search.last_boundary = self._boundary(slope, start_curvature)
        if accepted is None:
            search.failed_searches += 1
            return at, None
        search.searches += 1
        # The averages start from the trial nearest the boundary (the last one whose loss was finite).
        search.slope_avg, search.curvature_avg = slope, start_curvature
        search.step_size = accepted
        return at, accepted

    def _curvature(self, loss: float, trial_loss: float, trial: float, slope: float) -> float:
        """``q``: the curvature along ``d`` that a quadratic through the loss, its slope and the
        trial gives, ``f(w + x d) = f(w) - p x + q x^2 / 2`` (inf for a non-finite trial loss, 0
        for an unchanged one: a step below the loss's floating-point resolution shows none)."""
        if not math.isfinite(trial_loss):
            return math.inf
        if trial_loss == loss:
            return 0.0
        return max(0.0, 2 * (slope * trial - (loss - trial_loss)) / trial**2)

    def _boundary(self, slope: float, curvature: float) -> float:
        """The largest step the Armijo test ``f(w) - f(w + x d) >= c x p`` accepts under that
        quadratic: ``x = 2 (1 - c) p / q``."""
        if curvature == math.inf:
            return 0.0
        return math.inf if curvature == 0.0 else 2 * (1 - self.c) * slope / curvature

    def _warn_if_zero_gradient(self) -> None:
        if self._warned_zero_gradient:
            return
        if self._gradient_norm_sq() == 0.0:
            self._warned_zero_gradient = True
            warnings.warn(
                "SaLSa got an exactly zero gradient: there is nothing to search along, and the model does not "
                "learn. Typical causes: inputs that tokenized to nothing, labels all masked out (-100), or a "
                "model whose trainable parameters do not reach the loss.",
                RuntimeWarning,
                stacklevel=4,
            )

    # ---- helpers --------------------------------------------------------------------------------

    def _slope(self, groups: list[dict]) -> float:
        """``p = <g, P m_hat>``: how fast this batch's loss falls along the update, per unit step."""
        total = 0.0
        for group in groups:
            dot = F.preconditioned_dot(group["grads"], group["exp_avgs"], group["exp_avg_sqs"],
                                       self._bias_correction2(group), group["eps"], foreach=self.foreach)
            total += group["relative_step"] * dot / (1 - group["betas"][0] ** self.search.step)
        return total

    def _bias_correction2(self, group: dict) -> float:
        return 1 - group["betas"][1] ** self.search.step

    def _move(self, groups: list[dict], along_update: float) -> None:
        """``params += along_update * P m_hat``: ``-P m_hat`` is the Adam (or momentum-SGD) update."""
        for group in groups:
            bias_correction1 = 1 - group["betas"][0] ** self.search.step
            alpha = along_update * group["relative_step"] / bias_correction1
            F.add_preconditioned_(group["params"], [(group["exp_avgs"], alpha)],
                                  group["exp_avg_sqs"], self._bias_correction2(group), group["eps"],
                                  foreach=self.foreach)

    def _active_groups(self) -> list[dict]:
        """Per param group: the parameters that have a gradient, their gradients and moments."""
        active = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("SaLSa does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if self.preconditioner == "adam":
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            active.append({
                "params": params,
                "grads": [p.grad for p in params],
                "exp_avgs": [self.state[p]["exp_avg"] for p in params],
                "exp_avg_sqs": [self.state[p]["exp_avg_sq"] for p in params] if self.preconditioner == "adam" else None,
                "betas": group["betas"],
                "eps": group["eps"],
                "weight_decay": group["weight_decay"],
                "relative_step": group["relative_step"],
            })
        return active

    def _mirror_step_size(self) -> None:
        for group in self.param_groups:
            group["lr"] = self.effective_step_size * group["relative_step"]
