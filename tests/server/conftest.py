"""Fixtures of the server tests: the demo checkpoint (random weights) written once, one CPU thread for torch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from moshi.server.demo_checkpoint import write_demo_checkpoint


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo_checkpoint")
    write_demo_checkpoint(folder)
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The models are tiny: extra intra-op threads only add synchronisation (and stall on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
