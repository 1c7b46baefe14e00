"""Per-codebook weights of the token losses: read from a comma-separated list, checked against the codebooks scored."""

from __future__ import annotations

from collections.abc import Sequence


def parse_float_list(text: str) -> list[float]:
    """'100, 1,1' -> [100.0, 1.0, 1.0]; ValueError quoting the text when a part is not a number."""
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise ValueError(f"cannot read a comma-separated list of numbers from {text!r}") from error


def weights_for_codebooks(weights: Sequence[float] | None, num_codebooks: int) -> list[float] | None:
    """`weights` as floats, one per scored codebook (ValueError on a count mismatch); None stays None (equal
    weights)."""
    if weights is None:
        return None
    if len(weights) != num_codebooks:
        raise ValueError(f"codebook_weights has {len(weights)} values; the model scores {num_codebooks} codebooks")
    return [float(weight) for weight in weights]
