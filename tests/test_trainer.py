"""SaLSaTrainer inside transformers' Trainer: small models from configs, real MRPC rows."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import DataCollatorWithPadding, HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from salsa_hf import SaLSa, SaLSaArguments, SaLSaMixin, SaLSaPaper, SaLSaTrainer, SaLSaTrainingArguments

from .conftest import REPO

SALSA_NAMES = ["salsa", "salsa_paper", "salsa_sgd", "sls", "sls_sgd"]


def make_trainer(tmp_path, model, train, tokenizer, trainer_cls=SaLSaTrainer, optimizers=(None, None),
                 eval_dataset=None, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=8, logging_steps=4,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
    )
    settings.update(overrides)
    args_cls = SaLSaTrainingArguments if issubclass(trainer_cls, SaLSaTrainer) else TrainingArguments
    return trainer_cls(
        model=model, args=args_cls(**settings), train_dataset=train, eval_dataset=eval_dataset,
        data_collator=DataCollatorWithPadding(tokenizer), optimizers=optimizers,
    )


def params_of(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_params(a, b, **tolerance):
    assert a.keys() == b.keys()
    for name in a:
        if tolerance:
            torch.testing.assert_close(a[name], b[name], **tolerance, msg=name)
        else:
            assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("optim", SALSA_NAMES + ["adamw_torch"])
def test_every_optim_name_trains_and_logs(tmp_path, make_bert, mrpc_train, bert_tokenizer, optim):
    model = make_bert()
    start = params_of(model)
    trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, optim=optim)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(start[n], p) for n, p in model.named_parameters())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    if optim == "adamw_torch":
        assert trainer.salsa is None and not any(k.startswith("salsa/") for k in logs[-1])
        return
    salsa = trainer.salsa
    assert isinstance(salsa, SaLSa) and salsa.search.step == 8
    last = logs[-1]
    for key in ("step_size", "interval", "searches", "backtracks", "extra_forward_fraction",
                "skipped_steps", "failed_searches"):
        assert f"salsa/{key}" in last
    assert last["salsa/step_size"] == salsa.search.step_size
    # learning_rate is the step the next step takes: the step size times the decay's factor (the
    # Trainer told SaLSa the run's length; at the end of the run that factor is 0). The paper's
    # algorithm has no schedule.
    assert salsa.total_steps == (None if isinstance(salsa, SaLSaPaper) else 8)
    assert last["learning_rate"] == salsa.param_groups[0]["lr"] == salsa.effective_step_size
    assert salsa.effective_step_size == salsa.search.step_size * salsa.step_scale
    assert last["salsa/searches"] == salsa.search.searches >= 4
    assert last["salsa/extra_forward_fraction"] == pytest.approx(salsa.search.trial_forwards / 8)


def test_salsa_figures_reach_the_callbacks_that_integrations_use(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    seen = []

    class Recorder(TrainerCallback):  # report_to integrations (TensorBoard, W&B, ...) are callbacks
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer)
    trainer.add_callback(Recorder())
    trainer.train()
    training_logs = [logs for logs in seen if "loss" in logs]
    assert len(training_logs) == 2
    assert all("salsa/step_size" in logs and "learning_rate" in logs for logs in training_logs)
    # learning_rate is the step taken: after step 4 of 8, the decay over the run leaves 4/8 of the step size.
    assert training_logs[0]["learning_rate"] == pytest.approx(0.5 * training_logs[0]["salsa/step_size"])


class PreScaledLossTrainer(SaLSaTrainer):
    """A subclass whose loss comes scaled for accumulation already, declared as transformers asks."""

    loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss / self.current_gradient_accumulation_steps


@pytest.mark.parametrize("trainer_cls", [SaLSaTrainer, PreScaledLossTrainer])
def test_trial_closure_reproduces_the_trainers_loss_exactly(tmp_path, make_bert, mrpc_train, bert_tokenizer,
                                                            trainer_cls):
    """Same micro-batches, dropout masks and scaling: the replay at the current point is bit-identical."""
    trainer = make_trainer(tmp_path, make_bert(dropout=0.3), mrpc_train, bert_tokenizer, trainer_cls=trainer_cls,
                           max_steps=4, gradient_accumulation_steps=3, per_device_train_batch_size=4)
    checked = []
    trainer.create_optimizer()
    salsa = trainer.salsa
    original = salsa.prepare_step

    def checking_prepare(loss, evaluate, **kwargs):
        before = torch.get_rng_state()
        with torch.no_grad():
            replay = evaluate()
        assert torch.equal(torch.get_rng_state(), before)  # the replay leaves the streams alone
        checked.append((loss.item(), replay.item()))
        original(loss, evaluate, **kwargs)

    salsa.prepare_step = checking_prepare
    trainer.train()
    assert len(checked) == 4
    assert all(loss == replay for loss, replay in checked)


class SmoothedLossTrainer(Trainer):
    """A user's Trainer subclass with its own loss (label smoothing), as TRL's trainers have."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, label_smoothing=self.args.smoothing)
        return (loss, outputs) if return_outputs else loss


