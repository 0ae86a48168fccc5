"""The lab's table, from the run JSONs that scripts/lab.py writes.

    python scripts/lab_report.py [RUNS_DIR [MORE_DIRS...]]     # default: docs/results/lab
    python scripts/lab_report.py docs/results/lab/screening docs/results/lab   # candidates vs baselines

Per workload and optimizer, averaged over the seeds both have: the final training loss (the mean
of the last 5% of the steps' mini-batch losses, as the talk's table), its ratio to the best AdamW of
the sweep (the rate with the lowest mean final loss, two rates compared on the seeds both ran;
the Trainer's default rate is one of the sweep) and to AdamW at the Trainer's defaults, the
validation accuracy, the line search's extra forward passes per step (over the whole run, and
after the first 10% of steps) and the wall time.
Then, per optimizer, the geometric mean of the ratios over the workloads. Runs are read from
RUNS_DIR/runs and each MORE_DIRS/runs (e.g. the committed baselines); writes RUNS_DIR/table.md.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from statistics import geometric_mean, mean, stdev

from salsa_hf.examples.summary import tail_mean as final_loss  # one definition of the final loss

DEFAULTS = "adamw_defaults"
PEERS = ("sf_adamw", "prodigy")


def extra_forwards(run: dict, skip_fraction: float = 0.0) -> float:
    """Trial forwards per step, over the steps after the first ``skip_fraction`` of the run."""
    if "search_steps" not in run:
        return 0.0
    first = math.floor(skip_fraction * run["steps"])
    if first == 0:
        return run["trial_forwards"] / run["steps"]
    searches = run["search_steps"]
    if "search_trials" in run:
        return sum(t for s, t in zip(searches, run["search_trials"]) if s >= first) / (run["steps"] - first)
    # Older runs: trials per search were not stored; spread the run's trials evenly over its searches.
    later = [s for s in searches if s >= first]
    per_search = run["trial_forwards"] / max(1, len(searches))
    return len(later) * per_search / (run["steps"] - first)


def sensing(run: dict, skip_fraction: float = 0.1) -> float:
    """The share of the searches after the first ``skip_fraction`` of the run that met a rejected
    trial: a search that only ever accepts does not sense the step size (nan: not recorded)."""
    if "search_rejections" not in run:
        return math.nan
    first = math.floor(skip_fraction * run["steps"])
    late = [r for s, r in zip(run["search_steps"], run["search_rejections"]) if s >= first]
    return sum(r > 0 for r in late) / len(late) if late else 0.0


def is_baseline(name: str) -> bool:
    return name.startswith("adamw_") or name in PEERS


def load(*runs_dirs: Path) -> dict[tuple[str, str], dict[int, dict]]:
    cells: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for path in sorted(p for d in runs_dirs for p in (d / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        cells[run["workload"], run["optimizer"]][run["seed"]] = run
    return cells


def summarize(cells) -> tuple[dict, dict]:
    """Per (workload, optimizer): figures over its seeds; per workload: the best AdamW rate."""
    rows = {}
    for (workload, optimizer), runs in cells.items():
        losses = [final_loss(r["losses"]) for r in runs.values()]
        rows[workload, optimizer] = {
            "seeds": sorted(runs),
            "loss": mean(losses) if all(map(math.isfinite, losses)) else math.inf,
            "loss_sd": stdev(losses) if len(losses) > 1 else 0.0,
            "by_seed": dict(zip(sorted(runs), [final_loss(runs[s]["losses"]) for s in sorted(runs)])),
            "accuracy": mean(r["validation_accuracy"] for r in runs.values()),
            "extra": mean(extra_forwards(r) for r in runs.values()),
            "extra_late": mean(extra_forwards(r, 0.1) for r in runs.values()),
            "sensing": min(sensing(r) for r in runs.values()),
            "seconds": mean(r["seconds"] for r in runs.values()),
        }
    best = {}
    for workload in {w for w, _ in rows}:
        sweep = {o: row for (w, o), row in rows.items() if w == workload and o.startswith("adamw_")}
        if sweep:
            best[workload] = best_rate(sweep)
    return rows, best


def best_rate(sweep: dict[str, dict]) -> str:
    """The best AdamW of a sweep, compared on the seeds the two rates share: a mean over more
    seeds is not beaten by another rate's luckier seed. From the most-seeded rates (the lowest
    mean among them) each other rate takes over where it is lower on the seeds both ran."""
    losses = {o: row["by_seed"] for o, row in sweep.items()}
    order = sorted(sweep, key=lambda o: (-len(losses[o]), sweep[o]["loss"]))
    best = order[0]
    for other in order[1:]:
        shared = losses[other].keys() & losses[best].keys()
        if shared and mean(losses[other][s] for s in shared) < mean(losses[best][s] for s in shared):
            best = other
    return best


def paired_ratio(rows, workload: str, optimizer: str, reference: str) -> float:
    """Final loss over the reference's, on the seeds both ran (seed by seed, then the mean)."""
    a, b = rows[workload, optimizer]["by_seed"], rows[workload, reference]["by_seed"]
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return math.nan
    return mean(a[s] / b[s] for s in seeds)


