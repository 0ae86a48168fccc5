"""The paper's SaLSa as the talk writes it: a plain, per-tensor reference beside the product class.

Kenneweg et al., "No learning rates needed: Introducing SALSA" (IJCNN 2024), eq. 3.6-3.13 and
Algorithm 2, with the authors' ``AdamSLS`` constants (the code behind the paper's GLUE runs) where
the talk gives none. On each step ``k`` with gradient ``g`` and Adam's bias-corrected ``m_hat``,
``v_hat`` (``P = 1 / (sqrt(v_hat) + eps)``; ``P = 1`` and ``m_hat`` the momentum for SGD):

1. ``eta *= growth`` (Algorithm 2, line 1: ``2 ** (1 / b)``, ``b = 500`` batches as ``AdamSLS``).
2. When a search is due (the first ``warmup_searches`` steps, then every ``L`` steps): along
   ``d = -P g``, ``s = beta3 s + (1 - beta3) <g, P g>`` (eq. 3.9), and for a trial ``eta``,
   ``h = beta3 h + (1 - beta3) (f(w) - f(w + eta d))`` (eq. 3.7); accept when ``h >= c eta s``
   (eq. 3.8), else ``eta *= delta`` (Algorithm 2, lines 2-3).
3. The step: ``w -= eta P m_hat`` (the Adam step at the step size found, as ``AdamSLS``).
4. After a search, ``fast = 0.9 fast + 0.1 eta``, ``slow = 0.99 slow + 0.01 eta`` (eq. 3.10-3.11,
   started at 1e-8 as the authors do), ``r = fast / slow`` inverted below 1 (3.12), and
   ``L = round(1 / (r - 1))`` clamped to ``[1, max_interval = 10]`` (3.13).

Constants from ``AdamSLS`` (the talk gives none): ``c = 0.3``, ``beta3 = 0.99``, ``delta = 0.9``,
first step size 0.1, ten warm-up searches. What this project adds, since the paper's code lacks
it: a non-finite loss or gradient skips the step; a search with no accepted trial after
``max_backtracks`` takes no step and keeps ``eta``; everything lives in ``state_dict()``. With
``beta3 = 0`` and ``max_interval = 1`` it is plain stochastic Armijo (Vaswani et al. 2019), the
``sls`` baselines of the paper's table.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .optimizer import LossClosure, SaLSa, check_number

FAST, SLOW, EMA_START = 0.9, 0.99, 1e-8


@dataclass
class PaperSearchState:
    """The reference's scalars (the names the Trainer logs are those of ``LineSearchState``)."""

    step_size: float
    step: int = 0
    decrease_avg: float = 0.0  # h
    norm_avg: float = 0.0  # s
    fast_avg: float = EMA_START
    slow_avg: float = EMA_START
    interval: int = 1
    steps_since_search: int = 0
    searches: int = 0
    backtracks: int = 0
    trial_forwards: int = 0
    training_forwards: int = 0
    skipped_steps: int = 0
    failed_searches: int = 0
    last_loss: float | None = None
    last_searched: bool = False
    last_backtracks: int = 0

    @property
    def extra_forward_fraction(self) -> float:
        return self.trial_forwards / max(self.training_forwards, 1)


