"""A small random-weight LM with TTT-MLP layers, shared by the tests that chunked scoring stays exact with TTT."""

from __future__ import annotations

import torch

from moshi.models.lm import LMModel


def small_ttt_lm(seed: int = 5) -> LMModel:
    """TTT-MLP in every main-transformer layer, mini-batches of 16 steps and an attention context of 8 frames; 3 own
    and 3 user codebooks of card 32."""
    torch.manual_seed(seed)
    return LMModel(
        delays=[0, 0, 1, 1, 0, 1, 1], n_q=6, dep_q=3, card=32, text_card=20, dim=32, num_heads=4, num_layers=2,
        context=8, norm="rms_norm_f32", gating="silu", positional_embedding="rope", depformer_dim=16,
        depformer_num_heads=2, depformer_num_layers=1, depformer_multi_linear=True, depformer_weights_per_step=True,
        depformer_pos_emb="none", ttt={"layers": "all", "variant": "mlp", "mini_batch_size": 16},
    ).eval()
