"""Optimizers SaLSa is compared with that transformers' Trainer does not know by name.

- ``prodigy``: Prodigy (PyPI ``prodigyopt``), learning-rate-free Adam; ``learning_rate`` is its
  multiplier (1.0 is the authors' advice) and the Trainer's schedule applies on top.
- ``salsa_authors``: the authors' own SaLSa (PyPI ``salsa-optimizer`` 0.1.0) with its defaults,
  behind an adapter that gives it ``prepare_step`` so that ``SaLSaTrainer`` runs its line search.

Both are imported only when asked for; a missing package is an ImportError naming the pip command.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
from torch import Tensor

from .optimizer import LineSearchState


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this optimizer needs the {package!r} package: pip install {package}") from err


def prodigy(args, model=None) -> tuple[type, dict[str, Any]]:
    """Prodigy with the run's Adam settings; it is told about warm-up, as its authors advise."""
    prodigyopt = _import("prodigyopt", "prodigyopt")
    return prodigyopt.Prodigy, {
        "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "weight_decay": args.weight_decay,
        "safeguard_warmup": bool(args.warmup_steps),
    }


class AuthorsSaLSa(torch.optim.Optimizer):
    """The authors' ``salsa.SaLSA.SaLSA`` behind SaLSaTrainer's ``prepare_step``/``step`` protocol.

    Their ``step(closure)`` calls ``closure(backwards=True)`` once for the loss and gradients, then
    ``closure()`` for each trial point. Here the gradients are already in ``.grad`` (the Trainer
    computed them), so the first call returns the Trainer's loss and the others replay the
    mini-batch with the Trainer's random state. Their code is otherwise run unchanged: it deep-copies
    the parameters on each search and reseeds the global generator around each call, as it does for
    its own users. ``search`` mirrors their counters in our ``LineSearchState`` for logging.
    """

    def __init__(self, params, **kwargs):
        salsa = _import("salsa.SaLSA", "salsa-optimizer==0.1.0")
        params = list(params)
        # The Trainer passes parameter groups (dicts); their SaLSA takes a flat list of tensors.
        grouped = bool(params) and isinstance(params[0], dict)
        tensors = [p for group in params for p in group["params"]] if grouped else params
        self.reference = salsa.SaLSA(tensors, **kwargs)
        super().__init__(params, {"lr": self.reference.step_size})
        self.search = LineSearchState(step_size=self.reference.step_size)
        self._prepared: tuple[Tensor, Callable[[], Tensor]] | None = None

    def prepare_step(self, loss: Tensor, evaluate: Callable[[], Tensor], grad_scale: float = 1.0) -> None:
        self._prepared = (loss.detach(), evaluate)  # (their search takes the gradient as it finds it)

    def step(self, closure=None) -> Tensor:
        if closure is not None or self._prepared is None:
            raise RuntimeError("AuthorsSaLSa steps only inside SaLSaTrainer (prepare_step, then step())")
        (loss, evaluate), self._prepared = self._prepared, None
        search, reference = self.search, self.reference
        trials = 0

        def closure_for_reference(backwards: bool = False) -> Tensor:
            nonlocal trials
            if backwards:
                return loss
            trials += 1
            return evaluate()

        reference.step(closure_for_reference)
        searched = reference.tslls == 0
        search.step += 1
        search.training_forwards += 1
        search.trial_forwards += trials
        search.searches += searched
        search.backtracks = int(reference.state["n_backtr"])
        search.interval = max(1, round(float(reference.state["LS_freq"])))
        search.step_size = float(reference.step_size)
        search.last_searched = searched
        search.last_loss = float(loss)
        for group in self.param_groups:
            group["lr"] = search.step_size
        return loss


def salsa_authors(args, model=None) -> tuple[type, dict[str, Any]]:
    """The authors' SaLSa at its package defaults (init_step_size 1, c 0.5, momentum (0.9, 0.999, 0.9))."""
    return AuthorsSaLSa, {}


# optim name -> (training arguments, model) -> (optimizer class, keyword arguments)
PEER_OPTIMIZERS: dict[str, Callable[..., tuple[type, dict[str, Any]]]] = {
    "prodigy": prodigy,
    "salsa_authors": salsa_authors,
}
