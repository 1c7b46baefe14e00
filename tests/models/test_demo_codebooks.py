"""`sample_codebooks_from_latent`: each level's centroids are vectors of what the earlier levels leave of the latent."""

from __future__ import annotations

import torch

from moshi.models.demo_codebooks import sample_codebooks_from_latent
from moshi.quantization.vq import ResidualVectorQuantizer


def is_row_of(rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """`[N]`: whether each of `rows` `[N, D]` equals some row of `pool` `[M, D]`."""
    return (rows[:, None, :] == pool[None, :, :]).all(-1).any(-1)


def test_every_level_draws_its_centroids_from_the_residual_the_earlier_levels_leave() -> None:
    torch.manual_seed(0)
    quantizer = ResidualVectorQuantizer(dimension=4, input_dimension=6, n_q=3, bins=8, force_projection=True)
    latent = torch.randn(1, 6, 40)
    sample_codebooks_from_latent(quantizer, latent, torch.Generator().manual_seed(1))
    with torch.no_grad():
        residual = quantizer.input_proj(latent)
        for level in quantizer.vq.layers:
            codebook = level._codebook
            assert is_row_of(codebook.embedding, residual[0].T).all()
            assert codebook._initialized.item() == 1.0
            residual = residual - level.decode(level.encode(residual))
        codes = quantizer.encode(latent)
    assert len(torch.unique(codes[0, 0])) > 1  # fresh codebooks (all centroids at zero) give every frame code 0


def test_the_generator_alone_decides_the_draw() -> None:
    torch.manual_seed(0)
    quantizer = ResidualVectorQuantizer(dimension=4, n_q=2, bins=8)
    latent = torch.randn(1, 4, 30)
    centroids = []
    for seed in (3, 3, 4):
        sample_codebooks_from_latent(quantizer, latent, torch.Generator().manual_seed(seed))
        centroids.append(torch.cat([level._codebook.embedding for level in quantizer.vq.layers]))
    assert torch.equal(centroids[0], centroids[1])
    assert not torch.equal(centroids[0], centroids[2])
