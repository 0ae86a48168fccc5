"""Fine-tune a sequence classifier on a GLUE task or your own files, with SaLSa by default.

transformers' run_glue.py conventions: model, data and training arguments as dataclasses, a JSON
config as the first argument (any flag after it overrides it), or flags alone:

    python scripts/run_glue.py glue_configs/offline/mrpc.json
    python scripts/run_glue.py glue_configs/mrpc.json --max_steps 50 --output_dir out
    python scripts/run_glue.py --model_name_or_path bert-base-uncased --task_name sst2 \\
        --do_train --do_eval --optim salsa --output_dir out/sst2

``--optim`` takes salsa, salsa_sgd, sls, sls_sgd or any optimizer of TrainingArguments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import numpy as np
from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
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
from salsa_hf.examples.glue import GLUE_TASKS, MAIN_METRIC, METRIC_MODULE, trivial_baseline
from salsa_hf.examples.models import load_tokenizer, resolve_model_path
from salsa_hf.examples.summary import write_summary

logger = logging.getLogger(__name__)

DATA_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class DataTrainingArguments:
    task_name: str | None = field(
        default=None, metadata={"help": f"GLUE task: {', '.join(GLUE_TASKS)}. Sets the columns and metric."}
    )
    dataset_name: str = field(default="nyu-mll/glue", metadata={"help": "Hub dataset of the GLUE tasks."})
    train_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl training file."})
    validation_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl validation file."})
    test_file: str | None = field(default=None, metadata={"help": "csv, tsv, json or jsonl file to predict."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every input to max_seq_length (default: dynamic padding)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation rows."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only the first N test rows."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})

    def __post_init__(self):
        if self.task_name is not None:
            self.task_name = self.task_name.lower()
            if self.task_name not in GLUE_TASKS:
                raise UsageError(f"unknown task_name {self.task_name!r}; choose one of: {', '.join(GLUE_TASKS)}")
        elif self.train_file is None and self.validation_file is None:
            raise UsageError("give a GLUE --task_name, or --train_file / --validation_file")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if Path(path).suffix not in DATA_EXTENSIONS:
                raise UsageError(f"--{name} {path!r} must end in one of {', '.join(DATA_EXTENSIONS)}")
            if not Path(path).is_file():
                raise UsageError(f"--{name} {path!r} does not exist")
        for name in ("max_seq_length", "max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be a positive integer, got {value}")


def load_raw_datasets(data: DataTrainingArguments, model_args: ModelArguments) -> DatasetDict:
    """The task's splits from the Hub, or the given files (then named train / validation / test)."""
    files = {split: path for split, path in
             (("train", data.train_file), ("validation", data.validation_file), ("test", data.test_file)) if path}
    if not files:
        return load_dataset(data.dataset_name, data.task_name, cache_dir=model_args.cache_dir, token=model_args.token)
    raw = DatasetDict()
    for split, path in files.items():
        suffix = Path(path).suffix
        options = {"delimiter": "\t"} if suffix == ".tsv" else {}
        raw[split] = load_dataset(DATA_EXTENSIONS[suffix], data_files=path, split="train",
                                  cache_dir=model_args.cache_dir, **options)
    if data.task_name == "mnli" and "validation" in raw:
        raw["validation_matched"] = raw.pop("validation")
    return raw


def text_columns(data: DataTrainingArguments, raw: DatasetDict) -> tuple[str, str | None]:
    """The task's columns, or, for plain files, the columns run_glue would pick."""
    split = next(iter(raw.values()))
    columns = [c for c in split.column_names if c not in ("label", "idx")]
    if data.task_name is not None:
        wanted = GLUE_TASKS[data.task_name].text_columns
    elif "sentence1" in columns and "sentence2" in columns:
        wanted = ("sentence1", "sentence2")
    elif len(columns) >= 2:
        wanted = (columns[0], columns[1])
    elif columns:
        wanted = (columns[0], None)
    else:
        raise UsageError(f"the data has no text column besides 'label' (columns: {split.column_names})")
    for name, dataset in raw.items():
        missing = [c for c in (*wanted, "label") if c is not None and c not in dataset.column_names]
        if missing and not (name == "test" and missing == ["label"]):
            raise UsageError(f"the {name} data lacks the columns {missing} (it has {dataset.column_names})")
    return wanted


def label_setup(data: DataTrainingArguments, raw: DatasetDict) -> tuple[bool, list | None]:
    """(is_regression, label list); the list is None where the labels are already ids 0..n-1."""
    if data.task_name is not None:
        task = GLUE_TASKS[data.task_name]
        return task.is_regression, None
    train = raw["train"] if "train" in raw else next(iter(raw.values()))
    if isinstance(train.features["label"], ClassLabel):
        return False, None
    if train.features["label"].dtype in ("float32", "float64"):
        return True, None
    return False, sorted(set(train["label"]))


def check_labels(raw: DatasetDict, num_labels: int, is_regression: bool, label_to_id: dict | None) -> None:
    for name, dataset in raw.items():
        if "label" not in dataset.column_names or is_regression:
            continue
        labels = set(dataset["label"])
        if label_to_id is not None:
            bad = sorted(map(str, labels - set(label_to_id) - {-1}))
            allowed = list(label_to_id)
        else:
            bad = sorted(label for label in labels if label != -1 and not 0 <= label < num_labels)
            allowed = f"0..{num_labels - 1} (or -1 for unlabelled test rows)"
        if bad:
            raise UsageError(f"the {name} data has labels {bad[:10]} outside the allowed labels {allowed}")


