"""SaLSa: Stable Armijo Line Search Adaptation (Kenneweg et al., IJCNN 2024), as a torch Optimizer.

One step size for the whole model is found by a backtracking line search on the mini-batch loss:
a trial step ``eta`` along a search direction ``-P x`` is accepted when the *smoothed* decrease
``h`` is at least ``c * eta * s``, with ``s`` the smoothed predicted decrease ``<g, P x>``. The
search runs only every ``interval`` steps, where the interval grows while searches agree with it.
Between searches the optimizer is Adam (or SGD with momentum) at the last accepted step size.

The defaults were chosen on the optimizer lab (``scripts/lab.py``, ``docs/algorithm.md``): the
step size starts from 1e-4 and the training loss steers its growth: x1.05 on a step where the
loss has fallen by more than its noise since the last such move, /1.05 where it rose by more,
held otherwise. The line search is the ceiling: it tests Adam's own update with c = 0.3 and cuts
a step size the trend grew too far; its interval doubles (up to 20) while searches accept their
first trial and halves when one backtracks. The step taken decays linearly over the run, as the
Trainer's default schedule does, relative to the step size the search finds. The paper's own
choices are options (``PAPER_SALSA``), and the four optimizers of its table are four settings of
this class, named in ``PRESETS``.
The tensor math lives in ``functional.py``; this file holds the decisions and the state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import functional as F
from .rng import RngState

LossClosure = Callable[[], Tensor]

# The paper's line-search frequency rule (eq. 3.10-3.13, interval_rule="steady"): EMAs of the
# accepted step size.
FAST_DECAY = 0.9
SLOW_DECAY = 0.99
LOSS_DECAY = 0.9  # the training-loss average (about ten steps) that loss_trend compares over time

# SaLSa as the paper ran it (the authors' AdamSLS, and this project's first defaults): the Armijo
# test along the gradient with c = 0.85, smoothed by beta3 per search, growth 2^(1/500) per step,
# backtracking by 0.9, no loss-trend decision and no cool-down. The lab did not measure the SGD
# variant with the newer mechanisms, so salsa_sgd keeps these.
PAPER_SALSA = {
    "c": 0.85, "search_direction": "gradient", "grow_on": "step", "growth": 2 ** (1 / 500),
    "smooth_over": "search", "backtracking": "constant", "loss_trend": False, "cooldown": 0.0,
    "interval_rule": "steady", "max_interval": 10,
}
# Plain stochastic Armijo (Vaswani et al. 2019) as the authors ran it for their GLUE baselines: the
# same with no smoothing, a search on every step and c = 0.1, from Adam's usual 1e-3.
PLAIN_ARMIJO = {**PAPER_SALSA, "smoothing": False, "adaptive_frequency": False, "c": 0.1}
PRESETS: dict[str, dict[str, Any]] = {
    "salsa": {"preconditioner": "adam"},
    "salsa_sgd": {"preconditioner": "sgd", **PAPER_SALSA},
    "sls": {"preconditioner": "adam", **PLAIN_ARMIJO, "init_step_size": 1e-3},
    "sls_sgd": {"preconditioner": "sgd", **PLAIN_ARMIJO},
}

PRECONDITIONERS = ("adam", "sgd")
# Where the first search starts: the step size lives on the preconditioner's scale. Adam's starts
# at the low end of fine-tuning rates and must earn its growth (docs/algorithm.md, the lab).
DEFAULT_INIT_STEP_SIZE = {"adam": 1e-4, "sgd": 0.1}
GROWTH_SCHEDULES = ("search", "step")
INTERVAL_RULES = ("agreement", "steady")
SEARCH_STEPS = ("momentum", "trial")
SMOOTHING_CLOCKS = ("step", "search")
SEARCH_DIRECTIONS = ("update", "previous", "gradient")
BACKTRACKING = ("accelerating", "constant")
# Keys a param group may carry; the line-search settings are global (one step size for the model).
GROUP_KEYS = {"params", "betas", "eps", "weight_decay", "name"}


@dataclass
class LineSearchState:
    """Every scalar SaLSa carries between steps; saved whole in ``state_dict()``."""

    step_size: float
    step: int = 0  # steps taken (a skipped step does not count)
    decrease_avg: float = 0.0  # h: smoothed loss decrease of accepted trials
    norm_avg: float = 0.0  # s: smoothed <g, P g>
    fast_avg: float = 0.0  # EMA(0.9) of accepted step sizes
    slow_avg: float = 0.0  # EMA(0.99) of accepted step sizes
    fast_weight: float = 0.0  # the weight those EMAs have accumulated (their bias correction)
    slow_weight: float = 0.0
    interval: int = 1  # steps between searches
    steps_since_search: int = 0
    average_age: int = 0  # steps since h and s last took a value (the smoothing's clock)
    loss_avg: float = 0.0  # EMA(LOSS_DECAY) of the training loss, per step (before bias correction)
    loss_noise_avg: float = 0.0  # EMA(LOSS_DECAY) of the squared change of the loss from step to step
    previous_loss: float | None = None
    reference_loss: float | None = None  # the bias-corrected loss_avg when the loss trend last moved the step size
    reference_samples: int = 0  # the losses that average held then
    searches: int = 0  # searches that accepted a step
    backtracks: int = 0  # rejected trials, all searches together
    trial_forwards: int = 0  # loss evaluations spent by searches
    training_forwards: int = 0  # loss evaluations with backward, one per step() call
    skipped_steps: int = 0  # non-finite loss or gradient at the current point
    failed_searches: int = 0  # max_backtracks trials, none accepted
    # What the last step() did, for logging.
    last_searched: bool = False
    last_backtracks: int = 0

    @property
    def extra_forward_fraction(self) -> float:
        """Loss evaluations spent by the line search per training forward pass."""
        return self.trial_forwards / max(self.training_forwards, 1)


def _average_change_variance(samples: int, k: int, decay: float = LOSS_DECAY) -> float:
    """Variance, per unit noise variance, of the change of a bias-corrected EMA of independent
    samples between ``samples - k`` and ``samples`` samples (the two averages share the older ones)."""
    n = samples - k
    older = decay**k / (1 - decay**samples) - 1 / (1 - decay**n)  # weight change of the n older samples
    newer = 1 / (1 - decay**samples)
    def squares(m: int) -> float:  # the sum of decay^(2j) over j < m
        return (1 - decay ** (2 * m)) / (1 - decay**2)

    return (1 - decay) ** 2 * (older**2 * squares(n) + newer**2 * squares(k))


def _check_open_unit(name: str, value: float, *, closed_low: bool = False) -> None:
    low_ok = value >= 0 if closed_low else value > 0
    if not (isinstance(value, (int, float)) and low_ok and value < 1):
        bracket = "[0, 1)" if closed_low else "(0, 1)"
        raise ValueError(f"{name} must be in {bracket}, got {value!r}")


def _check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


class SaLSa(Optimizer):
    """Learning-rate-free Adam/SGD with a smoothed Armijo line search.

    Args:
        params: parameters or param groups (groups may set ``betas``, ``eps``, ``weight_decay``).
        preconditioner: ``"adam"`` (search along ``-g / (sqrt(v_hat) + eps)``) or ``"sgd"`` (``-g``).
        c: Armijo constant, in (0, 1): the share of the predicted decrease a step must achieve.
        beta3: smoothing of both sides of the Armijo test, in [0, 1) (per step, see ``smooth_over``).
        delta: backtracking factor, in (0, 1): a rejected trial step is multiplied by it.
        growth: factor >= 1 by which the step size may grow (see ``grow_on``).
        init_step_size: first trial step size, > 0 (default: 1e-4 for Adam, the low end of
            fine-tuning rates, from which the step size earns its growth; 0.1 for SGD, whose steps
            are not normalised).
        max_backtracks: trials per search, >= 1; when none is accepted the step is not taken.
        betas: Adam's moment decays; ``betas[0]`` is the momentum of the SGD variant too.
        eps: Adam's denominator term.
        weight_decay: decoupled weight decay, scaled by the step size (as AdamW).
        smoothing: False gives the plain Armijo test (``beta3 = 0``).
        adaptive_frequency: False searches on every step.
        warmup_searches: the first this many steps always search.
        grow_on: ``"step"`` multiplies the step size by ``growth`` on every step (the authors'
            ``AdamSLS``, the paper's runs; with ``loss_trend``, on the steps the trend earns it);
            ``"search"`` before each search (their pip package, with growth 1.1).
        search_step: after a search along the gradient, ``"momentum"`` takes the Adam/momentum
            step with the step size found (``AdamSLS``, the paper's runs); ``"trial"`` keeps the
            accepted trial point (the pip package).
        search_direction: ``"gradient"`` searches along ``-P g`` with the predicted decrease
            ``<g, P g>`` (the paper); ``"update"`` along the step the optimizer takes,
            ``-P m_hat``, with ``<g, P m_hat>``, so the search measures the very step it accepts
            (where momentum and gradient disagree, ``<g, P m_hat> <= 0``, that search falls back
            to the gradient); ``"previous"`` along the Adam update of the steps before, ``-P m_hat``
            before this batch's gradient joins ``m``: a direction this batch did not choose, so its
            loss change along it is an unbiased sample of the full loss's, and the test sees
            gradient noise (a batch on which that direction goes uphill postpones the search by
            a step; the first step searches along the gradient). The step taken is Adam's.
        smooth_over: ``"step"`` decays the averages by ``beta3`` per optimizer step (a search
            after ``k`` quiet steps weighs ``1 - beta3**k``), so their memory is the same however
            rarely the search runs; ``"search"`` decays them by ``beta3`` per search (the paper).
        max_interval: the longest interval between searches, >= 1 (the paper: 10).
        interval_rule: ``"agreement"`` doubles the interval after a search that accepted its first
            trial (it had nothing to change) and halves it after one that backtracked;
            ``"steady"`` sets it from how steady the accepted step sizes are (the paper's eq.
            3.10-3.13), which reads a step size the loss trend is growing as unsteady and searches
            on every step of a climb.
        backtracking: ``"constant"`` multiplies a rejected trial by ``delta``; ``"accelerating"``
            by ``delta``, ``delta**2``, ``delta**3``, ... (the j-th rejection of a search by
            ``delta**j``), so a search far from its answer gets there in few trials.
        loss_trend: the training loss (an average over about ten steps) gates the growth: at
            each step (``grow_on="step"``) or search (``"search"``) the step size grows by
            ``growth`` when the loss fell by more than the noise of that difference since the trend
            last moved the step size, shrinks by ``1 / growth`` when it rose by more, and holds
            otherwise, the evidence accumulating until it is clear. The steps taken, not just a
            trial, must pay off for the step size to grow: a slow, steady fall earns growth at a
            rate that follows its slope, a run whose loss keeps rising backs off however the
            trials look, and a plateau holds it. The line search is then the ceiling: it cuts a
            step size the trend grew past what the Armijo test accepts.
        total_steps: the steps the run will take, if known (``SaLSaTrainer`` sets it); enables
            the cool-down.
        cooldown: share of ``total_steps`` at the end over which the step taken decays linearly
            to 0, in [0, 1] (1: the Trainer's linear schedule over the whole run). Only the step
            taken is scaled: the line search goes on finding the undecayed step size, the scale
            the schedule is relative to.
        foreach: use the multi-tensor kernels (default True; False runs the per-tensor reference
            path, which the tests hold equal to it).
    """

    def __init__(
        self,
        params,
        *,
        preconditioner: str = "adam",
        c: float = 0.3,
        beta3: float = 0.99,
        delta: float = 0.9,
        growth: float = 1.05,
        init_step_size: float | None = None,
        max_backtracks: int = 60,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        smoothing: bool = True,
        adaptive_frequency: bool = True,
        warmup_searches: int = 10,
        grow_on: str = "step",
        search_step: str = "momentum",
        search_direction: str = "update",
        smooth_over: str = "step",
        max_interval: int = 20,
        backtracking: str = "accelerating",
        loss_trend: bool = True,
        interval_rule: str = "agreement",
        total_steps: int | None = None,
        cooldown: float = 1.0,
        foreach: bool = True,
    ):
        _check_choice("preconditioner", preconditioner, PRECONDITIONERS)
        _check_choice("grow_on", grow_on, GROWTH_SCHEDULES)
        _check_choice("search_step", search_step, SEARCH_STEPS)
        _check_choice("smooth_over", smooth_over, SMOOTHING_CLOCKS)
        _check_choice("search_direction", search_direction, SEARCH_DIRECTIONS)
        _check_choice("backtracking", backtracking, BACKTRACKING)
        _check_choice("interval_rule", interval_rule, INTERVAL_RULES)
        if not (isinstance(cooldown, (int, float)) and 0 <= cooldown <= 1):
            raise ValueError(f"cooldown must be in [0, 1], got {cooldown!r}")
        if not (isinstance(max_interval, int) and max_interval >= 1):
            raise ValueError(f"max_interval must be an integer >= 1, got {max_interval!r}")
        _check_open_unit("c", c)
        _check_open_unit("beta3", beta3, closed_low=True)
        _check_open_unit("delta", delta)
        if not (isinstance(growth, (int, float)) and math.isfinite(growth) and growth >= 1):
            raise ValueError(f"growth must be a finite number >= 1, got {growth!r}")
        if init_step_size is None:
            init_step_size = DEFAULT_INIT_STEP_SIZE[preconditioner]
        if not (isinstance(init_step_size, (int, float)) and math.isfinite(init_step_size) and init_step_size > 0):
            raise ValueError(f"init_step_size must be a finite number > 0, got {init_step_size!r}")
        if not (isinstance(max_backtracks, int) and max_backtracks >= 1):
            raise ValueError(f"max_backtracks must be an integer >= 1, got {max_backtracks!r}")
        if not (isinstance(warmup_searches, int) and warmup_searches >= 0):
            raise ValueError(f"warmup_searches must be an integer >= 0, got {warmup_searches!r}")
        for key, value in (("smoothing", smoothing), ("adaptive_frequency", adaptive_frequency),
                           ("loss_trend", loss_trend), ("foreach", foreach)):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be True or False, got {value!r}")
        self.preconditioner = preconditioner
        self.c = c
        self.beta3 = beta3 if smoothing else 0.0
        self.delta = delta
        self.growth = growth
        self.init_step_size = init_step_size
        self.max_backtracks = max_backtracks
        self.smoothing = smoothing
        self.adaptive_frequency = adaptive_frequency
        self.warmup_searches = warmup_searches
        self.grow_on = grow_on
        self.search_step = search_step
        self.smooth_over = smooth_over
        self.search_direction = search_direction
        self.max_interval = max_interval
        self.backtracking = backtracking
        self.loss_trend = loss_trend
        self.interval_rule = interval_rule
        self.cooldown = cooldown
        self.total_steps = None
        self.set_total_steps(total_steps)
        self.foreach = foreach
        self.search = LineSearchState(step_size=init_step_size)
        self._prepared: tuple[Tensor, LossClosure] | None = None
        # "lr" mirrors the current step size, so schedulers and loggers that read it see SaLSa's.
        defaults = {"lr": init_step_size, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        if not any(p.requires_grad for group in self.param_groups for p in group["params"]):
            raise ValueError(
                "SaLSa got no trainable parameters: every parameter it was given has requires_grad=False "
                "(a frozen model, or a PEFT adapter that was not attached); give it at least one trainable one"
            )

    @classmethod
    def from_name(cls, name: str, params, **overrides) -> "SaLSa":
        """One of the paper's four optimizers by name (``PRESETS``), with any argument overridden."""
        _check_choice("optimizer name", name, PRESETS)
        return cls(params, **{**PRESETS[name], **overrides})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        unknown = set(param_group) - GROUP_KEYS
        if unknown:
            raise ValueError(
                f"param group keys {sorted(unknown)} are not per-group settings of SaLSa "
                f"(allowed: {sorted(GROUP_KEYS)}); the step size and line-search settings are global"
            )
        group = {**self.defaults, **param_group}
        beta1, beta2 = group["betas"]
        _check_open_unit("betas[0]", beta1, closed_low=True)
        _check_open_unit("betas[1]", beta2, closed_low=True)
        if not (isinstance(group["eps"], (int, float)) and group["eps"] >= 0):
            raise ValueError(f"eps must be >= 0, got {group['eps']!r}")
        if not (isinstance(group["weight_decay"], (int, float)) and group["weight_decay"] >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']!r}")
        super().add_param_group(param_group)

    def set_total_steps(self, total_steps: int | None) -> None:
        """Tell SaLSa how many steps the run takes (None: unknown, no cool-down)."""
        if total_steps is not None and not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"total_steps must be an integer >= 1 or None, got {total_steps!r}")
        self.total_steps = total_steps

    @property
    def step_scale(self) -> float:
        """The cool-down's factor on the next step: 1, then linearly down to ``1 / cooldown_steps``."""
        cooldown_steps = self._cooldown_steps()
        if not cooldown_steps:
            return 1.0
        upcoming = self.search.step + self.search.skipped_steps + 1
        return min(1.0, max(0.0, (self.total_steps - upcoming + 1) / cooldown_steps))

    @property
    def effective_step_size(self) -> float:
        """The step size the next step takes: the line search's, times the cool-down's factor."""
        return self.search.step_size * self.step_scale

    def _cooldown_steps(self) -> int:
        return 0 if self.total_steps is None else math.ceil(self.cooldown * self.total_steps)

    # ---- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["line_search"] = dataclasses.asdict(self.search)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "line_search" not in state_dict:
            raise ValueError("not a SaLSa state dict: the 'line_search' entry is missing")
        search = state_dict.pop("line_search")
        super().load_state_dict(state_dict)
        self.search = LineSearchState(**search)
        self._mirror_step_size()

    # ---- stepping -------------------------------------------------------------------------------

    def prepare_step(self, loss: Tensor, evaluate: LossClosure) -> None:
        """Hand over a step whose gradients someone else computed (the Trainer does).

        ``loss`` is the mini-batch loss at the current parameters, whose gradients are already in
        ``.grad``; ``evaluate()`` returns that same mini-batch loss at the current parameters with
        the same random state (dropout masks), without backward. The next ``step()`` uses them.
        """
        self._prepared = (loss.detach(), evaluate)

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
                    "evaluate) first. With transformers, use salsa_hf.SaLSaTrainer instead of Trainer."
                )
            (loss, evaluate), self._prepared = self._prepared, None
            return self._step(loss, evaluate)

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

    def _step(self, loss: Tensor, evaluate: LossClosure) -> Tensor:
        search = self.search
        search.training_forwards += 1
        search.last_searched, search.last_backtracks = False, 0
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        loss_value = float(loss)
        if not math.isfinite(loss_value) or not F.all_finite(grads):
            search.skipped_steps += 1  # nothing else is touched, not even new state: the step never happened
            return loss
        groups = self._active_groups()
        scale = self.step_scale  # the cool-down's factor on the step taken (the search tests the undecayed one)
        due = self._search_due()
        search.average_age += 1
        self._track_loss(loss_value)
        if self.grow_on == "step":
            search.step_size *= self._decide_growth()

        found, searched = None, False
        if due and self.search_direction == "previous" and search.step > 0:
            # Before this batch's gradient joins the moments: the direction the earlier batches chose,
            # tested on this batch, whose loss change along it is an unbiased sample of the full loss's.
            predicted = self._predicted_decrease(groups, "exp_avgs")
            if predicted > 0.0:  # else this batch says uphill: search on the next step instead
                found, searched = self._line_search(loss_value, groups, evaluate, "along_momentum", predicted), True
                if found is not None:
                    self._move(groups, along_momentum=found)  # back to the current point
                    found *= scale
        search.step += 1
        for group in groups:
            beta1, beta2 = group["betas"]
            F.update_moments_(
                group["grads"], group["exp_avgs"], group["exp_avg_sqs"], beta1, beta2, foreach=group["foreach"]
            )

        moved = False
        if searched:  # along the earlier direction: the step is Adam's, at the step size found
            step_size = found
        elif due and (self.search_direction != "previous" or search.step == 1):
            step_size, moved = self._search_current(loss_value, groups, evaluate, scale), True
        else:
            search.steps_since_search += 1
            step_size = search.step_size * scale
        if step_size is not None and not moved:
            self._move(groups, along_momentum=-step_size)
        if step_size is not None:
            for group in groups:
                F.scale_(group["params"], 1 - step_size * group["weight_decay"], foreach=group["foreach"])
        self._mirror_step_size()
        return loss

    def _track_loss(self, loss: float) -> None:
        """Per step: the training loss's average and its step-to-step noise (for ``loss_trend``)."""
        search = self.search
        search.loss_avg = LOSS_DECAY * search.loss_avg + (1 - LOSS_DECAY) * loss
        if search.previous_loss is not None:
            change = loss - search.previous_loss
            search.loss_noise_avg = LOSS_DECAY * search.loss_noise_avg + (1 - LOSS_DECAY) * change**2
        search.previous_loss = loss

    def _decide_growth(self) -> float:
        """The factor the growth rule puts on the step size now (each step, or before a search);
        with ``loss_trend`` a move also records the new reference, so call it once per decision.

        Without ``loss_trend``: ``growth``. With it, the training loss's average decides, against
        its value when the trend last moved the step size: a fall larger than the noise of that
        difference grows the step size by ``growth``, a rise larger than it shrinks it by
        ``1 / growth``, and either makes the present average the new reference. Otherwise the
        step size holds and the evidence accumulates against the same reference, so a slow, steady
        fall earns its growth in time, while a plateau's ups and downs do not walk it about.
        """
        if not self.loss_trend:
            return self.growth
        search = self.search
        samples = search.training_forwards - search.skipped_steps  # this step's loss is in the average
        smoothed = search.loss_avg / (1 - LOSS_DECAY**samples)
        reference = search.reference_loss
        if reference is None:  # nothing to compare with yet
            search.reference_loss, search.reference_samples = smoothed, samples
            return self.growth
        if samples < 3:  # one observed change would be its own noise estimate: a tie decided by rounding
            return 1.0
        # Changes of independent noise of variance sigma^2 have variance 2 sigma^2.
        sigma_sq = search.loss_noise_avg / (1 - LOSS_DECAY ** (samples - 1)) / 2
        since = min(samples - search.reference_samples, samples - 1)
        noise = math.sqrt(sigma_sq * _average_change_variance(samples, since))
        fall = reference - smoothed
        if abs(fall) <= noise:
            return 1.0
        search.reference_loss, search.reference_samples = smoothed, samples
        return self.growth if fall > 0 else 1 / self.growth

    def _search_due(self) -> bool:
        """Whether the coming step searches (``search.step`` counts the steps taken so far)."""
        search = self.search
        return (
            not self.adaptive_frequency
            or search.step < self.warmup_searches
            or search.steps_since_search + 1 >= search.interval
        )

    def _search_current(self, loss: float, groups: list[dict], evaluate: LossClosure, scale: float) -> float | None:
        """A search with this batch's moments; leaves the parameters at the step taken, ``scale``
        times the step size found, and returns that step (or None, at the current point, when the
        search fails)."""
        along_update = self.search_direction in ("update", "previous")
        predicted = self._predicted_decrease(groups, "exp_avgs") if along_update else 0.0
        if predicted <= 0.0:  # the gradient direction always descends, unless the gradient is zero
            along_update, predicted = False, self._predicted_decrease(groups, "grads")
        if predicted <= 0.0:
            # A zero gradient: there is no direction to search along; take the momentum step.
            self.search.last_searched, self.search.steps_since_search = True, 0
            self._move(groups, along_momentum=-self.search.step_size * scale)
            return self.search.step_size * scale
        direction = "along_momentum" if along_update else "along_gradient"
        found = self._line_search(loss, groups, evaluate, direction, predicted)
        if found is None:
            return None
        if along_update or self.search_step == "trial":
            self._move(groups, **{direction: found * (1 - scale)})  # the accepted trial, scaled down
        else:
            # Undo the trial point and take the momentum step instead, in one pass.
            self._move(groups, along_gradient=found, along_momentum=-found * scale)
        return found * scale

    def _line_search(self, loss: float, groups: list[dict], evaluate: LossClosure, direction: str,
                     predicted: float) -> float | None:
        """Backtrack along ``direction`` (a ``_move`` keyword) from the grown step size.

        ``predicted`` is the loss decrease per unit step the direction promises. Returns the
        accepted step size, with the parameters at that trial point; or None when no trial was
        accepted, with the parameters back at the current point and the step size unchanged.
        """
        search = self.search
        search.last_searched = True
        # The averages' weight on the past: per search (the paper), or per step since they last
        # took a value, so that their memory does not stretch when searches are rare.
        keep = self.beta3 ** (search.average_age if self.smooth_over == "step" else 1)
        norm_avg = keep * search.norm_avg + (1 - keep) * predicted
        step_size = search.step_size * (self._decide_growth() if self.grow_on == "search" else 1.0)
        search.steps_since_search = 0
        at = 0.0  # how far along the search direction the parameters are now
        for trial in range(self.max_backtracks):
            self._move(groups, **{direction: -(step_size - at)})
            at = step_size
            trial_loss = float(evaluate())
            search.trial_forwards += 1
            decrease_avg = keep * search.decrease_avg + (1 - keep) * (loss - trial_loss)
            # An unchanged loss means the step is below the loss's floating-point resolution:
            # shrinking further cannot show a decrease, so the search stops there (as the authors do).
            if trial_loss == loss or (
                math.isfinite(trial_loss)
                and decrease_avg >= self.c * step_size * norm_avg
            ):
                break
            step_size *= self.delta ** (trial + 1 if self.backtracking == "accelerating" else 1)
        else:
            # No trial accepted: back to the current point, no step, and the step size stays what it
            # was, so one unlucky batch cannot shrink it by delta**max_backtracks.
            self._move(groups, **{direction: at})
            search.backtracks += self.max_backtracks
            search.last_backtracks = self.max_backtracks
            search.failed_searches += 1
            return None

        search.backtracks += trial
        search.last_backtracks = trial
        self._update_interval(step_size, search.average_age, backtracked=trial > 0)
        search.decrease_avg, search.norm_avg, search.average_age = decrease_avg, norm_avg, 0
        search.step_size = step_size
        return step_size

    def _update_interval(self, step_size: float, age: int, backtracked: bool) -> None:
        """Search less often while the searches have nothing to change.

        ``"agreement"``: the interval doubles after a search that accepted its first trial and
        halves after one that backtracked. ``"steady"`` (eq. 3.10-3.13): it follows how steady
        two averages of the accepted step sizes are, bias-corrected (the authors start them near 0
        uncorrected, which holds the interval at 1 for hundreds of steps) and, with
        ``smooth_over="step"``, decayed per step, ``age`` being the steps since the last accepted
        search.
        """
        search = self.search
        search.searches += 1
        longest = self.max_interval
        if self.interval_rule == "agreement":
            search.interval = max(1, search.interval // 2) if backtracked else min(longest, 2 * search.interval)
            return
        steps = age if self.smooth_over == "step" else 1
        fast_keep, slow_keep = FAST_DECAY**steps, SLOW_DECAY**steps
        search.fast_avg = fast_keep * search.fast_avg + (1 - fast_keep) * step_size
        search.slow_avg = slow_keep * search.slow_avg + (1 - slow_keep) * step_size
        search.fast_weight = fast_keep * search.fast_weight + (1 - fast_keep)
        search.slow_weight = slow_keep * search.slow_weight + (1 - slow_keep)
        fast, slow = search.fast_avg / search.fast_weight, search.slow_avg / search.slow_weight
        ratio = max(fast / slow, slow / fast)
        search.interval = longest if ratio <= 1 else min(longest, max(1, round(1 / (ratio - 1))))

    # ---- helpers --------------------------------------------------------------------------------

    def _predicted_decrease(self, groups: list[dict], vectors: str) -> float:
        """``<g, P x>`` summed over the groups, ``x`` the gradients or Adam's bias-corrected ``m``."""
        total = 0.0
        for group in groups:
            dot = F.preconditioned_dot(
                group["grads"], group[vectors], group["exp_avg_sqs"], self._bias_correction2(group), group["eps"],
                foreach=group["foreach"],
            )
            total += dot / (1 - group["betas"][0] ** self.search.step) if vectors == "exp_avgs" else dot
        return total

    def _bias_correction2(self, group: dict) -> float:
        return 1 - group["betas"][1] ** self.search.step

    def _move(self, groups: list[dict], *, along_gradient: float = 0.0, along_momentum: float = 0.0) -> None:
        """``params += along_gradient * P g + along_momentum * P m_hat``.

        ``-P g`` is the search direction, ``-P m_hat`` the Adam (or momentum-SGD) update direction.
        """
        for group in groups:
            bias_correction1 = 1 - group["betas"][0] ** self.search.step
            F.add_preconditioned_(
                group["params"],
                [(group["grads"], along_gradient), (group["exp_avgs"], along_momentum / bias_correction1)],
                group["exp_avg_sqs"], self._bias_correction2(group), group["eps"], foreach=group["foreach"],
            )

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
                "foreach": self.foreach,
            })
        return active

    def _mirror_step_size(self) -> None:
        for group in self.param_groups:
            group["lr"] = self.effective_step_size