@dataclass
class SmoothedLossArguments(SaLSaArguments, TrainingArguments):
    smoothing: float = 0.1


def test_the_mixin_gives_any_trainer_subclass_the_line_search(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    class MyTrainer(SaLSaMixin, SmoothedLossTrainer):
        pass

    args = SmoothedLossArguments(output_dir=str(tmp_path / "out"), optim="salsa", max_steps=4, logging_steps=2,
                                 per_device_train_batch_size=8, report_to=[], save_strategy="no", use_cpu=True,
                                 disable_tqdm=True, salsa_c=0.4)
    trainer = MyTrainer(model=make_bert(dropout=0.3), args=args, train_dataset=mrpc_train,
                        data_collator=DataCollatorWithPadding(bert_tokenizer))
    trainer.create_optimizer()
    assert trainer.salsa.c == 0.4
    checked, original = [], trainer.salsa.prepare_step

    def checking_prepare(loss, evaluate, **kwargs):
        with torch.no_grad():
            checked.append((loss.item(), evaluate().item()))  # the replay: the subclass's own loss
        original(loss, evaluate, **kwargs)

    trainer.salsa.prepare_step = checking_prepare
    trainer.train()
    assert len(checked) == 4 and all(loss == replay for loss, replay in checked)
    assert trainer.salsa.search.step == 4 and "salsa/step_size" in trainer.state.log_history[0]


def test_deepspeed_is_refused_before_any_step_naming_ddp_and_fsdp(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    # (DeepSpeed itself is not installed here: the Trainer's own flag stands for it.)
    model = make_bert()
    start = params_of(model)
    trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, save_strategy="steps", save_steps=1)
    trainer.is_deepspeed_enabled = True
    with pytest.raises(ValueError, match=r"DeepSpeed.*DDP.*FSDP"):
        trainer.train()
    assert_same_params(start, params_of(model))
    assert not list((tmp_path / "out").rglob("*"))  # nothing written (the Trainer makes the folder itself)
    adamw = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer, optim="adamw_torch")
    assert not adamw._uses_line_search()  # other optimizers are the Trainer's business


@pytest.mark.parametrize("kind", ["cp", "sp"])
def test_context_and_sequence_parallelism_are_refused_before_any_step(tmp_path, make_bert, mrpc_train,
                                                                       bert_tokenizer, monkeypatch, kind):
    # (they need accelerators and a ParallelismConfig: the Trainer's own size getters stand for them.)
    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer)
    monkeypatch.setattr(trainer, f"get_{kind}_size", lambda: 2)
    with pytest.raises(ValueError, match=r"SaLSa cannot run with (context|sequence) parallelism \(size 2\)"):
        trainer.train()
    assert trainer.state.global_step == 0 and not list((tmp_path / "out").rglob("*"))


def test_the_trainer_internals_the_mixin_relies_on_are_there(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    """The private Trainer API listed above ``SaLSaMixin`` (a renamed one fails here, not in a run)."""
    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer)
    # (``loss_is_scaled_for_ga`` too where transformers has it: 5.17 has not, so it is optional.)
    for name in ("_prepare_inputs", "compute_loss_context_manager", "compute_loss",
                 "model_accepts_loss_kwargs", "compute_loss_func", "get_cp_size", "get_sp_size",
                 "is_deepspeed_enabled", "is_fsdp_enabled", "_created_lr_scheduler"):
        assert hasattr(trainer, name), name
    for name in ("sync_gradients", "reduce", "scaler"):
        assert hasattr(trainer.accelerator, name), name
    trainer.train()
    assert trainer._created_lr_scheduler and hasattr(trainer, "current_gradient_accumulation_steps")


