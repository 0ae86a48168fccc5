"""AdamW on a lab workload with a rate schedule you choose: what a step-size path alone does.

    python scripts/probe_schedule.py lora_qnli --rate 5e-3 --part lora_A=5e-4   # one part slower
    python scripts/probe_schedule.py lora_sst2 --rate 1e-2 --until 100 --then 1e-3   # a fast start, then slow
    python scripts/probe_schedule.py lora_sst2 --rate 1e-2 --warmup 60              # linear warm-up first
    python scripts/probe_schedule.py minilm_mrpc --seed 1 --replay docs/results/lab/runs/minilm_mrpc__salsa__seed1.json --times 0.5

The run is the lab's (``scripts/lab.py``: the same batches, dropout masks and clipping), with
``torch.optim.AdamW`` (no weight decay) in place of the cell's optimizer. The rate decays linearly
to 0 over the run (the Trainer's schedule), after ``--warmup`` steps of linear warm-up; with
``--until N --then R`` it is ``--rate`` for the first N steps and then R, decaying from there.
``--part NAME=RATE`` gives the parameters whose name holds NAME (``lora_A``, ``lora_B``,
``classifier``) their own peak rate on the same schedule. ``--replay RUN.json`` takes instead the
step sizes a committed SaLSa run took (its step size times the decay; a cut step's own
boundary), times ``--times``: if the replay ends at the run's loss, the path of step sizes is
all there is to the run's result. Prints the final loss (the lab's: the mean of the last 5% of
the steps' losses), the validation metric and the loss over each tenth of the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_linear_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402

from salsa_hf import SaLSa  # noqa: E402
from salsa_hf.examples.summary import tail_mean  # noqa: E402


def replayed_steps(run: dict) -> list[float]:
    """The step each step of a lab SaLSa run took: its step size times SaLSa's own cool-down factor
    (the run's ``cooldown``), or on a cut (the step size falls at a search) no more than the
    batch's own boundary."""
    eta, n = run["step_sizes"], run["steps"]
    boundary = dict(zip(run["search_steps"], run.get("search_boundaries", [None] * len(run["search_steps"]))))
    decay = SaLSa([torch.nn.Parameter(torch.zeros(1))], total_steps=n,
                  cooldown=(run.get("settings") or {}).get("cooldown", 1.0))
    steps = []
    for k in range(n):
        taken = eta[k]
        if k > 0 and eta[k] < eta[k - 1] and boundary.get(k) is not None:
            taken = min(taken, boundary[k])
        decay.search.step = k  # the factor step k took
        steps.append(taken * decay.step_scale)
    return steps


def scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps: int):
    """The rate schedule over the groups' peak rates (their lr)."""
    if args.replay:
        path = replayed_steps(json.loads(Path(args.replay).read_text()))
        return LambdaLR(optimizer, lambda k: args.times * path[k] if k < len(path) else 0.0)
    if args.until is not None:
        rest = steps - args.until
        return LambdaLR(optimizer, lambda k: 1.0 if k < args.until
                        else (args.then / args.rate) * (1 - (k - args.until) / rest))
    return get_linear_schedule_with_warmup(optimizer, args.warmup, steps)  # the Trainer's


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=tuple(lab.WORKLOADS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1.0, help="peak rate (with --replay: leave at 1)")
    parser.add_argument("--part", action="append", default=[], metavar="NAME=RATE")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--until", type=int)
    parser.add_argument("--then", type=float)
    parser.add_argument("--replay")
    parser.add_argument("--times", type=float, default=1.0)
    args = parser.parse_args(argv)
    if (args.until is None) != (args.then is None):
        parser.error("--until and --then go together")
    if args.replay and (args.part or args.until is not None or args.warmup or args.rate != 1.0):
        parser.error("--replay takes the run's step sizes: no --rate, --part, --until or --warmup")
    parts = {}
    for text in args.part:
        name, _, rate = text.partition("=")
        try:
            parts[name] = float(rate)
        except ValueError:
            parser.error(f"--part takes NAME=RATE, got {text!r}")

    def make_optimizer_for(model: torch.nn.Module, steps: int):
        groups: dict[str | None, list] = {name: [] for name in parts} | {None: []}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups[next((part for part in parts if part in name), None)].append(p)
        empty = [part for part in parts if not groups[part]]
        if empty:
            raise SystemExit(f"--part {empty[0]}: no trainable parameter's name holds it")
        optimizer = torch.optim.AdamW([{"params": groups[None], "lr": args.rate}]
                                      + [{"params": groups[part], "lr": rate} for part, rate in parts.items()],
                                      weight_decay=0.0)
        return optimizer, scheduler(optimizer, args, steps)

    record = lab.run(args.workload, "probe", args.seed, {}, make_optimizer_for=make_optimizer_for)
    losses = record["losses"]
    tenth = max(1, len(losses) // 10)
    print(f"{args.workload} seed {args.seed}: final loss {tail_mean(losses):.4g}, "
          f"validation {record['validation_accuracy']:.4f}; loss by tenths of the run "
          f"{[round(statistics.mean(losses[i:i + tenth]), 3) for i in range(0, len(losses), tenth)]}")


if __name__ == "__main__":
    main()
