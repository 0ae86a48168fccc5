"""The tenth lab round's candidates (docs/lab.md, tenth round): the search tests a direction the
batch did not shape.

The Armijo test SaLSa runs on a batch along ``-P m_hat``, and ``m_hat`` holds that very batch's
gradient: the test measures how well the step fits the batch it came from, which is optimistic
exactly when the gradient noise dominates (a step that fits each batch and overshoots on the next).
These candidates search along the *previous* update ``-P_{t-1} m_hat_{t-1}``, which batch t did not
shape, so the slope ``<g_t, P_{t-1} m_hat_{t-1}>`` and the trial's decrease estimate what a fresh
batch gains; then the moments take batch t and the step goes along the new update.

    python scripts/lab_tenth_round.py cells r10F 0 mlp_digits mlp_diabetes   # candidate, seed, workloads
    python scripts/lab_tenth_round.py cells r10F_c0.5 0 mlp_digits           # with c = 0.5
    python scripts/lab_tenth_round.py slowed lora_B 0.5 1                     # r10W, one part slowed
    python scripts/lab_tenth_round.py lora lora_qnli 0.5 0                    # r10B: the defaults, B at 0.5
    python scripts/lab_tenth_round.py third salsa 0                          # a third adapter, never tuned on

``cells`` saves each run as the lab does, in docs/results/lab/screening/runs (lab_report.py reads it).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402

from salsa_hf import SaLSa  # noqa: E402
from salsa_hf import functional as F  # noqa: E402
from salsa_hf.examples.summary import tail_mean  # noqa: E402
from salsa_hf.lora import lora_param_groups  # noqa: E402


class FreshDirection(SaLSa):
    """r10F: SaLSa whose later searches test the previous update on this batch, before the
    moments take its gradient (the first search, with no previous update, tests the new one)."""

    def _step(self, loss, evaluate, slope_scale=1.0):
        search = self.search
        search.training_forwards += 1
        search.last_searched, search.last_backtracks = False, 0
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        loss_value = float(loss)
        if not math.isfinite(loss_value) or not F.all_finite(grads):
            search.skipped_steps += 1
            return loss
        groups = self._active_groups()
        search.last_loss = loss_value
        due = self._search_due()
        scale = self.step_scale
        offset, accepted = 0.0, search.step_size
        searched_before = due and search.step > 0
        if searched_before:  # along the previous update (its moments, its step count), and back
            offset, accepted = self._search(loss_value, groups, evaluate, slope_scale)
            self._move(groups, offset)
            offset = 0.0
        search.step += 1
        for group in groups:
            beta1, beta2 = group["betas"]
            F.update_moments_(group["grads"], group["exp_avgs"], group["exp_avg_sqs"], beta1, beta2,
                              foreach=self.foreach)
        if due and not searched_before:
            offset, accepted = self._search(loss_value, groups, evaluate, slope_scale)
        search.steps_since_search = 0 if due else search.steps_since_search + 1
        step_size = 0.0 if accepted is None else accepted * scale
        self._move(groups, offset - step_size)
        for group in groups:
            F.scale_(group["params"], 1 - step_size * group["relative_step"] * group["weight_decay"],
                     foreach=self.foreach)
        self._mirror_step_size()
        return loss


class FreshAverages(FreshDirection):
    """r10Fa: r10F, and each later search always tries its trial: the fresh slope is noisy and
    negative on about half the searches of a small batch, and its expectation is what the test
    needs, so the averages take it signed (bias-corrected, from the first later search on), with
    the trial's curvature; the smoothed boundary ``2 (1 - c) p_avg / q_avg`` then falls to zero or
    below when the update no longer pays on fresh batches, and the step size comes down."""

    _weight = 0.0  # the bias correction of the averages, 1 - beta3^n after n later searches

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        if search.searches == 0:
            return super()._search(loss, groups, evaluate, slope_scale)
        search.last_searched = True
        slope = self._slope(groups) * slope_scale
        search.last_slope = slope
        current = search.step_size
        trial = current * self.growth
        self._move(groups, -trial)
        trial_loss = float(evaluate())
        search.trial_forwards += 1
        # the quadratic through the loss, its (signed) slope and the trial; not clipped at 0 here:
        # the average of unbiased estimates is what the test needs
        curvature = 2 * (slope * trial - (loss - trial_loss)) / trial**2 if math.isfinite(trial_loss) else math.inf
        search.searches += 1
        search.last_boundary = self._boundary(slope, max(curvature, 0.0))
        if math.isfinite(curvature):
            keep = self.beta3
            if self._weight == 0.0:  # the first search's own-batch values do not carry over
                search.slope_avg = search.curvature_avg = 0.0
            self._weight = keep * self._weight + (1 - keep)
            search.slope_avg = keep * search.slope_avg + (1 - keep) * slope
            search.curvature_avg = keep * search.curvature_avg + (1 - keep) * curvature
            p, q = search.slope_avg / self._weight, search.curvature_avg / self._weight
            boundary = -math.inf if p <= 0 else (math.inf if q <= 0 else 2 * (1 - self.c) * p / q)
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
        return trial, (search.step_size if math.isfinite(trial_loss) else 0.0)


class LengthUnits(SaLSa):
    """r9L (ninth round, commit 80245ad): the averages hold the slope and curvature per unit length
    of the update, ``p / |d|`` and ``q / |d|^2``, and the smoothed boundary goes back into step
    units by this search's ``|d|``."""

    def _length(self, groups) -> float:
        total = 0.0
        for group in groups:
            bc1 = 1 - group["betas"][0] ** self.search.step
            for i, m in enumerate(group["exp_avgs"]):
                u = m / bc1
                if group["exp_avg_sqs"] is not None:
                    u = u / ((group["exp_avg_sqs"][i] / self._bias_correction2(group)).sqrt() + group["eps"])
                total += group["relative_step"] ** 2 * float((u.double() ** 2).sum())
        return math.sqrt(total)

    def _find_scale(self, loss, groups, evaluate, slope):
        out = super()._find_scale(loss, groups, evaluate, slope)
        if self.search.searches == 1:
            n = self._length(groups)
            self.search.slope_avg /= n
            self.search.curvature_avg /= n * n
        return out

    def _search(self, loss, groups, evaluate, slope_scale):
        if self.search.searches == 0:
            return super()._search(loss, groups, evaluate, slope_scale)
        n = self._length(groups)
        # SaLSa's search with the averages in units of |d|: scale them into this search's units
        # for its decision, and back afterwards.
        search = self.search
        search.slope_avg *= n
        search.curvature_avg *= n * n
        try:
            return super()._search(loss, groups, evaluate, slope_scale)
        finally:
            search.slope_avg /= n
            search.curvature_avg /= n * n


