"""The streaming lifecycle shared by every module that keeps state between calls.

A streaming module processes a long sequence in consecutive pieces. Between pieces it keeps what it needs (KV caches,
convolution tails, fast weights, counters) in a typed `State` dataclass owned by the module. The lifecycle is explicit:

    with module.streaming(batch_size):   # start: every streaming descendant creates its State
        module(piece_0)                  # step: read and update the state
        module.reset_streaming(mask)     # reset: bring the masked batch items back to their initial state
        module(piece_1)
    # stop: every State is dropped

`set_exec_mask(mask)` makes the items where the mask is False keep their state as if the next steps never happened.
A module marked with `set_streaming_detached(True)` is left alone by its parents' lifecycle and runs its own short
streams (the depformer streams over codebooks inside each time step).
`checkpoint_streaming(span)` / `rollback_streaming(checkpoint)` undo the steps taken since the checkpoint, in place
(`span` bounds how many steps that is, so states can keep only what those steps overwrite; None keeps a full copy).
`rollback_streaming(checkpoint, keep)` undoes them except the first `keep[b]` steps of each item (speculative passes
keep their verified prefix); states whose content depends on the steps support it when the checkpoint had a `span`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import torch
from torch import nn


@dataclasses.dataclass
class State:
    """Base streaming state: the batch size, the device and the per-item execution mask `[B]`.

    Subclasses add their own fields and extend `reset`. Tensors are updated in place so that a captured CUDA graph keeps
    pointing at live memory.
    """

    batch_size: int
    device: torch.device

    def __post_init__(self) -> None:
        self.exec_mask = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)

    def reset(self, reset_mask: torch.Tensor) -> None:
        """Bring the items where `reset_mask` `[B]` is True back to their initial state; they execute again."""
        self.exec_mask.logical_or_(reset_mask)

    def set_exec_mask(self, exec_mask: torch.Tensor) -> None:
        self.exec_mask.copy_(exec_mask)

    def close(self) -> None:
        """Called once when streaming stops."""

    def checkpoint(self, span: int | None) -> Any:
        """What `rollback` needs to undo the next `span` steps (any number when None); a full copy unless a subclass
        knows better."""
        return clone_state_value(self)

    def rollback(self, checkpoint: Any, keep: torch.Tensor | None = None) -> None:
        """Return, in place, to the state `checkpoint(span)` was taken in (at most `span` steps ago); with `keep` `[B]`,
        to the state after the first `keep[b]` of those steps of each item.

        This base state holds nothing that depends on the steps; a subclass that does overrides `rollback` to support
        `keep` (and refuses it where it cannot).
        """
        if keep is not None and type(self) is not State:
            raise NotImplementedError(f"{type(self).__name__} cannot keep part of the steps it undoes")
        copy_state_value_(self, checkpoint)


StateT = TypeVar("StateT", bound=State)


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def clone_state_value(value: Any) -> Any:
    """A deep copy of tensors, dataclass instances (states among them), lists and dicts; any other value is shared."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if _is_dataclass_instance(value):
        copy = object.__new__(type(value))
        for name, field_value in vars(value).items():
            setattr(copy, name, clone_state_value(field_value))
        return copy
    if isinstance(value, list):
        return [clone_state_value(v) for v in value]
    if isinstance(value, dict):
        return {k: clone_state_value(v) for k, v in value.items()}
    return value


def copy_state_value_(target: Any, source: Any) -> Any:
    """Copy `source` into `target` in place where possible (tensors, dataclass instances, lists, dicts); returns the
    result."""
    if isinstance(target, torch.Tensor) and isinstance(source, torch.Tensor) and target.shape == source.shape:
        target.copy_(source)
        return target
    if _is_dataclass_instance(target) and type(target) is type(source):
        for name, field_value in vars(source).items():
            setattr(target, name, copy_state_value_(getattr(target, name, None), field_value))
        return target
    if isinstance(target, list) and isinstance(source, list) and len(target) == len(source):
        return [copy_state_value_(t, s) for t, s in zip(target, source)]
    if isinstance(target, dict) and isinstance(source, dict) and target.keys() == source.keys():
        return {k: copy_state_value_(target[k], source[k]) for k in source}
    return clone_state_value(source)


class _StreamingSession:
    """Context manager returned by `StreamingModule.streaming`; stops streaming on exit."""

    def __init__(self, module: StreamingModule) -> None:
        self.module = module

    def __enter__(self) -> _StreamingSession:  # noqa: PYI034 (Self needs Python 3.11)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.module._stop_streaming()


