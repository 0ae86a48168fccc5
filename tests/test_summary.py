"""What a run leaves for its reader: the per-step trace, summary.json, the trivial baseline, the plot."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from salsa_hf.examples.glue import trivial_baseline
from salsa_hf.examples.summary import plot_steps, write_summary
from salsa_hf.trainer import TracedStep

from .test_trainer import make_trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_trace_has_every_step_as_the_trainer_logged_it(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer, optim="salsa", logging_steps=1)
    trainer.train()
    steps = trainer.step_trace.steps
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [s.step for s in steps] == list(range(1, 9)) == [entry["step"] for entry in logs]
    # The Trainer logs each step's loss (rounded) and, after the step, the next step's size.
    assert [s.loss for s in steps] == pytest.approx([entry["loss"] for entry in logs], abs=1e-4)
    search = trainer.salsa.search
    assert sum(s.searched for s in steps) == search.searches + search.failed_searches + search.uphill_searches
    assert all(s.step_size > 0 for s in steps[:-1])
    # The step size found is the cool-down's scale: the step taken never exceeds it.
    assert steps[-1].found == search.step_size and all(s.step_size <= s.found for s in steps)


def test_an_adamw_run_has_no_trace(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer, optim="adamw_torch", max_steps=2)
    trainer.train()
    assert trainer.step_trace.steps == []


@pytest.mark.parametrize("metric, expected", [
    ("accuracy", {"accuracy": 0.6}),
    ("accuracy_f1", {"accuracy": 0.6, "f1": 0.75}),  # all "1": precision 3/5, recall 1
    ("matthews", {"matthews_correlation": 0.0}),
])
def test_the_trivial_baseline_predicts_the_training_majority(metric, expected):
    predicts, scores = trivial_baseline(metric, [1, 1, 0, 1, -1, -1, -1], [1, 0, 1, 1, 0, -1])
    assert predicts == "always class 1"
    assert scores == pytest.approx(expected)


def test_the_regression_baseline_is_the_mse_of_the_training_mean():
    predicts, scores = trivial_baseline("correlation", [1.0, 2.0, 3.0], [0.0, 4.0])
    assert predicts == "the training mean 2"
    assert scores == {"mse": pytest.approx((4 + 4) / 2)}


def fake_run(tmp_path, steps):
    search = SimpleNamespace(step_size=2e-4, interval=10, extra_forward_fraction=0.05, searches=3, backtracks=4)
    return SimpleNamespace(
        args=SimpleNamespace(output_dir=str(tmp_path / "out")),
        state=SimpleNamespace(log_history=[{"loss": 0.7, "step": 1}, {"loss": 0.5, "step": 2}]),
        line_search=SimpleNamespace(search=search),
        step_trace=SimpleNamespace(steps=steps),
    )


TRACE = [TracedStep(k, 1 / k, 1e-4 * (1 + k % 3), k % 4 == 1, 3e-4) for k in range(1, 41)]


def test_summary_is_printed_and_saved_with_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    summary = write_summary("sst2 with optim=salsa", {"validation accuracy": 0.9}, fake_run(tmp_path, TRACE))
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved == summary
    assert saved["final training loss"] == 0.5 and saved["step size found"] == 2e-4
    assert saved["validation accuracy"] == 0.9 and saved["extra forward passes per step"] == 0.05
    assert (tmp_path / "out" / "salsa_steps.png").read_bytes().startswith(PNG_SIGNATURE)
    out = capsys.readouterr().out
    assert "== sst2 with optim=salsa" in out and f"{tmp_path / 'out' / 'salsa_steps.png'}" in out


def test_without_matplotlib_the_run_still_succeeds_and_says_how_to_get_the_plot(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of matplotlib raises ImportError
    assert plot_steps(TRACE, tmp_path / "x.png") is None
    write_summary("run", {}, fake_run(tmp_path, TRACE))
    assert (tmp_path / "out" / "summary.json").is_file() and not (tmp_path / "out" / "salsa_steps.png").exists()
    assert "pip install matplotlib" in capsys.readouterr().out


@pytest.mark.parametrize("kind, predictions, references, expected", [
    ("accuracy", [0, 1, 1, 0], [0, 1, 0, 0], {"accuracy": 0.75}),
    ("accuracy_f1", [0, 1, 1, 0], [0, 1, 0, 0], {"accuracy": 0.75, "f1": 2 / 3}),
    ("matthews", [0, 1, 1, 0], [0, 1, 1, 0], {"matthews_correlation": 1.0}),
    ("correlation", [0.1, 0.5, 0.9], [0.0, 0.5, 1.0], {"pearson": 1.0, "spearmanr": 1.0}),
])
def test_the_glue_metric_loads_offline_through_evaluate(kind, predictions, references, expected):
    import evaluate

    from salsa_hf.examples.glue import METRIC_MODULE

    scores = evaluate.load(METRIC_MODULE, kind).compute(predictions=predictions, references=references)
    assert scores == pytest.approx(expected, abs=1e-6)
    with pytest.raises(KeyError, match="must be one of accuracy, accuracy_f1, matthews, correlation"):
        evaluate.load(METRIC_MODULE, "bleu")
