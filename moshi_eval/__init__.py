"""Evaluation tools built on the `moshi` package: `moshi_eval.librilight` (long-context loss) and
`moshi_eval.paper_metrics` (sWUGGY, sBLIMP, spoken and topic StoryCloze).

`from moshi_eval import PaperMetricsEvaluator` gives the class the training scripts of the moshi-finetune TTT fork
construct (`moshi_eval.training_metrics`, above both benchmarks); it is imported on first use, so that importing
`moshi_eval` loads nothing else.
"""

from typing import Any

__all__ = ["PaperMetricsEvaluator"]


def __getattr__(name: str) -> Any:
    if name == "PaperMetricsEvaluator":
        from .training_metrics import PaperMetricsEvaluator

        return PaperMetricsEvaluator
    raise AttributeError(f"module 'moshi_eval' has no attribute {name!r}")
