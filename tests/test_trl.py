"""SaLSa in TRL's SFTTrainer and with a PEFT LoRA adapter: a GPT-2 from a config, the real GPT-2
tokenizer, real text (Tiny Shakespeare)."""

from __future__ import annotations

import inspect

import pytest
import torch

trl = pytest.importorskip("trl", reason="missing from this machine: trl (pip install -e '.[dev]')")
peft = pytest.importorskip("peft", reason="missing from this machine: peft (pip install -e '.[dev]')")

from datasets import Dataset  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from salsa_hf import SaLSa  # noqa: E402
from salsa_hf.examples.models import load_tokenizer  # noqa: E402
from salsa_hf.lora import LORA_A_RELATIVE_STEP, LORA_C, lora_param_groups  # noqa: E402
from salsa_hf.sft import SaLSaSFTConfig, SaLSaSFTTrainer  # noqa: E402

from .test_trainer import assert_same_params  # noqa: E402


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared_data):
    tokenizer = load_tokenizer(str(shared_data / "gpt2-tokenizer"))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    """Speeches of Tiny Shakespeare as prompt (the speaker's first line) and completion (the rest), so
    SFTTrainer's loss is completion-only: the prompt tokens are masked out of the loss."""
    speeches = [s for s in (shared_data / "text/tinyshakespeare.txt").read_text().split("\n\n") if s.count("\n") >= 2]
    rows = [s.split("\n", 1) for s in speeches[:96]]
    return Dataset.from_dict({"prompt": [p + "\n" for p, _ in rows], "completion": [c for _, c in rows]})


def tiny_gpt2(tokenizer, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)  # dropout 0.1 everywhere (GPT-2's default), so replays must reuse the masks
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2))


def lora(dropout: float = 0.1, targets=("c_attn",)):
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(targets), task_type="CAUSAL_LM")


def make_sft(tmp_path, tokenizer, train, trainer_cls=SaLSaSFTTrainer, optim="salsa", seed=0, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=4, logging_steps=4, report_to=[],
        save_strategy="no", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, max_length=64,
    )
    settings.update(overrides)
    peft_config = settings.pop("peft_config", None)
    config_cls = SaLSaSFTConfig if issubclass(trainer_cls, SaLSaSFTTrainer) else trl.SFTConfig
    return trainer_cls(model=tiny_gpt2(tokenizer, seed), args=config_cls(optim=optim, **settings), train_dataset=train,
                       processing_class=tokenizer, peft_config=peft_config)


class MetricCountingSFTTrainer(SaLSaSFTTrainer):
    """Records how many entries SFTTrainer's metric lists hold when it averages them into a log."""

    def log(self, logs, start_time=None):
        if "loss" in logs:
            self.metric_counts.append({key: len(values) for key, values in self._metrics["train"].items()})
        super().log(logs, start_time)


def test_sft_trainer_trains_and_counts_only_the_training_forwards(tmp_path, gpt2_tokenizer, shakespeare):
    """Trial forwards are not training: the token count equals a plain SFTTrainer's on the same batches,
    and token accuracy and entropy average one entry per training micro-batch."""
    plain = make_sft(tmp_path / "plain", gpt2_tokenizer, shakespeare, trl.SFTTrainer, optim="adamw_torch",
                     gradient_accumulation_steps=2, per_device_train_batch_size=2)
    plain.train()
    salsa = make_sft(tmp_path / "salsa", gpt2_tokenizer, shakespeare, MetricCountingSFTTrainer,
                     gradient_accumulation_steps=2, per_device_train_batch_size=2)
    salsa.metric_counts = []
    salsa.train()

    plain_logs, salsa_logs = ([e for e in t.state.log_history if "loss" in e] for t in (plain, salsa))
    assert [e["num_tokens"] for e in salsa_logs] == [e["num_tokens"] for e in plain_logs]
    assert salsa.salsa.search.trial_forwards > 0  # the trials ran, and were not counted
    micro_batches_per_log = 4 * 2  # logging_steps x gradient_accumulation_steps
    assert salsa.metric_counts == [{"entropy": micro_batches_per_log, "mean_token_accuracy": micro_batches_per_log,
                                    "num_tokens": 1}] * 2
    last = salsa_logs[-1]
    assert last["salsa/searches"] == salsa.salsa.search.searches and "salsa/step_size" in last
    assert last["learning_rate"] == salsa.salsa.param_groups[0]["lr"]
    assert torch.isfinite(torch.tensor(last["loss"]))


