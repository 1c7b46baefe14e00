"""CUDA-graph capture of per-step calls.

Streaming inference calls the same small function (one transformer step, one depformer step) thousands of times with
inputs of identical shapes. On GPU the launch overhead of its many small kernels dominates; recording them once in a
CUDA graph and replaying the graph removes it. `CUDAGraphed` wraps such a function:

    step = CUDAGraphed(model.forward_text, warmup_steps=1)
    out = step(tokens)          # first call(s): plain calls (warm-up)
    out = step(tokens)          # capture, then every later call: copy the inputs in, replay

Rules that follow from replaying a recorded graph:
- every call must use the same structure and shapes; tensors are copied into static input buffers, other arguments
  must keep their values;
- the returned tensors are the graph's static outputs, overwritten by the next call: copy them if they must outlive it;
- state the function updates must be updated in place (the streaming `State` tensors are).

The wrapper calls straight through when `disable=True`, when no input tensor lives on a CUDA device (so CPU runs are
never captured), inside `no_cuda_graph()`, under another wrapper's warm-up or capture, and when the environment
variable `NO_CUDA_GRAPH` is set to anything but an empty string, `0`, `false` or `no`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

_FALSE_ENV_VALUES = ("", "0", "false", "no", "n", "off")
_disabled_depth = 0
_active_depth = 0


def cuda_graphs_disabled_by_env() -> bool:
    """True when the environment variable `NO_CUDA_GRAPH` asks to run every step without CUDA graphs."""
    return os.environ.get("NO_CUDA_GRAPH", "").strip().lower() not in _FALSE_ENV_VALUES


def in_cuda_graph() -> bool:
    """True while a `CUDAGraphed` function is warming up or being captured (nested wrappers call through)."""
    return _active_depth > 0


@contextmanager
def no_cuda_graph() -> Iterator[None]:
    """Run every `CUDAGraphed` call inside this block as a plain call."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


@contextmanager
def _mark_active() -> Iterator[None]:
    global _active_depth
    _active_depth += 1
    try:
        yield
    finally:
        _active_depth -= 1


def _iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _iter_tensors(item)


def _clone_tensors(value: Any) -> Any:
    """The same nested structure with every tensor cloned (the static input buffers of a capture)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone_tensors(item) for item in value)
    if isinstance(value, dict):
        return {key: _clone_tensors(item) for key, item in value.items()}
    return value


def copy_into_static(static: Any, value: Any, where: str) -> None:
    """Copy the tensors of `value` into the matching static buffers; the rest of the structure must be unchanged."""
    if isinstance(static, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"CUDA-graphed argument {where} was a tensor at capture, got {type(value).__name__}")
        if value.shape != static.shape or value.dtype != static.dtype or value.device != static.device:
            raise ValueError(
                f"CUDA-graphed argument {where} was captured as {list(static.shape)} {static.dtype} on "
                f"{static.device}, got {list(value.shape)} {value.dtype} on {value.device}; call reset() after a "
                "change of shapes, or set NO_CUDA_GRAPH=1"
            )
        static.copy_(value)
    elif isinstance(static, (tuple, list)):
        if not isinstance(value, (tuple, list)) or len(value) != len(static):
            raise ValueError(f"CUDA-graphed argument {where} changed structure since the capture")
        for index, (static_item, item) in enumerate(zip(static, value)):
            copy_into_static(static_item, item, f"{where}[{index}]")
    elif isinstance(static, dict):
        if not isinstance(value, dict) or value.keys() != static.keys():
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"CUDA-graphed argument {where} was captured with keys {sorted(static)}, got {got}")
        for key, static_item in static.items():
            copy_into_static(static_item, value[key], f"{where}[{key!r}]")
    elif isinstance(value, torch.Tensor) or not (value is static or value == static):
        raise ValueError(f"CUDA-graphed argument {where} was {static!r} at capture, got {value!r}")


@dataclass
class _Capture:
    """A recorded graph with its static input buffers and output."""

    graph: torch.cuda.CUDAGraph
    args: tuple
    kwargs: dict
    output: Any


class CUDAGraphed:
    """Wraps `fn` so that on GPU its calls replay one captured CUDA graph.

    Args:
        fn: the per-step function; its tensor inputs may be nested in tuples, lists and dicts.
        warmup_steps: plain calls made before the capture (lets lazy initialisations happen outside the graph).
        disable: always call `fn` directly.
    """

    def __init__(self, fn: Callable[..., Any], warmup_steps: int = 1, disable: bool = False) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.fn = fn
        self.disable = disable
        self._warmups_left = warmup_steps
        self._capture: _Capture | None = None

    @property
    def is_captured(self) -> bool:
        return self._capture is not None

    def reset(self, warmup_steps: int = 0) -> None:
        """Drop the captured graph; the next calls warm up `warmup_steps` times, then capture again."""
        self._warmups_left = warmup_steps
        self._capture = None

    def _turned_off(self) -> bool:
        return self.disable or _disabled_depth > 0 or cuda_graphs_disabled_by_env()

    def _should_call_through(self, args: tuple, kwargs: dict) -> bool:
        if self._turned_off() or in_cuda_graph():
            return True
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return True
        return not any(tensor.is_cuda for tensor in _iter_tensors((args, kwargs)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._capture is not None and not self._turned_off():
            return self._replay(self._capture, args, kwargs)
        if self._capture is not None or self._should_call_through(args, kwargs):
            return self.fn(*args, **kwargs)
        with _mark_active():
            if self._warmups_left > 0:
                self._warmups_left -= 1
                return self.fn(*args, **kwargs)
            return self._record(args, kwargs)

    def _record(self, args: tuple, kwargs: dict) -> Any:
        static_args, static_kwargs = _clone_tensors((args, kwargs))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.fn(*static_args, **static_kwargs)
        self._capture = _Capture(graph, static_args, static_kwargs, output)
        graph.replay()
        return output

    @staticmethod
    def _replay(capture: _Capture, args: tuple, kwargs: dict) -> Any:
        copy_into_static(capture.args, args, "args")
        copy_into_static(capture.kwargs, kwargs, "kwargs")
        capture.graph.replay()
        return capture.output
