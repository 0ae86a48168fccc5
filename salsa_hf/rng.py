"""Snapshots of torch's random streams, so every loss evaluation of a step sees the same dropout masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RngState:
    """The CPU generator and, where CUDA is in use, every CUDA device's generator."""

    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...] = ()

    @classmethod
    def capture(cls) -> "RngState":
        cuda = ()
        # Reading a device's state would initialise CUDA: only devices already in use matter.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = tuple(torch.cuda.get_rng_state_all())
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(list(self.cuda))
