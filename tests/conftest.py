"""Shared test fixtures: the upstream parity folder and small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """`../shared/parity`: skipped cleanly when absent locally, a failure when absent in CI."""
    if not PARITY_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"parity fixtures are required in CI but {PARITY_DIR} is missing")
        pytest.skip(f"parity fixtures not found at {PARITY_DIR}")
    return PARITY_DIR


@pytest.fixture(scope="session", params=["lm_moshiko_tiny", "lm_moshiko_tiny_silent_user"])
def lm_case(request, parity_dir: Path):
    """Each upstream LM parity case (config, weights, inputs and expected outputs)."""
    from lm_fixtures import load_case

    return load_case(parity_dir, request.param)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op torch thread for the test: small models only lose time synchronising more (and stall on a busy
    machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