def test_fsdp1_is_refused_before_any_step(tmp_path, make_bert, mrpc_train, bert_tokenizer, monkeypatch):
    # (accelerate runs FSDP only on accelerators: the Trainer's own flags stand for it.)
    from types import SimpleNamespace

    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer)
    trainer.is_fsdp_enabled = True
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", SimpleNamespace(fsdp_version=1), raising=False)
    with pytest.raises(ValueError, match=r"SaLSa needs FSDP2 \(fsdp_config=\{'version': 2\}\), got FSDP version 1"):
        trainer.train()
    assert trainer.state.global_step == 0 and not list((tmp_path / "out").rglob("*"))


def test_salsa_figures_and_step_size_reach_tensorboard(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer, report_to=["tensorboard"], logging_steps=2)
    trainer.train()
    events = event_accumulator.EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/salsa/step_size", "train/salsa/extra_forward_fraction", "train/learning_rate"} <= tags
    logged = [e for e in trainer.state.log_history if "loss" in e]
    for tag, key in (("train/learning_rate", "learning_rate"), ("train/salsa/step_size", "salsa/step_size")):
        assert [round(s.value, 10) for s in events.Scalars(tag)] == pytest.approx([e[key] for e in logged], rel=1e-6)


def test_accumulation_gives_the_result_of_the_whole_batch(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    results = []
    for batch, accumulation in ((16, 1), (8, 2)):
        model = make_bert(dropout=0.0)
        # transformers 5.x: BERT's classification loss is a batch mean that ignores num_items_in_batch,
        # yet its forward takes **kwargs, so the Trainer would not divide it by the accumulation steps.
        model.accepts_loss_kwargs = False
        trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, max_steps=6,
                               per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
        trainer.train()
        results.append((params_of(model), trainer.salsa.search))
    (params16, search16), (params8x2, search8x2) = results
    assert_same_params(params16, params8x2, rtol=1e-4, atol=1e-5)
    assert search16.searches == search8x2.searches and search16.backtracks == search8x2.backtracks
    assert search16.step_size == pytest.approx(search8x2.step_size, rel=1e-9)


def test_resume_from_checkpoint_is_bit_identical(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    settings = dict(max_steps=12, save_strategy="steps", save_steps=6, gradient_accumulation_steps=2,
                    per_device_train_batch_size=4)
    straight_model = make_bert(dropout=0.2)
    straight = make_trainer(tmp_path / "a", straight_model, mrpc_train, bert_tokenizer, **settings)
    straight.train()

    resumed_model = make_bert(dropout=0.2, seed=1)
    resumed = make_trainer(tmp_path / "a", resumed_model, mrpc_train, bert_tokenizer, **settings)
    checkpoint = tmp_path / "a" / "out" / "checkpoint-6"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert state["line_search"]["step"] == 6
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert_same_params(params_of(straight_model), params_of(resumed_model))
    assert resumed.salsa.search == straight.salsa.search


def test_mid_training_evaluation_changes_nothing(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    results = []
    for eval_strategy in ("no", "steps"):
        model = make_bert(dropout=0.3)
        trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, max_steps=8,
                               eval_strategy=eval_strategy, eval_steps=3, per_device_eval_batch_size=16,
                               eval_dataset=mrpc_train.select(range(32)))
        trainer.train()
        results.append((params_of(model), trainer.salsa.search, trainer.state.log_history))
    (plain, plain_search, _), (evaluated, evaluated_search, history) = results
    assert any("eval_loss" in entry for entry in history)
    assert_same_params(plain, evaluated)
    assert plain_search == evaluated_search


def test_frozen_parameters_stay_frozen(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    model = make_bert()
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer)
    trainer.train()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert all(p.requires_grad for p in trainer.salsa.state)
    assert trainer.salsa.search.step == 8


class BatchNormRegressor(torch.nn.Module):
    """A model whose training forward changes state besides the parameters: BatchNorm's running statistics."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def forward(self, x, labels=None):
        prediction = self.body(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(prediction, labels), "logits": prediction}


def test_trials_leave_batchnorm_statistics_as_training_left_them(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    rows = [{"x": xi, "labels": xi.sum() + 0.1 * torch.randn((), generator=generator)} for xi in x]
    model = BatchNormRegressor()
    args = SaLSaTrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, report_to=[],
                                  save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    trainer = SaLSaTrainer(model=model, args=args, train_dataset=rows)
    trainer.create_optimizer()
    salsa, original, checked = trainer.salsa, trainer.salsa.prepare_step, []
    batchnorm = model.body[1]

    def checking_prepare(loss, evaluate, **kwargs):
        before = {n: b.clone() for n, b in batchnorm.named_buffers()}
        with torch.no_grad():
            evaluate()
        checked.append(all(torch.equal(b, before[n]) for n, b in batchnorm.named_buffers()))
        original(loss, evaluate, **kwargs)

    salsa.prepare_step = checking_prepare
    trainer.train()
    assert checked == [True] * 6 and salsa.search.trial_forwards >= 6  # the trials ran and changed nothing
    assert batchnorm.num_batches_tracked.item() == 6  # one per training forward


def test_bf16_autocast_on_cpu(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    trainer = make_trainer(tmp_path, make_bert(dropout=0.1), mrpc_train, bert_tokenizer, bf16=True)
    checked = []
    trainer.create_optimizer()
    original = trainer.salsa.prepare_step

    def checking_prepare(loss, evaluate, **kwargs):
        with torch.no_grad():
            checked.append(loss.item() == evaluate().item())
        original(loss, evaluate, **kwargs)

    trainer.salsa.prepare_step = checking_prepare
    trainer.train()
    assert checked == [True] * 8  # the trials run under the same bf16 autocast as training
    assert trainer.salsa.search.step == 8


def test_a_gradient_scaler_overflow_skips_the_step_and_leaves_salsa_untouched():
    """torch's GradScaler on the CPU, as the Trainer drives it under fp16: the scaled gradients are
    handed over with their scale, unscaled and clipped, then ``scaler.step`` calls SaLSa only when
    they are finite. A forced overflow skips the step: parameters, moments and the search's state
    stay as they were and the scale halves; the steps around it are taken."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    salsa = SaLSa(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    loss_of = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731

    def one_step(overflow: bool):
        salsa.zero_grad()
        loss = loss_of()
        scaler.scale(loss).backward()
        if overflow:
            model[0].weight.grad[0, 0] = float("inf")
        salsa.prepare_step(loss.detach(), loss_of, grad_scale=scaler.get_scale())
        scaler.unscale_(salsa)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(salsa)
        scaler.update()

    for _ in range(3):
        one_step(overflow=False)
    before = (copy.deepcopy(model.state_dict()), copy.deepcopy(salsa.state_dict()), scaler.get_scale())
    one_step(overflow=True)
    assert scaler.get_scale() == before[2] / 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[0][key])
    assert salsa.state_dict()["line_search"] == before[1]["line_search"]
    for index, state in salsa.state_dict()["state"].items():
        assert all(torch.equal(v, before[1]["state"][index][k]) for k, v in state.items())
    one_step(overflow=False)
    assert salsa.search.step == 4 and salsa.search.skipped_steps == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a gradient scaler needs CUDA")
def test_fp16_scaler_skips_leave_salsa_untouched(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    model = make_bert().cuda()
    trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, fp16=True, use_cpu=False, max_steps=12)
    trainer.train()
    search = trainer.salsa.search
    skipped_by_scaler = 12 - search.step - search.skipped_steps
    assert search.training_forwards == search.step + search.skipped_steps  # a scaler skip never reached SaLSa
    assert skipped_by_scaler >= 0 and all(torch.isfinite(p).all() for p in model.parameters())


def test_a_users_scheduler_cannot_change_the_step(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    model = make_bert()
    salsa = SaLSa(model.parameters())
    zero_lr = torch.optim.lr_scheduler.LambdaLR(salsa, lambda step: 0.0)
    start = params_of(model)
    trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, optimizers=(salsa, zero_lr))
    trainer.train()
    assert salsa.search.step_size > 0
    assert all(not torch.equal(start[n], p) for n, p in model.named_parameters() if "classifier" in n)


def test_model_card_names_salsa(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer)
    trainer.train()
    trainer.create_model_card(model_name="tiny-mrpc")
    card = (tmp_path / "out" / "README.md").read_text()
    header = card.split("---")[1]
    assert "- salsa" in header and "- line-search" in header
    salsa = trainer.salsa
    assert f"- optimizer: SaLSa (salsa: preconditioner=adam, c={salsa.c}, beta3={salsa.beta3}" in card
    assert "learning_rate: none" in card and "lr_scheduler_type" not in card
    search = trainer.salsa.search
    assert f"- final step size: {search.step_size:.4g}" in card
    assert f"- line searches: {search.searches} (search interval at the end: {search.interval} steps" in card
    assert f"{search.extra_forward_fraction:.1%} extra forward passes" in card


def test_a_salsa_optimizer_in_a_plain_trainer_fails_pointing_to_salsatrainer(
    tmp_path, make_bert, mrpc_train, bert_tokenizer
):
    model = make_bert()
    trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, trainer_cls=Trainer,
                           optimizers=(SaLSa(model.parameters()), None))
    with pytest.raises(RuntimeError, match="SaLSaTrainer"):
        trainer.train()


