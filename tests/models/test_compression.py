"""Mimi codec against upstream fixtures, plus padding, streaming errors, exec masks and flat streaming memory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moshi.models.compression import MimiModel
from moshi.modules.streaming import State


@pytest.fixture(scope="module")
def tiny_dir(parity_dir: Path) -> Path:
    return parity_dir / "mimi_tiny"


@pytest.fixture(scope="module")
def tiny_mimi(tiny_dir: Path) -> MimiModel:
    """The scaled-down Mimi with the fixture's random weights, loaded with strict key checking."""
    config = json.loads((tiny_dir / "config.json").read_text())
    model = MimiModel.from_config(config)
    model.load_state_dict(load_file(tiny_dir / "model.safetensors"), strict=True)
    return model


@pytest.fixture(scope="module")
def tiny_io(tiny_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(tiny_dir / "io.safetensors")


def encode_streaming(model: MimiModel, wav: torch.Tensor, chunk: int) -> torch.Tensor:
    with model.streaming(wav.shape[0]):
        return torch.cat([model.encode(piece) for piece in wav.split(chunk, dim=-1)], dim=-1)


def state_tensor_bytes(value: object) -> int:
    """Total bytes of the tensors held (recursively) by streaming states."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, State):
        return sum(state_tensor_bytes(field) for field in vars(value).values())
    if isinstance(value, (list, tuple)):
        return sum(state_tensor_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(state_tensor_bytes(item) for item in value.values())
    return 0


@torch.no_grad()
def test_tiny_fixture_encode_stream_decode(tiny_mimi: MimiModel, tiny_io: dict[str, torch.Tensor]) -> None:
    wav, codes = tiny_io["wav"], tiny_io["codes"]
    tiny_mimi.set_num_codebooks(codes.shape[1])
    assert torch.equal(tiny_mimi.encode(wav), codes)
    assert torch.equal(encode_streaming(tiny_mimi, wav, tiny_mimi.frame_size), tiny_io["codes_streaming"])
    decoded = tiny_mimi.decode(codes)
    assert decoded.shape == tiny_io["decoded"].shape
    torch.testing.assert_close(decoded, tiny_io["decoded"], rtol=0, atol=1e-4)


@torch.no_grad()
def test_streaming_decode_equals_batch_decode(tiny_mimi: MimiModel, tiny_io: dict[str, torch.Tensor]) -> None:
    codes = tiny_io["codes"]
    with tiny_mimi.streaming(codes.shape[0]):
        streamed = torch.cat([tiny_mimi.decode(frames) for frames in codes.split(3, dim=-1)], dim=-1)
    torch.testing.assert_close(streamed, tiny_mimi.decode(codes), rtol=0, atol=1e-5)


@torch.no_grad()
def test_latent_helpers_are_consistent(tiny_mimi: MimiModel, tiny_io: dict[str, torch.Tensor]) -> None:
    wav, codes = tiny_io["wav"], tiny_io["codes"]
    tiny_mimi.set_num_codebooks(codes.shape[1])
    quantized = tiny_mimi.encode_to_latent(wav)
    torch.testing.assert_close(quantized, tiny_mimi.decode_latent(codes))
    raw = tiny_mimi.encode_to_latent(wav, quantize=False)
    assert raw.shape == quantized.shape == (wav.shape[0], tiny_mimi.dimension, codes.shape[-1])
    assert torch.equal(tiny_mimi.quantizer.encode(raw), codes)


def test_properties_follow_the_config(tiny_mimi: MimiModel, tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    assert tiny_mimi.sample_rate == config["sample_rate"]
    assert tiny_mimi.frame_rate == config["frame_rate"]
    assert tiny_mimi.frame_size == config["sample_rate"] / config["frame_rate"]
    assert tiny_mimi.cardinality == config["quantizer"]["bins"]
    assert tiny_mimi.total_codebooks == config["quantizer"]["n_q"]
    tiny_mimi.set_num_codebooks(3)
    assert tiny_mimi.num_codebooks == 3
    with torch.no_grad():
        assert tiny_mimi.encode(torch.zeros(1, 1, tiny_mimi.frame_size)).shape == (1, 3, 1)
    with pytest.raises(ValueError, match="number of codebooks"):
        tiny_mimi.set_num_codebooks(config["quantizer"]["n_q"] + 1)
    tiny_mimi.set_num_codebooks(config["quantizer"]["n_q"])


def test_default_config_has_the_released_keys_and_shapes(parity_dir: Path) -> None:
    config = json.loads((parity_dir / "released" / "mimi_config.json").read_text())
    manifest = json.loads((parity_dir / "released" / "mimi_state_dict.json").read_text())
    model = MimiModel.from_config(config, device="meta")
    ours = {key: [list(tensor.shape), str(tensor.dtype)] for key, tensor in model.state_dict().items()}
    assert sorted(ours) == sorted(manifest)
    assert ours == manifest


@torch.no_grad()
def test_legacy_codebook_buffer_names_load_strictly(tiny_dir: Path, tiny_io: dict[str, torch.Tensor]) -> None:
    renames = {"._codebook.embedding_sum": "._codebook.embed_avg",
               "._codebook.cluster_usage": "._codebook.cluster_size",
               "._codebook._initialized": "._codebook.inited"}
    legacy = {}
    for key, tensor in load_file(tiny_dir / "model.safetensors").items():
        for current, old in renames.items():
            key = key.replace(current, old)
        legacy[key] = tensor
    assert any(key.endswith("embed_avg") for key in legacy)
    model = MimiModel.from_config(json.loads((tiny_dir / "config.json").read_text()))
    model.load_state_dict(legacy, strict=True)
    assert torch.equal(model.encode(tiny_io["wav"]), tiny_io["codes"])


@torch.no_grad()
def test_from_config_places_and_casts(tiny_dir: Path, tiny_io: dict[str, torch.Tensor]) -> None:
    model = MimiModel.from_config(json.loads((tiny_dir / "config.json").read_text()), device="cpu", dtype=torch.float64)
    assert {tensor.dtype for tensor in model.state_dict().values()} == {torch.float64}
    assert not model.training
    model.load_state_dict(load_file(tiny_dir / "model.safetensors"), strict=True)
    wav = tiny_io["wav"].double()
    assert model.encode(wav).shape == tiny_io["codes"].shape
    torch.testing.assert_close(model.decode(tiny_io["codes"]).float(), tiny_io["decoded"], rtol=0, atol=1e-4)


def test_from_config_reports_missing_keys(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    del config["quantizer"]
    with pytest.raises(ValueError, match="quantizer"):
        MimiModel.from_config(config, device="meta")


@torch.no_grad()
def test_streaming_chunk_must_be_whole_frames(tiny_mimi: MimiModel) -> None:
    frame = tiny_mimi.frame_size
    with tiny_mimi.streaming(1):
        for bad_length in (frame - 1, frame + 1, 0):
            with pytest.raises(ValueError, match=f"multiple of the frame size {frame}"):
                tiny_mimi.encode(torch.zeros(1, 1, bad_length))
        with pytest.raises(ValueError, match="streaming 1 items, got a batch of 2"):
            tiny_mimi.encode(torch.zeros(2, 1, frame))
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        tiny_mimi.encode(torch.zeros(1, 2, frame))
    with pytest.raises(ValueError, match="empty"):
        tiny_mimi.encode(torch.zeros(1, 1, 0))


@torch.no_grad()
@pytest.mark.parametrize("length", [1, 1919, 1921, 48000])
def test_batch_encode_pads_with_zeros_to_whole_frames(tiny_mimi: MimiModel, length: int) -> None:
    frame = tiny_mimi.frame_size
    torch.manual_seed(length)
    wav = torch.randn(2, 1, length) * 0.1
    frames = math.ceil(length / frame)
    codes = tiny_mimi.encode(wav)
    assert codes.shape == (2, tiny_mimi.num_codebooks, frames)
    padded = torch.cat([wav, torch.zeros(2, 1, frames * frame - length)], dim=-1)
    assert torch.equal(codes, tiny_mimi.encode(padded))
    assert tiny_mimi.decode(codes).shape == (2, 1, frames * frame)


@torch.no_grad()
def test_streaming_reset_and_exec_mask_act_per_item(tiny_mimi: MimiModel, tiny_io: dict[str, torch.Tensor]) -> None:
    wav = tiny_io["wav"]
    frame = tiny_mimi.frame_size
    head, skipped, tail = wav[..., : 4 * frame], wav[..., 4 * frame : 6 * frame], wav[..., 6 * frame : 10 * frame]
    with tiny_mimi.streaming(2):
        tiny_mimi.encode(head)
        tiny_mimi.set_exec_mask(torch.tensor([True, False]))
        tiny_mimi.encode(skipped)
        tiny_mimi.set_exec_mask(torch.tensor([True, True]))
        masked = tiny_mimi.encode(tail)
        tiny_mimi.reset_streaming(torch.tensor([True, False]))
        after_reset = tiny_mimi.encode(tail)
    through = tiny_mimi.encode(torch.cat([head, skipped, tail], dim=-1))[..., 6:]
    without_skip = tiny_mimi.encode(torch.cat([head, tail, tail], dim=-1))[..., 4:]
    fresh = tiny_mimi.encode(tail)
    assert torch.equal(masked[0], through[0])
    assert torch.equal(masked[1], without_skip[1, :, :4])
    assert torch.equal(after_reset[0], fresh[0])
    assert torch.equal(after_reset[1], without_skip[1, :, 4:])


@torch.no_grad()
def test_ten_minutes_of_streaming_keeps_state_flat_and_equals_one_call(tiny_mimi: MimiModel) -> None:
    sample_rate, frame = tiny_mimi.sample_rate, tiny_mimi.frame_size
    generator = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(1, 1, 600 * sample_rate, generator=generator)
    chunk = 10 * frame
    minute_chunks = 60 * sample_rate // chunk
    streamed = []
    with tiny_mimi.streaming(1):
        for index, piece in enumerate(wav.split(chunk, dim=-1)):
            streamed.append(tiny_mimi.encode(piece))
            if index + 1 == minute_chunks:
                bytes_after_one_minute = state_tensor_bytes(tiny_mimi.get_streaming_state())
        bytes_after_ten_minutes = state_tensor_bytes(tiny_mimi.get_streaming_state())
    assert bytes_after_one_minute > 0
    assert bytes_after_ten_minutes == bytes_after_one_minute
    streamed_codes = torch.cat(streamed, dim=-1)
    assert streamed_codes.shape[-1] == wav.shape[-1] // frame
    assert torch.equal(streamed_codes, tiny_mimi.encode(wav))