def test_sft_trial_replays_equal_the_trainers_own_loss(tmp_path, gpt2_tokenizer, shakespeare):
    """Completion-only masks, num_items_in_batch over accumulated micro-batches, GPT-2 and LoRA dropout:
    the replay at the current point is bit-identical to the loss SFTTrainer trained on."""
    trainer = make_sft(tmp_path, gpt2_tokenizer, shakespeare, max_steps=3, gradient_accumulation_steps=2,
                       per_device_train_batch_size=2, peft_config=lora(dropout=0.3))
    trainer.create_optimizer()
    salsa = trainer.salsa
    original, checked = salsa.prepare_step, []

    def checking_prepare(loss, evaluate, **kwargs):
        with torch.no_grad():
            checked.append((loss.item(), evaluate().item()))
        original(loss, evaluate, **kwargs)

    salsa.prepare_step = checking_prepare
    trainer.train()
    assert len(checked) == 3
    assert all(loss == replay for loss, replay in checked)


def test_lora_trains_only_the_adapter_and_resumes_bit_identically(tmp_path, gpt2_tokenizer, shakespeare):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, peft_config=lora())
    straight = make_sft(tmp_path, gpt2_tokenizer, shakespeare, **settings)
    base = {n: p.detach().clone() for n, p in straight.model.named_parameters() if not p.requires_grad}
    straight.train()

    adapter = [p for n, p in straight.model.named_parameters() if p.requires_grad]
    assert adapter and all("lora_" in n for n, p in straight.model.named_parameters() if p.requires_grad)
    state = straight.optimizer.state_dict()["state"]
    assert len(state) == len(adapter)  # optimizer state for the adapter only
    assert all(torch.equal(p, base[n]) for n, p in straight.model.named_parameters() if n in base)

    resumed = make_sft(tmp_path, gpt2_tokenizer, shakespeare, **settings)  # the same base model (not saved)
    with torch.no_grad():  # the adapter must come from the checkpoint
        for p in resumed.model.parameters():
            if p.requires_grad:
                p.normal_()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    trained = lambda t: {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}  # noqa: E731
    assert_same_params(trained(straight), trained(resumed))
    assert resumed.salsa.search == straight.salsa.search

    straight.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: peft" in header and "- lora" in header
    assert "- salsa" in header and "- line-search" in header
    assert "- optimizer: SaLSa (salsa: preconditioner=adam" in card
    assert f"- parameters trained: {sum(p.numel() for p in adapter):,} of" in card
    assert "PEFT adapter 'default': LORA (r=4, lora_alpha=8, lora_dropout=0.1, target modules ['c_attn'])" in card


def test_sft_config_takes_salsa_on_trls_command_line():
    parser = trl.TrlParser((trl.ScriptArguments, SaLSaSFTConfig, trl.ModelConfig))
    _, config, _ = parser.parse_args_and_config(
        ["--dataset_name", "local", "--output_dir", "out", "--optim", "salsa", "--salsa_c", "0.6", "--use_cpu", "true"]
    )
    assert config.optim == "salsa" and config.uses_salsa
    assert config.salsa_kwargs()["c"] == 0.6
    with pytest.raises(ValueError, match="optim 'salsaa' is not known; choose one of: salsa, salsa_paper, salsa_sgd"):
        SaLSaSFTConfig(output_dir="out", optim="salsaa", use_cpu=True)


def test_a_model_with_nothing_to_train_fails_before_any_step(tmp_path, gpt2_tokenizer, shakespeare):
    trainer = make_sft(tmp_path, gpt2_tokenizer, shakespeare)
    trainer.model.requires_grad_(False)
    with pytest.raises(ValueError, match="SaLSa got no trainable parameters"):
        trainer.train()
    assert trainer.state.global_step == 0 and not (tmp_path / "out" / "checkpoint-1").exists()


