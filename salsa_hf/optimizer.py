"""SaLSa: Stable Armijo Line Search Adaptation (Kenneweg et al., IJCNN 2024), as a torch Optimizer.

One step size for the whole model is found by a backtracking line search on the mini-batch loss:
a trial step ``eta`` along the preconditioned gradient is accepted when the *smoothed* decrease
``h`` is at least ``c * eta * s``, with ``s`` the smoothed ``<g, P g>``. The search runs only every
``interval`` steps, where the interval grows while the step size is steady. Between searches the
optimizer is Adam (or SGD with momentum) at the last accepted step size.

The four optimizers of the paper's table are four settings of this class, named in ``PRESETS``.
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

# The line-search frequency rule of the paper (eq. 3.10-3.13): EMAs of the accepted step size.
FAST_DECAY = 0.9
SLOW_DECAY = 0.99
MAX_INTERVAL = 10

PRESETS: dict[str, dict[str, Any]] = {
    "salsa": {"preconditioner": "adam"},
    "salsa_sgd": {"preconditioner": "sgd"},
    # Plain stochastic Armijo (Vaswani et al. 2019): no smoothing, a search every step, c as in the
    # authors' GLUE baselines.
    "sls": {"preconditioner": "adam", "smoothing": False, "adaptive_frequency": False, "c": 0.1},
    "sls_sgd": {"preconditioner": "sgd", "smoothing": False, "adaptive_frequency": False, "c": 0.1},
}

PRECONDITIONERS = ("adam", "sgd")
# Where the first search starts: the step size lives on the preconditioner's scale.
DEFAULT_INIT_STEP_SIZE = {"adam": 1e-3, "sgd": 0.1}
GROWTH_SCHEDULES = ("search", "step")
SEARCH_STEPS = ("momentum", "trial")
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
    interval: int = 1  # steps between searches
    steps_since_search: int = 0
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
        beta3: smoothing of both sides of the Armijo test, in [0, 1).
        delta: backtracking factor, in (0, 1): a rejected trial step is multiplied by it.
        growth: factor >= 1 by which the step size may grow (see ``grow_on``).
        init_step_size: first trial step size, > 0 (default: 1e-3 for Adam, Adam's usual scale;
            0.1 for SGD, whose steps are not normalised).
        max_backtracks: trials per search, >= 1; when none is accepted the step is not taken.
        betas: Adam's moment decays; ``betas[0]`` is the momentum of the SGD variant too.
        eps: Adam's denominator term.
        weight_decay: decoupled weight decay, scaled by the step size (as AdamW).
        smoothing: False gives the plain Armijo test (``beta3 = 0``).
        adaptive_frequency: False searches on every step.
        warmup_searches: the first this many steps always search.
        grow_on: ``"step"`` multiplies the step size by ``growth`` on every step (the authors'
            ``AdamSLS``, the paper's runs); ``"search"`` before each search (their pip package).
        search_step: on a search step, ``"momentum"`` takes the Adam/momentum step with the step
            size found (``AdamSLS``, the paper's runs); ``"trial"`` keeps the accepted trial point
            along the gradient direction (the pip package).
        foreach: use the multi-tensor kernels (default True; False runs the per-tensor reference
            path, which the tests hold equal to it).
    """

    def __init__(
        self,
        params,
        *,
        preconditioner: str = "adam",
        c: float = 0.85,
        beta3: float = 0.99,
        delta: float = 0.9,
        growth: float = 2 ** (1 / 500),
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
        foreach: bool = True,
    ):
        _check_choice("preconditioner", preconditioner, PRECONDITIONERS)
        _check_choice("grow_on", grow_on, GROWTH_SCHEDULES)
        _check_choice("search_step", search_step, SEARCH_STEPS)
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
        for key, value in (("smoothing", smoothing), ("adaptive_frequency", adaptive_frequency), ("foreach", foreach)):
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
        self.foreach = foreach
        self.search = LineSearchState(step_size=init_step_size)
        self._prepared: tuple[Tensor, LossClosure] | None = None
        # "lr" mirrors the current step size, so schedulers and loggers that read it see SaLSa's.
        defaults = {"lr": init_step_size, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

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

        search.step += 1
        if self.grow_on == "step":
            search.step_size *= self.growth
        for group in groups:
            beta1, beta2 = group["betas"]
            F.update_moments_(
                group["grads"], group["exp_avgs"], group["exp_avg_sqs"], beta1, beta2, foreach=group["foreach"]
            )

        if self._search_due():
            step_size = self._line_search(loss_value, groups, evaluate)
        else:
            search.steps_since_search += 1
            step_size = search.step_size
            self._move(groups, along_momentum=-step_size)
        if step_size is not None:
            for group in groups:
                F.scale_(group["params"], 1 - step_size * group["weight_decay"], foreach=group["foreach"])
        self._mirror_step_size()
        return loss

    def _search_due(self) -> bool:
        search = self.search
        return (
            not self.adaptive_frequency
            or search.step <= self.warmup_searches
            or search.steps_since_search + 1 >= search.interval
        )

    def _line_search(self, loss: float, groups: list[dict], evaluate: LossClosure) -> float | None:
        """Backtrack from a grown step size; leave the parameters at the step taken.

        Returns the step size taken, or None when no trial was accepted (the parameters are then
        back at the current point and the step size is unchanged).
        """
        search = self.search
        search.last_searched = True
        search.steps_since_search = 0
        precond_sq_norm = sum(
            F.preconditioned_sq_norm(
                group["grads"], group["exp_avg_sqs"], self._bias_correction2(group), group["eps"],
                foreach=group["foreach"],
            )
            for group in groups
        )
        if precond_sq_norm <= 0.0:
            # A zero gradient: there is no direction to search along; take the momentum step.
            self._move(groups, along_momentum=-search.step_size)
            return search.step_size

        beta3 = self.beta3
        norm_avg = beta3 * search.norm_avg + (1 - beta3) * precond_sq_norm
        step_size = search.step_size * (self.growth if self.grow_on == "search" else 1.0)
        at = 0.0  # how far along the search direction the parameters are now
        for trial in range(self.max_backtracks):
            self._move(groups, along_gradient=-(step_size - at))
            at = step_size
            trial_loss = float(evaluate())
            search.trial_forwards += 1
            decrease_avg = beta3 * search.decrease_avg + (1 - beta3) * (loss - trial_loss)
            # An unchanged loss means the step is below the loss's floating-point resolution:
            # shrinking further cannot show a decrease, so the search stops there (as the authors do).
            if math.isfinite(trial_loss) and (decrease_avg >= self.c * step_size * norm_avg or trial_loss == loss):
                break
            step_size *= self.delta
        else:
            # No trial accepted: back to the current point, no step, and the step size stays what it
            # was, so one unlucky batch cannot shrink it by delta**max_backtracks.
            self._move(groups, along_gradient=at)
            search.backtracks += self.max_backtracks
            search.last_backtracks = self.max_backtracks
            search.failed_searches += 1
            return None

        search.backtracks += trial
        search.last_backtracks = trial
        search.decrease_avg, search.norm_avg = decrease_avg, norm_avg
        search.step_size = step_size
        self._update_interval(step_size)
        if self.search_step == "momentum":
            # Undo the trial point and take the momentum step instead, in one pass.
            self._move(groups, along_gradient=step_size, along_momentum=-step_size)
        return step_size

    def _update_interval(self, step_size: float) -> None:
        """Search less often while the step size is steady (eq. 3.10-3.13), with bias-corrected EMAs."""
        search = self.search
        search.searches += 1
        search.fast_avg = FAST_DECAY * search.fast_avg + (1 - FAST_DECAY) * step_size
        search.slow_avg = SLOW_DECAY * search.slow_avg + (1 - SLOW_DECAY) * step_size
        fast = search.fast_avg / (1 - FAST_DECAY**search.searches)
        slow = search.slow_avg / (1 - SLOW_DECAY**search.searches)
        ratio = max(fast / slow, slow / fast)
        search.interval = MAX_INTERVAL if ratio <= 1 else min(MAX_INTERVAL, max(1, round(1 / (ratio - 1))))

    # ---- helpers --------------------------------------------------------------------------------

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
            group["lr"] = self.search.step_size