def test_unknown_optim_lists_every_choice(tmp_path):
    with pytest.raises(ValueError) as err:
        SaLSaTrainingArguments(output_dir=str(tmp_path), optim="adam_salsa")
    message = str(err.value)
    assert "'adam_salsa'" in message
    for name in SALSA_NAMES + ["adamw_torch", "schedule_free_adamw", "sgd"]:
        assert name in message


def test_optim_from_command_line_and_json(tmp_path, capsys):
    parser = HfArgumentParser(SaLSaTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--optim", "salsa_sgd", "--salsa_c", "0.5", "--use_cpu", "true"]
    )
    assert args.optim == "salsa_sgd" and args.salsa_kwargs()["c"] == 0.5
    assert args.salsa_kwargs()["preconditioner"] == "sgd"
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--optim", "salsa", "--salsa_max_interval", "4", "--use_cpu", "true"]
    )
    built = SaLSa([torch.nn.Parameter(torch.ones(2))], **args.salsa_kwargs())
    assert built.max_interval == 4

    config = tmp_path / "args.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path), "optim": "sls", "adam_beta1": 0.8, "use_cpu": True}))
    (args,) = parser.parse_json_file(str(config))
    kwargs = args.salsa_kwargs()
    assert (kwargs["c"], kwargs["beta3"], kwargs["max_interval"], kwargs["betas"]) == (0.1, 0.0, 1, (0.8, 0.999))

    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--optim", "salsaa"])
    assert "invalid choice: 'salsaa'" in capsys.readouterr().err
    config.write_text(json.dumps({"output_dir": str(tmp_path), "optim": "salsaa"}))
    with pytest.raises(ValueError, match="'salsaa' is not known"):
        parser.parse_json_file(str(config))


