"""Does a step's decrease carry to the next batch? A probe along a whole lab run.

    python scripts/probe_generalization.py lora_qnli adamw_0.0005 --every 5
    python scripts/probe_generalization.py mlp_digits salsa --every 1

Runs the lab's loop (its batches, dropout masks, clipping and schedules; ``salsa`` or any lab
optimizer name) and, every ``--every`` steps, measures the step just taken twice: the decrease of
the loss of the batch that made it, ``f_b(w) - f_b(w')``, and the decrease of the loss of the
next batch, ``f_b+1(w) - f_b+1(w')``, which did not choose the step (the training loss on data
seen later). Their ratio is about 1 while a step's decrease is signal, and about 0 or below
while it fits the batch's noise. Prints the mean of both and their ratio over each fifth of the
run; ``--json`` keeps the per-step pairs. docs/lab.md, sixth round.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import lab
from salsa_hf.examples.summary import tail_mean


class NextBatchProbe(lab.Observer):
    """Every ``every`` steps: the step's decrease on its own batch, then on the next one."""

    def __init__(self, task: dict, params: list[torch.Tensor], seed: int, every: int):
        self.model, self.loss_fn, self.params, self.seed, self.every = task["model"], task["loss"], params, seed, every
        self.pairs: list[dict] = []
        self._before = None  # (the point before this step, its batch's loss there)
        self._measuring = None  # (the point before the last step, its own batch's decrease) until the next batch

    @torch.no_grad()
    def loss_at(self, point: list[torch.Tensor] | None, batch: dict, step: int) -> float:
        """The batch's loss at ``point`` (None: where the parameters are), with step's dropout masks."""
        here = [p.detach().clone() for p in self.params] if point is not None else None
        self._set(point)
        torch.manual_seed(lab.dropout_seed(self.seed, step))
        value = float(self.loss_fn(self.model, batch))
        self._set(here)
        return value

    def _set(self, values: list[torch.Tensor] | None) -> None:
        for p, value in zip(self.params, values or []):
            p.copy_(value)

    def before_step(self, step: int, batch: dict) -> None:
        if self._measuring is not None:  # the step before, seen by this batch
            before, own = self._measuring
            fresh = self.loss_at(before, batch, step) - self.loss_at(None, batch, step)
            self.pairs.append({"step": step - 1, "own": own, "fresh": fresh})
            self._measuring = None
        if step % self.every == 0:
            self._before = ([p.detach().clone() for p in self.params], self.loss_at(None, batch, step))

    def after_step(self, step: int, batch: dict) -> None:
        if step % self.every == 0:
            before, own_before = self._before
            self._measuring = (before, own_before - self.loss_at(None, batch, step))


def measure(workload: str, optimizer_name: str, every: int = 5, seed: int = 0) -> tuple[list[dict], list[float]]:
    """The lab's run of ``optimizer_name`` on ``workload``, and every ``every`` steps the step's
    decrease on its own batch and on the next: returns those pairs and the run's losses."""
    probes = []

    def observe(task: dict, params: list[torch.Tensor]) -> NextBatchProbe:
        probes.append(NextBatchProbe(task, params, seed, every))
        return probes[-1]

    record = lab.run(workload, optimizer_name, seed, {}, observe=observe)
    return probes[0].pairs, record["losses"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=tuple(lab.WORKLOADS))
    parser.add_argument("optimizer", help="salsa, adamw_defaults, adamw_<lr>, sf_adamw or prodigy")
    parser.add_argument("--every", type=int, default=5, help="measure every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every must be an integer >= 1, got {args.every}")

    pairs, losses = measure(args.workload, args.optimizer, args.every, args.seed)
    final = tail_mean(losses)  # the lab's final loss
    print(f"{args.workload}, {args.optimizer}, seed {args.seed}: final loss {final:.4f}")
    steps = lab.WORKLOADS[args.workload].steps
    fifth = steps // 5
    for start in range(0, steps, fifth):
        part = [r for r in pairs if start <= r["step"] < start + fifth]
        own = sum(r["own"] for r in part) / len(part)
        fresh = sum(r["fresh"] for r in part) / len(part)
        print(f"  steps {start:4d}-{start + fifth - 1:4d}: own batch {own:+.2e}, next batch {fresh:+.2e}, "
              f"ratio {fresh / own if own else float('nan'):+.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"workload": args.workload, "optimizer": args.optimizer, "seed": args.seed,
                                         "every": args.every, "final_loss": final, "pairs": pairs}))


if __name__ == "__main__":
    main()