class LengthUnitsAfterWarmup(LengthUnits):
    """r10W: the defaults' averages through the warm-up searches (where the adapter's step size
    ran away under r9L), then per unit length, converted by that search's |d|."""

    _in_length_units = False

    def _find_scale(self, loss, groups, evaluate, slope):
        return SaLSa._find_scale(self, loss, groups, evaluate, slope)

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        if search.step <= self.warmup_searches or search.searches == 0:
            return SaLSa._search(self, loss, groups, evaluate, slope_scale)
        if not self._in_length_units:
            n = self._length(groups)
            search.slope_avg /= n
            search.curvature_avg /= n * n
            self._in_length_units = True
        return super()._search(loss, groups, evaluate, slope_scale)


class LengthUnitsBracketing(LengthUnitsAfterWarmup):
    """r10Wo: r10W, and a search that reverses the one before (a cut after a growth, a growth
    after a cut) has bracketed the boundary as a hold does: the interval doubles."""

    _last = None  # "grow" or "cut"

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        grown, shrunk, interval = search.grown, search.shrunk, search.interval
        out = super()._search(loss, groups, evaluate, slope_scale)
        now = "grow" if search.grown > grown else "cut" if search.shrunk > shrunk else (
            "hold" if search.searches and search.interval != interval or search.last_backtracks else None)
        if now in ("grow", "cut") and self._last in ("grow", "cut") and now != self._last:
            search.interval = min(self.max_interval, 2 * interval)
        if now is not None:
            self._last = now
        return out


