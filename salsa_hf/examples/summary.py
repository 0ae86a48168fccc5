"""What a run leaves for its reader: the summary (printed, and saved as ``summary.json``) and
the picture of SaLSa's steps (``salsa_steps.png``, drawn with matplotlib if it is installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean

from ..trainer import TracedStep

LOSS_SMOOTHING = 0.9  # the EMA drawn over the noisy per-step losses


# The talk's final training loss: the mean of the last 5% of the training losses.
FINAL_FRACTION = 0.05


def tail_mean(losses: list[float], fraction: float = FINAL_FRACTION) -> float:
    """The final training loss of a list of per-step (or per-log) losses: the mean of the last
    ``fraction`` of them, at least the last one."""
    if not losses:
        raise ValueError("the run logged no training loss")
    count = max(1, math.ceil(fraction * len(losses)))
    return mean(losses[-count:])


def final_loss(log_history: list[dict], fraction: float = FINAL_FRACTION) -> float:
    """``tail_mean`` of the training losses in a Trainer's log history."""
    return tail_mean([entry["loss"] for entry in log_history if "loss" in entry], fraction)


def write_summary(title: str, figures: dict[str, float | str], trainer) -> dict:
    """Print the run's figures and what SaLSa did; save them as OUTPUT_DIR/summary.json, and the
    step plot beside it for a SaLSa run. Returns the summary."""
    summary: dict[str, object] = {"run": title, **figures}
    if any("loss" in entry for entry in trainer.state.log_history):
        summary["final training loss"] = final_loss(trainer.state.log_history)
    optimizer = getattr(trainer, "line_search", None)
    output_dir = Path(trainer.args.output_dir)
    notes = []
    if optimizer is not None:
        search = optimizer.search
        summary["step size found"] = search.step_size
        summary["search interval at the end"] = search.interval
        summary["extra forward passes per step"] = search.extra_forward_fraction
        summary["line searches"] = search.searches
        summary["backtracks"] = search.backtracks
        steps = trainer.step_trace.steps if hasattr(trainer, "step_trace") else []
        if steps:
            plotted = plot_steps(steps, output_dir / "salsa_steps.png", title)
            notes.append(f"loss and step size per step: {plotted}" if plotted else
                         "pip install matplotlib to get the loss and step-size plot of each run")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = {key: _format(value) for key, value in summary.items() if key != "run"}
    width = max(map(len, lines), default=0)
    print(f"\n== {title}")
    for key, value in lines.items():
        print(f"  {key:<{width}}  {value}")
    for note in (*notes, f"summary saved to {output_dir / 'summary.json'}"):
        print(f"  {note}")
    return summary


def plot_steps(steps: list[TracedStep], path: Path, title: str = "") -> Path | None:
    """Training loss (per step, and smoothed), the step size found and the one taken (the found one
    under the cool-down), searches marked; a PNG at
    ``path``. Returns None, drawing nothing, when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    x = [s.step for s in steps]
    losses = [s.loss for s in steps]
    smoothed, average = [], None
    for value in losses:
        average = value if average is None else LOSS_SMOOTHING * average + (1 - LOSS_SMOOTHING) * value
        smoothed.append(average)
    figure = Figure(figsize=(7, 5.5))
    FigureCanvasAgg(figure)  # (pyplot-free: no global state, any backend the user has)
    loss_ax, size_ax = figure.subplots(2, 1, sharex=True)
    loss_ax.plot(x, losses, color="tab:blue", alpha=0.3, lw=0.8, label="mini-batch loss")
    loss_ax.plot(x, smoothed, color="tab:blue", lw=2, label="smoothed")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend(loc="upper right", fontsize=8)
    loss_ax.set_title(title, fontsize=10)
    size_ax.plot(x, [s.found for s in steps], color="tab:green", lw=1.2, ls="--", label="step size found")
    size_ax.plot(x, [s.step_size for s in steps], color="black", lw=1.2, label="step size taken")
    searched = [s for s in steps if s.searched]
    size_ax.scatter([s.step for s in searched], [s.step_size for s in searched], s=9, color="tab:orange",
                    zorder=3, label=f"line search ({len(searched)} of {len(steps)} steps)")
    size_ax.set_yscale("log")
    size_ax.set_ylabel("step size")
    size_ax.set_xlabel("optimizer step")
    size_ax.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
