"""Shared test fixtures: the upstream parity folder and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
