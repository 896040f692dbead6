"""Pearson correlation, GLUE's first metric for STS-B."""

import datasets
import evaluate
from scipy.stats import pearsonr


class Pearsonr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Linear correlation between predicted and true scores.",
            citation="",
            inputs_description="predictions, references: floats",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"pearson": float(pearsonr(references, predictions)[0])}
