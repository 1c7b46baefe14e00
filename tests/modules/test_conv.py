"""Causal streaming convolutions: whole-signal values, piecewise streaming, per-item reset and exec mask."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch.nn import functional as F

from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d

CONV_CASES = [(k, s, d) for k, s, d in itertools.product([1, 3, 4, 7, 8], [1, 2, 4], [1, 2]) if k >= s]


def reference_causal_conv(conv: StreamingConv1d, x: torch.Tensor, pad_mode: str) -> torch.Tensor:
    """Left pad by effective kernel - stride (zeros or first sample), then a plain conv1d."""
    inner = conv.conv.conv
    pad = (inner.kernel_size[0] - 1) * inner.dilation[0] + 1 - inner.stride[0]
    left = x[..., :1].repeat(1, 1, pad) if pad_mode == "replicate" else torch.zeros_like(x[..., :1]).repeat(1, 1, pad)
    padded = torch.cat([left, x], dim=-1)
    return F.conv1d(padded, inner.weight, inner.bias, inner.stride, 0, inner.dilation, inner.groups)


def reference_causal_conv_transpose(convtr: StreamingConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """Full transposed convolution, cut to `T * stride` outputs."""
    inner = convtr.convtr.convtr
    full = F.conv_transpose1d(x, inner.weight, inner.bias, inner.stride, groups=inner.groups)
    return full[..., : x.shape[-1] * inner.stride[0]]


def conv_and_signal(seed: int, out_channels: int, kernel: int, stride: int, dilation: int,
                    pad_mode: str) -> tuple[StreamingConv1d, torch.Tensor]:
    """A seeded conv from 3 channels and a signal `[2, 3, 12 * stride]` (12 output steps)."""
    torch.manual_seed(seed)
    conv = StreamingConv1d(3, out_channels, kernel, stride, dilation=dilation, pad_mode=pad_mode)
    return conv, torch.randn(2, 3, 12 * stride)


def stream(module: torch.nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    with module.streaming(x.shape[0]):
        return torch.cat([module(piece) for piece in x.split(chunk, dim=-1)], dim=-1)


@pytest.mark.parametrize(("kernel", "stride", "dilation"), CONV_CASES)
@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_conv_whole_signal_matches_causal_reference(kernel: int, stride: int, dilation: int, pad_mode: str) -> None:
    conv, x = conv_and_signal(0, 5, kernel, stride, dilation, pad_mode)
    with torch.no_grad():
        y = conv(x)
        expected = reference_causal_conv(conv, x, pad_mode)
    assert y.shape == (2, 5, 12)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kernel", "stride", "dilation"), CONV_CASES)
@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_conv_streaming_equals_whole_signal(kernel: int, stride: int, dilation: int, pad_mode: str) -> None:
    conv, x = conv_and_signal(1, 4, kernel, stride, dilation, pad_mode)
    with torch.no_grad():
        whole = conv(x)
        for chunk_steps in (1, 3):
            torch.testing.assert_close(stream(conv, x, chunk_steps * stride), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kernel", "stride"), [(1, 1), (3, 1), (4, 2), (8, 4), (5, 2), (12, 6)])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_whole_signal_and_streaming(kernel: int, stride: int, groups: int) -> None:
    torch.manual_seed(2)
    convtr = StreamingConvTranspose1d(4, 6, kernel, stride, groups=groups)
    x = torch.randn(2, 4, 9)
    with torch.no_grad():
        y = convtr(x)
        torch.testing.assert_close(y, reference_causal_conv_transpose(convtr, x), rtol=1e-5, atol=1e-6)
        for chunk in (1, 2, 4):
            torch.testing.assert_close(stream(convtr, x, chunk), y, rtol=1e-5, atol=1e-6)
    assert y.shape == (2, 6, 9 * stride)


def test_bad_lengths_and_settings_raise_clear_errors() -> None:
    conv = StreamingConv1d(2, 2, 4, stride=2)
    with pytest.raises(ValueError, match="multiple of the stride 2"):
        conv(torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="positive multiple"):
        conv(torch.zeros(1, 2, 0))
    with pytest.raises(ValueError, match="norm"):
        StreamingConv1d(2, 2, 3, norm="weight_norm")
    with pytest.raises(ValueError, match="causal"):
        StreamingConvTranspose1d(2, 2, 4, 2, causal=False)
    with pytest.raises(ValueError, match="pad_mode"):
        StreamingConv1d(2, 2, 3, pad_mode="reflect")


def check_reset_only_touches_masked_items(module: torch.nn.Module, channels: int, length: int, reset: list[bool]):
    """Stream two pieces `[2, channels, length]` with a reset of the items in `reset` between them: a reset item
    continues like a fresh stream, the others like one unbroken call."""
    first, second = torch.randn(2, channels, length), torch.randn(2, channels, length)
    with torch.no_grad():
        unbroken = module(torch.cat([first, second], dim=-1))
        unbroken = unbroken[..., unbroken.shape[-1] // 2:]
        fresh = module(second)
        with module.streaming(2):
            module(first)
            module.reset_streaming(torch.tensor(reset))
            after_reset = module(second)
    for item, was_reset in enumerate(reset):
        torch.testing.assert_close(after_reset[item], (fresh if was_reset else unbroken)[item])


@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_conv_reset_only_touches_masked_items(pad_mode: str) -> None:
    torch.manual_seed(3)
    check_reset_only_touches_masked_items(
        StreamingConv1d(2, 3, 7, stride=1, dilation=2, pad_mode=pad_mode), channels=2, length=8, reset=[False, True])


def test_conv_transpose_reset_only_touches_masked_items() -> None:
    torch.manual_seed(4)
    check_reset_only_touches_masked_items(
        StreamingConvTranspose1d(3, 2, 8, stride=4), channels=3, length=5, reset=[True, False])


@pytest.mark.parametrize(
    "make",
    [lambda: StreamingConv1d(2, 3, 4, stride=2, pad_mode="replicate"), lambda: StreamingConvTranspose1d(2, 3, 6, 3)],
)
def test_exec_mask_freezes_the_state_of_skipped_items(make: Callable[[], torch.nn.Module]) -> None:
    torch.manual_seed(5)
    module = make()
    a, skipped, b = torch.randn(2, 2, 6), torch.randn(2, 2, 6), torch.randn(2, 2, 6)
    with torch.no_grad():
        with module.streaming(2):
            module(a)
            module.set_exec_mask(torch.tensor([True, False]))
            module(skipped)
            module.set_exec_mask(torch.tensor([True, True]))
            masked = module(b)
        with module.streaming(2):
            module(a)
            module(skipped)
            ran = module(b)
        with module.streaming(2):
            module(a)
            never_skipped = module(b)
    torch.testing.assert_close(masked[0], ran[0])
    torch.testing.assert_close(masked[1], never_skipped[1])


def test_replicate_padding_restarts_from_first_sample_after_reset() -> None:
    torch.manual_seed(6)
    conv = StreamingConv1d(1, 1, 6, stride=2, pad_mode="replicate")
    x = torch.randn(1, 1, 8) + 3.0
    with torch.no_grad():
        with conv.streaming(1):
            conv(torch.randn(1, 1, 8))
            conv.reset_streaming()
            again = conv(x)
        torch.testing.assert_close(again, conv(x))
