"""Shared test fixtures: the committed parity fixtures (`tests/fixtures/`) and small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """`tests/fixtures`: what upstream moshi 0.2.13 and the TTT fork's training code compute on small random models
    (`tests/fixtures/README.md` lists them and how `regenerate.py` makes them)."""
    return FIXTURES_DIR


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
