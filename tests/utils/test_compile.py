"""CUDA-graph wrapper: plain calls on CPU and when turned off, capture and replay on GPU."""

from __future__ import annotations

import pytest
import torch

from moshi.utils.compile import CUDAGraphed, cuda_graphs_disabled_by_env, no_cuda_graph


class _CountingStep:
    """`x -> 2 x + y` over a nested input, counting Python-level calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pair: tuple[torch.Tensor, list[torch.Tensor]], scale: float = 2.0) -> torch.Tensor:
        self.calls += 1
        x, (y,) = pair
        return scale * x + y


def test_cpu_calls_go_straight_through() -> None:
    step = _CountingStep()
    graphed = CUDAGraphed(step, warmup_steps=0)
    for i in range(3):
        x, y = torch.full((2,), float(i)), torch.ones(2)
        torch.testing.assert_close(graphed((x, [y])), 2 * x + y)
    assert step.calls == 3
    assert not graphed.is_captured


@pytest.mark.parametrize(("value", "disabled"), [("1", True), ("yes", True), ("0", False), ("", False), ("no", False)])
def test_no_cuda_graph_env_is_read(monkeypatch: pytest.MonkeyPatch, value: str, disabled: bool) -> None:
    monkeypatch.setenv("NO_CUDA_GRAPH", value)
    assert cuda_graphs_disabled_by_env() is disabled


def test_env_and_flag_turn_capture_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with inputs that would otherwise be captured, the switches make every call a plain call."""
    monkeypatch.setenv("NO_CUDA_GRAPH", "1")
    step = _CountingStep()
    graphed = CUDAGraphed(step, warmup_steps=0)
    assert graphed._should_call_through((torch.zeros(1),), {})
    monkeypatch.delenv("NO_CUDA_GRAPH")
    assert CUDAGraphed(step, disable=True)._should_call_through((torch.zeros(1),), {})
    with no_cuda_graph():
        assert CUDAGraphed(step)._should_call_through((torch.zeros(1),), {})


def test_negative_warmup_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        CUDAGraphed(_CountingStep(), warmup_steps=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_capture_replays_with_new_inputs() -> None:
    step = _CountingStep()
    graphed = CUDAGraphed(step, warmup_steps=1)
    device = torch.device("cuda")
    results = []
    for i in range(4):
        x, y = torch.full((3,), float(i), device=device), torch.full((3,), 10.0 * i, device=device)
        results.append((graphed((x, [y])).clone(), 2 * x + y))
    assert graphed.is_captured
    assert step.calls == 2
    for got, expected in results:
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="captured as"):
        graphed((torch.zeros(5, device=device), [torch.zeros(5, device=device)]))
    with pytest.raises(ValueError, match="scale"):
        graphed((torch.zeros(3, device=device), [torch.zeros(3, device=device)]), scale=3.0)
    graphed.reset()
    out = graphed((torch.ones(5, device=device), [torch.ones(5, device=device)]))
    torch.testing.assert_close(out, torch.full((5,), 3.0, device=device))


def test_changed_keyword_names_are_reported() -> None:
    from moshi.utils.compile import copy_into_static

    with pytest.raises(ValueError, match=r"kwargs was captured with keys \[\], got \['scale'\]"):
        copy_into_static({}, {"scale": 3.0}, "kwargs")