class SaLSaPaper(SaLSa):
    """The talk's SaLSa (see the module docstring), sharing only the plumbing of ``SaLSa``
    (``prepare_step``/``step(closure)``, ``state_dict``, parameter groups)."""

    def __init__(self, params, *, preconditioner: str = "adam", c: float = 0.3, beta3: float = 0.99,
                 delta: float = 0.9, growth: float = 2 ** (1 / 500), init_step_size: float = 0.1,
                 max_backtracks: int = 100, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_searches: int = 10, max_interval: int = 10):
        check_number("delta", delta, 0, 1)
        check_number("growth", growth, 1, low_open=False)
        check_number("max_backtracks", max_backtracks, 1, low_open=False, integer=True)
        super().__init__(params, preconditioner=preconditioner, c=c, beta3=beta3, init_step_size=init_step_size,
                         betas=betas, eps=eps, weight_decay=weight_decay, warmup_searches=warmup_searches,
                         max_interval=max_interval, foreach=False)
        self.growth, self.delta, self.max_backtracks = growth, delta, max_backtracks
        self.search = PaperSearchState(step_size=init_step_size)

    def set_total_steps(self, total_steps: int | None) -> None:
        self.total_steps = None  # the paper has no schedule

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if param_group.get("relative_step", 1.0) != 1.0:
            raise ValueError(
                f"relative_step is SaLSa's, not the paper's (every group moves at its one step size), got "
                f"{param_group['relative_step']!r}; use salsa_hf.SaLSa for groups at a share of the step size"
            )
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "line_search" not in state_dict:
            raise ValueError("not a SaLSa state dict: the 'line_search' entry is missing")
        search = state_dict.pop("line_search")
        torch.optim.Optimizer.load_state_dict(self, state_dict)
        self.search = PaperSearchState(**search)
        self._mirror_step_size()

    def _step(self, loss: Tensor, evaluate: LossClosure, slope_scale: float = 1.0) -> Tensor:
        # (slope_scale: the paper tests the clipped gradient's slope as the authors do)
        search = self.search
        search.training_forwards += 1
        search.last_searched, search.last_backtracks = False, 0
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        f = float(loss)
        if not math.isfinite(f) or not all(bool(torch.isfinite(p.grad).all()) for p in params):
            search.skipped_steps += 1
            return loss
        search.last_loss = f
        search.step += 1
        for group in self.param_groups:  # Adam's moments take g
            beta1, beta2 = group["betas"]
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    if self.preconditioner == "adam":
                        state["exp_avg_sq"] = torch.zeros_like(p)
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                if self.preconditioner == "adam":
                    state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        search.step_size *= self.growth  # 1.
        if search.step <= self.warmup_searches or search.steps_since_search + 1 >= search.interval:
            if not self._paper_search(f, evaluate):  # 2.
                self._mirror_step_size()
                return loss  # no trial accepted: no step
        else:
            search.steps_since_search += 1
        for group in self.param_groups:  # 3. the Adam step, and decoupled weight decay
            for p in (p for p in group["params"] if p.grad is not None):
                p.sub_(self._precondition(group, p, self.state[p]["exp_avg"], momentum=True), alpha=search.step_size)
                p.mul_(1 - search.step_size * group["weight_decay"])
        self._mirror_step_size()
        return loss

    def _paper_search(self, f: float, evaluate: LossClosure) -> bool:
        """The backtracking search; False when no trial passed (the parameters are back at ``w``)."""
        search = self.search
        search.last_searched, search.steps_since_search = True, 0
        pairs = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        directions = [self._precondition(group, p, p.grad, momentum=False) for group, p in pairs]  # P g
        norm = sum(float((p.grad * d).sum()) for (_, p), d in zip(pairs, directions))  # <g, P g>
        s = self.beta3 * search.norm_avg + (1 - self.beta3) * norm
        eta, at = search.step_size, 0.0
        for trial in range(self.max_backtracks):
            for (_, p), d in zip(pairs, directions):  # to w - eta P g
                p.sub_(d, alpha=eta - at)
            at = eta
            trial_loss = float(evaluate())
            search.trial_forwards += 1
            h = self.beta3 * search.decrease_avg + (1 - self.beta3) * (f - trial_loss)
            if math.isfinite(trial_loss) and h >= self.c * eta * s:
                break
            eta *= self.delta
        else:
            trial = self.max_backtracks
        for (_, p), d in zip(pairs, directions):  # back to w: the step is taken along the momentum
            p.add_(d, alpha=at)
        search.backtracks += trial
        search.last_backtracks = trial
        if trial == self.max_backtracks:
            search.failed_searches += 1
            search.step_size /= self.growth  # one unlucky batch leaves the step size as it was
            return False
        search.searches += 1
        search.decrease_avg, search.norm_avg, search.step_size = h, s, eta
        search.fast_avg = FAST * search.fast_avg + (1 - FAST) * eta  # 4.
        search.slow_avg = SLOW * search.slow_avg + (1 - SLOW) * eta
        r = search.fast_avg / search.slow_avg
        r = max(r, 1 / r)
        search.interval = self.max_interval if r == 1 else min(self.max_interval, max(1, round(1 / (r - 1))))
        return True

    def _precondition(self, group: dict, p: Tensor, x: Tensor, *, momentum: bool) -> Tensor:
        """``P x`` (bias-corrected ``x / bc1`` when ``x`` is the momentum)."""
        beta1, beta2 = group["betas"]
        k = self.search.step
        x = x / (1 - beta1**k) if momentum else x
        if self.preconditioner == "sgd":
            return x
        v_hat = self.state[p]["exp_avg_sq"] / (1 - beta2**k)
        return x / (v_hat.sqrt() + group["eps"])

    def state_dict(self) -> dict[str, Any]:
        state = torch.optim.Optimizer.state_dict(self)
        state["line_search"] = dataclasses.asdict(self.search)
        return state
