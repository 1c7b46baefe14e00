"""What the text stream gets at each teacher-forced step while audio is scored.

- `greedy`: the model's own argmax (the text Moshi would write; found by speculation in chunked scoring);
- `sample`: drawn from the model (seeded; per-step scoring only);
- `pad`: the text padding token (the model is told it says no word);
- `zero`: the zero token, "no input": the text stream is absent, as in a parallel forward whose text row is the zero
  token.

Kept free of torch so that command lines can list the choices before loading anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TEXT_POLICIES = ("greedy", "sample", "pad", "zero")
CHUNKED_TEXT_POLICIES = ("greedy", "pad", "zero")


def check_text_policy(text_policy: str, allowed: Sequence[str] = TEXT_POLICIES) -> None:
    """Raise a ValueError naming the policy when it is not one of `allowed`."""
    if text_policy not in allowed:
        raise ValueError(f"text policy {text_policy!r} is not supported here; use one of {', '.join(allowed)}")


def forced_text_token(lm: Any, text_policy: str) -> int | None:
    """The text token every step is forced to under `text_policy` (None: chosen by the model, greedy or sampled)."""
    if text_policy == "pad":
        return int(lm.text_padding_token_id)
    if text_policy == "zero":
        return int(lm.zero_token_id)
    return None
