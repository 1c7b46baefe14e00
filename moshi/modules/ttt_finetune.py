"""The `ttt:` section of a moshi-finetune training YAML (the TTT fork's `TTTArgs`) as `TTTConfig` settings.

Their layer (a hybrid wrapper around a Moshi layer, always a TTT-MLP) computes a different function from the reference
TTT: no output LayerNorm / projection, L2-normalised Q and K, optional RoPE on them, a LayerNorm'd reconstruction
target, a non-causal mini-batch weighted 1/b with zero padding, inner LayerNorm eps 1e-8, a clamped gate, and for 3+
inner layers an update counted twice by the queries. `finetune_section_settings` spells each of these out as a
`TTTConfig` field; `docs/ttt.md` has the table. Only the section's keys are read here, never their code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FINETUNE_DEFAULTS: dict[str, Any] = {
    "enable": False,
    "layers": "middle",
    "base_lr": 1.0,
    "mini_batch_size": 16,
    "initial_gating_alpha": 0.1,
    "ttt_layer_context": None,
    "non_ttt_layer_context": None,
    "ttt_mlp_layers": 2,
    "ttt_mlp_hidden_dims": None,
    "ttt_mlp_expansion_factor": 4.0,
    "use_rope": False,
    "rope_theta": 10000.0,
}
"""Their defaults for every key that changes the function their model computes."""

TRAINING_ONLY_KEYS = (
    "persistent_states",
    "override_gating_alpha_on_resume",
    "weight_lr_multiplier",
    "alpha_lr_multiplier",
    "log_inner_loop_losses",
    "inner_loop_log_interval",
    "save_inner_loop_plots",
    "inner_loop_plot_dir",
    "optimize_chunk_size",
    "chunk_size",
    "max_chunk_size",
    "prefer_efficiency",
    "normalize_ttt_output",
    "target_output_norm",
    "unfrozen_attention_layers",
    "enable_training_diagnostics",
    "training_diagnostic_frequency",
)
"""Keys of their `TTTArgs` that steer training, logging or their own evaluation, never the model's function
(`normalize_ttt_output` / `target_output_norm` are read into their config but no layer uses them)."""

FINETUNE_KEYS = frozenset(FINETUNE_DEFAULTS) | frozenset(TRAINING_ONLY_KEYS)

TWO_LAYER_EXPANSION = 4
"""Their two-layer TTT-MLP is always 4 head dims wide, whatever `ttt_mlp_expansion_factor` says."""
INNER_NORM_EPS = 1e-8
"""Their inner LayerNorm eps (forward and closed-form backward)."""
GATE_CLAMP = 3.0


FLOAT_KEYS = ("base_lr", "initial_gating_alpha", "ttt_mlp_expansion_factor", "rope_theta")
INT_KEYS = ("mini_batch_size", "ttt_mlp_layers", "ttt_layer_context", "non_ttt_layer_context")


def _as_number(key: str, value: Any) -> Any:
    """A numeric string (YAML reads `1e-3` as a string) converted as their argument classes convert it."""
    if not isinstance(value, str):
        return value
    convert = float if key in FLOAT_KEYS else int
    try:
        return convert(value)
    except ValueError:
        raise ValueError(f"moshi-finetune TTT key {key!r} must be a number, got {value!r}") from None


def _require_bool(section: Mapping[str, Any], key: str) -> bool:
    value = section[key]
    if type(value) is not bool:
        raise ValueError(f"moshi-finetune TTT key {key!r} must be true or false, got {value!r}")
    return value


def _layers(value: Any) -> str | list[int]:
    """Their `layers` is a string; a bare YAML integer (`layers: 3`) means that one layer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def finetune_section_settings(section: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """`TTTConfig` keyword arguments computing what their training computed, and one note (None when there is nothing
    to say) naming the section's keys that have no effect on that function (training-only keys, MLP sizes their
    two-layer MLP does not read, `rope_theta` without RoPE) and a disabled section.

    Unknown keys raise a ValueError naming them. `enable: false` (their default) gives no TTT layer (`layers: "none"`).
    """
    unknown = sorted(set(section) - FINETUNE_KEYS)
    if unknown:
        raise ValueError(f"unknown moshi-finetune TTT key(s) {unknown}; their TTTArgs has {sorted(FINETUNE_KEYS)}")
    values = {**FINETUNE_DEFAULTS, **{key: section[key] for key in FINETUNE_DEFAULTS if key in section}}
    values.update({key: _as_number(key, values[key]) for key in (*FLOAT_KEYS, *INT_KEYS)})
    ignored = [key for key in TRAINING_ONLY_KEYS if key in section]
    enabled = _require_bool(values, "enable")
    use_rope = _require_bool(values, "use_rope")
    mlp_layers = values["ttt_mlp_layers"]
    deep = isinstance(mlp_layers, int) and not isinstance(mlp_layers, bool) and mlp_layers >= 3
    if not deep:
        ignored += [key for key in ("ttt_mlp_expansion_factor", "ttt_mlp_hidden_dims") if key in section]
    if not use_rope and "rope_theta" in section:
        ignored.append("rope_theta")
    settings = {
        "layers": _layers(values["layers"]) if enabled else "none",
        "variant": "mlp",
        "mini_batch_size": values["mini_batch_size"],
        "base_lr": values["base_lr"],
        "initial_gating_alpha": values["initial_gating_alpha"],
        "mlp_layers": mlp_layers,
        "mlp_expansion": values["ttt_mlp_expansion_factor"] if deep else TWO_LAYER_EXPANSION,
        "mlp_hidden_dims": values["ttt_mlp_hidden_dims"] if deep else None,
        "output_projection": False,
        "qk_l2_norm": True,
        "rope": use_rope,
        "rope_theta": values["rope_theta"],
        "target_norm": True,
        "ln_eps": INNER_NORM_EPS,
        "minibatch_causal": False,
        "inner_step_divisor": "mini_batch",
        "pad_to_minibatch": True,
        "query_update_count": 2 if deep else 1,
        "gate_clamp": GATE_CLAMP,
        "ttt_layer_context": values["ttt_layer_context"],
        "other_layer_context": values["non_ttt_layer_context"],
    }
    return settings, _note(ignored, enabled)


def _note(ignored: list[str], enabled: bool) -> str | None:
    parts = []
    if ignored:
        parts.append(f"ignored key(s) that do not change the model: {', '.join(ignored)}")
    if not enabled:
        parts.append("`enable` is false (or missing, their default): no TTT layer, as in their training")
    return "moshi-finetune TTT section: " + "; ".join(parts) if parts else None