@pytest.mark.parametrize("flags, message", [
    (["--salsa_c", "1.5"], "--salsa_c must be a number in (0, 1), got 1.5"),
    (["--salsa_growth", "1"], "--salsa_growth must be a number > 1, got 1.0"),
    (["--salsa_max_interval", "0"], "--salsa_max_interval must be an integer >= 1, got 0"),
    (["--adam_beta1", "1.2"], "--adam_beta1 must be a number in [0, 1), got 1.2"),
    (["--optim", "sls", "--salsa_cooldown", "0.5"], "--salsa_cooldown is not a setting of optim 'sls'"),
    (["--optim", "salsa", "--salsa_delta", "0.5"], "--salsa_delta is not a setting of optim 'salsa'"),
    (["--optim", "adamw_torch", "--salsa_c", "0.5"], "optim 'adamw_torch' is not a SaLSa optimizer"),
])
def test_every_salsa_value_is_checked_when_the_arguments_are_made(tmp_path, flags, message):
    parser = HfArgumentParser(SaLSaTrainingArguments)
    with pytest.raises(ValueError) as err:
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--use_cpu", "true", *flags])
    assert message in str(err.value)


def test_schedule_settings_warn_that_salsa_ignores_them(tmp_path):
    with pytest.warns(UserWarning, match="learning_rate, warmup_steps are not used with optim='salsa'"):
        SaLSaTrainingArguments(output_dir=str(tmp_path), optim="salsa", learning_rate=1e-3, warmup_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SaLSaTrainingArguments(output_dir=str(tmp_path), optim="salsa")
        SaLSaTrainingArguments(output_dir=str(tmp_path), optim="adamw_torch", learning_rate=1e-3)


def test_bad_salsa_settings_fail_naming_the_value(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    # Refused when the arguments are made, before a model or a Trainer exists.
    with pytest.raises(ValueError, match=r"--salsa_c must be a number in \(0, 1\), got 1.5"):
        make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer, salsa_c=1.5)


def test_two_processes_keep_identical_replicas(tmp_path, shared_data):
    """DDP over gloo with 2 CPU processes: every rank accepts the same step sizes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(Path(__file__).parent / "ddp_train.py"), str(tmp_path), str(shared_data)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["search"] == rank1["search"] and rank0["search"]["searches"] >= 5
    assert_same_params(rank0["params"], rank1["params"])
    assert rank0["local_losses"] != rank1["local_losses"]  # each rank saw its own data, yet they agree
