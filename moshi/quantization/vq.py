"""Residual vector quantization (RVQ) of a latent sequence `[B, C, T]` into codes `[B, K, T]`.

Each level quantizes what the previous levels left over (the residual) with its own codebook, so the first `k` codes
of a frame already give a coarse reconstruction. Optional 1x1 convolutions project the latent into the codebook
dimension and back. Checkpoint keys: `input_proj.weight`, `output_proj.weight`, `vq.layers.{i}._codebook.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from moshi.quantization.codebook import EuclideanCodebook


class VectorQuantization(nn.Module):
    """One RVQ level: `encode` `[B, D, T]` -> `[B, T]`, `decode` `[B, T]` -> `[B, D, T]`."""

    def __init__(self, dim: int, codebook_size: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, codebook_size, epsilon=epsilon)

    @property
    def codebook(self) -> EuclideanCodebook:
        """The level's codebook (held as `_codebook`, the checkpoint's key)."""
        return self._codebook

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._codebook.encode(x.transpose(1, 2))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._codebook.decode(codes).transpose(1, 2)


class ResidualVectorQuantization(nn.Module):
    """A stack of `num_quantizers` levels applied to successive residuals."""

    def __init__(self, dim: int, codebook_size: int, num_quantizers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, codebook_size) for _ in range(num_quantizers))

    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """`[B, D, T]` -> codes `[B, n_q, T]` from the first `n_q` levels."""
        residual = x
        codes = []
        for layer in self.layers[:n_q]:
            level_codes = layer.encode(residual)
            residual = residual - layer.decode(level_codes)
            codes.append(level_codes)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, K, T]` -> the sum of the first K levels' centroids `[B, D, T]`."""
        quantized = self.layers[0].decode(codes[:, 0])
        for level, layer in enumerate(self.layers[1 : codes.shape[1]], start=1):
            quantized = quantized + layer.decode(codes[:, level])
        return quantized


def make_projection(in_dim: int, out_dim: int, force: bool) -> nn.Module:
    """A bias-free 1x1 convolution, or the identity when the sizes match and no projection is forced."""
    if in_dim == out_dim and not force:
        return nn.Identity()
    return nn.Conv1d(in_dim, out_dim, 1, bias=False)


class ResidualVectorQuantizer(nn.Module):
    """RVQ with input/output projections: latent `[B, input_dimension, T]` <-> codes `[B, K, T]`.

    `n_q` levels exist; `set_num_codebooks(k)` chooses how many `encode` uses.
    """

    def __init__(
        self,
        dimension: int = 256,
        input_dimension: int | None = None,
        output_dimension: int | None = None,
        n_q: int = 8,
        bins: int = 1024,
        force_projection: bool = False,
    ) -> None:
        super().__init__()
        if n_q < 1 or bins < 1:
            raise ValueError(f"n_q and bins must be positive, got n_q={n_q}, bins={bins}")
        self.dimension = dimension
        self.input_dimension = input_dimension or dimension
        self.output_dimension = output_dimension or dimension
        self.bins = bins
        self.max_n_q = n_q
        self.n_q = n_q
        self.input_proj = make_projection(self.input_dimension, dimension, force_projection)
        self.output_proj = make_projection(dimension, self.output_dimension, force_projection)
        self.vq = ResidualVectorQuantization(dimension, bins, n_q)

    @property
    def cardinality(self) -> int:
        return self.bins

    @property
    def total_codebooks(self) -> int:
        return self.max_n_q

    @property
    def num_codebooks(self) -> int:
        return self.n_q

    def set_num_codebooks(self, n: int) -> None:
        if not 0 <= n <= self.max_n_q:
            raise ValueError(f"number of codebooks must be in [0, {self.max_n_q}], got {n}")
        self.n_q = n

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, input_dimension, T]` -> int64 codes `[B, num_codebooks, T]`."""
        if x.dim() != 3 or x.shape[1] != self.input_dimension:
            raise ValueError(f"expected a latent [B, {self.input_dimension}, T], got shape {list(x.shape)}")
        if self.n_q == 0 or x.shape[-1] == 0:
            return torch.zeros(x.shape[0], self.n_q, x.shape[-1], dtype=torch.long, device=x.device)
        return self.vq.encode(self.input_proj(x), self.n_q)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, K, T]` (1 <= K <= total_codebooks) -> latent `[B, output_dimension, T]`."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.max_n_q:
            raise ValueError(f"expected codes [B, K, T] with 1 <= K <= {self.max_n_q}, got shape {list(codes.shape)}")
        return self.output_proj(self.vq.decode(codes))
