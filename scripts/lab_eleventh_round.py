"""The eleventh lab round (docs/lab.md, eleventh round): the test's optimism, measured from Adam's
own moments instead of a fresh batch.

SaLSa tests ``d = -P m_hat`` on the batch whose gradient ``g`` is in ``m_hat`` with weight
``b = (1 - beta1) / (1 - beta1^k)``. Over the batches, with ``g = gbar + xi``, the batch's own
slope ``p = <g, P m_hat>`` exceeds the slope a fresh batch sees along the same ``d`` by
``b <xi, P xi>`` in expectation: the test's optimism, large where the gradient noise dominates.
Adam's moments estimate the noise per coordinate, ``sigma^2 ~ (v_hat - m_hat^2) (1 + beta1) / (2 beta1)``
(``m_hat^2`` holds ``(1 - beta1) / (1 + beta1)`` of the noise), so the fresh slope
``p_f = p - b sum P sigma^2`` costs no forward (where the tenth round's fresh batch was noise).

    python scripts/lab_eleventh_round.py probe SEED WORKLOAD...     # the defaults, logging p, p_f, the noise
    python scripts/lab_eleventh_round.py cells NAME SEED WORKLOAD...  # a candidate, saved as the lab does
    python scripts/lab_eleventh_round.py fixed WORKLOAD SEED RATE...  # SaLSa's test along Adam at fixed rates
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab  # noqa: E402

from salsa_hf import SaLSa  # noqa: E402
from salsa_hf.examples.summary import tail_mean  # noqa: E402
from salsa_hf.lora import lora_param_groups  # noqa: E402

SCREENING = lab.REPO / "docs" / "results" / "lab" / "screening"
PROBES = lab.REPO / "docs" / "results" / "lab" / "probes"


def noise_terms(optimizer: SaLSa, groups: list[dict]) -> tuple[float, float, float]:
    """(``b <g, P g>``, ``b sum P sigma^2``, ``sum P m_hat^2 / sum P v_hat``), each group weighted
    by its relative step as the slope is."""
    own = noise = signal = total = 0.0
    k = optimizer.search.step
    for group in groups:
        beta1, beta2 = group["betas"]
        r = group["relative_step"]
        b = (1 - beta1) / (1 - beta1**k)
        bc1, bc2 = 1 - beta1**k, 1 - beta2**k
        for g, m, v in zip(group["grads"], group["exp_avgs"], group["exp_avg_sqs"]):
            v_hat = v.double() / bc2
            m_hat = m.double() / bc1
            precond = 1 / (v_hat.sqrt() + group["eps"])
            sigma_sq = (v_hat - m_hat**2).clamp_min(0) * (1 + beta1) / (2 * beta1)
            own += r * b * float((g.double() ** 2 * precond).sum())
            noise += r * b * float((sigma_sq * precond).sum())
            signal += float((m_hat**2 * precond).sum())
            total += float((v_hat * precond).sum())
    return own, noise, signal / max(total, 1e-300)


class NoiseProbe(SaLSa):
    """The defaults, unchanged, recording at each search the slope and its noise terms."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[dict] = []

    def _search(self, loss, groups, evaluate, slope_scale):
        own, noise, coherence = noise_terms(self, groups)
        slope = self._slope(groups) * slope_scale
        # clipping scales g alone (the moments hold clipped gradients): undo it on g's terms only
        record = {"step": self.search.step, "slope": slope, "own": own * slope_scale,
                  "noise": noise, "coherence": coherence, "step_size": self.search.step_size}
        result = super()._search(loss, groups, evaluate, slope_scale)
        record["boundary"] = self.search.last_boundary
        record["after"] = self.search.step_size
        self.records.append(record)
        return result


