"""The ninth lab round's candidates and probes (docs/lab.md, ninth round). None was adopted; this
file is removed again in the commit after the one that adds it, as earlier rounds' options were.

    python scripts/lab_ninth_round.py cells r9L 0 mlp_digits mlp_diabetes   # candidate, seed, workloads
    python scripts/lab_ninth_round.py split minilm_mrpc 1 classifier       # per-part boundaries at each search
    python scripts/lab_ninth_round.py replay minilm_mrpc 1 120 0.5 1.0     # SaLSa's steps x0.5 before step 120, x1 after
    python scripts/lab_ninth_round.py ramp minilm_mrpc 1 120               # SaLSa's steps, ramped up over 120 steps
    python scripts/lab_ninth_round.py trace salsa scripts/run_clm.py glue_configs/offline/gpt2.json --max_steps=100 ...

``cells`` saves each run as the lab does, in docs/results/lab/screening/runs (lab_report.py reads it).
"""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402
import probe_schedule  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR  # noqa: E402

from salsa_hf import SaLSa  # noqa: E402
from salsa_hf import functional as F  # noqa: E402
from salsa_hf.examples.summary import tail_mean  # noqa: E402
from salsa_hf.lora import lora_param_groups  # noqa: E402


class GradientTest(SaLSa):
    """r9g: the search tests this batch's own preconditioned gradient ``-P g`` (the authors'
    direction) and comes back; the step is Adam's, ``-P m_hat``, at the step size found."""

    _along_gradient = False

    def _move(self, groups, along_update):
        if not self._along_gradient:
            return super()._move(groups, along_update)
        for group in groups:
            F.add_preconditioned_(group["params"], [(group["grads"], along_update * group["relative_step"])],
                                  group["exp_avg_sqs"], self._bias_correction2(group), group["eps"],
                                  foreach=self.foreach)

    def _slope(self, groups):
        if not self._along_gradient:
            return super()._slope(groups)
        return sum(group["relative_step"] * F.preconditioned_dot(
            group["grads"], group["grads"], group["exp_avg_sqs"], self._bias_correction2(group),
            group["eps"], foreach=self.foreach) for group in groups)

    def _search(self, loss, groups, evaluate, slope_scale):
        self._along_gradient = True
        try:
            offset, accepted = super()._search(loss, groups, evaluate, slope_scale)
            self._move(groups, offset)  # back from the trial point
        finally:
            self._along_gradient = False
        return 0.0, accepted


