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
from salsa_hf.rng import RngState


def measure(workload: str, optimizer_name: str, every: int = 5, seed: int = 0) -> tuple[list[dict], list[float]]:
    """The lab's run of ``optimizer_name`` on ``workload``, and every ``every`` steps the step's
    decrease on its own batch and on the next: returns those pairs and the run's losses."""
    torch.set_num_threads(1)
    spec = lab.WORKLOADS[workload]
    task = spec.build(seed)
    model, batches, loss_fn = task["model"], task["batches"], task["loss"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = lab.make_optimizer(optimizer_name, params, spec.steps, {})
    line_search = hasattr(optimizer, "prepare_step")
    if hasattr(optimizer, "train"):
        optimizer.train()
    model.train()

    @torch.no_grad()
    def loss_at(point: list[torch.Tensor] | None, batch: dict, masks: int) -> float:
        """The batch's loss at ``point`` (None: where the parameters are), with the step's dropout masks."""
        here = None
        if point is not None:
            here = [p.detach().clone() for p in params]
            for p, q in zip(params, point):
                p.copy_(q)
        torch.manual_seed(masks)
        value = float(loss_fn(model, batch))
        if here is not None:
            for p, q in zip(params, here):
                p.copy_(q)
        return value

    pairs, losses, measuring = [], [], None
    for step, batch in enumerate(batches):
        masks = seed * 1_000_003 + step  # the lab's dropout masks
        if measuring is not None:  # the step before, seen by this batch
            before, own = measuring
            fresh = loss_at(before, batch, masks) - loss_at(None, batch, masks)
            pairs.append({"step": step - 1, "own": own, "fresh": fresh})
            measuring = None
        measure_now = step % every == 0
        torch.manual_seed(masks)
        rng = RngState.capture()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        if measure_now:
            before, own_before = [p.detach().clone() for p in params], loss_at(None, batch, masks)
        if line_search:
            def evaluate(batch=batch, rng=rng):
                rng.restore()
                return loss_fn(model, batch)

            optimizer.prepare_step(loss, evaluate)
        torch.nn.utils.clip_grad_norm_(params, lab.MAX_GRAD_NORM)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if measure_now:
            measuring = (before, own_before - loss_at(None, batch, masks))
        losses.append(float(loss.detach()))

    return pairs, losses


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
