"""Configurations of the released Moshi and Mimi layouts at a fraction of their size, for demos and benchmarks that
build them with RANDOM weights (nothing here describes a trained model).

`DEMO_MIMI_CONFIG` is a `MimiModel.from_config` dict and the two LM configurations are `LMModel` keyword arguments;
they are shared read-only: derive a variant with `config | {...}` instead of changing them.
"""

from __future__ import annotations

from typing import Any

DEMO_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1, "dimension": 32, "causal": True, "n_filters": 4, "n_residual_layers": 1, "activation": "ELU",
        "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0, "kernel_size": 7,
        "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none", "pad_mode": "constant",
        "ratios": [8, 6, 5, 4], "true_skip": True,
    },
    "quantizer": {"dimension": 16, "n_q": 8, "bins": 64, "input_dimension": 32, "output_dimension": 32},
    "transformer": {
        "d_model": 32, "num_heads": 2, "num_layers": 2, "causal": True, "layer_scale": 0.01, "context": 250,
        "conv_layout": True, "max_period": 10000, "gating": "none", "norm": "layer_norm",
        "positional_embedding": "rope", "dim_feedforward": 64, "input_dimension": 32, "output_dimensions": [32],
    },
}
"""The released Mimi layout (24 kHz, 12.5 Hz frames, 8 codebooks) at a fraction of its width, 64 codes per codebook."""

DEMO_LM_CONFIG: dict[str, Any] = {
    "dim": 64, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 64, "num_heads": 4,
    "num_layers": 2, "hidden_scale": 4.125, "causal": True, "context": 250, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 32, "depformer_dim_feedforward": 64,
    "depformer_num_heads": 2, "depformer_num_layers": 1, "depformer_multi_linear": True,
    "depformer_weights_per_step": True, "depformer_pos_emb": "none", "depformer_context": 8,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    "ttt": {"layers": "all", "variant": "linear", "mini_batch_size": 16},
}
"""The released 7B layout (16 audio streams, acoustic delay 1) at a fraction of its size, with a TTT layer in every
main-transformer layer; its audio card matches `DEMO_MIMI_CONFIG`. `text_card` is left to the user, who sets it to
the size of the text tokenizer in use."""

SPEED_LM_CONFIG: dict[str, Any] = {
    "dim": 768, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 2048,
    "num_heads": 12, "num_layers": 8, "hidden_scale": 4.125, "causal": True, "context": 3000, "max_period": 10000,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 128,
    "depformer_dim_feedforward": 528, "depformer_num_heads": 4, "depformer_num_layers": 2,
    "depformer_multi_linear": True, "depformer_context": 8, "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}
"""moshiko's structure and vocabularies, small enough for CPU timing, with the weights split between the main
transformer and the depformer close to moshiko 7B's: what the benchmarks' speed comparisons run on."""
