"""The Python entry point kept for code written against the older `PaperMetricsEvaluator`."""

from __future__ import annotations

import pytest
from librilight_helpers import write_codes
from lm_fixtures import load_case

from moshi_eval.librilight import evaluate_librilight_long_context
from moshi_eval.scoring.errors import SettingsNoteWarning

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")


def test_long_context_entry_point_takes_legacy_config(parity_dir, tmp_path):
    case = load_case(parity_dir, "lm_moshiko_tiny_silent_user")
    for b in range(case.batch_size):
        write_codes(tmp_path, f"item{b}", case.io["own_audio"][b])
    config = {"codes": [str(tmp_path)], "user_stream": "zero", "positions": [8, 16], "window": 4,
              "librilight_streaming": {"max_sequence_length": 12, "memory_check_enabled": True}}
    with pytest.warns(SettingsNoteWarning, match="memory_check_enabled"):
        metrics = evaluate_librilight_long_context(case.model(), None, config)
    assert metrics["librilight_samples"] == 12 * case.batch_size
    assert metrics["librilight_loss_8"] is not None and metrics["librilight_loss_16"] is None
    assert isinstance(metrics["librilight_slope"], float)
    with pytest.raises(ValueError, match="unknown"):
        evaluate_librilight_long_context(case.model(), None, {"codes": [str(tmp_path)], "paper_metrics_x": 1})
