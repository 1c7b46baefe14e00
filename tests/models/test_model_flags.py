"""`moshi.models.model_flags`: the device rule (`cuda` becomes an explicit `cuda:<index>`, what
`torch.cuda.set_device` needs; unusable devices are errors naming the value), the flags' two spellings, the request."""

from __future__ import annotations

import pytest
import torch

from moshi.models.model_flags import resolve_device, select_device


@pytest.mark.parametrize(("requested", "local_rank", "count", "expected"), [
    ("cuda", 0, 1, "cuda:0"),
    ("cuda", 3, 2, "cuda:1"),
    ("cuda:1", 0, 2, "cuda:1"),
    ("cpu", 0, 2, "cpu"),
    (None, 0, 0, "cpu"),
    (None, 5, 4, "cuda:1"),
])
def test_devices_are_explicit(requested, local_rank, count, expected):
    device = resolve_device(requested, local_rank, cuda_count=count)
    assert device == expected
    assert torch.device(device).type != "cuda" or torch.device(device).index is not None


@pytest.mark.parametrize(("requested", "count", "message"), [
    ("cuda", 0, "--device cuda: no CUDA GPU is visible"),
    ("cuda:2", 2, r"--device cuda:2: only 2 CUDA device\(s\) are visible \(cuda:0 to cuda:1\)"),
    ("gpu", 1, "--device 'gpu' is not a device"),
])
def test_unusable_devices_are_named(requested, count, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(requested, cuda_count=count)


def test_selecting_cuda_passes_an_indexed_device(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    select_device(resolve_device("cuda", local_rank=0, cuda_count=1))
    select_device("cpu")
    assert chosen == [torch.device("cuda:0")]
