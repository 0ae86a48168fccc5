"""A screen after the eleventh round: the ninth round's r9L (averages per unit length of the update)
with the eleventh round's c = 0.95 for adapters, the one thing that collapsed r9L's SST2 adapter.

    python scripts/lab_twelfth_screen.py NAME SEED WORKLOAD...   # NAME: r9L (as run in the ninth round), r9Lc, r9Lco; NAME@1e-07 from that start

r9Lco: r9Lc with the tenth round's reversal rule (r10Wo: a search that reverses the one before
doubles the interval, as a hold does), for r9L's cost where |d| swings.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # noqa: E402
import lab_ninth_round as ninth  # noqa: E402
import lab_tenth_round as tenth  # noqa: E402

from salsa_hf.examples.summary import tail_mean  # noqa: E402
from salsa_hf.lora import lora_param_groups, lora_settings  # noqa: E402

SCREENING = lab.REPO / "docs" / "results" / "lab" / "screening"
lab.WORKLOADS["lora_mnli_regression"] = lab.Workload(
    600, lab.minilm("mnli", ("premise", "hypothesis"), 40, 600, lora=True, regression=True,
                    validation_file="validation_matched.jsonl"), (2e-4, 5e-4, 1e-3, 2e-3))

class BracketingLengthUnits(tenth.LengthUnits):
    """r10Wo's rule (tenth round) over r9L: a grow after a cut, or a cut after a grow, doubles the interval."""

    _last = None  # "grow" or "cut"

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        grown, shrunk, interval = search.grown, search.shrunk, search.interval
        out = super()._search(loss, groups, evaluate, slope_scale)
        now = "grow" if search.grown > grown else "cut" if search.shrunk > shrunk else None
        if now is not None and self._last is not None and now != self._last:
            search.interval = min(self.max_interval, 2 * interval)
        if now is not None:
            self._last = now
        return out


CLASSES = {"r9L": ninth.LengthUnits, "r9Lc": ninth.LengthUnits, "r9Lco": BracketingLengthUnits}

if __name__ == "__main__":
    name, seed, *workloads = sys.argv[1:]
    for workload in workloads:
        path = lab.result_path(SCREENING, workload, name, int(seed))
        if name == "r9L" and path.exists():  # the ninth round's own: re-run beside it to check it reproduces
            path = path.with_name(path.stem + "_again.json")
        if path.exists():
            continue
        base, _, start = name.partition("@")  # NAME@START: from init_step_size START
        extra = {"init_step_size": float(start)} if start else {}
        settings = (lambda model: {}) if base == "r9L" else lora_settings
        record = lab.run(workload, name, int(seed), {}, make_optimizer_for=lambda model, steps: (
            CLASSES[base](lora_param_groups(model), total_steps=steps, **settings(model), **extra), None))
        path.write_text(json.dumps(record))
        print(f"{path.stem}: final loss {tail_mean(record['losses']):.4g}, "
              f"{record['trial_forwards'] / record['steps']:.3f} extra forwards/step", flush=True)
