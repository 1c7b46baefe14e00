"""sWUGGY, sBLIMP, spoken and topic StoryCloze for Moshi models: every utterance scored exactly, in batches.

    from moshi_eval.paper_metrics import evaluate_paper_metrics
    metrics = evaluate_paper_metrics(lm, mimi, {"swuggy_dir": "/data/sLM21/lexical/dev", "sstory_dir": "/data/sSC"})
    metrics["swuggy_accuracy"], metrics["paper_metrics_avg"]

Command line: `python -m moshi_eval.paper_metrics --help`. See docs/paper_metrics.md.
"""

from .config import PaperMetricsConfig
from .evaluate import evaluate_paper_metrics
from .results import PaperMetricsResult

__all__ = [
    "PaperMetricsConfig",
    "PaperMetricsResult",
    "evaluate_paper_metrics",
]
