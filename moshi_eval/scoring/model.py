"""Describing the scored model in the results (`model_identity`) and what its scoring says about it (`model_flags`).

The model itself is named and loaded by `moshi.models.model_flags`."""

from __future__ import annotations

from typing import Any

import torch

from .fingerprint import weights_fingerprint

TTT_CAUSAL_FORM_FLAG = (
    "ttt_causal_form: the model's TTT config reads each mini-batch non-causally (minibatch_causal=False, as "
    "moshi-finetune trains), which cannot stream; these losses are of its causal form, not of its training function "
    "(docs/ttt.md)"
)


def count_ttt_layers(lm: torch.nn.Module) -> int:
    return sum(1 for module in lm.modules() if hasattr(module, "ttt_layer"))


def model_identity(lm: Any, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the results say about the model: where it came from, its shape and a weights fingerprint."""
    first = next(iter(lm.parameters()))
    return {
        "source": source or {},
        "class": type(lm).__name__,
        "fingerprint": weights_fingerprint(lm),
        "num_parameters": int(sum(p.numel() for p in lm.parameters())),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
        "dep_q": int(lm.dep_q),
        "n_q": int(lm.n_q),
        "card": int(lm.card),
        "text_card": int(lm.text_card),
        "delays": [int(d) for d in lm.delays],
        "context": lm.context,
        "rope_max_period": float(lm.transformer.max_period),
        "ttt_layers": count_ttt_layers(lm),
        **({"ttt_config": lm.ttt_config.to_dict()} if getattr(lm, "ttt_config", None) is not None else {}),
    }


def model_flags(lm: Any) -> list[str]:
    """What the results must say about how the model was scored: its TTT layers streamed in their causal form when
    its config is non-causal."""
    config = getattr(lm, "ttt_config", None)
    if config is not None and not config.minibatch_causal and count_ttt_layers(lm):
        return [TTT_CAUSAL_FORM_FLAG]
    return []


def check_long_context(lm: Any, context: int | None, rope_max_period: float | None) -> None:
    """Settings that record a `context` / `rope_max_period` must be those `lm` was built with (a ValueError saying how
    to build it otherwise): the results' `config` records them."""
    built = {"context": lm.context, "rope_max_period": float(lm.transformer.max_period)}
    for name, value in (("context", context), ("rope_max_period", rope_max_period)):
        if value is not None and value != built[name]:
            raise ValueError(f"{name} is {value} in the settings but the model was built with {built[name]}: build it "
                             f"with that {name} (--{name.replace('_', '-')}, or ModelRequest({name}=...))")
