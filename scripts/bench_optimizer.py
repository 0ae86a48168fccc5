"""SaLSa against torch AdamW on the same batches: wall time, forward passes, optimizer state size.

A small BERT built from a config (random init) is trained twice from the same weights, SaLSa and
AdamW (lr 1e-3 unless --adamw_lr, torch defaults otherwise) taking turns on each batch, so both see
the same machine load. Real MRPC sentence pairs from ../shared/data when present, random tokens otherwise.

    python scripts/bench_optimizer.py --steps 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import zlib
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from salsa_hf import SaLSa
from salsa_hf.examples.summary import tail_mean

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "mrpc" / "train.jsonl"


def make_batches(steps: int, batch_size: int, seq_len: int, vocab_size: int, seed: int):
    """Token ids of MRPC pairs (a word-hash tokenizer: no tokenizer files needed)."""
    g = torch.Generator().manual_seed(seed)
    if DATA.exists():
        rows = [json.loads(line) for line in DATA.open()]
        ids = torch.zeros(len(rows), seq_len, dtype=torch.long)
        for i, row in enumerate(rows):
            words = (row["sentence1"] + " [SEP] " + row["sentence2"]).lower().split()[:seq_len]
            ids[i, : len(words)] = torch.tensor([zlib.crc32(w.encode()) % (vocab_size - 1) + 1 for w in words])
        labels = torch.tensor([row["label"] for row in rows])
        source = f"MRPC ({len(rows)} rows)"
    else:
        ids = torch.randint(1, vocab_size, (4096, seq_len), generator=g)
        labels = torch.randint(0, 2, (4096,), generator=g)
        source = "random tokens (no ../shared/data)"
    batches = []
    for _ in range(steps):
        idx = torch.randint(0, len(ids), (batch_size,), generator=g)
        batches.append({"input_ids": ids[idx], "attention_mask": (ids[idx] != 0).long(), "labels": labels[idx]})
    return batches, source


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state_dict()["state"].values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optim", default="salsa", help="salsa, salsa_paper, salsa_sgd, sls or sls_sgd")
    parser.add_argument("--without_total_steps", action="store_true",
                        help="do not tell SaLSa the run's length (a plain loop: no decay of the step taken)")
    parser.add_argument("--adamw_lr", type=float, default=1e-3, help="AdamW's learning rate (default 1e-3)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="SaLSa arguments to override, values as JSON (e.g. c=0.5 max_interval=10)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=8192, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=128, num_labels=2)
    salsa_model = BertForSequenceClassification(config)
    adamw_model = copy.deepcopy(salsa_model)
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    if not args.without_total_steps and args.optim == "salsa":
        overrides.setdefault("total_steps", args.steps)  # as SaLSaTrainer sets it (the decay's end)
    salsa = SaLSa.from_name(args.optim, salsa_model.parameters(), **overrides)
    adamw = torch.optim.AdamW(adamw_model.parameters(), lr=args.adamw_lr)
    batches, source = make_batches(args.steps, args.batch_size, args.seq_len, config.vocab_size, args.seed)

    times = {"salsa": 0.0, "adamw": 0.0}
    losses = {"salsa": [], "adamw": []}
    for step, batch in enumerate(batches):
        torch.manual_seed(step)  # the same dropout stream for both
        start = time.perf_counter()
        loss = salsa.step(lambda: salsa_model(**batch).loss)
        times["salsa"] += time.perf_counter() - start
        losses["salsa"].append(loss.item())

        torch.manual_seed(step)
        start = time.perf_counter()
        adamw.zero_grad(set_to_none=True)
        loss = adamw_model(**batch).loss
        loss.backward()
        adamw.step()
        times["adamw"] += time.perf_counter() - start
        losses["adamw"].append(loss.item())

    search = salsa.search
    figures = {
        "steps": args.steps,
        "data": source,
        "wall_time_ratio": times["salsa"] / times["adamw"],
        "forward_passes_per_step": (search.training_forwards + search.trial_forwards) / args.steps,
        "state_size_ratio": state_bytes(salsa) / state_bytes(adamw),
        "final_loss_salsa": tail_mean(losses["salsa"]),
        "final_loss_adamw": tail_mean(losses["adamw"]),
        "salsa_step_size": search.step_size,
        "salsa_searches": search.searches,
        "salsa_interval": search.interval,
        "salsa_rejected_trials": search.backtracks,
        "told_total_steps": salsa.total_steps is not None,
        "seconds_salsa": times["salsa"],
        "seconds_adamw": times["adamw"],
    }
    for key, value in figures.items():
        print(f"{key:>26}: {value:.4g}" if isinstance(value, float) else f"{key:>26}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
