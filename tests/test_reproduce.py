"""The reproduction grid (scripts/reproduce.py), its table and plots (scripts/report.py), the overhead bench."""

from __future__ import annotations

import csv
import json
import math

import pytest

from .conftest import REPO
from .test_peers import require
from .test_scripts import load_script, run

report = load_script("report")
reproduce = load_script("reproduce")


def fake_run(task, optimizer, losses, *, seed=42, runtime=10.0, validation=0.8, extra=0.0, status="ok"):
    metric = report.VALIDATION_METRIC[task][0]
    history = [{"step": i + 1, "loss": loss, "salsa/step_size": 1e-4, "salsa/interval": 2,
                "salsa/extra_forward_fraction": extra} for i, loss in enumerate(losses)]
    run = {"task": task, "optimizer": optimizer, "seed": seed, "status": status}
    if status == "ok":
        run.update(log_history=history, train_runtime=runtime, eval={metric: validation})
    return run


def test_final_loss_is_the_mean_of_the_last_five_percent():
    history = [{"loss": float(i)} for i in range(100)] + [{"eval_loss": 0.0}]
    assert report.final_loss(history) == pytest.approx((95 + 96 + 97 + 98 + 99) / 5)
    assert report.final_loss([{"loss": 3.0}, {"loss": 2.0}]) == 2.0  # never fewer than one
    with pytest.raises(ValueError, match="no training loss"):
        report.final_loss([{"eval_loss": 1.0}])


def test_table_log_average_ranks_and_compute():
    runs = [
        fake_run("mrpc", "adam", [0.4] * 20, runtime=10.0), fake_run("gpt2", "adam", [4.0] * 20, runtime=30.0),
        fake_run("mrpc", "salsa", [0.1] * 20, runtime=11.0, extra=0.3),
        fake_run("gpt2", "salsa", [4.0] * 20, runtime=33.0, extra=0.3),
        fake_run("mrpc", "sgd", [0.9] * 20, runtime=9.0), fake_run("gpt2", "sgd", [5.0] * 20, status="failed"),
        # Two seeds of one cell are averaged.
        fake_run("mrpc", "prodigy", [0.2] * 20, seed=1), fake_run("mrpc", "prodigy", [0.4] * 20, seed=2),
    ]
    cells = report.summarize(runs)
    assert cells["mrpc", "prodigy"]["final_loss"] == pytest.approx(0.3) and cells["mrpc", "prodigy"]["seeds"] == 2
    assert cells["gpt2", "sgd"] == {"failed": 1}
    tasks, optimizers, rows = report.table(cells)
    assert tasks == ["mrpc", "gpt2"] and optimizers == ["adam", "sgd", "salsa", "prodigy"]
    assert rows["salsa"]["log_average"] == pytest.approx(math.sqrt(0.1 * 4.0))
    assert rows["adam"]["log_average"] == pytest.approx(math.sqrt(0.4 * 4.0))
    assert math.isnan(rows["sgd"]["log_average"])  # a failed task leaves no log average
    # MRPC: salsa 1, prodigy 2, adam 3, sgd 4. GPT-2: adam and salsa tie (1.5), sgd and prodigy (no run) tie last.
    assert rows["salsa"]["average_rank"] == pytest.approx((1 + 1.5) / 2)
    assert rows["adam"]["average_rank"] == pytest.approx((3 + 1.5) / 2)
    assert rows["sgd"]["average_rank"] == pytest.approx((4 + 3.5) / 2)
    assert rows["salsa"]["extra_compute"] == pytest.approx(44 / 40 - 1)
    assert rows["adam"]["extra_compute"] == 0.0
    assert rows["salsa"]["extra_forwards"] == pytest.approx(0.3)

    text = report.markdown(cells)
    assert "| GPT-2 | 4 | failed | 4 | not run |" in text
    assert "+10.0%" in text  # wall time
    assert "| extra compute in FLOPs | +0.0% | n/a | +10.0% | n/a |" in text  # 0.3 forwards / 3; incomplete: n/a


