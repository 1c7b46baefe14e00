"""Mimi, the streaming neural audio codec: 24 kHz waveform <-> discrete codes at 12.5 Hz.

Encoding path: SEANet encoder (waveform -> 25 Hz latent), encoder transformer, learned 2x downsampling, split RVQ.
Decoding mirrors it: RVQ centroids, learned 2x upsampling, decoder transformer, SEANet decoder.

Outside streaming, `encode` accepts any length and right-pads it with zeros to whole frames; `decode` returns
`frame_size` samples per frame. Inside `with mimi.streaming(B):` successive calls continue the same signal: `encode`
takes whole frames only (a positive multiple of `frame_size` samples) and `decode` any positive number of frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from moshi.modules.resample import ConvDownsample1d, ConvTrUpsample1d
from moshi.modules.seanet import SEANetDecoder, SEANetEncoder
from moshi.modules.streaming import StreamingContainer
from moshi.modules.transformer import ProjectedTransformer
from moshi.quantization import SplitResidualVectorQuantizer

CONFIG_KEYS = ("sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer")


def check_config(config: Mapping[str, Any]) -> None:
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"Mimi config is missing keys {missing} (expected {list(CONFIG_KEYS)})")


def resampling_stride(encoder_frame_rate: float, frame_rate: float) -> int:
    """The integer ratio between the encoder rate and the code rate."""
    ratio = encoder_frame_rate / frame_rate
    if ratio < 1 or ratio != int(ratio):
        raise ValueError(
            f"the encoder frame rate ({encoder_frame_rate} Hz) must be an integer multiple of the frame rate "
            f"({frame_rate} Hz)"
        )
    return int(ratio)


class MimiModel(StreamingContainer):
    """The Mimi codec; build it with `MimiModel.from_config(config)` for the released layout.

    Checkpoint keys: `encoder.*`, `decoder.*`, `encoder_transformer.*`, `decoder_transformer.*`, `quantizer.*`,
    `downsample.*`, `upsample.*` (the last two only when the encoder rate differs from the frame rate).
    """

    def __init__(
        self,
        encoder: SEANetEncoder,
        decoder: SEANetDecoder,
        quantizer: SplitResidualVectorQuantizer,
        frame_rate: float,
        encoder_frame_rate: float,
        sample_rate: int,
        channels: int,
        causal: bool = True,
        encoder_transformer: nn.Module | None = None,
        decoder_transformer: nn.Module | None = None,
        resample_method: str = "conv",
        upsample_channel_wise_bug: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_transformer = encoder_transformer
        self.decoder_transformer = decoder_transformer
        self.quantizer = quantizer
        self._frame_rate = frame_rate
        self._sample_rate = sample_rate
        self._channels = channels
        self.encoder_frame_rate = encoder_frame_rate
        self.dimension = encoder.dimension
        self.downsample: ConvDownsample1d | None = None
        self.upsample: ConvTrUpsample1d | None = None
        if encoder_frame_rate != frame_rate:
            if resample_method != "conv":
                raise ValueError(f"only resample_method='conv' is supported for resampling, got {resample_method!r}")
            stride = resampling_stride(encoder_frame_rate, frame_rate)
            self.downsample = ConvDownsample1d(stride, self.dimension, causal=causal)
            self.upsample = ConvTrUpsample1d(
                stride, self.dimension, causal=causal, channel_wise=upsample_channel_wise_bug
            )
        if self.frame_size * frame_rate != sample_rate:
            raise ValueError(f"sample_rate {sample_rate} is not a whole number of samples per frame at {frame_rate} Hz")

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MimiModel:
        """Build Mimi from a dict shaped like the released config (keys of `CONFIG_KEYS`), in eval mode.

        The weights are freshly initialised; load a checkpoint with `load_state_dict`. `device="meta"` builds the
        structure without allocating memory.
        """
        check_config(config)
        placement = torch.device(device) if device is not None else contextlib.nullcontext()
        with placement:
            encoder = SEANetEncoder(**config["seanet"])
            decoder = SEANetDecoder(**config["seanet"])
            encoder_transformer = ProjectedTransformer(**config["transformer"])
            decoder_transformer = ProjectedTransformer(**config["transformer"])
            quantizer = SplitResidualVectorQuantizer(**config["quantizer"])
            model = cls(
                encoder,
                decoder,
                quantizer,
                frame_rate=config["frame_rate"],
                encoder_frame_rate=config["sample_rate"] / encoder.hop_length,
                sample_rate=config["sample_rate"],
                channels=config["channels"],
                encoder_transformer=encoder_transformer,
                decoder_transformer=decoder_transformer,
            )
        if dtype is not None:
            model.to(dtype=dtype)
        return model.eval()

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def frame_rate(self) -> float:
        return self._frame_rate

    @property
    def frame_size(self) -> int:
        """Audio samples per code frame (1920 at 24 kHz and 12.5 Hz)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def cardinality(self) -> int:
        return self.quantizer.cardinality

    @property
    def total_codebooks(self) -> int:
        return self.quantizer.total_codebooks

    @property
    def num_codebooks(self) -> int:
        return self.quantizer.num_codebooks

    def set_num_codebooks(self, n: int) -> None:
        """How many codebooks `encode` produces (the semantic one plus n - 1 acoustic ones)."""
        self.quantizer.set_num_codebooks(n)

    def _check_streaming_batch(self, batch_size: int) -> None:
        if self.is_streaming and batch_size != self.streaming_state.batch_size:
            raise ValueError(f"Mimi is streaming {self.streaming_state.batch_size} items, got a batch of {batch_size}")

    def _check_audio(self, x: torch.Tensor) -> torch.Tensor:
        """Validates `[B, channels, N]`; outside streaming, right-pads N with zeros to a whole number of frames."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"Mimi expects audio [B, {self.channels}, N], got shape {list(x.shape)}")
        self._check_streaming_batch(x.shape[0])
        length = x.shape[-1]
        if self.is_streaming:
            if length == 0 or length % self.frame_size:
                raise ValueError(
                    f"while streaming, Mimi encodes whole frames only: got {length} samples, expected a positive "
                    f"multiple of the frame size {self.frame_size}; buffer the audio before calling encode"
                )
            return x
        if length == 0:
            raise ValueError("cannot encode empty audio (N = 0 samples)")
        padding = -length % self.frame_size
        return nn.functional.pad(x, (0, padding)) if padding else x

    def _encode_to_unquantized_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Audio `[B, channels, N]` -> latent `[B, dimension, frames]` before quantization."""
        latent = self.encoder(self._check_audio(x))
        if self.encoder_transformer is not None:
            latent = self.encoder_transformer(latent)[0]
        if self.downsample is not None:
            latent = self.downsample(latent)
        return latent

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Audio `[B, channels, N]` -> int64 codes `[B, num_codebooks, frames]`, frames = ceil(N / frame_size)."""
        return self.quantizer.encode(self._encode_to_unquantized_latent(x))

    def encode_to_latent(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Audio `[B, channels, N]` -> latent `[B, dimension, frames]`, quantized (through the codes) or not."""
        latent = self._encode_to_unquantized_latent(x)
        if not quantize:
            return latent
        return self.decode_latent(self.quantizer.encode(latent))

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, K, frames]` -> quantized latent `[B, dimension, frames]`."""
        return self.quantizer.decode(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, K, frames]` -> audio `[B, channels, frames * frame_size]`."""
        if codes.dim() != 3 or codes.shape[-1] == 0:
            raise ValueError(f"Mimi decodes codes [B, K, frames] with frames > 0, got shape {list(codes.shape)}")
        self._check_streaming_batch(codes.shape[0])
        latent = self.decode_latent(codes)
        if self.upsample is not None:
            latent = self.upsample(latent)
        if self.decoder_transformer is not None:
            latent = self.decoder_transformer(latent)[0]
        return self.decoder(latent)
