"""Acceptance 4: a run interrupted after one of three sequences resumes without recomputing it."""

from __future__ import annotations

import json

import pytest
import torch
from librilight_helpers import comparable, random_codes, write_codes
from lm_fixtures import load_case

from moshi_eval.librilight import evaluate_librilight
from moshi_eval.scoring.scorer import StepScorer

pytestmark = pytest.mark.filterwarnings("ignore::moshi_eval.scoring.errors.WorseThanUniformWarning")


class Interrupted(Exception):
    pass


def interrupt_after_first(sequence) -> None:
    raise Interrupted(sequence.sequence_id)


def test_interrupted_run_resumes_without_recomputing(parity_dir, tmp_path, monkeypatch):
    case = load_case(parity_dir, "lm_moshiko_tiny_silent_user")
    generator = torch.Generator().manual_seed(3)
    for index, length in enumerate((18, 26, 31)):
        write_codes(tmp_path / "codes", f"seq{index}", random_codes(generator, 8, length, case.config["card"]))
    settings = {"codes": [str(tmp_path / "codes")], "user_stream": "zero", "positions": [15], "window": 5,
                "batch_size": 1, "progress": False}

    reference = evaluate_librilight(case.model(), None, output=str(tmp_path / "fresh.json"), **settings).to_dict()

    output = tmp_path / "resumed.json"
    with pytest.raises(Interrupted):
        evaluate_librilight(case.model(), None, output=str(output), on_sequence=interrupt_after_first, **settings)
    partial = json.loads(output.read_text())
    assert partial["complete"] is False and partial["num_sequences"] == 1
    first_done = partial["sequences"][0]["id"]

    scored_ids: list[str] = []
    original_run = StepScorer.run

    def counting_run(self, items, *args, **kwargs):
        scored_ids.extend(item.sequence_id for item in items)
        return original_run(self, items, *args, **kwargs)

    monkeypatch.setattr(StepScorer, "run", counting_run)
    final = evaluate_librilight(case.model(), None, output=str(output), **settings)
    assert first_done not in scored_ids and len(scored_ids) == 2
    written = json.loads(output.read_text())
    assert written["complete"] is True and written["timing"]["resumed_sequences"] == 1
    assert comparable(written) == comparable(reference) == comparable(final.to_dict())


def test_changed_settings_do_not_reuse_records(parity_dir, tmp_path):
    case = load_case(parity_dir, "lm_moshiko_tiny_silent_user")
    write_codes(tmp_path / "codes", "only", random_codes(torch.Generator().manual_seed(0), 8, 16, case.config["card"]))
    settings = {"codes": [str(tmp_path / "codes")], "user_stream": "zero", "positions": [10], "window": 5,
                "output": str(tmp_path / "r.json"), "progress": False}
    evaluate_librilight(case.model(), None, text_policy="greedy", **settings)
    second = evaluate_librilight(case.model(), None, text_policy="pad", **settings)
    assert second.timing["resumed_sequences"] == 0
    third = evaluate_librilight(case.model(), None, text_policy="pad", **settings)
    assert third.timing["resumed_sequences"] == 1
