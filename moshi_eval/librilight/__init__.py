"""Exact long-context audio loss of Moshi models on LibriLight, in one teacher-forced streaming pass.

    from moshi_eval.librilight import evaluate_librilight
    result = evaluate_librilight(lm, mimi, audio_dir="/data/librilight/small", batch_size=4)
    result.to_dict()["librilight_loss_24k"]

Command line: `python -m moshi_eval.librilight --help` (and `--demo`). See docs/librilight.md.
"""

from ..scoring.errors import NonFiniteLossError
from ..scoring.run import SequenceLosses
from .config import LibriLightConfig
from .evaluate import evaluate_librilight, evaluate_librilight_long_context
from .results import LibriLightResult

__all__ = [
    "LibriLightConfig",
    "LibriLightResult",
    "NonFiniteLossError",
    "SequenceLosses",
    "evaluate_librilight",
    "evaluate_librilight_long_context",
]
