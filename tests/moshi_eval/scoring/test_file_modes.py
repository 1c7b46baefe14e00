"""Acceptance 6: results, per-sequence records and codes-cache entries get the mode of the process umask (0644 under
umask 022), so colleagues on a shared machine can read them and share a cache."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from moshi_eval.librilight.results import LibriLightResult
from moshi_eval.scoring.data import CodesCache
from moshi_eval.scoring.run import SequenceLosses, SequenceStore


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, expected):
    os.umask(mask)
    sequence = SequenceLosses("s", np.ones((3, 2), dtype=np.float32), ["s.flac"])
    LibriLightResult([sequence], card=16, frame_rate=12.5, positions=[2], window=1).write_json(tmp_path / "r.json")
    store = SequenceStore(tmp_path / "r.sequences", "run", num_codebooks=2)
    store.save(["s.flac"], sequence)
    cache = CodesCache(tmp_path / "cache")
    cache.put({"entry": 1}, torch.zeros(8, 4, dtype=torch.long), complete=True)
    for path in (tmp_path / "r.json", store.path_for("s", ["s.flac"]), cache.path_for({"entry": 1})):
        assert mode(path) == expected, path
    assert store.load("s", ["s.flac"]).sequence_id == "s" and cache.get({"entry": 1}, 4, 8, 16, "e").shape == (8, 4)
    assert [p.name for p in (tmp_path / "r.sequences").iterdir()] == [store.path_for("s", ["s.flac"]).name]
