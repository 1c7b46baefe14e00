"""The evaluation tests run tiny models, each on one intra-op thread (`single_thread`, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def evaluation_on_one_thread(single_thread) -> None:
    """Every test of this folder uses `single_thread`."""
