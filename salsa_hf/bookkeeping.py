"""What a trial forward must leave exactly as the training forwards left it, besides the random streams.

A line search's trial points are evaluated with the trainer's own ``compute_loss`` and the model's own
forward, and both keep records as a side effect: TRL's trainers count training tokens and average
token accuracy and entropy over every forward (``_total_train_tokens``, ``_metrics``), and a
BatchNorm layer in training mode moves its running statistics. A trial is not a training forward,
so those records are captured before the trials and put back after each one. Under FSDP2 the
parameters a trial's forward gathered are freed again, so the next trial gathers the moved ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a torch built without distributed support
    FSDPModule = None

_SCALARS = (bool, int, float, str, type(None))


def is_plain_data(value: Any) -> bool:
    """Numbers and strings, and lists, tuples and dicts of them: a trainer's counters and metric lists.

    Tensors, modules, datasets and other objects are not bookkeeping and are left alone."""
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain_data(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, _SCALARS) and is_plain_data(item) for key, item in value.items())
    return False


@dataclass
class Bookkeeping:
    """A copy of an object's plain-data attributes and of a model's buffers, to put back in place."""

    owner: Any
    attributes: dict[str, Any]
    buffers: dict[str, torch.Tensor]
    model: torch.nn.Module

    @classmethod
    def capture(cls, owner: Any, model: torch.nn.Module) -> "Bookkeeping":
        attributes = {name: copy.deepcopy(value) for name, value in vars(owner).items() if is_plain_data(value)}
        buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
        return cls(owner, attributes, buffers, model)

    def restore(self) -> None:
        for name, saved in self.attributes.items():
            current = getattr(self.owner, name, None)
            # In place where the container is still the same object: callbacks may hold a reference to it.
            if isinstance(current, dict) and type(current) is type(saved):
                current.clear()
                current.update(copy.deepcopy(saved))
            elif isinstance(current, list):
                current[:] = copy.deepcopy(saved)
            else:
                setattr(self.owner, name, copy.deepcopy(saved))
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                if name in self.buffers:
                    buffer.copy_(self.buffers[name])
        reshard_fsdp(self.model)


def reshard_fsdp(model: torch.nn.Module) -> None:
    """Free the parameters FSDP2 all-gathered for a forward without backward.

    FSDP2 keeps the root module's gathered parameters after a forward (its backward would need them
    at once) and gathers them again only after a backward. A trial forward has no backward, and the
    line search then moves the sharded parameters: without this the next trial would compute with
    the old ones.
    """
    if FSDPModule is None:
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
