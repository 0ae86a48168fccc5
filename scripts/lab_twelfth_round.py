"""The twelfth lab round (docs/lab.md, twelfth round): is the MLPs' falling step size a ratchet?

Roulet, Agarwala and Pedregosa (arXiv 2312.00209) find that an Armijo line search undershoots a
constant step size in the long run: each cut lets the sharpness grow to meet the smaller step, so
the next search cuts again. If that is what holds the MLPs below their best rate, the step size's
fall after the warm-up is the search's own doing, and two candidates would show it:

- ``r12n``: after the warm-up searches, no cut (a search grows or holds; a trial whose loss was not
  finite still cuts): the step size can only hold or grow.
- ``r12e``: a search cuts only where the smoothed quadratic says the step size would not decrease
  the loss at all (the test at ``c = 0``, "on the edge" in the sense of Roulet et al., arXiv
  2407.06183), instead of where it fails the sufficient decrease ``c`` asks for.
- ``r12m``: the cool-down's decay applies to the largest step size found so far, capped by the
  current one (step taken = min(eta, scale * peak)) instead of scale * eta: a fall the search has
  already made counts toward the decay instead of adding to it.

    python scripts/lab_twelfth_round.py NAME SEED WORKLOAD...   # NAME: r12n, r12e, r12m
    python scripts/lab_twelfth_round.py cuts SEED WORKLOAD...   # where the defaults cut
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # noqa: E402

from salsa_hf import SaLSa  # noqa: E402
from salsa_hf.examples.summary import tail_mean  # noqa: E402
from salsa_hf.lora import lora_param_groups, lora_settings  # noqa: E402

SCREENING = lab.REPO / "docs" / "results" / "lab" / "screening"


class NoCutAfterWarmup(SaLSa):
    """r12n: a later search that would cut holds instead (a non-finite trial still cuts)."""

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        before = (search.step_size, search.interval, search.shrunk)
        offset, accepted = super()._search(loss, groups, evaluate, slope_scale)
        finite_trial = search.last_boundary is None or search.last_boundary > 0.0
        if search.shrunk > before[2] and search.step > self.warmup_searches and finite_trial:
            search.shrunk, search.held = before[2], search.held + 1
            search.step_size = before[0]
            search.interval = min(self.max_interval, 2 * before[1])
            accepted = before[0]
        return offset, accepted


class CutAtTheEdge(SaLSa):
    """r12e: a later search cuts only past the edge, where the smoothed quadratic says the step
    size would not decrease the loss at all (``2 s / Q < eta``, the test at ``c = 0``), not merely
    where it fails the sufficient decrease ``c`` asks for; growth still needs the Armijo test at
    ``c``. A trial whose loss was not finite still cuts."""

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        before = (search.step_size, search.interval, search.shrunk)
        offset, accepted = super()._search(loss, groups, evaluate, slope_scale)
        finite_trial = search.last_boundary is None or search.last_boundary > 0.0
        if search.shrunk > before[2] and finite_trial:
            edge = self._boundary(search.slope_avg, search.curvature_avg) / (1 - self.c)
            if edge >= before[0]:  # fails sufficient decrease, still descends: hold
                search.shrunk, search.held = before[2], search.held + 1
                search.step_size = before[0]
                search.interval = min(self.max_interval, 2 * before[1])
                accepted = before[0]
        return offset, accepted


class CutProbe(SaLSa):
    """The defaults, logging the smoothed boundary over the step size at every later cut."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cuts = []

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        before, shrunk = search.step_size, search.shrunk
        out = super()._search(loss, groups, evaluate, slope_scale)
        if search.shrunk > shrunk and (search.last_boundary or 0.0) > 0.0:
            smoothed = self._boundary(search.slope_avg, search.curvature_avg)
            self.cuts.append((search.step, round(smoothed / before, 3), round(search.last_boundary / before, 3)))
        return out


def probe_cuts(workload: str, seed: int) -> None:
    """Where the defaults cut: the step, smoothed boundary / step size, the batch's own / step size."""
    made = []

    def make(model, steps):
        made.append(CutProbe(lora_param_groups(model), total_steps=steps, **lora_settings(model)))
        return made[0], None

    record = lab.run(workload, "cut_probe", seed, {}, make_optimizer_for=make)
    out = lab.REPO / "docs" / "results" / "lab" / "probes" / f"r12_cuts_{workload}_seed{seed}.json"
    out.write_text(json.dumps({"final_loss": tail_mean(record["losses"]), "cuts": made[0].cuts}))
    print(workload, seed, f"final {tail_mean(record['losses']):.4g}", "cuts (step, smoothed B/eta, own b/eta):",
          made[0].cuts, flush=True)


class DecayFromPeak(SaLSa):
    """r12m: the step taken is min(eta, scale * the largest eta so far)."""

    peak = 0.0

    @property
    def step_scale(self) -> float:
        scale = SaLSa.step_scale.fget(self)
        self.peak = max(self.peak, self.search.step_size)
        if scale == 1.0 or self.search.step_size == 0.0:
            return scale
        return min(1.0, scale * self.peak / self.search.step_size)


CLASSES = {"r12n": NoCutAfterWarmup, "r12e": CutAtTheEdge, "r12m": DecayFromPeak}

if __name__ == "__main__":
    name, seed, *workloads = sys.argv[1:]
    if name == "cuts":
        for workload in workloads:
            probe_cuts(workload, int(seed))
        sys.exit()
    for workload in workloads:
        path = lab.result_path(SCREENING, workload, name, int(seed))
        if path.exists():
            continue
        record = lab.run(workload, name, int(seed), {}, make_optimizer_for=lambda model, steps: (
            CLASSES[name](lora_param_groups(model), total_steps=steps, **lora_settings(model)), None))
        path.write_text(json.dumps(record))
        base = json.loads(lab.result_path(lab.RUNS_DIR, workload, "salsa", int(seed)).read_text())
        print(f"{path.stem}: final loss {tail_mean(record['losses']):.4g} "
              f"({tail_mean(record['losses']) / tail_mean(base['losses']):.2f} of the defaults'), "
              f"{record['trial_forwards'] / record['steps']:.3f} extra forwards/step, step size "
              f"{min(record['step_sizes'][10:]):.2g}-{max(record['step_sizes'][10:]):.2g}", flush=True)
