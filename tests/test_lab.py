"""The optimizer lab (scripts/lab.py) and its table (scripts/lab_report.py)."""

from __future__ import annotations

import json
import math
import re

import pytest

from .test_scripts import load_script

lab = load_script("lab")
lab_report = load_script("lab_report")
probe = load_script("probe_generalization")
schedule_probe = load_script("probe_schedule")


def fake_run(workload, optimizer, final, *, seed=0, steps=100, accuracy=0.9, trials=None, search_steps=()):
    run = {"workload": workload, "optimizer": optimizer, "seed": seed, "steps": steps, "seconds": 1.0,
           "validation_accuracy": accuracy, "losses": [9.0] * (steps - 5) + [final] * 5}
    if trials is not None:
        run.update(trial_forwards=trials, search_steps=list(search_steps))
    return run


def write_runs(tmp_path, runs):
    for run in runs:
        path = lab.result_path(tmp_path, run["workload"], run["optimizer"], run["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))


def test_report_ratios_are_paired_by_seed_against_the_best_rate_and_the_defaults(tmp_path):
    write_runs(tmp_path, [
        fake_run("a", "adamw_defaults", 2.0, seed=0), fake_run("a", "adamw_defaults", 4.0, seed=1),
        fake_run("a", "adamw_0.001", 1.0, seed=0), fake_run("a", "adamw_0.001", 2.0, seed=1),
        fake_run("a", "salsa", 1.5, seed=0, trials=20, search_steps=range(0, 100, 5)),
        fake_run("a", "salsa", 1.0, seed=1, trials=20, search_steps=range(0, 100, 5)),
        fake_run("b", "adamw_defaults", 0.5), fake_run("b", "adamw_0.001", 0.8),
        fake_run("b", "salsa", 0.4, accuracy=0.95, trials=10, search_steps=range(0, 10)),
    ])
    rows, best = lab_report.summarize(lab_report.load(tmp_path))
    assert best == {"a": "adamw_0.001", "b": "adamw_defaults"}
    assert lab_report.paired_ratio(rows, "a", "salsa", "adamw_0.001") == pytest.approx((1.5 / 1.0 + 1.0 / 2.0) / 2)
    assert rows["a", "salsa"]["extra"] == pytest.approx(0.2)
    # 20 searches, one every 5 steps: after the first 10 steps 18 searches over 90 steps.
    assert rows["a", "salsa"]["extra_late"] == pytest.approx(18 * 1.0 / 90)
    assert rows["b", "salsa"]["extra_late"] == 0.0  # every search in the first 10%
    table = lab_report.write_report(tmp_path)
    assert (tmp_path / "table.md").read_text() == table
    geometric = math.sqrt(1.0 * 0.8)  # a: mean of 1.5 and 0.5; b: 0.4 / 0.5
    assert f"| salsa | 2 | {geometric:.3f} | 1.000 (a) |" in table


def test_best_rate_compares_rates_on_the_seeds_both_ran(tmp_path):
    # 1e-3 is best over three seeds; 1e-4 ran only seed 0, lower than 1e-3's mean but not than
    # 1e-3 on seed 0; 3e-4 ran seeds 1-2 and is lower there, so it is the best.
    write_runs(tmp_path, [
        *(fake_run("a", "adamw_0.001", loss, seed=s) for s, loss in enumerate([1.0, 3.0, 3.0])),
        fake_run("a", "adamw_0.0001", 1.5, seed=0),
        *(fake_run("a", "adamw_defaults", 4.0, seed=s) for s in range(3)),
    ])
    rows, best = lab_report.summarize(lab_report.load(tmp_path))
    assert rows["a", "adamw_0.0001"]["loss"] < rows["a", "adamw_0.001"]["loss"]
    assert best == {"a": "adamw_0.001"}
    write_runs(tmp_path, [fake_run("a", "adamw_0.0003", 2.0, seed=1), fake_run("a", "adamw_0.0003", 2.5, seed=2)])
    assert lab_report.summarize(lab_report.load(tmp_path))[1] == {"a": "adamw_0.0003"}


def test_final_loss_is_the_mean_of_the_last_five_percent():
    assert lab_report.final_loss([float(i) for i in range(100)]) == pytest.approx(97.0)
    assert lab_report.final_loss([3.0, 2.0]) == 2.0


def test_variants_are_validated():
    assert lab.parse_variant('strict={"c": 0.9}') == ("strict", {"c": 0.9})
    for bad in ("strict", 'strict={"c": }', "strict=[1]"):
        with pytest.raises(Exception, match="--variant"):
            lab.parse_variant(bad)


def test_a_real_grid_runs_the_same_batches_for_every_optimizer_and_resumes(tmp_path, capsys):
    """mlp_digits (scikit-learn's digits) end to end: SaLSa and one AdamW rate, then a resume."""
    argv = ["--workloads", "mlp_digits", "--optimizers", "salsa", "adamw_0.01", "--jobs", "1",
            "--runs_dir", str(tmp_path)]
    lab.main(argv)
    salsa = json.loads(lab.result_path(tmp_path, "mlp_digits", "salsa", 0).read_text())
    adamw = json.loads(lab.result_path(tmp_path, "mlp_digits", "adamw_0.01", 0).read_text())
    assert len(salsa["losses"]) == len(adamw["losses"]) == lab.WORKLOADS["mlp_digits"].steps
    assert salsa["losses"][0] == adamw["losses"][0]  # same weights, batch and dropout mask at step 1
    assert salsa["trial_forwards"] == sum(salsa["search_trials"]) and len(salsa["search_steps"]) > 0
    assert lab_report.final_loss(salsa["losses"]) < 0.5 * salsa["losses"][0]
    assert (tmp_path / "table.md").exists()
    capsys.readouterr()
    lab.main(argv)
    assert capsys.readouterr().out.count("done before, skipped") == 2


def test_the_generalization_probe_measures_the_lab_run_without_changing_it():
    """Its extra forwards move neither the parameters nor the dropout masks: its run is the lab's,
    loss for loss; and a step that moves nothing decreases neither batch's loss."""
    pairs, losses = probe.measure("mlp_digits", "salsa", every=50)
    assert [round(x, 5) for x in losses] == lab.run("mlp_digits", "salsa", 0, {})["losses"]
    assert [pair["step"] for pair in pairs] == list(range(0, lab.WORKLOADS["mlp_digits"].steps, 50))
    assert any(pair["own"] != 0.0 for pair in pairs)
    frozen, _ = probe.measure("mlp_digits", "adamw_0", every=100)
    assert frozen and all(pair["own"] == 0.0 and pair["fresh"] == 0.0 for pair in frozen)


def test_adamw_replaying_a_salsa_runs_step_sizes_ends_at_its_loss(tmp_path, capsys):
    """SaLSa's step is Adam's at the step size taken, so its path of step sizes, cuts included, is
    all there is to its result: AdamW driven by that path ends where SaLSa did."""
    run = lab.run("mlp_digits", "salsa", 0, {})
    assert any(later < earlier for earlier, later in zip(run["step_sizes"], run["step_sizes"][1:]))  # cuts
    (tmp_path / "run.json").write_text(json.dumps(run))
    schedule_probe.main(["mlp_digits", "--replay", str(tmp_path / "run.json")])
    replayed = float(re.search(r"final loss ([0-9.e+-]+),", capsys.readouterr().out).group(1))
    assert replayed == pytest.approx(lab_report.final_loss(run["losses"]), rel=0.02)
    schedule_probe.main(["mlp_digits", "--replay", str(tmp_path / "run.json"), "--times", "0.25"])
    slower = float(re.search(r"final loss ([0-9.e+-]+),", capsys.readouterr().out).group(1))
    assert slower > 2 * replayed  # the path matters: a quarter of it ends far higher


def test_the_schedule_probe_refuses_a_part_that_names_nothing():
    with pytest.raises(SystemExit, match="--part lora_A: no trainable parameter's name holds it"):
        schedule_probe.main(["mlp_digits", "--rate", "1e-2", "--part", "lora_A=1e-3"])
