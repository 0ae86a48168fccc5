"""The line-search optimizers by name, as ``--optim`` takes them.

``salsa`` is the product (``optimizer.SaLSa``); the other four are the paper's algorithm as the
talk writes it (``reference.SaLSaPaper``): its SaLSa with Adam or SGD, and the plain stochastic
Armijo baselines of its table (no smoothing, a search on every step, c = 0.1, as the authors ran
them; ``sls`` from Adam's usual 1e-3).
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

from .optimizer import SaLSa
from .reference import SaLSaPaper

PLAIN_ARMIJO = {"beta3": 0.0, "max_interval": 1, "c": 0.1}
PRESETS: dict[str, tuple[type[SaLSa], dict[str, Any]]] = {
    "salsa": (SaLSa, {"preconditioner": "adam"}),
    "salsa_paper": (SaLSaPaper, {"preconditioner": "adam"}),
    "salsa_sgd": (SaLSaPaper, {"preconditioner": "sgd"}),
    "sls": (SaLSaPaper, {"preconditioner": "adam", **PLAIN_ARMIJO, "init_step_size": 1e-3}),
    "sls_sgd": (SaLSaPaper, {"preconditioner": "sgd", **PLAIN_ARMIJO}),
}


def from_name(name: str, params, **overrides) -> Optimizer:
    """The optimizer ``name`` of ``PRESETS`` on ``params``, any of its arguments overridden."""
    if name not in PRESETS:
        raise ValueError(f"optimizer name must be one of {', '.join(map(repr, PRESETS))}, got {name!r}")
    cls, settings = PRESETS[name]
    return cls(params, **{**settings, **overrides})
