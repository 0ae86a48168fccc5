"""Causal language modelling (GPT-2 style) with SaLSa by default, in transformers' run_clm style.

    python scripts/run_clm.py glue_configs/offline/gpt2.json
    python scripts/run_clm.py --model_name_or_path gpt2 --dataset_name wikitext \\
        --dataset_config_name wikitext-2-raw-v1 --do_train --do_eval --optim salsa --output_dir out/gpt2
    python scripts/run_clm.py --model_type gpt2 --config_overrides n_layer=4,n_embd=256,n_head=4 \\
        --tokenizer_name DIR --train_file corpus.txt --do_train --output_dir out/small

Texts are tokenized, joined and cut into blocks of ``--block_size`` tokens; the eval results carry
the loss and its perplexity.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from datasets import DatasetDict, load_dataset
from transformers import (
    CONFIG_MAPPING,
    AutoModelForCausalLM,
    default_data_collator,
)

from salsa_hf import SaLSaTrainer, SaLSaTrainingArguments
from salsa_hf.examples.arguments import (
    ModelArguments,
    UsageError,
    apply_lora,
    evaluate_and_save,
    parse_and_set_up,
    run_or_exit,
    train_and_save,
)
from salsa_hf.examples.models import load_tokenizer, resolve_model_path
from salsa_hf.examples.summary import write_summary

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = {".txt": "text", ".text": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class CausalModelArguments(ModelArguments):
    model_type: str | None = field(
        default=None, metadata={"help": f"Train from scratch: a model type ({', '.join(sorted(CONFIG_MAPPING)[:8])}, ...)."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "With --model_type: config settings, e.g. n_layer=4,n_embd=256,n_head=4."}
    )

    def __post_init__(self):
        if self.model_name_or_path is None:
            if self.model_type is None:
                raise UsageError("give --model_name_or_path (pretrained) or --model_type (from scratch)")
            if self.model_type not in CONFIG_MAPPING:
                raise UsageError(f"unknown --model_type {self.model_type!r}; choose one of: {', '.join(sorted(CONFIG_MAPPING))}")
            if self.tokenizer_name is None:
                raise UsageError("--model_type trains from scratch and needs --tokenizer_name")
        elif self.config_overrides is not None:
            raise UsageError("--config_overrides applies only to a model trained from scratch (--model_type)")


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. wikitext."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration, e.g. wikitext-2-raw-v1."})
    train_file: str | None = field(default=None, metadata={"help": "txt, csv, json or jsonl training text."})
    validation_file: str | None = field(default=None, metadata={"help": "txt, csv, json or jsonl validation text."})
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Without a validation set: the share of the training text held out, in %."}
    )
    text_column: str = field(default="text", metadata={"help": "The column of csv/json files that holds the text."})
    block_size: int | None = field(default=None, metadata={"help": "Tokens per training block (default: the model's maximum, at most 1024)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})

    def __post_init__(self):
        if self.dataset_name is None and self.train_file is None and self.validation_file is None:
            raise UsageError("give --dataset_name, or --train_file / --validation_file")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if Path(path).suffix not in TEXT_EXTENSIONS:
                raise UsageError(f"--{name} {path!r} must end in one of {', '.join(TEXT_EXTENSIONS)}")
            if not Path(path).is_file():
                raise UsageError(f"--{name} {path!r} does not exist")
        if not 0 < self.validation_split_percentage < 100:
            raise UsageError(f"--validation_split_percentage must be in 1..99, got {self.validation_split_percentage}")
        for name in ("block_size", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be a positive integer, got {value}")


def load_raw_texts(data: DataTrainingArguments, model_args: ModelArguments) -> DatasetDict:
    """Train and validation text; without a validation set, the end of the training text."""
    if data.dataset_name is not None:
        raw = load_dataset(data.dataset_name, data.dataset_config_name, cache_dir=model_args.cache_dir,
                           token=model_args.token)
    else:
        raw = DatasetDict()
        for split, path in (("train", data.train_file), ("validation", data.validation_file)):
            if path is not None:
                kind = TEXT_EXTENSIONS[Path(path).suffix]
                options = {"keep_linebreaks": True} if kind == "text" else {}
                raw[split] = load_dataset(kind, data_files=path, split="train", cache_dir=model_args.cache_dir, **options)
    if "validation" not in raw and "train" in raw:
        held_out = raw["train"].train_test_split(test_size=data.validation_split_percentage / 100, shuffle=False)
        raw = DatasetDict(train=held_out["train"], validation=held_out["test"])
    for name, dataset in raw.items():
        if data.text_column not in dataset.column_names:
            raise UsageError(f"the {name} data has no {data.text_column!r} column (it has {dataset.column_names}); "
                             "name the text column with --text_column")
    return raw


def build_model(model_args: CausalModelArguments, hub: dict):
    if model_args.model_name_or_path is not None:
        return AutoModelForCausalLM.from_pretrained(resolve_model_path(model_args.model_name_or_path), **hub)
    config = CONFIG_MAPPING[model_args.model_type]()
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except ValueError as err:
            raise UsageError(f"--config_overrides {model_args.config_overrides!r}: {err}") from None
    logger.info("Training a new %s from scratch: %s", model_args.model_type, config)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)


def perplexity(metrics: dict) -> dict:
    """exp(eval loss), saved beside it."""
    return {"perplexity": math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 700 else math.inf}


def main() -> None:
    model_args, data_args, training_args = parse_and_set_up((CausalModelArguments, DataTrainingArguments, SaLSaTrainingArguments), logger)

    raw = load_raw_texts(data_args, model_args)
    if training_args.do_train and "train" not in raw:
        raise UsageError("--do_train needs training text: --train_file or --dataset_name")
    hub = model_args.hub_kwargs()
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, **hub)
    model = build_model(model_args, hub)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))

    model = apply_lora(model, model_args, "CAUSAL_LM")  # with --use_peft

    block_size = data_args.block_size or min(tokenizer.model_max_length, 1024)
    max_positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and block_size > max_positions:
        raise UsageError(f"--block_size {block_size} exceeds the model's {max_positions} positions")

    def tokenize(batch):
        return tokenizer(batch[data_args.text_column])

    def group_texts(batch):
        joined = {k: list(chain(*batch[k])) for k in batch}
        length = len(joined["input_ids"]) // block_size * block_size
        blocks = {k: [t[i : i + block_size] for i in range(0, length, block_size)] for k, t in joined.items()}
        blocks["labels"] = [ids.copy() for ids in blocks["input_ids"]]
        return blocks

    with training_args.main_process_first(desc="tokenizing and grouping"):
        tokenized = raw.map(tokenize, batched=True, num_proc=data_args.preprocessing_num_workers,
                            remove_columns=next(iter(raw.values())).column_names, desc="Tokenizing")
        blocks = tokenized.map(group_texts, batched=True, num_proc=data_args.preprocessing_num_workers,
                               desc=f"Grouping into blocks of {block_size}")

    def take(split: str, limit: int | None):
        dataset = blocks[split]
        if len(dataset) == 0:
            raise UsageError(f"the {split} text is shorter than one block of {block_size} tokens")
        return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset

    train_dataset = take("train", data_args.max_train_samples) if training_args.do_train else None
    eval_dataset = take("validation", data_args.max_eval_samples) if training_args.do_eval else None

    trainer = SaLSaTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                           processing_class=tokenizer, data_collator=default_data_collator)

    if training_args.do_train:
        train_and_save(trainer, train_dataset)

    eval_metrics = evaluate_and_save(trainer, eval_dataset, perplexity) if training_args.do_eval else {}

    if training_args.do_train:
        card = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-generation"}
        if data_args.dataset_name is not None:
            card.update(dataset_tags=data_args.dataset_name, dataset_args=data_args.dataset_config_name,
                        dataset=f"{data_args.dataset_name} {data_args.dataset_config_name or ''}".strip())
        trainer.create_model_card(**card)

    figures = {}
    if eval_metrics:
        figures["validation loss"] = eval_metrics["eval_loss"]
        figures["validation perplexity"] = eval_metrics["perplexity"]
    if trainer.is_world_process_zero():
        write_summary(f"language modelling with optim={training_args.optim_name}", figures, trainer)


if __name__ == "__main__":
    run_or_exit(main)