class StreamingModule(nn.Module, Generic[StateT]):
    """A module that can run in streaming mode; subclasses implement `_init_streaming_state`."""

    def __init__(self) -> None:
        super().__init__()
        self._streaming_state: StateT | None = None
        self._streaming_detached = False

    def _init_streaming_state(self, batch_size: int) -> StateT:
        raise NotImplementedError(f"{type(self).__name__} must define _init_streaming_state")

    @property
    def is_streaming(self) -> bool:
        return self._streaming_state is not None

    @property
    def streaming_state(self) -> StateT:
        """The live state; raises a clear error outside `streaming(...)`."""
        if self._streaming_state is None:
            raise RuntimeError(f"{type(self).__name__} is not streaming: wrap the calls in `with module.streaming(B):`")
        return self._streaming_state

    def set_streaming_detached(self, detached: bool) -> None:
        """A detached module ignores its parents' streaming lifecycle and only streams when asked directly."""
        self._streaming_detached = detached

    def named_streaming_modules(self) -> Iterator[tuple[str, StreamingModule]]:
        """This module and its streaming descendants, stopping at detached sub-modules."""

        def visit(prefix: str, module: nn.Module) -> Iterator[tuple[str, StreamingModule]]:
            if isinstance(module, StreamingModule):
                if module._streaming_detached and prefix:
                    return
                yield prefix, module
            for name, child in module.named_children():
                yield from visit(f"{prefix}.{name}" if prefix else name, child)

        yield from visit("", self)

    def streaming(self, batch_size: int) -> _StreamingSession:
        """Start streaming with `batch_size` items; use as a context manager that stops streaming on exit."""
        self._start_streaming(batch_size)
        return _StreamingSession(self)

    def streaming_forever(self, batch_size: int) -> None:
        """Start streaming and never stop (for servers that stream until the process ends)."""
        self._start_streaming(batch_size)

    def _start_streaming(self, batch_size: int) -> None:
        modules = list(self.named_streaming_modules())
        for name, module in modules:
            if module._streaming_state is not None:
                raise RuntimeError(f"{name or type(self).__name__} is already streaming")
        try:
            for _, module in modules:
                module._streaming_state = module._init_streaming_state(batch_size)
        except Exception:
            self._stop_streaming()
            raise

    def _stop_streaming(self) -> None:
        for _, module in self.named_streaming_modules():
            if module._streaming_state is not None:
                module._streaming_state.close()
            module._streaming_state = None

    def _batch_mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        state = self.streaming_state
        if mask is None:
            return torch.ones(state.batch_size, dtype=torch.bool, device=state.device)
        mask = torch.as_tensor(mask, device=state.device).to(torch.bool)
        if mask.shape != (state.batch_size,):
            raise ValueError(f"expected a mask of shape [{state.batch_size}], got {list(mask.shape)}")
        return mask

    def reset_streaming(self, reset_mask: torch.Tensor | None = None) -> None:
        """Reset the items where `reset_mask` `[B]` is True (all items when None); the others keep their state."""
        mask = self._batch_mask(reset_mask)
        for _, module in self.named_streaming_modules():
            module.streaming_state.reset(mask)

    def set_exec_mask(self, exec_mask: torch.Tensor) -> None:
        """Items where `exec_mask` `[B]` is False keep their state unchanged by the following steps."""
        mask = self._batch_mask(exec_mask)
        for _, module in self.named_streaming_modules():
            module.streaming_state.set_exec_mask(mask)

    def get_streaming_state(self) -> dict[str, State]:
        """The live states of this module and its streaming descendants, by module name."""
        return {name: module.streaming_state for name, module in self.named_streaming_modules()}

    def set_streaming_state(self, states: dict[str, State]) -> None:
        """Install states taken with `get_streaming_state` (objects are shared, not copied)."""
        modules = dict(self.named_streaming_modules())
        if modules.keys() != states.keys():
            missing = sorted(modules.keys() - states.keys())
            extra = sorted(states.keys() - modules.keys())
            raise ValueError(f"streaming state mismatch: missing {missing}, unexpected {extra}")
        for name, module in modules.items():
            module._streaming_state = states[name]

    def checkpoint_streaming(self, span: int | None = None) -> dict[str, Any]:
        """A checkpoint of the whole streaming state from which `rollback_streaming` undoes up to `span` steps.

        With `span` None it is a full copy (any number of steps); with a bound, states may keep only what the next
        `span` steps would overwrite (attention caches do).
        """
        return {name: state.checkpoint(span) for name, state in self.get_streaming_state().items()}

    def rollback_streaming(self, checkpoint: dict[str, Any], keep: torch.Tensor | None = None) -> None:
        """Undo the steps taken since `checkpoint_streaming`, in place (live tensors keep their memory).

        `keep` `[B]` (on the state's device): the number of those steps each item keeps, its first ones; the steps taken
        since the checkpoint must then be at most its `span`, in calls the same for every item.
        """
        live = self.get_streaming_state()
        if live.keys() != checkpoint.keys():
            mismatch = sorted(live.keys() ^ checkpoint.keys())
            raise ValueError(f"checkpoint does not match the streaming modules: {mismatch}")
        for name, state in live.items():
            state.rollback(checkpoint[name], keep)


class StreamingContainer(StreamingModule[State]):
    """A streaming module with no state of its own; it only carries the lifecycle to its children."""

    def _init_streaming_state(self, batch_size: int) -> State:
        return State(batch_size, module_device(self))


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
