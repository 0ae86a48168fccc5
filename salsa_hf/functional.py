"""The tensor math of SaLSa, as plain functions over lists of tensors.

Each operation has a per-tensor reference path (a loop a reader can check against the paper) and a
multi-tensor ``torch._foreach_*`` path (fewer kernel launches), chosen by ``foreach``. The tests hold
the two equal. Nothing here keeps state or copies a parameter: every result is written in place or is
a scalar.

Notation (see ``docs/algorithm.md`` in the shared docs): ``v`` the second moment, ``bc2`` its bias
correction ``1 - beta2**k``, and the Adam preconditioner ``P = 1 / (sqrt(v / bc2) + eps)``. Passing
``exp_avg_sqs=None`` selects the identity preconditioner (the SGD variant).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support: no sharded tensors either
    DTensor = None

TensorList = Sequence[Tensor]


def _by_device_and_dtype(*lists: TensorList | None) -> Iterator[tuple[list[Tensor] | None, ...]]:
    """Split parallel lists into runs that share the first list's device and dtype (foreach needs it)."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(lists[0]):
        buckets[(t.device, t.dtype)].append(i)
    for indices in buckets.values():
        yield tuple(None if lst is None else [lst[i] for i in indices] for lst in lists)


def _accumulation_dtype(t: Tensor) -> torch.dtype:
    # Sum half-precision terms in float32; keep float64 as it is.
    return torch.promote_types(t.dtype, torch.float32)


def global_values(sums: Sequence[Tensor]) -> list[float]:
    """The values of 0-d sums over whole tensors, as floats; one host sync per kind of tensor.

    A sum over a sharded ``DTensor`` (FSDP2's parameters and gradients) holds only this process's
    share (a ``Partial`` placement): it is all-reduced over its mesh, one collective per mesh and
    placement, so every process reads the same global value and takes the same decision.
    """
    values: list[float] = [0.0] * len(sums)
    # A plain tensor's kind is its device; a DTensor's is its (mesh, placements).
    kinds: dict[torch.device | tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(sums):
        kinds[(t.device_mesh, t.placements) if _is_dtensor(t) else t.device].append(i)
    for kind, indices in kinds.items():
        if isinstance(kind, tuple):
            local = torch.stack([sums[i].to_local() for i in indices])
            stacked = DTensor.from_local(local, *kind).full_tensor()
        else:
            stacked = torch.stack([sums[i] for i in indices])
        for i, value in zip(indices, stacked.tolist()):
            values[i] = value
    return values


def _is_dtensor(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def _denominators(exp_avg_sqs: list[Tensor], bias_correction2: float, eps: float) -> list[Tensor]:
    # Same operation order as torch.optim.AdamW, so a SaLSa step at a given step size is an Adam step.
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, math.sqrt(bias_correction2))
    torch._foreach_add_(denoms, eps)
    return denoms


def _denominator(exp_avg_sq: Tensor, bias_correction2: float, eps: float) -> Tensor:
    return (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)


def update_moments_(
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList | None,
    beta1: float,
    beta2: float,
    *,
    foreach: bool,
) -> None:
    """``m = beta1 m + (1-beta1) g`` and, for Adam, ``v = beta2 v + (1-beta2) g^2``, in place."""
    if not foreach:
        for i, g in enumerate(grads):
            exp_avgs[i].lerp_(g, 1 - beta1)
            if exp_avg_sqs is not None:
                exp_avg_sqs[i].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        return
    for g, m, v in _by_device_and_dtype(grads, exp_avgs, exp_avg_sqs):
        torch._foreach_lerp_(m, g, 1 - beta1)
        if v is not None:
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)


def preconditioned_dot(
    grads: TensorList,
    vectors: TensorList,
    exp_avg_sqs: TensorList | None,
    bias_correction2: float,
    eps: float,
    *,
    foreach: bool,
) -> float:
    """``<g, P x>``: the decrease per unit step that the Armijo test asks of the direction ``-P x``.

    ``x = g`` gives ``<g, P g>`` (the paper's search along the gradient); ``x = m`` the Adam update.
    """
    if not grads:
        return 0.0
    sums = []
    if not foreach:
        for i, g in enumerate(grads):
            term = g * vectors[i]
            if exp_avg_sqs is not None:
                term = term / _denominator(exp_avg_sqs[i], bias_correction2, eps)
            sums.append(term.sum(dtype=_accumulation_dtype(term)))
    else:
        for g, x, v in _by_device_and_dtype(grads, vectors, exp_avg_sqs):
            terms = torch._foreach_mul(g, x)
            if v is not None:
                torch._foreach_div_(terms, _denominators(v, bias_correction2, eps))
            sums += [t.sum(dtype=_accumulation_dtype(t)) for t in terms]
    # Summing the floats in order keeps both paths equal.
    return sum(global_values(sums))


def add_preconditioned_(
    params: TensorList,
    terms: Sequence[tuple[TensorList, float]],
    exp_avg_sqs: TensorList | None,
    bias_correction2: float,
    eps: float,
    *,
    foreach: bool,
) -> None:
    """``params += sum(alpha * P vectors for vectors, alpha in terms)``, in place.

    Trial points, steps and their undoing; several terms share one computation of ``P``.
    """
    terms = [(vectors, alpha) for vectors, alpha in terms if alpha != 0.0]
    if not terms:
        return
    if not foreach:
        for i, p in enumerate(params):
            denom = None if exp_avg_sqs is None else _denominator(exp_avg_sqs[i], bias_correction2, eps)
            for vectors, alpha in terms:
                if denom is None:
                    p.add_(vectors[i], alpha=alpha)
                else:
                    p.addcdiv_(vectors[i], denom, value=alpha)
        return
    for p, v, *vectors in _by_device_and_dtype(params, exp_avg_sqs, *(vectors for vectors, _ in terms)):
        denoms = None if v is None else _denominators(v, bias_correction2, eps)
        for vec, (_, alpha) in zip(vectors, terms):
            if denoms is None:
                torch._foreach_add_(p, vec, alpha=alpha)
            else:
                torch._foreach_addcdiv_(p, vec, denoms, value=alpha)


def scale_(tensors: TensorList, factor: float, *, foreach: bool) -> None:
    """``tensors *= factor`` (decoupled weight decay)."""
    if factor == 1.0 or not tensors:
        return
    if not foreach:
        for t in tensors:
            t.mul_(factor)
        return
    for (ts,) in _by_device_and_dtype(tensors):
        torch._foreach_mul_(ts, factor)


def all_finite(tensors: TensorList) -> bool:
    """True when no element of any tensor is inf or nan (one host sync per device).

    A sum is non-finite whenever an element is, and costs one read of each tensor; it can only
    report a false alarm when finite values add up past float32's range (~3e38).
    """
    return all(map(math.isfinite, global_values([t.sum(dtype=_accumulation_dtype(t)) for t in tensors])))