def write_report(runs_dir: Path, *more_dirs: Path) -> str:
    cells = load(runs_dir, *more_dirs)
    if not cells:
        return f"no runs in {runs_dir / 'runs'}"
    rows, best = summarize(cells)
    workloads = sorted({w for w, _ in rows})
    optimizers = sorted({o for _, o in rows}, key=lambda o: (is_baseline(o), o))
    lines = ["| workload | optimizer | seeds | final loss | / best AdamW | / AdamW defaults | accuracy "
             "| extra fwd/step | after 10% | searches rejecting after 10% | seconds |", "|" + "---|" * 11]
    ratios = defaultdict(dict)
    for workload in workloads:
        for optimizer in optimizers:
            row = rows.get((workload, optimizer))
            if row is None:
                continue
            to_best = paired_ratio(rows, workload, optimizer, best[workload]) if workload in best else math.nan
            to_defaults = (paired_ratio(rows, workload, optimizer, DEFAULTS)
                           if (workload, DEFAULTS) in rows else math.nan)
            ratios[optimizer][workload] = (to_best, to_defaults, row["accuracy"])
            marker = " (best AdamW)" if best.get(workload) == optimizer else ""
            spread = f" ± {row['loss_sd']:.3g}" if len(row["seeds"]) > 1 else ""
            lines.append(
                f"| {workload} | {optimizer}{marker} | {len(row['seeds'])} | {row['loss']:.4g}{spread} | {to_best:.3f} "
                f"| {to_defaults:.3f} | {row['accuracy']:.4f} | {row['extra']:.3f} | {row['extra_late']:.3f} "
                f"| {'' if math.isnan(row['sensing']) else format(row['sensing'], '.0%')} | {row['seconds']:.0f} |"
            )
    lines += ["", "Over the workloads (geometric mean of the paired ratios; worst workload in brackets; "
              "mean accuracy minus AdamW-defaults'):", "",
              "| optimizer | workloads | / best AdamW | worst | / AdamW defaults | accuracy vs defaults |", "|---|---|---|---|---|---|"]
    for optimizer in optimizers:
        per = ratios[optimizer]
        done = [w for w in workloads if w in per and math.isfinite(per[w][0])]
        if not done:
            continue
        worst = max(done, key=lambda w: per[w][0])
        to_defaults = [per[w][1] for w in done if math.isfinite(per[w][1])]
        gaps = [per[w][2] - ratios[DEFAULTS][w][2] for w in done if w in ratios[DEFAULTS]]
        accuracy_gap = mean(gaps) if gaps else math.nan
        lines.append(
            f"| {optimizer} | {len(done)} | {geometric_mean([per[w][0] for w in done]):.3f} "
            f"| {per[worst][0]:.3f} ({worst}) | {geometric_mean(to_defaults) if to_defaults else math.nan:.3f} "
            f"| {accuracy_gap:+.4f} |"
        )
    lines += start_invariance(rows)
    table = "\n".join(lines) + "\n"
    (runs_dir / "table.md").write_text(table)
    return table


def start_invariance(rows) -> list[str]:
    """SaLSa from other first step sizes (optimizers named ``start_<init_step_size>``): final loss
    over the default start's, seed by seed: the test that there is no learning rate to choose."""
    starts = sorted({o for _, o in rows if o.startswith("start_")}, key=lambda o: float(o.removeprefix("start_")))
    if not starts:
        return []
    lines = ["", "From other first step sizes (final loss over the default start's, same seeds):", "",
             "| workload | " + " | ".join(f"init {o.removeprefix('start_')}" for o in starts) + " |",
             "|---|" + "---|" * len(starts)]
    for workload in sorted({w for w, o in rows if o in starts}):
        cells = [f"{paired_ratio(rows, workload, o, 'salsa'):.3f}" if (workload, o) in rows and (workload, "salsa") in rows
                 else "" for o in starts]
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    dirs = [Path(arg) for arg in sys.argv[1:]] or [Path(__file__).resolve().parents[1] / "docs/results/lab"]
    print(write_report(*dirs))
