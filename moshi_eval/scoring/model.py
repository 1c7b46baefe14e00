"""The scored model: how the results describe it (`model_identity`), what its scoring says about it (`scoring_flags`),
the settings it must have been built with (`check_long_context`), and eval mode around an evaluation (`eval_mode`).

The model itself is named, loaded and put on a device by `moshi.models.model_flags`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .files import weights_fingerprint

if TYPE_CHECKING:
    from moshi.models.lm import LMModel

TTT_CAUSAL_FORM_FLAG = (
    "ttt_causal_form: the model's TTT config reads each mini-batch non-causally (minibatch_causal=False, as "
    "moshi-finetune trains), which cannot stream; these losses are of its causal form, not of its training function "
    "(docs/ttt.md)"
)


def count_ttt_layers(lm: torch.nn.Module) -> int:
    return sum(1 for module in lm.modules() if hasattr(module, "ttt_layer"))


def model_identity(lm: LMModel, source: dict[str, Any] | None = None) -> dict[str, Any]:
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


def computation_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What of a `model_identity` changes the numbers the model computes, for resume keys: the weights fingerprint,
    dtype, attention context, RoPE period and, for a TTT model, its TTT config (mini-batch size, learning rate, form...
    change the losses without changing a weight)."""
    keys = {"model": identity["fingerprint"], "dtype": identity["dtype"], "context": identity["context"],
            "rope_max_period": identity["rope_max_period"]}
    if "ttt_config" in identity:
        keys["ttt"] = identity["ttt_config"]
    return keys


def scoring_flags(lm: LMModel) -> list[str]:
    """What the results must say about how the model was scored: its TTT layers streamed in their causal form when
    its config is non-causal."""
    config = getattr(lm, "ttt_config", None)
    if config is not None and not config.minibatch_causal and count_ttt_layers(lm):
        return [TTT_CAUSAL_FORM_FLAG]
    return []


def check_long_context(lm: LMModel, context: int | None, rope_max_period: float | None) -> None:
    """Settings that record a `context` / `rope_max_period` must be those `lm` was built with (a ValueError saying how
    to build it otherwise): the results' `config` records them."""
    built = {"context": lm.context, "rope_max_period": float(lm.transformer.max_period)}
    for name, value in (("context", context), ("rope_max_period", rope_max_period)):
        if value is not None and value != built[name]:
            raise ValueError(f"{name} is {value} in the settings but the model was built with {built[name]}: build it "
                             f"with that {name} (--{name.replace('_', '-')}, or ModelRequest({name}=...))")


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Modules in eval mode inside the block, each back in its own mode afterwards (a training loop may evaluate the
    model it trains); None entries are passed over."""
    present = [module for module in modules if module is not None]
    modes = [module.training for module in present]
    for module in present:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(present, modes):
            module.train(mode)
