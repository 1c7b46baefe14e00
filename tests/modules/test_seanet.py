"""SEANet encoder/decoder: shapes, residual structure and streaming equal to whole-signal processing."""

from __future__ import annotations

import pytest
import torch

from moshi.modules.seanet import SEANetDecoder, SEANetEncoder, SEANetLayerSettings, SEANetResnetBlock

SMALL = {"dimension": 8, "n_filters": 2, "n_residual_layers": 2, "ratios": [4, 3, 2], "last_kernel_size": 3}


def small_pair() -> tuple[SEANetEncoder, SEANetDecoder]:
    torch.manual_seed(0)
    return SEANetEncoder(**SMALL), SEANetDecoder(**SMALL)


@torch.no_grad()
def test_shapes_follow_the_hop_length() -> None:
    encoder, decoder = small_pair()
    hop = 4 * 3 * 2
    assert encoder.hop_length == decoder.hop_length == hop
    latent = encoder(torch.randn(2, 1, 5 * hop))
    assert latent.shape == (2, SMALL["dimension"], 5)
    assert decoder(latent).shape == (2, 1, 5 * hop)


@torch.no_grad()
@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_streaming_equals_whole_signal(steps_per_call: int) -> None:
    encoder, decoder = small_pair()
    hop = encoder.hop_length
    wav = torch.randn(2, 1, 8 * hop)
    latent = encoder(wav)
    with encoder.streaming(2):
        streamed = torch.cat([encoder(piece) for piece in wav.split(steps_per_call * hop, dim=-1)], dim=-1)
    torch.testing.assert_close(streamed, latent, rtol=1e-5, atol=1e-6)
    with decoder.streaming(2):
        decoded = torch.cat([decoder(piece) for piece in latent.split(steps_per_call, dim=-1)], dim=-1)
    torch.testing.assert_close(decoded, decoder(latent), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_residual_block_adds_its_branch_to_the_skip() -> None:
    settings = SEANetLayerSettings(true_skip=False)
    block = SEANetResnetBlock(4, settings, dilation=2)
    x = torch.randn(1, 4, 10)
    torch.testing.assert_close(block(x), block.shortcut(x) + block.block(x))
    assert block.block[1].conv.conv.dilation == (2,)


def test_unsupported_settings_raise() -> None:
    with pytest.raises(ValueError, match="activation"):
        SEANetEncoder(**SMALL, activation="NotAnActivation")
    with pytest.raises(ValueError, match="causal"):
        SEANetDecoder(**SMALL, causal=False)
    with pytest.raises(ValueError, match="norm"):
        SEANetEncoder(**SMALL, norm="weight_norm")


@torch.no_grad()
def test_decoder_final_activation_is_applied() -> None:
    torch.manual_seed(1)
    decoder = SEANetDecoder(**SMALL, final_activation="Tanh")
    assert isinstance(decoder.model[-1], torch.nn.Tanh)
    out = decoder(torch.randn(1, SMALL["dimension"], 3) * 100)
    assert out.abs().max() <= 1.0
