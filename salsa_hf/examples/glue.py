"""GLUE tasks: their text columns, label counts, validation splits and metrics.

The metrics are GLUE's own (as the Hub's ``evaluate`` "glue" metric defines them), computed with
scikit-learn and scipy so they work offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


@dataclass(frozen=True)
class GlueTask:
    text_columns: tuple[str, str | None]
    num_labels: int  # 1 means regression
    metric: str  # "accuracy", "accuracy_f1", "matthews" or "correlation"
    validation_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


GLUE_TASKS = {
    "cola": GlueTask(("sentence", None), 2, "matthews"),
    "mnli": GlueTask(("premise", "hypothesis"), 3, "accuracy", "validation_matched"),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2, "accuracy_f1"),
    "qnli": GlueTask(("question", "sentence"), 2, "accuracy"),
    "qqp": GlueTask(("question1", "question2"), 2, "accuracy_f1"),
    "rte": GlueTask(("sentence1", "sentence2"), 2, "accuracy"),
    "sst2": GlueTask(("sentence", None), 2, "accuracy"),
    "stsb": GlueTask(("sentence1", "sentence2"), 1, "correlation"),
    "wnli": GlueTask(("sentence1", "sentence2"), 2, "accuracy"),
}

# The evaluate module of GLUE's metrics (evaluate.load(METRIC_MODULE, kind)), offline.
METRIC_MODULE = str(Path(__file__).with_name("glue_metric.py"))
METRIC_KINDS = ("accuracy", "accuracy_f1", "matthews", "correlation")

# The figure each metric kind is judged by (the "task metric" of summaries and tables).
MAIN_METRIC = {"accuracy": "accuracy", "accuracy_f1": "f1", "matthews": "matthews_correlation", "correlation": "pearson"}


def glue_metrics(metric: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE's metric of a task: predictions are class ids, or scores for the regression task."""
    if metric == "correlation":
        return {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearmanr": float(spearmanr(predictions, labels)[0]),
        }
    if metric == "matthews":
        return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    scores = {"accuracy": float(accuracy_score(labels, predictions))}
    if metric == "accuracy_f1":
        scores["f1"] = float(f1_score(labels, predictions, zero_division=0.0))
    return scores


def trivial_baseline(metric: str, train_labels, eval_labels) -> tuple[str, dict[str, float]]:
    """What a model that ignores its input scores on the validation labels: it predicts the
    training set's most frequent class, or, for regression, the training mean (then the figure is
    the mean squared error, which a constant's undefined correlation cannot give).
    Returns (what it predicts, its metrics)."""
    train_labels, eval_labels = np.asarray(train_labels), np.asarray(eval_labels)
    if metric == "correlation":
        mean = float(train_labels.mean())
        return f"the training mean {mean:.3g}", {"mse": float(np.mean((eval_labels - mean) ** 2))}
    train_labels, eval_labels = train_labels[train_labels >= 0], eval_labels[eval_labels >= 0]  # -1: unlabelled
    values, counts = np.unique(train_labels, return_counts=True)
    majority = values[np.argmax(counts)]
    return f"always class {majority}", glue_metrics(metric, np.full(len(eval_labels), majority), eval_labels)
