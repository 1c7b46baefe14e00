"""A Euclidean codebook: maps vectors to the index of their nearest centroid and back.

The checkpoint stores the centroids as running sums (`embedding_sum` `[bins, dim]`) and counts (`cluster_usage`
`[bins]`), as they were learned by exponential moving averages; a centroid is their ratio, with the count clamped at
`epsilon`. `_initialized` `[1]` is kept for checkpoint compatibility only (inference does not use it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

LEGACY_BUFFER_NAMES = {
    "inited": "_initialized",
    "cluster_size": "cluster_usage",
    "embed_avg": "embedding_sum",
    "embed_sum": "embedding_sum",
}


class EuclideanCodebook(nn.Module):
    """`bins` centroids of size `dim`; `encode` `[*, dim]` -> `[*]` (int64), `decode` `[*]` -> `[*, dim]`."""

    def __init__(self, dim: int, codebook_size: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.epsilon = epsilon
        self._initialized: torch.Tensor
        self.cluster_usage: torch.Tensor
        self.embedding_sum: torch.Tensor
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(codebook_size))
        self.register_buffer("embedding_sum", torch.zeros(codebook_size, dim))
        self._cached_embedding: torch.Tensor | None = None
        self._cache_sources: tuple[torch.Tensor, int, torch.Tensor, int] | None = None

    def _cache_is_current(self) -> bool:
        """True while both buffers are the very tensors the cache was computed from, unmodified since."""
        if self._cache_sources is None:
            return False
        total, total_version, usage, usage_version = self._cache_sources
        return (
            total is self.embedding_sum and total._version == total_version
            and usage is self.cluster_usage and usage._version == usage_version
        )

    def _refresh_cache(self) -> None:
        if self._cache_is_current():
            return
        total, usage = self.embedding_sum, self.cluster_usage
        self._cached_embedding = total / usage.clamp(min=self.epsilon)[:, None]
        self._cache_sources = (total, total._version, usage, usage._version)

    @torch.no_grad()
    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Make `centroids` `[bins, dim]` the codebook (usage 1 each), marked initialised as a trained one is."""
        self.embedding_sum.copy_(centroids)
        self.cluster_usage.fill_(1.0)
        self._initialized.fill_(1.0)

    @property
    def embedding(self) -> torch.Tensor:
        """The centroids `[bins, dim]`, cached until the buffers change."""
        self._refresh_cache()
        return self._cached_embedding

    def invalidate_cache(self) -> None:
        """Needed only after editing the buffers through `.data` (invisible to the version counters)."""
        self._cached_embedding = None
        self._cache_sources = None

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> EuclideanCodebook:
        self.invalidate_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for legacy, current in LEGACY_BUFFER_NAMES.items():
            if prefix + legacy in state_dict:
                state_dict[prefix + current] = state_dict.pop(prefix + legacy)
        self.invalidate_cache()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`[*, dim]` float -> `[*]` int64: index of the nearest centroid (L2 distance)."""
        if not x.dtype.is_floating_point or x.shape[-1] != self.dim:
            raise ValueError(f"expected float vectors [..., {self.dim}], got {x.dtype} {list(x.shape)}")
        flat = x.reshape(-1, self.dim)
        distances = torch.cdist(flat[None], self.embedding[None], p=2)[0]
        return distances.argmin(dim=-1).view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`[*]` integer codes -> `[*, dim]` centroids."""
        if codes.dtype.is_floating_point:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        return nn.functional.embedding(codes, self.embedding)
