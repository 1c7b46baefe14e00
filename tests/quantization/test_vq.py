"""Codebooks and residual vector quantizers, checked against brute-force nearest-centroid searches."""

from __future__ import annotations

import pytest
import torch

from moshi.quantization import EuclideanCodebook, ResidualVectorQuantizer, SplitResidualVectorQuantizer


def randomize_codebooks(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            if name.endswith("embedding_sum"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator))
            elif name.endswith("cluster_usage"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) * 2)
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)


def brute_force_nearest(vectors: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """`[N, D]`, `[bins, D]` -> `[N]` via explicit squared differences in float64."""
    squared = (vectors.double()[:, None, :] - centroids.double()[None, :, :]).pow(2).sum(-1)
    return squared.argmin(-1)


def brute_force_rvq(latent: torch.Tensor, quantizer: ResidualVectorQuantizer, n_q: int) -> torch.Tensor:
    """Reference RVQ on `[B, C, T]`: project, then quantize successive residuals; returns `[B, n_q, T]`."""
    residual = torch.einsum("oc,bct->bot", quantizer.input_proj.weight[..., 0], latent).transpose(1, 2)
    codes = []
    for layer in quantizer.vq.layers[:n_q]:
        centroids = layer._codebook.embedding_sum / layer._codebook.cluster_usage.clamp(min=1e-5)[:, None]
        level = brute_force_nearest(residual.reshape(-1, residual.shape[-1]), centroids).view(residual.shape[:-1])
        residual = residual - centroids[level]
        codes.append(level)
    return torch.stack(codes, dim=1)


def test_codebook_centroids_are_sums_over_clamped_usage() -> None:
    codebook = EuclideanCodebook(dim=3, codebook_size=5)
    randomize_codebooks(codebook, seed=0)
    with torch.no_grad():
        codebook.cluster_usage[2] = 0.0
    expected = codebook.embedding_sum / codebook.cluster_usage.clamp(min=codebook.epsilon)[:, None]
    torch.testing.assert_close(codebook.embedding, expected)
    codes = torch.tensor([[4, 0], [2, 2]])
    torch.testing.assert_close(codebook.decode(codes), expected[codes])


def test_codebook_encode_picks_the_nearest_centroid() -> None:
    codebook = EuclideanCodebook(dim=4, codebook_size=16)
    randomize_codebooks(codebook, seed=1)
    x = torch.randn(2, 7, 4)
    codes = codebook.encode(x)
    assert codes.shape == (2, 7) and codes.dtype == torch.long
    expected = brute_force_nearest(x.reshape(-1, 4), codebook.embedding).view(2, 7)
    assert torch.equal(codes, expected)


def test_codebook_cache_follows_in_place_edits_and_dtype_changes() -> None:
    codebook = EuclideanCodebook(dim=3, codebook_size=30)
    randomize_codebooks(codebook, seed=7)
    x = torch.randn(4, 3)
    before = codebook.encode(x)
    with torch.no_grad():
        codebook.embedding_sum.mul_(-1.0)
    torch.testing.assert_close(codebook.embedding, codebook.embedding_sum / codebook.cluster_usage[:, None])
    assert torch.equal(codebook.encode(x), brute_force_nearest(x, codebook.embedding))
    assert not torch.equal(codebook.encode(x), before)
    codebook.to(torch.float64)
    assert codebook.embedding.dtype == torch.float64
    assert codebook.encode(x.double()).shape == (4,)


def test_codebook_loads_legacy_buffer_names_and_refreshes_centroids() -> None:
    source = EuclideanCodebook(dim=3, codebook_size=4)
    randomize_codebooks(source, seed=2)
    legacy = {
        "inited": torch.ones(1),
        "cluster_size": source.cluster_usage.clone(),
        "embed_avg": source.embedding_sum.clone(),
    }
    target = EuclideanCodebook(dim=3, codebook_size=4)
    stale = target.embedding.clone()
    target.load_state_dict(legacy)
    assert not torch.equal(target.embedding, stale)
    torch.testing.assert_close(target.embedding, source.embedding)
    assert target._initialized.item() == 1.0
    target.load_state_dict({"_initialized": torch.ones(1), "cluster_usage": source.cluster_usage,
                            "embed_sum": source.embedding_sum * 2})
    torch.testing.assert_close(target.embedding, source.embedding * 2)


def test_codebook_rejects_bad_inputs() -> None:
    codebook = EuclideanCodebook(dim=3, codebook_size=4)
    with pytest.raises(ValueError, match="float vectors"):
        codebook.encode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="integers"):
        codebook.decode(torch.zeros(2, 3))


