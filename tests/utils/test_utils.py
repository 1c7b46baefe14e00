"""`moshi.utils.utils.cross_entropy`: per-token values, masking, soft clipping."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from moshi.utils.utils import cross_entropy


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    targets = torch.randint(0, 7, (2, 3, 5))
    mask = torch.rand(2, 3, 5) > 0.3
    return logits, targets, mask


def test_matches_torch_cross_entropy_on_valid_tokens_and_is_zero_elsewhere() -> None:
    logits, targets, mask = _inputs()
    logits[~mask] = float("nan")
    targets[~mask] = -1
    ce = cross_entropy(logits, targets, mask)
    expected = F.cross_entropy(logits[mask], targets[mask], reduction="none")
    torch.testing.assert_close(ce[mask], expected)
    assert ce.shape == targets.shape and ce.dtype == torch.float32
    assert (ce[~mask] == 0).all()


def test_soft_clip_bounds_the_logits_first() -> None:
    logits, targets, mask = _inputs()
    logits = logits * 50
    clipped = cross_entropy(logits, targets, mask, logits_soft_clip=3.0)
    expected = cross_entropy(3.0 * torch.tanh(logits / 3.0), targets, mask)
    torch.testing.assert_close(clipped, expected)


def test_output_dtype_and_shape_errors() -> None:
    logits, targets, mask = _inputs()
    assert cross_entropy(logits.half(), targets, mask, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="targets and mask"):
        cross_entropy(logits, targets[:, :1], mask)
