"""The talk's table and the plots, from the run JSONs that scripts/reproduce.py writes.

    python scripts/report.py runs/offline

Definitions (also in docs/results.md):
- final training loss: the mean of the last 5% of the logged training losses (at least one),
  averaged over seeds;
- log average: the geometric mean of the final losses over the tasks;
- average rank: each task ranks the optimizers by final loss (1 = lowest, ties share), averaged;
- extra compute, two ways: in wall time, the training wall time (the Trainer's train_runtime,
  summed over the tasks) over ADAM's on the same tasks, minus 1 (single runs on a shared CPU vary
  by 10-25%); in FLOPs, the line search's extra forward passes per step over the 3 forward-pass
  equivalents of a training step (a backward pass costs about two forwards).
Writes RUNS_DIR/table.md, table.csv, loss_curves.png and salsa_step_size.png.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

import numpy as np
from scipy.stats import rankdata

from salsa_hf.examples.summary import final_loss  # one definition of the final training loss

TASK_LABELS = {"mnli": "MNLI", "qnli": "QNLI", "mrpc": "MRPC", "sst2": "SST2", "gpt2": "GPT-2"}
# The talk's six columns first, then the peers.
OPTIMIZER_LABELS = {
    "adam": "ADAM", "sgd": "SGD", "sls": "ADAM SLS", "sls_sgd": "SGD SLS", "salsa": "ADAM SaLSa",
    "salsa_sgd": "SGD SaLSa", "adamw": "AdamW (Trainer defaults)", "sf_adamw": "Schedule-free AdamW",
    "prodigy": "Prodigy", "salsa_authors": "SaLSa (authors' package)", "adamw_lora": "AdamW lr 2e-4",
}
# The validation figure of each task, and whether higher is better.
VALIDATION_METRIC = {"mnli": ("eval_accuracy", True), "qnli": ("eval_accuracy", True), "mrpc": ("eval_f1", True),
                     "sst2": ("eval_accuracy", True), "gpt2": ("perplexity", False)}
BASELINE = "adam"
STEP_FORWARDS = 3  # a training step (forward + backward) in forward-pass equivalents


def load_runs(runs_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((runs_dir / "results").glob("*.json"))]


def summarize(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """(task, optimizer) -> the seed-averaged figures of its finished runs, or {"failed": n}."""
    by_cell = defaultdict(list)
    for run in runs:
        by_cell[run["task"], run["optimizer"]].append(run)
    cells = {}
    for (task, optimizer), cell_runs in by_cell.items():
        ok = [run for run in cell_runs if run["status"] == "ok"]
        if not ok:
            cells[task, optimizer] = {"failed": len(cell_runs)}
            continue
        metric, _ = VALIDATION_METRIC[task]
        losses = [final_loss(run["log_history"]) for run in ok]
        cells[task, optimizer] = {
            "final_loss": mean(losses) if all(map(math.isfinite, losses)) else math.inf,
            "validation": mean(run["eval"].get(metric, math.nan) for run in ok),
            "train_runtime": mean(run["train_runtime"] for run in ok),
            "extra_forwards": mean(run["log_history"][-1].get("salsa/extra_forward_fraction", 0.0) for run in ok),
            "seeds": len(ok),
            "failed": len(cell_runs) - len(ok),
        }
    return cells


def table(cells: dict) -> tuple[list[str], list[str], dict]:
    """Tasks, optimizers (in label order) and the summary rows: log average, rank, compute, validation."""
    tasks = [t for t in TASK_LABELS if any(key[0] == t for key in cells)]
    optimizers = [o for o in OPTIMIZER_LABELS if any(key[1] == o for key in cells)]
    loss = lambda t, o: cells.get((t, o), {}).get("final_loss", math.inf)  # noqa: E731 (missing/failed ranks last)
    ranks = {t: dict(zip(optimizers, rankdata([loss(t, o) for o in optimizers]))) for t in tasks}
    rows = {}
    for o in optimizers:
        losses = [loss(t, o) for t in tasks]
        complete = all(math.isfinite(x) and x > 0 for x in losses)
        rows[o] = {
            "log_average": math.exp(mean(math.log(x) for x in losses)) if complete else math.nan,
            "average_rank": mean(ranks[t][o] for t in tasks),
            "extra_compute": _extra_compute(cells, tasks, o),
            "extra_forwards": mean(cells.get((t, o), {}).get("extra_forwards", math.nan) for t in tasks),
        }
    return tasks, optimizers, rows


def _extra_compute(cells: dict, tasks: list[str], optimizer: str) -> float:
    pairs = [(cells.get((t, optimizer), {}).get("train_runtime"), cells.get((t, BASELINE), {}).get("train_runtime"))
             for t in tasks]
    if any(a is None or b is None for a, b in pairs):
        return math.nan
    return sum(a for a, _ in pairs) / sum(b for _, b in pairs) - 1


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def markdown(cells: dict) -> str:
    tasks, optimizers, rows = table(cells)
    head = "| | " + " | ".join(OPTIMIZER_LABELS[o] for o in optimizers) + " |\n|---|" + "---|" * len(optimizers)

    def cell(t, o, key, digits=4):
        c = cells.get((t, o))
        if c is None:
            return "not run"
        if key not in c:
            return "failed"
        return _fmt(c[key], digits)

    lines = ["Final training loss (mean of the last 5% of logged steps; lower is better)", "", head]
    lines += [f"| {TASK_LABELS[t]} | " + " | ".join(cell(t, o, "final_loss") for o in optimizers) + " |" for t in tasks]
    lines.append("| log average | " + " | ".join(_fmt(rows[o]["log_average"]) for o in optimizers) + " |")
    lines.append("| average rank | " + " | ".join(_fmt(rows[o]["average_rank"], 3) for o in optimizers) + " |")
    lines += ["", "Validation metric (MNLI/QNLI/SST2 accuracy, MRPC F1: higher is better; GPT-2 perplexity: lower is better)",
              "", head]
    lines += [f"| {TASK_LABELS[t]} | " + " | ".join(cell(t, o, "validation") for o in optimizers) + " |" for t in tasks]
    glue = [t for t in tasks if t != "gpt2"]
    if glue:
        lines.append("| GLUE mean | " + " | ".join(
            _fmt(mean(cells.get((t, o), {}).get("validation", math.nan) for t in glue)) for o in optimizers) + " |")
    lines += ["", "Compute (training wall time in seconds; extra compute: wall time over ADAM's on the same tasks, "
              "and line-search forwards over the 3 forward-equivalents of a step)", "", head]
    lines += [f"| {TASK_LABELS[t]} | " + " | ".join(cell(t, o, "train_runtime", 3) for o in optimizers) + " |" for t in tasks]
    lines.append("| extra compute vs ADAM | " + " | ".join(
        "n/a" if math.isnan(rows[o]["extra_compute"]) else f"{rows[o]['extra_compute']:+.1%}" for o in optimizers) + " |")
    lines.append("| extra forwards per step | " + " | ".join(
        "n/a" if math.isnan(rows[o]["extra_forwards"]) else f"{rows[o]['extra_forwards']:.2f}" for o in optimizers) + " |")
    lines.append("| extra compute in FLOPs | " + " | ".join(
        "n/a" if math.isnan(rows[o]["extra_forwards"]) else f"{rows[o]['extra_forwards'] / STEP_FORWARDS:+.1%}"
        for o in optimizers) + " |")
    seeds = sorted({c["seeds"] for c in cells.values() if "seeds" in c})
    lines += ["", f"Seeds per cell: {', '.join(map(str, seeds))}."]
    return "\n".join(lines) + "\n"


def write_csv(cells: dict, path: Path) -> None:
    tasks, optimizers, rows = table(cells)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "optimizer", "final_loss", "validation_metric", "validation", "train_runtime_s",
                         "extra_forwards_per_step", "seeds", "failed_runs"])
        for t in tasks:
            for o in optimizers:
                c = cells.get((t, o), {})
                writer.writerow([t, o, c.get("final_loss"), VALIDATION_METRIC[t][0], c.get("validation"),
                                 c.get("train_runtime"), c.get("extra_forwards"), c.get("seeds", 0), c.get("failed", 0)])
        for o in optimizers:
            writer.writerow(["log_average", o, rows[o]["log_average"], "", "", "", "", "", ""])
            writer.writerow(["average_rank", o, rows[o]["average_rank"], "", "", "", "", "", ""])
            writer.writerow(["extra_compute_vs_adam", o, rows[o]["extra_compute"], "", "", "", "", "", ""])


def _smooth(values: list[float], window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot(runs: list[dict], out_dir: Path) -> list[Path]:
    """Loss curves per task (every optimizer, first seed) and SaLSa's step size and search interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [run for run in runs if run["status"] == "ok"]
    first_seed = {}
    for run in sorted(ok, key=lambda r: r["seed"]):
        first_seed.setdefault((run["task"], run["optimizer"]), run)
    tasks = [t for t in TASK_LABELS if any(key[0] == t for key in first_seed)]
    if not tasks:
        return []
    written = []

    columns = min(3, len(tasks) + 1)  # the last panel holds the legend
    grid_rows = math.ceil((len(tasks) + 1) / columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(4.6 * columns, 3.6 * grid_rows), squeeze=False)
    panels = axes.flatten()
    for ax, task in zip(panels, tasks):
        for optimizer, label in OPTIMIZER_LABELS.items():
            run = first_seed.get((task, optimizer))
            if run is None:
                continue
            steps = [e["step"] for e in run["log_history"]]
            losses = [e["loss"] for e in run["log_history"]]
            window = max(1, len(losses) // 20)
            ax.plot(steps[window - 1:], _smooth(losses, window), label=label,
                    lw=2.2 if optimizer == "salsa" else 1.1, color="black" if optimizer == "salsa" else None)
        ax.set_title(TASK_LABELS[task])
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_ylabel("training loss (5% moving average)")
    handles, labels = panels[0].get_legend_handles_labels()
    for ax in panels[len(tasks):]:
        ax.axis("off")
    panels[len(tasks)].legend(handles, labels, loc="center", fontsize=9)
    fig.tight_layout()
    written.append(out_dir / "loss_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    salsa_tasks = [t for t in tasks if (t, "salsa") in first_seed]
    if salsa_tasks:
        fig, axes = plt.subplots(1, len(salsa_tasks), figsize=(4.2 * len(salsa_tasks), 3.4), squeeze=False)
        for ax, task in zip(axes[0], salsa_tasks):
            history = first_seed[task, "salsa"]["log_history"]
            steps = [e["step"] for e in history]
            ax.plot(steps, [e["salsa/step_size"] for e in history], color="tab:blue")
            ax.set_yscale("log")
            ax.set_title(f"{TASK_LABELS[task]}: ADAM SaLSa")
            ax.set_xlabel("step")
            twin = ax.twinx()
            twin.step(steps, [e["salsa/interval"] for e in history], color="tab:orange", where="post", lw=0.9)
            twin.set_ylim(0, 11)
        axes[0][0].set_ylabel("step size (blue)")
        twin.set_ylabel("search interval, steps (orange)")
        fig.tight_layout()
        written.append(out_dir / "salsa_step_size.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write_report(runs_dir: Path) -> None:
    runs = load_runs(runs_dir)
    if not runs:
        print(f"no results in {runs_dir / 'results'} yet")
        return
    cells = summarize(runs)
    text = markdown(cells)
    (runs_dir / "table.md").write_text(text)
    write_csv(cells, runs_dir / "table.csv")
    written = plot(runs, runs_dir)
    print(text)
    print("written:", ", ".join(str(p) for p in [runs_dir / "table.md", runs_dir / "table.csv", *written]))


def write_demo_report(runs_dir: Path) -> None:
    """A few optimizers side by side (the demo, the LoRA suite): per task a table (first seed) and one
    row of plots, the training loss and the step size taken."""
    runs: dict[str, dict[str, dict]] = {}  # task -> optimizer -> run
    for run in sorted(load_runs(runs_dir), key=lambda r: r["seed"]):
        if run["status"] == "ok":
            runs.setdefault(run["task"], {}).setdefault(run["optimizer"], run)
    if not runs:
        print(f"no finished runs in {runs_dir / 'results'} yet")
        return
    lines = []
    for task, by_optimizer in runs.items():
        metric, higher_is_better = VALIDATION_METRIC[task]
        lines += [f"### {task}", ""]
        baseline = next(((key.removeprefix("baseline "), value) for run in by_optimizer.values()
                         for key, value in run.get("summary", {}).items() if key.startswith("baseline ")), None)
        if baseline is not None:  # e.g. ("accuracy (always class 1)", 0.509)
            name, predicts = baseline[0].split(" (", 1)
            lines += [f"A model that ignores its input ({predicts} has validation {name} {baseline[1]:.4f}.", ""]
        lines += [f"| optimizer | final training loss | validation {metric.removeprefix('eval_')} | largest step size taken "
                  "| extra forwards / step | training seconds |", "|---|---|---|---|---|---|"]
        for name, run in by_optimizer.items():
            history = run["log_history"]
            lines.append(f"| {OPTIMIZER_LABELS.get(name, name)} | {final_loss(history):.4f} | "
                         f"{run['eval'].get(metric, math.nan):.4f} | {max(e.get('learning_rate', math.nan) for e in history):.3g} | "
                         f"{history[-1].get('salsa/extra_forward_fraction', 0.0):.3f} | {run['train_runtime']:.0f} |")
        lines.append("")
    text = "\n".join(lines)
    (runs_dir / "table.md").write_text(text)
    print(text)
    written = [runs_dir / "table.md"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("pip install matplotlib for the demo's plot")
    else:
        fig, axes = plt.subplots(len(runs), 2, figsize=(10, 3.8 * len(runs)), squeeze=False)
        for (task, by_optimizer), (loss_ax, lr_ax) in zip(runs.items(), axes):
            for name, run in by_optimizer.items():
                history = run["log_history"]
                steps = [e["step"] for e in history]
                losses = [e["loss"] for e in history]
                window = max(1, len(losses) // 10)
                style = {"color": "black", "lw": 2.2} if name == "salsa" else {"lw": 1.4}
                label = OPTIMIZER_LABELS.get(name, name)
                loss_ax.plot(steps[window - 1:], _smooth(losses, window), label=label, **style)
                lr_ax.plot(steps, [e["learning_rate"] for e in history], label=label, **style)
            loss_ax.set(xlabel="step", ylabel="training loss (moving average)", title=f"{task}: training loss, same batches")
            lr_ax.set(xlabel="step", ylabel="step size (learning rate) taken", yscale="log",
                      title="SaLSa finds its step size; AdamW's is set")
            loss_ax.legend(fontsize=9)
        fig.tight_layout()
        written.append(runs_dir / "demo.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    print("written:", ", ".join(map(str, written)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/report.py RUNS_DIR")
    write_report(Path(sys.argv[1]))