def test_rvq_encode_matches_brute_force_residual_search_and_decode_sums_levels() -> None:
    quantizer = ResidualVectorQuantizer(dimension=4, input_dimension=6, output_dimension=5, n_q=3, bins=8)
    randomize_codebooks(quantizer, seed=3)
    latent = torch.randn(2, 6, 9)
    with torch.no_grad():
        codes = quantizer.encode(latent)
        expected = brute_force_rvq(latent, quantizer, 3)
        assert torch.equal(codes, expected)
        decoded = quantizer.decode(codes)
    centroid_sum = sum(
        layer._codebook.embedding[codes[:, k]] for k, layer in enumerate(quantizer.vq.layers)
    ).transpose(1, 2)
    reference = torch.einsum("oc,bct->bot", quantizer.output_proj.weight[..., 0], centroid_sum)
    torch.testing.assert_close(decoded, reference, rtol=1e-5, atol=1e-5)


def test_rvq_num_codebooks_selects_a_prefix() -> None:
    quantizer = ResidualVectorQuantizer(dimension=4, n_q=4, bins=8)
    randomize_codebooks(quantizer, seed=4)
    latent = torch.randn(1, 4, 6)
    with torch.no_grad():
        full = quantizer.encode(latent)
        quantizer.set_num_codebooks(2)
        assert torch.equal(quantizer.encode(latent), full[:, :2])
        quantizer.set_num_codebooks(0)
        assert quantizer.encode(latent).shape == (1, 0, 6)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        quantizer.set_num_codebooks(5)
    with pytest.raises(ValueError, match="latent"):
        quantizer.encode(torch.zeros(1, 3, 6))


def test_split_rvq_semantic_then_acoustic() -> None:
    split = SplitResidualVectorQuantizer(dimension=4, input_dimension=6, output_dimension=6, n_q=4, bins=8)
    randomize_codebooks(split, seed=5)
    assert (split.total_codebooks, split.num_codebooks, split.cardinality) == (4, 4, 8)
    latent = torch.randn(2, 6, 5)
    with torch.no_grad():
        codes = split.encode(latent)
        assert torch.equal(codes[:, :1], brute_force_rvq(latent, split.rvq_first, 1))
        assert torch.equal(codes[:, 1:], brute_force_rvq(latent, split.rvq_rest, 3))
        expected = split.rvq_first.decode(codes[:, :1]) + split.rvq_rest.decode(codes[:, 1:])
        torch.testing.assert_close(split.decode(codes), expected)
        torch.testing.assert_close(split.decode(codes[:, :1]), split.rvq_first.decode(codes[:, :1]))
        split.set_num_codebooks(1)
        assert torch.equal(split.encode(latent), codes[:, :1])
        split.set_num_codebooks(3)
        assert torch.equal(split.encode(latent), codes[:, :3])
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        split.set_num_codebooks(0)
    with pytest.raises(ValueError, match="codes"):
        split.decode(torch.zeros(2, 5, 3, dtype=torch.long))


def test_split_rvq_checkpoint_keys() -> None:
    split = SplitResidualVectorQuantizer(dimension=4, input_dimension=6, output_dimension=6, n_q=3, bins=8)
    keys = set(split.state_dict())
    assert {"rvq_first.input_proj.weight", "rvq_rest.output_proj.weight",
            "rvq_first.vq.layers.0._codebook.embedding_sum", "rvq_rest.vq.layers.1._codebook.cluster_usage",
            "rvq_rest.vq.layers.1._codebook._initialized"} <= keys
    assert len(keys) == 4 + 3 * 3