def probe(workload: str, seed: int) -> None:
    holder = {}

    def make(model, steps):
        holder["opt"] = NoiseProbe(lora_param_groups(model), total_steps=steps)
        return holder["opt"], None

    record = lab.run(workload, "salsa", seed, {}, make_optimizer_for=make)
    baseline = json.loads(lab.result_path(lab.RUNS_DIR, workload, "salsa", seed).read_text())
    same = record["losses"] == baseline["losses"]
    out = {"workload": workload, "seed": seed, "reproduces_defaults": same,
           "final_loss": lab.tail_mean(record["losses"]) if hasattr(lab, "tail_mean") else None,
           "searches": holder["opt"].records}
    PROBES.mkdir(parents=True, exist_ok=True)
    path = PROBES / f"r11_noise__{workload}__seed{seed}.json"
    path.write_text(json.dumps(out))
    rows = holder["opt"].records[1:]
    tenth = [r for r in rows if r["step"] > lab.WORKLOADS[workload].steps // 10]
    ratio = [1 - r["noise"] / r["slope"] for r in tenth if r["slope"] > 0]
    coh = [r["coherence"] for r in tenth]
    ratio.sort(), coh.sort()
    med = lambda xs: xs[len(xs) // 2] if xs else float("nan")  # noqa: E731
    print(f"{workload} seed {seed}: reproduces the defaults: {same}; after 10%: p_f/p median {med(ratio):.3f} "
          f"[{ratio[len(ratio)//4] if ratio else math.nan:.3f}, {ratio[3*len(ratio)//4] if ratio else math.nan:.3f}], "
          f"coherence median {med(coh):.3f}; {len(tenth)} searches")


# A third adapter, outside the lab's nine (the tenth round's): the MNLI regression with the scripts' LoRA adapter.
lab.WORKLOADS["lora_mnli_regression"] = lab.Workload(
    600, lab.minilm("mnli", ("premise", "hypothesis"), 40, 600, lora=True, regression=True,
                    validation_file="validation_matched.jsonl"), (2e-4, 5e-4, 1e-3, 2e-3))

CANDIDATES = {
    "r11c90": {"c": 0.9},
    "r11c95": {"c": 0.95},
    "r11c98": {"c": 0.98},
}


def cells(name: str, seed: int, workloads: list[str]) -> None:
    """A candidate's cells, saved where lab_report.py reads the screening runs."""
    for workload in workloads:
        path = lab.result_path(SCREENING, workload, name, seed)
        if path.exists():
            continue
        record = lab.run(workload, name, seed, CANDIDATES)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        print(f"{path.stem}: final loss {tail_mean(record['losses']):.4g}", flush=True)


class FixedRate(SaLSa):
    """Adam at a fixed step size with the lab's linear decay (a SaLSa step at a given size is an
    Adam step), running SaLSa's test every ``every`` steps without acting on it: one trial one
    notch above the step actually taken, and the batch's own boundary ``2 (1 - c) p / q`` from it."""

    def __init__(self, *args, every: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.search.interval, self.every = every, every
        self.records: list[dict] = []

    def _search_due(self):
        return (self.search.step + 1) % self.every == 0

    def _search(self, loss, groups, evaluate, slope_scale):
        search = self.search
        # the decay's factor on this step (search.step already counts it; cooldown = 1)
        taken = search.step_size * min(1.0, (self.total_steps - search.step + 1) / self.total_steps)
        slope = self._slope(groups) * slope_scale
        trial = taken * self.growth
        self._move(groups, -trial)
        trial_loss = float(evaluate())
        search.trial_forwards += 1
        curvature = self._curvature(loss, trial_loss, trial, slope) if slope > 0 else math.nan
        boundary = self._boundary(slope, curvature) if slope > 0 else math.nan
        self.records.append({"step": search.step, "taken": taken, "slope": slope, "curvature": curvature,
                             "boundary": boundary, "ratio": boundary / taken, "loss": loss, "trial_loss": trial_loss})
        return trial, search.step_size


def test_along_fixed_rates(workload: str, seed: int, rates: list[float]) -> None:
    """What SaLSa's test says at each fixed rate: the batch's own boundary over the step taken."""
    for rate in rates:
        holder = {}

        def make(model, steps, rate=rate):
            holder["opt"] = FixedRate(lora_param_groups(model), total_steps=steps, init_step_size=rate)
            return holder["opt"], None

        record = lab.run(workload, f"fixed_{rate:g}", seed, {}, make_optimizer_for=make)
        rows = holder["opt"].records
        out = {"workload": workload, "seed": seed, "rate": rate, "final_loss": tail_mean(record["losses"]),
               "losses": record["losses"], "tests": rows}
        PROBES.mkdir(parents=True, exist_ok=True)
        (PROBES / f"r11_fixed__{workload}__{rate:g}__seed{seed}.json").write_text(json.dumps(out))
        n = len(rows)
        line = []
        for lo, hi in ((0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 0.9)):
            part = sorted(r["ratio"] for r in rows[int(lo * n):int(hi * n)] if math.isfinite(r["ratio"]))
            passed = sum(r >= 1.25 for r in part)  # the test passes a trial a notch up
            line.append(f"{part[len(part) // 2]:.3g} ({passed}/{len(part)})" if part else "-")
        print(f"{workload} seed {seed} rate {rate:g}: final loss {out['final_loss']:.4g}; boundary / step taken, "
              f"median (tests passed) over 0-10% / 10-30% / 30-60% / 60-90%: {' | '.join(line)}", flush=True)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "probe":
        for w in args[1:]:
            probe(w, int(args[0]))
    elif command == "cells":
        cells(args[0], int(args[1]), args[2:])
    elif command == "fixed":
        test_along_fixed_rates(args[0], int(args[1]), [float(x) for x in args[2:]])
    else:
        raise SystemExit(f"unknown command {command!r}")