class AveragesVariant(SaLSa):
    """SaLSa's later search (optimizer.py) with two switches. ``skip_concave`` (r9n): a trial that
    fell by more than the slope predicts (the quadratic's curvature below 0) stays out of the
    averages instead of entering with curvature 0. ``normalize`` (r9L, r9Ls, r9M): the averages
    hold the slope and curvature per unit of a length ``n`` of the update, ``p / n`` and
    ``q / n^2``, and the smoothed boundary goes back into step units through ``divisor(n)``."""

    skip_concave = False
    normalize = False

    def _length(self, groups) -> float:
        """|d|: the Euclidean length of the update (r9L)."""
        total = 0.0
        for group in groups:
            bc1 = 1 - group["betas"][0] ** self.search.step
            for i, m in enumerate(group["exp_avgs"]):
                u = m / bc1
                if group["exp_avg_sqs"] is not None:
                    u = u / ((group["exp_avg_sqs"][i] / self._bias_correction2(group)).sqrt() + group["eps"])
                total += group["relative_step"] ** 2 * float((u.double() ** 2).sum())
        return math.sqrt(total)

    def _divisor(self, n: float) -> float:
        return n

    def _find_scale(self, loss, groups, evaluate, slope):
        out = super()._find_scale(loss, groups, evaluate, slope)
        if self.normalize and self.search.searches == 1:
            n = self._length(groups)
            self._divisor(n)
            self.search.slope_avg /= n
            self.search.curvature_avg /= n * n
        return out

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        search.last_searched = True
        slope = self._slope(groups) * slope_scale
        search.last_slope, search.last_boundary = slope, None
        if not slope > 0.0:
            search.uphill_searches += 1
            return 0.0, search.step_size
        if search.searches == 0:
            return self._find_scale(loss, groups, evaluate, slope)
        n = self._length(groups) if self.normalize else 1.0
        current = search.step_size
        trial = current * self.growth
        self._move(groups, -trial)
        trial_loss = float(evaluate())
        search.trial_forwards += 1
        curvature = self._curvature(loss, trial_loss, trial, slope)
        concave = self.skip_concave and math.isfinite(trial_loss) and loss - trial_loss > slope * trial
        search.searches += 1
        search.last_boundary = self._boundary(slope, curvature)
        if math.isfinite(curvature) and not concave:
            keep = self.beta3
            search.slope_avg = keep * search.slope_avg + (1 - keep) * slope / n
            search.curvature_avg = keep * search.curvature_avg + (1 - keep) * curvature / n**2
        if math.isfinite(curvature):
            boundary = self._boundary(search.slope_avg, search.curvature_avg) / (self._divisor(n) if self.normalize else 1.0)
        else:
            boundary = 0.0
        if boundary >= trial:
            search.grown += 1
            search.step_size = trial
            return trial, trial
        search.backtracks += 1
        search.last_backtracks = 1
        if boundary >= current:
            search.held += 1
            search.interval = min(self.max_interval, 2 * search.interval)
            return trial, current
        search.shrunk += 1
        search.step_size = current / self.growth
        search.interval = max(1, search.interval // 2)
        return trial, min(search.step_size, search.last_boundary)


class SkipConcave(AveragesVariant):
    skip_concave = True


class LengthUnits(AveragesVariant):
    normalize = True


class SmoothedLengthUnits(LengthUnits):
    """r9Ls: back into step units by sqrt(EMA(n^2)) (beta3 per search) instead of this search's n."""

    _length_sq_avg = None

    def _divisor(self, n):
        keep = self.beta3
        self._length_sq_avg = n * n if self._length_sq_avg is None else keep * self._length_sq_avg + (1 - keep) * n * n
        return math.sqrt(self._length_sq_avg)


class AdamModelUnits(LengthUnits):
    """r9M: the unit is Adam's own model of the curvature, n^2 = <m_hat, P m_hat> (the curvature
    along d if the Hessian were diag(sqrt(v_hat)))."""

    def _length(self, groups):
        total = 0.0
        for group in groups:
            bc1 = 1 - group["betas"][0] ** self.search.step
            dot = F.preconditioned_dot(group["exp_avgs"], group["exp_avgs"], group["exp_avg_sqs"],
                                       self._bias_correction2(group), group["eps"], foreach=self.foreach)
            total += group["relative_step"] ** 2 * dot / bc1**2
        return math.sqrt(total)


class TrendGuard(LengthUnits):
    """r9Lt: as r9L, and a search cuts whenever the training loss rose: the mean loss of the steps
    since the last search above the mean of the window before by more than two standard errors
    (windows of at least 4 steps)."""

    _window: list | None = None
    _previous: list | None = None

    def _step(self, loss, evaluate, slope_scale=1.0):
        if self._window is None:
            self._window = []
        self._window.append(float(loss))
        return super()._step(loss, evaluate, slope_scale)

    def _loss_rose(self) -> bool:
        now, before = self._window or [], self._previous or []
        if len(now) < 4 or len(before) < 4:
            return False
        from statistics import mean, variance
        se = math.sqrt(variance(now) / len(now) + variance(before) / len(before))
        return mean(now) - mean(before) > 2 * se

    def _search(self, loss, groups, evaluate, slope_scale):
        rose = self._loss_rose()
        # the window closes at each search (the current step's loss is in it)
        self._previous, self._window = self._window, []
        if not rose or self.search.searches == 0:
            return super()._search(loss, groups, evaluate, slope_scale)
        saved = self._boundary
        self._boundary = lambda slope, curvature: 0.0 if slope is self.search.slope_avg else saved(slope, curvature)
        try:
            return super()._search(loss, groups, evaluate, slope_scale)
        finally:
            del self._boundary


CANDIDATES = {"r9g": GradientTest, "r9n": SkipConcave, "r9L": LengthUnits, "r9Ls": SmoothedLengthUnits,
              "r9M": AdamModelUnits, "r9Lt": TrendGuard}


def cells(name: str, seed: str, *workloads: str) -> None:
    runs_dir = Path(__file__).resolve().parent.parent / "docs/results/lab/screening"
    for workload in workloads:
        path = lab.result_path(runs_dir, workload, name, int(seed))
        if path.exists():
            print(f"{path.stem}: done before, skipped")
            continue
        record = lab.run(workload, name, int(seed), {}, make_optimizer_for=lambda model, steps: (
            CANDIDATES[name](lora_param_groups(model), total_steps=steps), None))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        print(f"{path.stem}: final loss {tail_mean(record['losses']):.4g}, "
              f"{record['trial_forwards'] / record['steps']:.3f} extra forwards/step", flush=True)


def split(workload: str, seed: str, part: str) -> None:
    """At each later search of SaLSa's run: the batch's own boundary with the parameters whose name
    holds ``part`` moving alone, and with the rest alone (the run itself as the lab's)."""
    rows = []

    class Probe(SaLSa):
        def _search(self, loss, groups, evaluate, slope_scale):
            if self.search.searches > 0:
                trial, own = self.search.step_size * self.growth, []
                for group in groups:
                    p = self._slope([group]) * slope_scale
                    self._move([group], -trial)
                    trial_loss = float(evaluate())
                    self._move([group], trial)
                    own.append((p, self._boundary(p, self._curvature(loss, trial_loss, trial, p)) if p > 0 else None))
                rows.append((self.search.step, self.search.step_size, self._slope(groups) * slope_scale, own))
            return super()._search(loss, groups, evaluate, slope_scale)

    def make(model, steps):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return Probe([{"params": [p for n, p in named if part not in n]},
                      {"params": [p for n, p in named if part in n]}], total_steps=steps), None

    record = lab.run(workload, "probe", int(seed), {}, make_optimizer_for=make)
    print(f"{workload} seed {seed}: final loss {tail_mean(record['losses']):.4g}")
    for step, eta, slope, ((p_rest, b_rest), (p_part, b_part)) in rows:
        print(f"step {step:4d}  step size {eta:.3g}  {part}'s share of the slope {p_part / slope:+.2f}  "
              f"boundary, the rest alone {b_rest}  {part} alone {b_part}")


def _replay(workload: str, seed: str, factor) -> None:
    run = json.loads(Path(f"docs/results/lab/runs/{workload}__salsa__seed{seed}.json").read_text())
    path = probe_schedule.replayed_steps(run)
    probe_schedule.scheduler = lambda optimizer, args, steps: LambdaLR(
        optimizer, lambda k: factor(k) * path[k] if k < len(path) else 0.0)
    probe_schedule.main([workload, "--seed", seed, "--replay", "unused"])


def replay(workload: str, seed: str, until: str, before: str, after: str) -> None:
    _replay(workload, seed, lambda k: float(before) if k < int(until) else float(after))


def ramp(workload: str, seed: str, steps: str) -> None:
    _replay(workload, seed, lambda k: min(1.0, (k + 1) / int(steps)))


def trace(name: str, script: str, *args: str) -> None:
    """A run_glue/run_clm run whose ``--optim salsa`` is the candidate (or ``salsa``), printing
    each search: this batch's own boundary and the step size the averages keep."""
    import salsa_hf.presets as presets

    base = SaLSa if name == "salsa" else CANDIDATES[name]

    class Traced(base):
        def _search(self, loss, groups, evaluate, slope_scale):
            out = super()._search(loss, groups, evaluate, slope_scale)
            s = self.search
            print(f"search at step {s.step}: loss {loss:.4f}, slope {s.last_slope:.4g}, "
                  f"own boundary {s.last_boundary:.3g}, step size {s.step_size:.3g}", flush=True)
            return out

    presets.PRESETS["salsa"] = (Traced, {"preconditioner": "adam"})
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"cells": cells, "split": split, "replay": replay, "ramp": ramp, "trace": trace}[command](*rest)
