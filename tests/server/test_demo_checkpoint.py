"""`moshi.server.demo_checkpoint`: a folder the loaders read like a released checkpoint, whose Mimi tells sounds and
codes apart (what the server tests rely on to see the user's audio reach the model and the reply change)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moshi.models import loaders
from moshi.server.demo_checkpoint import DEMO_FILE_NAMES, calibration_audio, main


def test_the_command_writes_a_loadable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "demo")]) == 0
    assert f"--hf-repo {tmp_path / 'demo'}" in capsys.readouterr().out
    info = loaders.CheckpointInfo.from_hf_repo(tmp_path / "demo")
    assert {path.name for path in (tmp_path / "demo").iterdir()} == {"config.json", *DEMO_FILE_NAMES.values()}
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    assert info.get_text_tokenizer().vocab_size() == lm.text_card
    assert lm.ttt_config is not None


def test_the_demo_mimi_tells_sounds_and_codes_apart(demo_checkpoint: Path) -> None:
    mimi = loaders.CheckpointInfo.from_hf_repo(demo_checkpoint).get_mimi()
    with torch.no_grad():
        codes = mimi.encode(torch.from_numpy(calibration_audio(4.0, seed=11))[None, None])
        assert len(torch.unique(codes[0, 0])) > 5  # different frames, different semantic codes
        other = torch.randint(0, mimi.cardinality, codes.shape, generator=torch.Generator().manual_seed(0))
        assert (mimi.decode(codes) - mimi.decode(other)).abs().mean() > 0.1 * mimi.decode(codes).abs().mean()
