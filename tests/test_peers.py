"""The peers SaLSa is compared with: Prodigy and the authors' SaLSa, driven by SaLSaTrainer."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from salsa_hf import SaLSaTrainingArguments
from salsa_hf.peers import AuthorsSaLSa, prodigy

from .conftest import MISSING
from .test_trainer import make_trainer, params_of


def require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{MISSING} {package} (pip install -e '.[dev,reproduce]')")


def test_authors_salsa_trains_with_the_trainers_replay(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    require("salsa", "salsa-optimizer")
    model = make_bert()
    start = params_of(model)
    trainer = make_trainer(tmp_path, model, mrpc_train, bert_tokenizer, optim="salsa_authors", max_steps=12)
    trainer.train()
    adapter = trainer.line_search
    assert isinstance(adapter, AuthorsSaLSa) and trainer.salsa is None
    search = adapter.search
    assert search.step == search.training_forwards == 12
    # Their rule searches on each of the first 10 steps; every search spends at least one trial.
    assert search.searches >= 10 and search.trial_forwards >= search.searches + search.backtracks
    # Their default first step size is 1.0; backtracking by 0.8 must have brought it far below.
    assert search.step_size == adapter.reference.step_size < 0.1
    last = [e for e in trainer.state.log_history if "loss" in e][-1]
    assert last["salsa/step_size"] == last["learning_rate"] == search.step_size
    assert any(not torch.equal(start[n], p) for n, p in model.named_parameters())


def test_authors_salsa_refuses_a_step_outside_the_trainer():
    require("salsa", "salsa-optimizer")
    weight = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match="SaLSaTrainer"):
        AuthorsSaLSa([weight]).step()


def test_prodigy_gets_the_runs_settings(tmp_path, make_bert, mrpc_train, bert_tokenizer):
    require("prodigyopt", "prodigyopt")
    trainer = make_trainer(tmp_path, make_bert(), mrpc_train, bert_tokenizer, optim="prodigy", learning_rate=1.0,
                           adam_beta2=0.99, max_steps=8)
    trainer.train()
    group = trainer.optimizer.param_groups[0]
    assert type(trainer.optimizer.optimizer).__name__ == "Prodigy"
    assert group["betas"] == (0.9, 0.99) and group["safeguard_warmup"] is False
    assert group["d"] > group["d0"]  # Prodigy raised its step-size estimate from d0
    warmed = SaLSaTrainingArguments(output_dir="unused", optim="prodigy", warmup_steps=0.1)
    assert prodigy(warmed)[1]["safeguard_warmup"] is True  # its authors' advice when warming up


def test_peer_names_are_listed_choices():
    with pytest.raises(ValueError, match="prodigy, salsa_authors"):
        SaLSaTrainingArguments(output_dir="unused", optim="prodigi")
