"""The split RVQ of Mimi: one semantic level with its own projections (`rvq_first`), then the acoustic levels
(`rvq_rest`). The semantic level always runs; `set_num_codebooks` only changes how many acoustic levels are used.
"""

from __future__ import annotations

import torch
from torch import nn

from moshi.quantization.vq import ResidualVectorQuantizer


class SplitResidualVectorQuantizer(nn.Module):
    """latent `[B, input_dimension, T]` <-> codes `[B, K, T]`: codes `[:, :n_q_semantic]` are semantic."""

    def __init__(
        self,
        dimension: int = 256,
        input_dimension: int | None = None,
        output_dimension: int | None = None,
        n_q: int = 8,
        n_q_semantic: int = 1,
        bins: int = 1024,
    ) -> None:
        super().__init__()
        if not 0 < n_q_semantic < n_q:
            raise ValueError(f"need 0 < n_q_semantic < n_q, got n_q_semantic={n_q_semantic}, n_q={n_q}")
        self.n_q_semantic = n_q_semantic
        self.rvq_first = ResidualVectorQuantizer(
            dimension, input_dimension, output_dimension, n_q=n_q_semantic, bins=bins, force_projection=True
        )
        self.rvq_rest = ResidualVectorQuantizer(
            dimension, input_dimension, output_dimension, n_q=n_q - n_q_semantic, bins=bins, force_projection=True
        )

    @property
    def semantic_quantizer(self) -> ResidualVectorQuantizer:
        """The semantic level (upstream's name for `rvq_first`)."""
        return self.rvq_first

    @property
    def acoustic_quantizer(self) -> ResidualVectorQuantizer:
        """The acoustic levels (upstream's name for `rvq_rest`)."""
        return self.rvq_rest

    @property
    def dimension(self) -> int:
        return self.rvq_first.dimension

    @property
    def cardinality(self) -> int:
        return self.rvq_first.cardinality

    @property
    def total_codebooks(self) -> int:
        return self.rvq_first.total_codebooks + self.rvq_rest.total_codebooks

    @property
    def num_codebooks(self) -> int:
        return self.rvq_first.num_codebooks + self.rvq_rest.num_codebooks

    @property
    def n_q(self) -> int:
        return self.num_codebooks

    def set_num_codebooks(self, n: int) -> None:
        if not self.n_q_semantic <= n <= self.total_codebooks:
            raise ValueError(f"number of codebooks must be in [{self.n_q_semantic}, {self.total_codebooks}], got {n}")
        self.rvq_rest.set_num_codebooks(n - self.n_q_semantic)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, input_dimension, T]` -> int64 codes `[B, num_codebooks, T]`."""
        codes = self.rvq_first.encode(x)
        if self.rvq_rest.num_codebooks > 0:
            codes = torch.cat([codes, self.rvq_rest.encode(x)], dim=1)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, K, T]` (n_q_semantic <= K <= total_codebooks) -> latent `[B, output_dimension, T]`."""
        if codes.dim() != 3 or not self.n_q_semantic <= codes.shape[1] <= self.total_codebooks:
            raise ValueError(
                f"expected codes [B, K, T] with {self.n_q_semantic} <= K <= {self.total_codebooks}, "
                f"got shape {list(codes.shape)}"
            )
        latent = self.rvq_first.decode(codes[:, : self.n_q_semantic])
        if codes.shape[1] > self.n_q_semantic:
            latent = latent + self.rvq_rest.decode(codes[:, self.n_q_semantic :])
        return latent
