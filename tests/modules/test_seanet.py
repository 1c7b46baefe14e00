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
    block = SEANetResnetBlock(4, dilations=[2, 1], true_skip=False)
    x = torch.randn(1, 4, 10)
    torch.testing.assert_close(block(x), block.shortcut(x) + block.block(x))
    assert block.block[1].conv.conv.dilation == (2,)


def test_residual_block_takes_upstreams_arguments() -> None:
    block = SEANetResnetBlock(dim=6, kernel_sizes=[5, 3, 1], dilations=[4, 2, 1], activation="ELU",
                              activation_params={"alpha": 0.5}, norm="none", norm_params={}, causal=True,
                              pad_mode="constant", compress=3, true_skip=True)
    convs = [layer.conv.conv for layer in block.block[1::2]]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.dilation[0]) for c in convs] == [
        (6, 2, 5, 4), (2, 2, 3, 2), (2, 6, 1, 1)]
    assert block.block[0].alpha == 0.5
    with pytest.raises(ValueError, match="as many kernel sizes as dilations"):
        SEANetResnetBlock(4, kernel_sizes=[3, 1], dilations=[1])


def test_layer_settings_build_upstreams_residual_blocks() -> None:
    settings = SEANetLayerSettings(residual_kernel_size=5, dilation_base=3, n_residual_layers=2)
    blocks = settings.residual_layers(4)
    assert [block.block[1].conv.conv.dilation[0] for block in blocks] == [1, 3]
    assert blocks[0].block[1].conv.conv.kernel_size == (5,)


def test_encoder_inserts_the_mask_module_where_asked() -> None:
    mask = torch.nn.Identity()
    encoder = SEANetEncoder(**SMALL, mask_fn=mask, mask_position=1)
    first_block_end = 1 + SMALL["n_residual_layers"] + 2
    assert encoder.model[first_block_end] is mask
    with pytest.raises(ValueError, match="mask_position"):
        SEANetEncoder(**SMALL, mask_fn=mask, mask_position=9)


def test_unsupported_settings_raise() -> None:
    with pytest.raises(ValueError, match="activation"):
        SEANetEncoder(**SMALL, activation="NotAnActivation")
    with pytest.raises(ValueError, match="causal"):
        SEANetDecoder(**SMALL, causal=False)
    with pytest.raises(ValueError, match="norm"):
        SEANetEncoder(**SMALL, norm="weight_norm")
    with pytest.raises(ValueError, match="trim_right_ratio"):
        SEANetDecoder(**SMALL, trim_right_ratio=0.5)


@torch.no_grad()
def test_decoder_final_activation_is_applied() -> None:
    torch.manual_seed(1)
    decoder = SEANetDecoder(**SMALL, final_activation="Tanh")
    assert isinstance(decoder.model[-1], torch.nn.Tanh)
    out = decoder(torch.randn(1, SMALL["dimension"], 3) * 100)
    assert out.abs().max() <= 1.0