class PairedProgress(LengthUnits):
    """r10P: r9L, and each later search first replays the previous search's batch at the current
    point (one more forward): if its loss now lies above what the quadratic predicted right after
    that batch's own step, the steps on the other batches since then undid its progress (a paired
    measurement: the same batch at two points, free of the batch-to-batch spread that hid the
    adapter's slow climb from r9Lt), and the search may not grow. ``cut_on_rise`` (r10Pc): it cuts."""

    cut_on_rise = False
    _previous = None  # (the previous search's batch replay, its loss predicted after its own step)
    rises = 0

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        rose = False
        if self._previous is not None and search.searches > 0:
            replay, predicted = self._previous
            search.trial_forwards += 1
            rose = float(replay()) > predicted
            self.rises += rose
        current, grown, held = search.step_size, search.grown, search.held
        offset, accepted = super()._search(loss, groups, evaluate, slope_scale)
        if rose and (search.grown > grown or (self.cut_on_rise and search.held > held)):
            if search.grown > grown:
                search.grown -= 1
                search.backtracks += 1
                search.last_backtracks = 1
            else:
                search.held -= 1
            if self.cut_on_rise:
                search.shrunk += 1
                search.step_size = current / self.growth
                search.interval = max(1, search.interval // 2)
            else:
                search.held += 1
                search.interval = min(self.max_interval, 2 * search.interval)
            accepted = search.step_size
        if accepted is not None and search.last_slope > 0 and search.last_boundary is not None:
            eta = accepted * self.step_scale
            q = 0.0 if search.last_boundary == math.inf else (
                math.inf if search.last_boundary == 0 else 2 * (1 - self.c) * search.last_slope / search.last_boundary)
            self._previous = (evaluate, loss - search.last_slope * eta + q * eta * eta / 2) if math.isfinite(q) else None
        else:
            self._previous = None
        return offset, accepted


class PairedProgressCut(PairedProgress):
    cut_on_rise = True


class FreshLength(FreshDirection, LengthUnits):
    """r10FL: both (the fresh direction's test with the averages per unit length)."""


CANDIDATES = {"r10W": LengthUnitsAfterWarmup, "r10Wo": LengthUnitsBracketing, "r10F": FreshDirection, "r10Fa": FreshAverages, "r10P": PairedProgress, "r10Pc": PairedProgressCut, "r10L": LengthUnits, "r10FL": FreshLength}


def make(name: str, params, steps: int) -> SaLSa:
    """``r10F`` or ``r10F_c0.5``: a candidate, with the Armijo constant after ``_c`` if given."""
    base, _, c = name.partition("_c")
    return CANDIDATES[base](params, total_steps=steps, **({"c": float(c)} if c else {}))


def cells(name: str, seed: str, *workloads: str) -> None:
    runs_dir = Path(__file__).resolve().parent.parent / "docs/results/lab/screening"
    for workload in workloads:
        path = lab.result_path(runs_dir, workload, name, int(seed))
        if path.exists():
            print(f"{path.stem}: done before, skipped")
            continue
        record = lab.run(workload, name, int(seed), {}, make_optimizer_for=lambda model, steps: (
            make(name, lora_param_groups(model), steps), None))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        print(f"{path.stem}: final loss {tail_mean(record['losses']):.4g}, "
              f"{record['trial_forwards'] / record['steps']:.3f} extra forwards/step, "
              f"last step size {record['step_sizes'][-1]:.3g}", flush=True)


def _kind(name: str) -> str:
    if ".lora_A." in name or ".lora_embedding_A." in name:
        return "A"
    return "B" if ".lora_B." in name or ".lora_embedding_B." in name else "rest"


def slowed(part: str, factor: str, seed: str) -> None:
    """Probe: r10W on the SST2 adapter, the parameters whose name holds ``part`` at ``factor``
    times their group's relative step (not saved)."""
    def make(model, steps):
        names = {id(p): n for n, p in model.named_parameters()}
        groups = []
        for group in lora_param_groups(model):
            groups.append({**group, "params": [p for p in group["params"] if part not in names[id(p)]]})
            slow = [p for p in group["params"] if part in names[id(p)]]
            if slow:
                groups.append({**group, "params": slow,
                               "relative_step": group.get("relative_step", 1.0) * float(factor)})
        return LengthUnitsAfterWarmup(groups, total_steps=steps), None

    record = lab.run("lora_sst2", "probe", int(seed), {}, make_optimizer_for=make)
    print(f"{part} x{factor}, seed {seed}: final loss {tail_mean(record['losses']):.4g}")


def lora(workload: str, b_step: str, seed: str) -> None:
    """r10B: the current defaults with LoRA's B factors at ``b_step`` (A at its sixteenth)."""
    name = f"r10B{float(b_step):g}A0.0625"
    path = lab.result_path(Path(__file__).resolve().parent.parent / "docs/results/lab/screening",
                           workload, name, int(seed))

    def make(model, steps):
        names = {id(p): n for n, p in model.named_parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        step = {"rest": 1.0, "A": 1 / 16, "B": float(b_step)}
        return SaLSa([{"params": [p for p in params if _kind(names[id(p)]) == kind], "relative_step": share}
                      for kind, share in step.items()], total_steps=steps), None

    record = lab.run(workload, name, int(seed), {}, make_optimizer_for=make)
    path.write_text(json.dumps(record))
    print(f"{path.stem}: final loss {tail_mean(record['losses']):.4g}")


# A third adapter, outside the lab's nine (a regression, as the outside LoRA check was):
# the MNLI regression workload with the scripts' LoRA adapter. Registered here only.
lab.WORKLOADS["lora_mnli_regression"] = lab.Workload(
    600, lab.minilm("mnli", ("premise", "hypothesis"), 40, 600, lora=True, regression=True,
                    validation_file="validation_matched.jsonl"), (2e-4, 5e-4, 1e-3, 2e-3))


def third(optimizer: str, seed: str) -> None:
    """``salsa`` (the defaults), ``r10B`` or an AdamW of the lab (``adamw_0.001``) on the third adapter."""
    if optimizer == "r10B":
        return lora("lora_mnli_regression", "0.5", seed)
    path = lab.result_path(Path(__file__).resolve().parent.parent / "docs/results/lab/screening",
                           "lora_mnli_regression", optimizer, int(seed))
    record = lab.run("lora_mnli_regression", optimizer, int(seed), {})
    path.write_text(json.dumps(record))
    print(f"{path.stem}: final loss {tail_mean(record['losses']):.4g}")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"cells": cells, "slowed": slowed, "lora": lora, "third": third}[command](*rest)
