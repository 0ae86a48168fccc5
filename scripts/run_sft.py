"""Supervised fine-tuning with TRL's SFTTrainer and SaLSa by default, in TRL's sft script conventions.

    python scripts/run_sft.py --config glue_configs/offline/sft.yaml
    python scripts/run_sft.py --model_name_or_path Qwen/Qwen2-0.5B --dataset_name trl-lib/Capybara \\
        --output_dir out/sft --use_peft --lora_r 32 --lora_alpha 16

TRL's own ``trl sft`` parses the plain ``SFTConfig``, which does not know ``--optim salsa``; this is
the same script over ``TrlParser((ScriptArguments, SaLSaSFTConfig, ModelConfig))``, so every flag of
TRL's script works (``--dataset_name``, ``--use_peft --lora_r ...``, a YAML ``--config``), plus
SaLSa's ``--salsa_*`` and, for a machine without the Hub, ``--train_file`` (text, json or jsonl) and
``--model_type``/``--config_overrides``/``--tokenizer_name`` to train a model from a config.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from datasets import load_dataset
from transformers import CONFIG_MAPPING, AutoModelForCausalLM
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from salsa_hf.examples.arguments import UsageError, run_or_exit
from salsa_hf.examples.models import load_tokenizer, resolve_model_path
from salsa_hf.sft import SaLSaSFTConfig, SaLSaSFTTrainer
from salsa_hf.examples.summary import write_summary

TEXT_LOADERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json"}


@dataclass
class LocalArguments:
    """What a machine without the Hub needs beside TRL's arguments."""

    train_file: str | None = field(default=None, metadata={
        "help": "Local training data instead of --dataset_name: a text file (one sample per paragraph) or "
                "json/jsonl rows in TRL's formats (a 'text' column, 'messages', or 'prompt'/'completion')."})
    model_type: str | None = field(default=None, metadata={
        "help": "Train a model from a config instead of --model_name_or_path, e.g. gpt2."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "With --model_type: config settings, e.g. n_layer=4,n_embd=256,n_head=4."})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "Tokenizer name or folder (default: the model's)."})


def load_train_dataset(script_args: ScriptArguments, local: LocalArguments):
    if (script_args.dataset_name is None) == (local.train_file is None):
        raise UsageError("give one of --dataset_name (a Hub dataset) or --train_file (a local file)")
    if local.train_file is None:
        return load_dataset(script_args.dataset_name, name=script_args.dataset_config)[script_args.dataset_train_split]
    path = Path(local.train_file)
    if not path.is_file():
        raise UsageError(f"--train_file {str(path)!r} does not exist")
    loader = TEXT_LOADERS.get(path.suffix)
    if loader is None:
        raise UsageError(f"--train_file {path.name!r}: the extension must be one of {', '.join(TEXT_LOADERS)}")
    options = {"sample_by": "paragraph"} if loader == "text" else {}
    return load_dataset(loader, data_files=str(path), split="train", **options)


def load_model(model_args: ModelConfig, local: LocalArguments):
    if local.model_type is None:
        if model_args.model_name_or_path is None:
            raise UsageError("give --model_name_or_path (pretrained) or --model_type (from a config)")
        path = resolve_model_path(model_args.model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(path, revision=model_args.model_revision,
                                                     trust_remote_code=model_args.trust_remote_code)
        return model, load_tokenizer(local.tokenizer_name or path)
    if local.model_type not in CONFIG_MAPPING:
        raise UsageError(f"unknown --model_type {local.model_type!r}; choose one of: {', '.join(sorted(CONFIG_MAPPING))}")
    if local.tokenizer_name is None:
        raise UsageError("--model_type trains from a config and needs --tokenizer_name")
    tokenizer = load_tokenizer(local.tokenizer_name)
    config = CONFIG_MAPPING[local.model_type]()
    if local.config_overrides:
        config.update_from_string(local.config_overrides)
    config.vocab_size = len(tokenizer)
    return AutoModelForCausalLM.from_config(config), tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = TrlParser((ScriptArguments, SaLSaSFTConfig, ModelConfig, LocalArguments))
    try:
        script_args, training_args, model_args, local = parser.parse_args_and_config(argv)
    except ValueError as err:  # a field's own check (a bad salsa_* value, an unknown optim, ...)
        raise UsageError(str(err)) from err
    dataset = load_train_dataset(script_args, local)
    model, tokenizer = load_model(model_args, local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = SaLSaSFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=get_peft_config(model_args))
    trainer.train()
    trainer.save_model(training_args.output_dir)
    write_summary(f"SFT, optim {training_args.optim}", {"training samples": len(dataset)}, trainer)


if __name__ == "__main__":
    sys.argv[0] = "run_sft.py"
    run_or_exit(main)