def label_column(dataset) -> list:
    return dataset["labels" if "labels" in dataset.column_names else "label"]


def main() -> None:
    model_args, data_args, training_args = parse_and_set_up((ModelArguments, DataTrainingArguments, SaLSaTrainingArguments), logger)

    raw = load_raw_datasets(data_args, model_args)
    for needed, split in ((training_args.do_train, "train"), (training_args.do_predict, "test")):
        if needed and split not in raw:
            raise UsageError(f"--do_{'train' if split == 'train' else 'predict'} needs a {split} split or --{split}_file")
    sentence1, sentence2 = text_columns(data_args, raw)
    is_regression, label_list = label_setup(data_args, raw)
    if is_regression:
        num_labels = 1
    elif label_list is not None:
        num_labels = len(label_list)
    elif data_args.task_name is not None:
        num_labels = GLUE_TASKS[data_args.task_name].num_labels
    else:
        num_labels = next(iter(raw.values())).features["label"].num_classes
    label_to_id = {label: i for i, label in enumerate(label_list)} if label_list is not None else None
    check_labels(raw, num_labels, is_regression, label_to_id)

    model_path = resolve_model_path(model_args.model_name_or_path)
    hub = model_args.hub_kwargs()
    config = AutoConfig.from_pretrained(resolve_model_path(model_args.config_name or model_path), num_labels=num_labels,
                                        finetuning_task=data_args.task_name, **hub)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_path, **hub)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **hub
    )
    # transformers 5.x: classification heads return a batch-mean loss but take **kwargs, so the
    # Trainer would skip dividing by the accumulation steps; this makes accumulation exact.
    model.accepts_loss_kwargs = False
    model = apply_lora(model, model_args, "SEQ_CLS")  # with --use_peft; the classifier head trains too
    if label_to_id is not None:
        model.config.label2id = {str(label): i for label, i in label_to_id.items()}
        model.config.id2label = {i: str(label) for label, i in label_to_id.items()}

    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(batch):
        texts = (batch[sentence1],) if sentence2 is None else (batch[sentence1], batch[sentence2])
        encoded = tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)
        if label_to_id is not None and "label" in batch:
            encoded["labels"] = [label_to_id.get(label, -1) for label in batch["label"]]
        return encoded

    def take(split: str, limit: int | None):
        dataset = raw[split]
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        # Mapped labels go to a new "labels" column: datasets would cast ids back to the old type.
        relabelled = ["label"] if label_to_id is not None and "label" in dataset.column_names else []
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            return dataset.map(preprocess, batched=True, num_proc=data_args.preprocessing_num_workers,
                               remove_columns=relabelled, desc=f"Tokenizing {split}")

    validation_split = GLUE_TASKS[data_args.task_name].validation_split if data_args.task_name else "validation"
    train_dataset = take("train", data_args.max_train_samples) if training_args.do_train else None
    eval_dataset = None
    if training_args.do_eval:
        if validation_split not in raw:
            raise UsageError(f"--do_eval needs a {validation_split} split or --validation_file")
        eval_dataset = take(validation_split, data_args.max_eval_samples)
    predict_dataset = take("test", data_args.max_predict_samples) if training_args.do_predict else None

    metric_kind = GLUE_TASKS[data_args.task_name].metric if data_args.task_name else (
        "correlation" if is_regression else "accuracy")

    # As transformers' run_glue does, through evaluate; the module is a local file, so it loads offline.
    metric = evaluate.load(METRIC_MODULE, metric_kind)

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = np.squeeze(logits) if is_regression else np.argmax(logits, axis=1)
        return metric.compute(predictions=predicted, references=prediction.label_ids)

    trainer = SaLSaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=default_data_collator if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer),
    )

    if training_args.do_train:
        train_and_save(trainer, train_dataset)

    eval_metrics = evaluate_and_save(trainer, eval_dataset) if training_args.do_eval else {}

    if training_args.do_predict:
        predict_dataset = predict_dataset.remove_columns(
            [c for c in ("label", "labels") if c in predict_dataset.column_names])
        logits = trainer.predict(predict_dataset, metric_key_prefix="predict").predictions
        predicted = np.squeeze(logits) if is_regression else np.argmax(logits, axis=1)
        if trainer.is_world_process_zero():
            out = Path(training_args.output_dir) / f"predict_results_{data_args.task_name or 'files'}.txt"
            names = model.config.id2label
            with out.open("w") as f:
                f.write("index\tprediction\n")
                for i, value in enumerate(predicted):
                    f.write(f"{i}\t{value:.3f}\n" if is_regression else f"{i}\t{names[int(value)]}\n")

    card = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-classification"}
    if data_args.task_name is not None:
        card.update(language="en", dataset_tags="glue", dataset_args=data_args.task_name,
                    dataset=f"GLUE {data_args.task_name.upper()}")
    if training_args.do_train:
        trainer.create_model_card(**card)

    figures = {}
    if eval_metrics:
        main_metric = MAIN_METRIC[metric_kind]
        figures[f"validation {main_metric}"] = eval_metrics[f"eval_{main_metric}"]
        figures["validation loss"] = eval_metrics["eval_loss"]
        if train_dataset is not None:
            predicts, baseline = trivial_baseline(metric_kind, label_column(train_dataset), label_column(eval_dataset))
            figure = "mse" if is_regression else main_metric
            figures[f"baseline {figure} ({predicts})"] = baseline[figure]
    if trainer.is_world_process_zero():
        write_summary(f"{data_args.task_name or 'classification'} with optim={training_args.optim_name}", figures, trainer)


if __name__ == "__main__":
    run_or_exit(main)
