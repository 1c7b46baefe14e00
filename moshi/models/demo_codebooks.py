"""Codebooks for a Mimi with RANDOM weights, drawn from its own latents.

Freshly built codebooks have every centroid at zero, so every frame gets code 0; a demo Mimi whose centroids are
residual vectors of its own latents gives different sounds different codes.
"""

from __future__ import annotations

import torch

from ..quantization.vq import ResidualVectorQuantizer


@torch.no_grad()
def sample_codebooks_from_latent(
    quantizer: ResidualVectorQuantizer, latent: torch.Tensor, generator: torch.Generator
) -> None:
    """Set each residual level's centroids to residual vectors of `latent` `[1, D, T]` drawn at random by `generator`
    (with repetition), level by level: level l draws from what levels 0 to l - 1 leave of the projected latent."""
    residual = quantizer.input_proj(latent)[0].T
    for level in quantizer.vq.layers:
        codebook = level.codebook
        chosen = torch.randint(0, residual.shape[0], (codebook.codebook_size,), generator=generator)
        codebook.set_centroids(residual[chosen])
        residual = residual - codebook.decode(codebook.encode(residual))