def test_report_writes_table_csv_and_plots(tmp_path):
    (tmp_path / "results").mkdir()
    for optimizer, scale in (("adam", 1.0), ("salsa", 0.5)):
        for task in ("mrpc", "gpt2"):
            run = fake_run(task, optimizer, [scale * (1 + 1 / (i + 1)) for i in range(40)])
            (tmp_path / "results" / f"{task}__{optimizer}__seed42.json").write_text(json.dumps(run))
    report.write_report(tmp_path)
    for name in ("table.md", "table.csv", "loss_curves.png", "salsa_step_size.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    salsa_mrpc = next(r for r in rows if r["task"] == "mrpc" and r["optimizer"] == "salsa")
    assert float(salsa_mrpc["final_loss"]) == pytest.approx(0.5 * (1 + 1 / 39.5), rel=1e-2)


@pytest.mark.parametrize("suite", ["offline", "paper", "demo", "lora", "epochs", "epochs_lora"])
def test_every_cell_of_the_grid_is_a_valid_run_command(suite):
    from transformers import HfArgumentParser

    from salsa_hf import SaLSaTrainingArguments
    from salsa_hf.examples.arguments import parse_config_and_flags

    run_glue, run_clm = load_script("run_glue"), load_script("run_clm")
    arguments = {"run_glue.py": (run_glue.ModelArguments, run_glue.DataTrainingArguments),
                 "run_clm.py": (run_clm.CausalModelArguments, run_clm.DataTrainingArguments)}
    for task, (script, config, flags) in reproduce.SUITES[suite].items():
        steps = flags["max_steps"] or json.loads((REPO / config).read_text())["max_steps"]  # demo: the config's
        for optimizer in reproduce.OPTIMIZERS:
            command = reproduce.run_command(suite, task, optimizer, 7, "/tmp/unused")
            assert command[1] == f"scripts/{script}"
            model, _, training = parse_config_and_flags(
                HfArgumentParser((*arguments[script], SaLSaTrainingArguments)), command[2:])
            assert model.use_peft == flags.get("use_peft", False) == (suite in ("lora", "epochs_lora"))
            assert training.max_steps == steps and training.seed == 7
            assert training.logging_steps == flags["logging_steps"] and training.output_dir == "/tmp/unused"
            assert training.optim_name == reproduce.optimizer_settings(steps)[optimizer]["optim"]
    adam = reproduce.optimizer_settings(100)["adam"]
    assert (adam["learning_rate"], adam["warmup_steps"], adam["lr_scheduler_type"]) == (2e-5, 10, "cosine")


@pytest.mark.parametrize("suite", ["epochs", "epochs_lora"])
def test_the_epoch_suites_pass_once_over_every_row_of_the_shared_files(suite, shared_data):
    for task, (_, _, flags) in reproduce.SUITES[suite].items():
        rows = sum(1 for _ in (shared_data / "glue" / task / "train.jsonl").open())
        assert reproduce.SHARED_TRAIN_ROWS[task] == rows == flags["max_train_samples"]
        steps, batch = flags["max_steps"], flags["per_device_train_batch_size"]
        assert (steps - 1) * batch < rows <= steps * batch  # one epoch, its last batch partial


def test_grid_writes_one_json_per_run_resumes_and_records_failures(tmp_path, shared_data, bert_tokenizer, monkeypatch):
    runs_dir = tmp_path / "runs"
    reproduce.main(["--tasks", "mrpc", "--optimizers", "adam", "salsa", "--max_steps", "2", "--runs_dir", str(runs_dir)])
    results = sorted(p.name for p in (runs_dir / "results").glob("*.json"))
    assert results == ["mrpc__adam__seed42.json", "mrpc__salsa__seed42.json"]
    salsa = json.loads((runs_dir / "results" / "mrpc__salsa__seed42.json").read_text())
    assert salsa["status"] == "ok" and len(salsa["log_history"]) == 2 and "eval_f1" in salsa["eval"]
    assert "--optim=salsa" in salsa["command"] and salsa["log_history"][-1]["salsa/step_size"] > 0
    assert (runs_dir / "table.md").exists() and (runs_dir / "loss_curves.png").exists()

    before = {p.name: p.stat().st_mtime_ns for p in (runs_dir / "results").iterdir()}
    broken = dict(reproduce.SUITES["offline"])
    broken["mrpc"] = ("run_glue.py", "glue_configs/offline/no_such_config.json", broken["mrpc"][2])
    monkeypatch.setitem(reproduce.SUITES, "offline", broken)
    reproduce.main(["--tasks", "mrpc", "--optimizers", "adam", "salsa", "sgd", "--max_steps", "2",
                    "--runs_dir", str(runs_dir)])
    after = {p.name: p.stat().st_mtime_ns for p in (runs_dir / "results").iterdir()}
    assert {name: after[name] for name in before} == before  # finished runs were not run again
    failed = json.loads((runs_dir / "results" / "mrpc__sgd__seed42.json").read_text())
    assert failed["status"] == "failed" and failed["exit_code"] == 2
    assert any("no_such_config.json" in line for line in failed["log_tail"])
    assert "failed" in (runs_dir / "table.md").read_text()


def test_demo_runs_salsa_and_adamw_on_the_main_job_and_writes_a_table_and_a_plot(tmp_path, shared_data):
    runs_dir = tmp_path / "demo"
    reproduce.main(["--suite", "demo", "--max_steps", "5", "--runs_dir", str(runs_dir), "--jobs", "2"])
    results = sorted(p.name for p in (runs_dir / "results").glob("*.json"))
    assert results == ["sst2__adamw__seed42.json", "sst2__salsa__seed42.json"]  # trained side by side
    salsa = json.loads((runs_dir / "results" / "sst2__salsa__seed42.json").read_text())
    assert salsa["status"] == "ok" and "glue_configs/offline/sst2.json" in salsa["command"]
    table = (runs_dir / "table.md").read_text()
    assert "| ADAM SaLSa |" in table and "| AdamW (Trainer defaults) |" in table
    # SST2's validation split: 444 of its 872 rows are positive, the training majority.
    assert "ignores its input (always class 1) has validation accuracy 0.5092." in table
    assert (runs_dir / "demo.png").read_bytes().startswith(b"\x89PNG")


def test_grid_refuses_a_job_count_below_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--suite", "demo", "--jobs", "0"])
    assert exit_info.value.code == 2 and "--jobs must be >= 1, got 0" in capsys.readouterr().err


def test_overhead_bench_measures_every_optimizer(tmp_path, shared_data, bert_tokenizer):
    require("salsa", "salsa-optimizer")
    figures_file = tmp_path / "overhead.json"
    done = run("bench_overhead", "--steps", "4", "--json", str(figures_file))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(figures_file.read_text())["optimizers"]
    assert list(figures) == ["adam", "salsa", "salsa_authors"]
    assert figures["adam"]["extra_wall_time"] == 0.0 and figures["adam"]["peak_memory_ratio"] == 1.0
    for name in ("salsa", "salsa_authors"):
        assert figures[name]["extra_forwards_per_step"] > 0 and figures[name]["peak_memory_mib"] > 0
    assert "extra wall" in done.stdout


def test_overhead_bench_refuses_bad_counts():
    done = run("bench_overhead", "--steps", "0")
    assert done.returncode == 2 and "--steps and --repeats must be >= 1, got 0" in done.stderr
