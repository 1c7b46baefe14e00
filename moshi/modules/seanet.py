"""SEANet convolutional encoder and decoder (the waveform <-> latent halves of the Mimi codec).

The encoder alternates residual blocks and strided convolutions that divide the time resolution by each ratio while
doubling the width; the decoder mirrors it with transposed convolutions. Everything is causal and streamable. Layer
indices in `model.N` follow the checkpoint layout (activations take an index too).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules import activation as torch_activations

from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d, check_trim_right_ratio
from moshi.modules.streaming import StreamingContainer


def make_activation(name: str, params: dict[str, Any] | None) -> nn.Module:
    """An activation of `torch.nn` by class name, e.g. "ELU" with `{"alpha": 1.0}`."""
    if name not in torch_activations.__all__:
        raise ValueError(f"unknown activation {name!r}: expected one of {torch_activations.__all__}")
    return getattr(torch_activations, name)(**(params or {}))


@dataclasses.dataclass(frozen=True)
class SEANetLayerSettings:
    """What every layer of a SEANet shares: activation, padding and the residual block shape."""

    activation: str = "ELU"
    activation_params: dict[str, Any] = dataclasses.field(default_factory=lambda: {"alpha": 1.0})
    pad_mode: str = "constant"
    n_residual_layers: int = 1
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    true_skip: bool = True

    def activation_layer(self) -> nn.Module:
        return make_activation(self.activation, self.activation_params)

    def residual_layers(self, dim: int) -> list[nn.Module]:
        """`n_residual_layers` blocks of width `dim`, the j-th with dilation `dilation_base ** j`."""
        return [
            SEANetResnetBlock(
                dim, kernel_sizes=[self.residual_kernel_size, 1], dilations=[self.dilation_base**j, 1],
                activation=self.activation, activation_params=self.activation_params, pad_mode=self.pad_mode,
                compress=self.compress, true_skip=self.true_skip,
            )
            for j in range(self.n_residual_layers)
        ]


class SEANetResnetBlock(StreamingContainer):
    """`shortcut(x) + block(x)`, block = [act, conv(dim -> dim // compress), act, conv(-> dim), ...].

    Upstream's arguments: one convolution per entry of `kernel_sizes` / `dilations` (the first reads `dim` channels,
    the last writes `dim`, the others `dim // compress`), each preceded by the activation. `true_skip=False` replaces
    the identity skip by a 1x1 convolution. Only the causal form with plain weights exists here (`causal=True`,
    `norm="none"`); `norm_params` is accepted for upstream's signature. Shape `[B, dim, T]` is preserved.
    """

    def __init__(
        self,
        dim: int,
        kernel_sizes: Sequence[int] = (3, 1),
        dilations: Sequence[int] = (1, 1),
        activation: str = "ELU",
        activation_params: dict[str, Any] | None = None,
        norm: str = "none",
        norm_params: dict[str, Any] | None = None,
        causal: bool = True,
        pad_mode: str = "constant",
        compress: int = 2,
        true_skip: bool = True,
    ) -> None:
        super().__init__()
        if len(kernel_sizes) != len(dilations) or not kernel_sizes:
            raise ValueError(f"SEANetResnetBlock needs as many kernel sizes as dilations (at least one), got "
                             f"kernel_sizes={list(kernel_sizes)}, dilations={list(dilations)}")
        params = {"alpha": 1.0} if activation_params is None else activation_params
        conv_options = {"causal": causal, "norm": norm, "norm_kwargs": norm_params, "pad_mode": pad_mode}
        hidden = dim // compress
        last = len(kernel_sizes) - 1
        layers: list[nn.Module] = []
        for i, (kernel_size, dilation) in enumerate(zip(kernel_sizes, dilations)):
            in_channels = dim if i == 0 else hidden
            out_channels = dim if i == last else hidden
            layers += [
                make_activation(activation, params),
                StreamingConv1d(in_channels, out_channels, kernel_size, dilation=dilation, **conv_options),
            ]
        self.block = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity() if true_skip else StreamingConv1d(dim, dim, 1, **conv_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class _SEANetBase(StreamingContainer):
    """Shared constructor of the encoder and decoder: takes the keys of the Mimi config's `seanet` dict.

    The arguments are upstream's; only the causal form with plain weights exists (`causal=True`, `norm="none"`, so
    `norm_params` has nothing to configure), which is why those two defaults differ from upstream's.
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        n_residual_layers: int = 3,
        ratios: Sequence[int] = (8, 5, 4, 2),
        activation: str = "ELU",
        activation_params: dict[str, Any] | None = None,
        norm: str = "none",
        norm_params: dict[str, Any] | None = None,
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        causal: bool = True,
        pad_mode: str = "constant",
        true_skip: bool = True,
        compress: int = 2,
        disable_norm_outer_blocks: int = 0,
    ) -> None:
        super().__init__()
        if not causal:
            raise ValueError("only the causal SEANet is supported (causal=True)")
        if norm != "none":
            raise ValueError(f"only norm='none' is supported, got {norm!r}")
        num_blocks = len(ratios) + 2
        if not 0 <= disable_norm_outer_blocks <= num_blocks:
            raise ValueError(f"disable_norm_outer_blocks must be in [0, {num_blocks}], got {disable_norm_outer_blocks}")
        self.channels = channels
        self.dimension = dimension
        self.n_filters = n_filters
        self.n_residual_layers = n_residual_layers
        self.n_blocks = num_blocks
        self.disable_norm_outer_blocks = disable_norm_outer_blocks
        self.hop_length = math.prod(ratios)
        self.kernel_size = kernel_size
        self.last_kernel_size = last_kernel_size
        self.settings = SEANetLayerSettings(
            activation=activation,
            activation_params=activation_params if activation_params is not None else {"alpha": 1.0},
            pad_mode=pad_mode,
            n_residual_layers=n_residual_layers,
            residual_kernel_size=residual_kernel_size,
            dilation_base=dilation_base,
            compress=compress,
            true_skip=true_skip,
        )

    def _plain_conv(self, in_channels: int, out_channels: int, kernel_size: int) -> StreamingConv1d:
        return StreamingConv1d(in_channels, out_channels, kernel_size, pad_mode=self.settings.pad_mode)


