"""Key mapping from moshi-finetune TTT checkpoints (Video-DiT style hybrid layers) to our `TTTBlock` layout.

In moshi-finetune a TTT layer `i` of the main transformer is a hybrid wrapper around the original layer:

    transformer.layers.{i}.original_layer.<p>                        the wrapped Moshi layer (also saved a second
    transformer.layers.{i}.seq_modeling_block.original_layer.<p>     time under the hybrid block: same module)
    transformer.layers.{i}.seq_modeling_block.ttt_layer.ttt.<name>   the TTT layer
    transformer.layers.{i}.seq_modeling_block.forward_ssm_gating.gating_alpha

Ours keeps the layer and adds `transformer.layers.{i}.ttt` (a `TTTBlock`): `ttt.gating_alpha` and
`ttt.ttt_layer.<name>`. `FINETUNE_TTT_NAMES` lists the TTT renames; the layers of their 3+-layer inner MLP
(`weights.N`, `biases.N`, N from 0) become our `W{N+1}`, `b{N+1}`. Their `backward_ssm_gating.gating_alpha` is never
used by their forward pass and has no counterpart. Layouts taken as theirs (those of
ttt-lm-pytorch / ttt-video-dit): `wq`, `wk`, `wv`, `wo` are `nn.Linear` (`weight` `[out, in]`, `bias`; a bare `wq`
tensor is read as an `nn.Linear` weight), `learnable_ttt_lr_weight` is `[H, 1, dim]` (a stack of `nn.Linear(dim, 1)`
weights; `[H, dim]` is accepted too) and `learnable_ttt_lr_bias` is `[H, 1]` (or `[H]`). Ours: `lr_gate.weight`
`[H, dim]`, `lr_gate.bias` `[H]`. Everything else has the same shape on both sides.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping

import torch

_LAYER_KEY = re.compile(r"^(?P<layer>(?:.*\.)?transformer\.layers\.\d+\.)(?P<rest>.+)$")
_DEEP_MLP_KEY = re.compile(r"^(?P<kind>weights|biases)\.(?P<index>\d+)$")
_HYBRID_TTT = "seq_modeling_block.ttt_layer.ttt."
_HYBRID_GATE = "seq_modeling_block.forward_ssm_gating.gating_alpha"
_HYBRID_PREFIX = "seq_modeling_block."
_UNUSED_GATE = "seq_modeling_block.backward_ssm_gating.gating_alpha"
_WRAPPED_PREFIXES = ("original_layer.", "seq_modeling_block.original_layer.")

# Their name under `seq_modeling_block.ttt_layer.ttt.` -> ours under `ttt.ttt_layer.`.
FINETUNE_TTT_NAMES: dict[str, str] = {
    "W1": "W1",
    "b1": "b1",
    "W2": "W2",
    "b2": "b2",
    "ttt_norm_weight": "ttt_norm_weight",
    "ttt_norm_bias": "ttt_norm_bias",
    "learnable_ttt_lr_weight": "lr_gate.weight",
    "learnable_ttt_lr_bias": "lr_gate.bias",
    "post_norm.weight": "post_norm.weight",
    "post_norm.bias": "post_norm.bias",
}
for _projection in ("wq", "wk", "wv", "wo"):
    FINETUNE_TTT_NAMES[_projection] = f"{_projection}.weight"
    FINETUNE_TTT_NAMES[f"{_projection}.weight"] = f"{_projection}.weight"
    FINETUNE_TTT_NAMES[f"{_projection}.bias"] = f"{_projection}.bias"


def _lr_weight_to_ours(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """`[H, 1, dim]` (theirs) or `[H, dim]` -> `[H, dim]`."""
    if tensor.dim() == 3 and tensor.shape[1] == 1:
        return tensor[:, 0, :]
    if tensor.dim() == 2:
        return tensor
    raise ValueError(
        f"{key}: expected a learning-rate gate weight of shape [H, 1, dim] or [H, dim], got {list(tensor.shape)}"
    )


def _lr_bias_to_ours(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """`[H, 1]` (theirs) or `[H]` -> `[H]`."""
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        return tensor[:, 0]
    if tensor.dim() == 1:
        return tensor
    raise ValueError(f"{key}: expected a learning-rate gate bias of shape [H, 1] or [H], got {list(tensor.shape)}")


_RESHAPES: dict[str, Callable[[str, torch.Tensor], torch.Tensor]] = {
    "learnable_ttt_lr_weight": _lr_weight_to_ours,
    "learnable_ttt_lr_bias": _lr_bias_to_ours,
}


def _our_ttt_name(name: str) -> str | None:
    """Our name under `ttt.ttt_layer.` for their name under `seq_modeling_block.ttt_layer.ttt.` (None: no
    counterpart)."""
    deep = _DEEP_MLP_KEY.match(name)
    if deep is not None:
        return f"{'W' if deep['kind'] == 'weights' else 'b'}{int(deep['index']) + 1}"
    return FINETUNE_TTT_NAMES.get(name)


def _target_for_layer_key(key: str, tensor: torch.Tensor, layer: str, rest: str) -> tuple[str, torch.Tensor] | None:
    """Our key and tensor for one key of a transformer layer, or None when it has no counterpart."""
    if rest.startswith(_HYBRID_TTT):
        name = rest[len(_HYBRID_TTT):]
        ours = _our_ttt_name(name)
        if ours is None:
            return None
        reshape = _RESHAPES.get(name)
        return f"{layer}ttt.ttt_layer.{ours}", reshape(key, tensor) if reshape else tensor
    if rest == _HYBRID_GATE:
        return f"{layer}ttt.gating_alpha", tensor
    for prefix in _WRAPPED_PREFIXES:
        if rest.startswith(prefix):
            return f"{layer}{rest[len(prefix):]}", tensor
    if rest.startswith(_HYBRID_PREFIX):
        return None
    return key, tensor


def map_finetune_ttt_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and reshape) a moshi-finetune TTT checkpoint to our layout.

    Returns `(mapped, unmatched)`: `mapped` holds the TTT keys under our names, the wrapped layers' keys without the
    wrapper prefix and every other key unchanged; `unmatched` lists the hybrid-block keys with no counterpart here
    (e.g. `backward_ssm_gating.gating_alpha`, which they never use, or `learnable_token_idx`). Two source keys that land
    on the same name must hold equal tensors (the wrapped layer saved twice), otherwise a ValueError is raised.
    """
    mapped: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unmatched: list[str] = []
    for key, tensor in state_dict.items():
        match = _LAYER_KEY.match(key)
        target = (key, tensor) if match is None else _target_for_layer_key(key, tensor, match["layer"], match["rest"])
        if target is None:
            unmatched.append(key)
            continue
        new_key, new_tensor = target
        if new_key in mapped:
            previous = mapped[new_key]
            if previous.shape != new_tensor.shape or not torch.equal(previous, new_tensor):
                raise ValueError(f"checkpoint keys {sources[new_key]!r} and {key!r} both map to {new_key!r} but differ")
            continue
        mapped[new_key] = new_tensor
        sources[new_key] = key
    return mapped, sorted(unmatched)


def warn_unmatched_ttt_keys(unmatched: list[str], source: str = "checkpoint") -> None:
    """One note (UserWarning) naming the checkpoint keys that `map_finetune_ttt_state_dict` could not place."""
    if unmatched:
        listed = "\n  ".join(unmatched)
        unused_gates = sum(1 for key in unmatched if key.endswith(_UNUSED_GATE))
        reason = ""
        if unused_gates:
            reason = f" ({unused_gates} of them their backward_ssm_gating, which their forward never uses)"
        warnings.warn(
            f"{source}: {len(unmatched)} moshi-finetune TTT key(s) have no counterpart and were skipped{reason}:"
            f"\n  {listed}",
            stacklevel=2,
        )