def test_run_sft_trains_the_offline_preset_with_salsa(tmp_path, shared_data, monkeypatch):
    """scripts/run_sft.py, TRL's script conventions: the YAML preset (a GPT-2 from a config on Tiny
    Shakespeare), shortened, flags overriding it; SaLSa runs and the summary is written."""
    import json

    from .test_scripts import load_script

    from .conftest import REPO

    monkeypatch.chdir(REPO)
    module = load_script("run_sft")
    out = tmp_path / "sft"
    module.main(["--config", "glue_configs/offline/sft.yaml", "--max_steps", "6", "--max_length", "32",
                 "--output_dir", str(out), "--salsa_max_interval", "4"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["line searches"] >= 6 and summary["training samples"] > 1000
    assert (out / "model.safetensors").exists() and (out / "salsa_steps.png").exists()


def test_run_sft_refuses_bad_input_in_one_line(tmp_path, shared_data, capsys, monkeypatch):
    from salsa_hf.examples.arguments import run_or_exit

    from .conftest import REPO
    from .test_scripts import load_script

    monkeypatch.chdir(REPO)
    module = load_script("run_sft")
    for argv, message in [
        (["--config", "glue_configs/offline/sft.yaml", "--salsa_c", "2"], "--salsa_c must be a number in (0, 1), got 2.0"),
        (["--config", "glue_configs/offline/sft.yaml", "--train_file", "nowhere.txt"], "--train_file 'nowhere.txt' does not exist"),
        (["--output_dir", str(tmp_path), "--model_type", "gpt2", "--tokenizer_name", "x"], "give one of --dataset_name"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_or_exit(lambda: module.main([*argv, "--output_dir", str(tmp_path / "out")]))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_lora_a_factors_step_at_a_sixteenth_of_the_step_size(tmp_path, gpt2_tokenizer, shakespeare):
    trainer = make_sft(tmp_path, gpt2_tokenizer, shakespeare, max_steps=3, weight_decay=0.01, peft_config=lora())
    trainer.train()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = trainer.salsa.param_groups
    factors = [g for g in groups if any(".lora_A." in names[id(p)] for p in g["params"])]
    assert factors and all(".lora_A." in names[id(p)] for g in factors for p in g["params"])
    assert all(g["relative_step"] == LORA_A_RELATIVE_STEP == 1 / 16 for g in factors)
    assert all(g["relative_step"] == 1.0 for g in groups if g not in factors)
    assert all(g["weight_decay"] == 0.01 for g in factors)  # the Trainer's decay groups, split
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert factors[0]["lr"] == groups[0]["lr"] / 16  # the rate each group stepped at


@pytest.mark.parametrize("flags, c", [({}, LORA_C), ({"salsa_c": 0.5}, 0.5), ({"optim": "salsa_paper"}, 0.3)])
def test_an_adapter_gets_the_stricter_test_unless_a_flag_sets_c(tmp_path, gpt2_tokenizer, shakespeare, flags, c):
    trainer = make_sft(tmp_path, gpt2_tokenizer, shakespeare, max_steps=1, peft_config=lora(), **flags)
    trainer.train()
    assert trainer.salsa.c == c


def test_a_model_without_lora_keeps_the_default_test(tmp_path, gpt2_tokenizer, shakespeare):
    trainer = make_sft(tmp_path, gpt2_tokenizer, shakespeare, max_steps=1)
    trainer.train()
    assert trainer.salsa.c == inspect.signature(SaLSa).parameters["c"].default == 0.8 != LORA_C


def test_a_model_without_lora_keeps_its_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    groups = [{"params": list(model[0].parameters()), "weight_decay": 0.1}, {"params": list(model[1].parameters())}]
    assert lora_param_groups(model, groups) == groups
    assert lora_param_groups(model) == [{"params": list(model.parameters())}]