class SEANetEncoder(_SEANetBase):
    """Waveform `[B, channels, N]` -> latent `[B, dimension, N // hop_length]` (N a multiple of hop_length).

    `ratios` are given in decoder order (as in the config); the encoder applies them reversed. `mask_fn`, when given,
    is inserted after the first convolution (`mask_position=0`) or after the i-th downsampling block (`i`).
    """

    def __init__(
        self,
        ratios: Sequence[int] = (8, 5, 4, 2),
        mask_fn: nn.Module | None = None,
        mask_position: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(ratios=ratios, **kwargs)
        if mask_fn is not None and mask_position not in range(len(ratios) + 1):
            raise ValueError(f"mask_position must be in [0, {len(ratios)}] when mask_fn is given, got {mask_position}")
        self.ratios = list(reversed(ratios))
        settings = self.settings
        width = self.n_filters
        layers: list[nn.Module] = [self._plain_conv(self.channels, width, self.kernel_size)]
        if mask_fn is not None and mask_position == 0:
            layers.append(mask_fn)
        for position, ratio in enumerate(self.ratios, start=1):
            layers += settings.residual_layers(width)
            layers += [
                settings.activation_layer(),
                StreamingConv1d(width, 2 * width, 2 * ratio, stride=ratio, pad_mode=settings.pad_mode),
            ]
            width *= 2
            if mask_fn is not None and mask_position == position:
                layers.append(mask_fn)
        layers += [settings.activation_layer(), self._plain_conv(width, self.dimension, self.last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SEANetDecoder(_SEANetBase):
    """Latent `[B, dimension, T]` -> waveform `[B, channels, T * hop_length]`.

    `final_activation` (a torch.nn activation name, e.g. "Tanh") is optionally applied to the output. The causal
    transposed convolutions trim all their padding on the right (`trim_right_ratio=1`, the only value supported).
    """

    def __init__(
        self,
        ratios: Sequence[int] = (8, 5, 4, 2),
        final_activation: str | None = None,
        final_activation_params: dict[str, Any] | None = None,
        trim_right_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(ratios=ratios, **kwargs)
        check_trim_right_ratio(trim_right_ratio)
        self.ratios = list(ratios)
        settings = self.settings
        width = self.n_filters * 2 ** len(self.ratios)
        layers: list[nn.Module] = [self._plain_conv(self.dimension, width, self.kernel_size)]
        for ratio in self.ratios:
            layers += [settings.activation_layer(), StreamingConvTranspose1d(width, width // 2, 2 * ratio, ratio)]
            width //= 2
            layers += settings.residual_layers(width)
        layers += [settings.activation_layer(), self._plain_conv(width, self.channels, self.last_kernel_size)]
        if final_activation is not None:
            layers.append(make_activation(final_activation, final_activation_params))
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
