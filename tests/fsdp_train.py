"""Run by test_fsdp.py: SaLSa on a small network whose parameters FSDP2 (``fully_shard``) shards over
the processes of a torchrun (gloo, CPU), or, in one plain process, the same network unsharded.

Every step takes the same global batch: each of W processes takes its W-th of it, the gradients are
averaged over the processes by FSDP, and the loss handed to SaLSa (and every trial loss) is the mean
over the processes, as SaLSaTrainer hands them over. Each rank saves the full parameters, SaLSa's
state and the step sizes it took.
"""

import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from salsa_hf import SaLSa, reshard_fsdp

STEPS, BATCH = 12, 16


class Net(torch.nn.Module):
    """Two blocks that FSDP shards separately, and a head owned by the root module (odd sizes: uneven shards)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([
            torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh()),
            torch.nn.Sequential(torch.nn.Linear(13, 9), torch.nn.Tanh()),
        ])
        self.head = torch.nn.Linear(9, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main(out: Path) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    model = Net()
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        assert all(type(p).__name__ == "DTensor" for p in model.parameters())

    def mean_over_processes(loss: torch.Tensor) -> torch.Tensor:
        if world > 1:
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= world
        return loss

    # A large first step size, so that the first searches backtrack (several trial forwards each).
    optimizer = SaLSa(model.parameters(), init_step_size=0.5, weight_decay=0.01)
    optimizer.set_total_steps(STEPS)
    generator = torch.Generator().manual_seed(1)
    step_sizes = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, 7, generator=generator)
        y = torch.sin(x.sum(1))
        mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        local = lambda: torch.nn.functional.mse_loss(model(x[mine]), y[mine])  # noqa: E731
        optimizer.zero_grad()
        loss = local()
        loss.backward()

        def trial() -> torch.Tensor:
            trial_loss = mean_over_processes(local())
            reshard_fsdp(model)  # as SaLSaTrainer does after each trial forward
            return trial_loss

        optimizer.prepare_step(mean_over_processes(loss), trial)
        optimizer.step()
        step_sizes.append(optimizer.param_groups[0]["lr"])

    params = {name: full(p.detach()).clone() for name, p in model.named_parameters()}
    torch.save({"params": params, "search": asdict(optimizer.search), "step_sizes": step_sizes},
               out / f"world{world}_rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
