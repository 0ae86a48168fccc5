"""GLUE's metrics as an ``evaluate`` module that loads offline (the Hub's ``glue`` metric needs the
network): ``evaluate.load(salsa_hf.examples.glue.METRIC_MODULE, "accuracy_f1")``, its config being
the kind of metric (``accuracy``, ``accuracy_f1``, ``matthews``, ``correlation``)."""

import datasets
import evaluate
import numpy as np

from salsa_hf.examples.glue import METRIC_KINDS, glue_metrics


class GlueMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in METRIC_KINDS:
            raise KeyError(f"the GLUE metric's config must be one of {', '.join(METRIC_KINDS)}, got {self.config_name!r}")
        value = datasets.Value("float32" if self.config_name == "correlation" else "int64")
        return evaluate.MetricInfo(
            description="GLUE's metrics (accuracy, F1, Matthews correlation, Pearson and Spearman correlation), "
                        "computed with scikit-learn and scipy.",
            citation="Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU (2018)",
            inputs_description="predictions: class ids (scores for the regression task); references: labels",
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        return glue_metrics(self.config_name, np.asarray(predictions), np.asarray(references))
