"""Moshi's language model over parallel token streams: a main transformer over time and a depformer over codebooks.

Streams (`K = 1 + n_q`): stream 0 is text, streams 1..dep_q are the model's own audio codebooks (predicted by the
depformer), the rest are the user's audio codebooks (input only). Stream k is delayed by `delays[k]` frames.

- `LMModel.forward(codes [B, K, T])` scores a whole sequence in parallel (teacher forcing).
- `LMGen` (in `lm_gen.py`, re-exported here) runs the model step by step in streaming.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..modules.norms import make_norm
from ..modules.streaming import StreamingContainer
from ..modules.transformer import StreamingTransformer
from ..modules.ttt import TTTConfig
from .lm_gen import LMGen, StepWithLogits
from .lm_utils import ScaledEmbedding, delay_streams, init_scaled_normal_, undelay_streams

UNSUPPORTED_OPTIONS = {
    "condition_provider": "conditioning",
    "fuser": "conditioning",
    "cross_attention": "cross-attention",
    "quantize": "bitsandbytes quantization",
    "demux_second_text_stream": "a demultiplexed second text stream",
}


@dataclasses.dataclass
class LMOutput:
    """Parallel-forward outputs, aligned with the input frames (no extra shift needed for a loss).

    logits `[B, dep_q, T, card]`, mask `[B, dep_q, T]`, text_logits `[B, 1, T, text_card_out]`, text_mask `[B, 1, T]`.
    Entries where the mask is False are NaN.
    """

    logits: torch.Tensor
    mask: torch.Tensor
    text_logits: torch.Tensor
    text_mask: torch.Tensor


def _refuse_unsupported(options: dict[str, Any]) -> None:
    for name, feature in UNSUPPORTED_OPTIONS.items():
        if options.get(name):
            raise NotImplementedError(f"LMModel: {feature} (`{name}`) is not supported by this fork")


class LMModel(StreamingContainer):
    """Main transformer + depformer over `1 + n_q` streams; constructor arguments follow upstream moshi.

    `depformer_*` arguments configure the depformer; other keyword arguments (gating, positional_embedding,
    max_period, layer_scale, num_layers, ...) go to both transformers, `depformer_*` overriding them for the depformer.
    `ttt`: optional test-time-training configuration (see `moshi.modules.ttt.TTTConfig`) for the main transformer.
    """

    def __init__(
        self,
        delays: Sequence[int] = (0,),
        n_q: int = 8,
        dep_q: int = 8,
        card: int = 1024,
        text_card: int = 32000,
        text_card_out: int | None = None,
        dim: int = 128,
        num_heads: int = 8,
        hidden_scale: float = 4,
        norm: str = "layer_norm",
        norm_emb: bool = False,
        bias_proj: bool = False,
        depformer_dim: int = 256,
        depformer_dim_feedforward: int | list[int] | None = None,
        depformer_multi_linear: bool = False,
        depformer_weights_per_step: bool = False,
        depformer_weights_per_step_schedule: list[int] | None = None,
        depformer_low_rank_embeddings: int | None = None,
        depformer_pos_emb: str = "sin",
        depformer_norm: str | None = None,
        existing_text_padding_id: int = 3,
        existing_text_end_padding_id: int = 0,
        extra_heads_num_heads: int = 0,
        extra_heads_dim: int = 6,
        context: int | None = None,
        causal: bool = True,
        ttt: dict[str, Any] | TTTConfig | None = None,
        device=None,
        dtype=None,
        gradient_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _refuse_unsupported(kwargs)
        for name in UNSUPPORTED_OPTIONS:
            kwargs.pop(name, None)
        if len(delays) != n_q + 1:
            raise ValueError(f"expected {n_q + 1} delays (text + {n_q} audio streams), got {len(delays)}")
        if not 0 < dep_q <= n_q:
            raise ValueError(f"dep_q must be in 1..n_q={n_q}, got {dep_q}")
        self.n_q, self.dep_q, self.card, self.text_card = n_q, dep_q, card, text_card
        self.text_card_out = text_card if text_card_out is None else text_card_out
        self.delays = list(delays)
        self.dim = dim
        self.context = context
        self.existing_text_padding_id = existing_text_padding_id
        self.existing_text_end_padding_id = existing_text_end_padding_id
        self.depformer_multi_linear = depformer_multi_linear
        self.depformer_weights_per_step_schedule = depformer_weights_per_step_schedule
        factory = {"device": device, "dtype": dtype}

        def embedding(vocab: int, width: int, low_rank: int | None = None) -> ScaledEmbedding:
            return ScaledEmbedding(vocab, width, norm=norm_emb, zero_idx=self.zero_token_id, low_rank=low_rank,
                                   **factory)

        self.emb = nn.ModuleList(embedding(card + 1, dim) for _ in range(n_q))
        self.text_emb = embedding(text_card + 1, dim)
        self.text_linear = nn.Linear(dim, self.text_card_out, bias=bias_proj, **factory)
        main_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("depformer_")}
        self.transformer = StreamingTransformer(
            d_model=dim, num_heads=num_heads, dim_feedforward=int(hidden_scale * dim), norm=norm, context=context,
            causal=causal, ttt_blocks=self._ttt_blocks(ttt, dim, num_heads, main_kwargs.get("num_layers", 0), factory),
            **factory, **main_kwargs,
        )
        self.out_norm = make_norm(norm, dim, **factory)

        num_inputs = 1
        if depformer_multi_linear:
            num_inputs = dep_q if depformer_weights_per_step_schedule is None else max(
                depformer_weights_per_step_schedule) + 1
        self.depformer_in = nn.ModuleList(
            nn.Linear(dim, depformer_dim, bias=False, **factory) for _ in range(num_inputs)
        )
        self.depformer_emb = nn.ModuleList(
            embedding(card + 1, depformer_dim, depformer_low_rank_embeddings) for _ in range(dep_q - 1)
        )
        self.depformer_text_emb = embedding(text_card + 1, depformer_dim, depformer_low_rank_embeddings)
        self.depformer_norms = nn.ModuleList(
            nn.Identity() if depformer_norm is None else make_norm(depformer_norm, depformer_dim, **factory)
            for _ in range(dep_q)
        )
        depformer_kwargs = dict(main_kwargs)
        depformer_kwargs.update({k.removeprefix("depformer_"): v for k, v in kwargs.items() if k.startswith("depformer_")})
        depformer_kwargs.update(positional_embedding=depformer_pos_emb, context=None)
        if depformer_weights_per_step:
            depformer_kwargs["weights_per_step"] = dep_q
            depformer_kwargs["weights_per_step_schedule"] = depformer_weights_per_step_schedule
        if depformer_dim_feedforward is None:
            depformer_dim_feedforward = int(hidden_scale * depformer_dim)
        self.depformer = StreamingTransformer(
            d_model=depformer_dim, dim_feedforward=depformer_dim_feedforward, norm=norm, causal=causal, **factory,
            **depformer_kwargs,
        )
        self.depformer.set_streaming_detached(True)
        self.extra_heads = nn.ModuleList(
            nn.Linear(dim, extra_heads_dim, bias=False, **factory) for _ in range(extra_heads_num_heads)
        )
        self.linears = nn.ModuleList(nn.Linear(depformer_dim, card, bias=bias_proj, **factory) for _ in range(dep_q))
        self.to(**{k: v for k, v in factory.items() if v is not None})
        self._init_weights()

    def _ttt_blocks(self, ttt: dict[str, Any] | TTTConfig | None, dim: int, num_heads: int, num_layers: int,
                    factory: dict[str, Any]) -> dict[int, nn.Module]:
        """TTT blocks of the main transformer by layer index, from the `ttt` config (none without one)."""
        self.ttt_config = ttt if isinstance(ttt, TTTConfig) or ttt is None else TTTConfig.from_dict(ttt)
        if self.ttt_config is None:
            return {}
        return self.ttt_config.build_blocks(dim, num_heads, num_layers, **factory)

    def _init_weights(self) -> None:
        for module in (*self.emb, *self.depformer_emb, self.text_emb, self.depformer_text_emb, self.text_linear,
                       *self.linears):
            init_scaled_normal_(module)
        for layer in self.transformer.layers:
            for name, child in layer.named_children():
                if name != "ttt":
                    child.apply(init_scaled_normal_)

    @property
    def initial_token_id(self) -> int:
        """Audio token fed before the first frame."""
        return self.card

    @property
    def text_initial_token_id(self) -> int:
        """Text token fed before the first frame."""
        return self.text_card

    @property
    def text_padding_token_id(self) -> int:
        return self.existing_text_padding_id

    @property
    def end_of_text_padding_id(self) -> int:
        return self.existing_text_end_padding_id

    @property
    def zero_token_id(self) -> int:
        """Input id meaning "no input": embeds to zeros and is never predicted."""
        return -1

    @property
    def ungenerated_token_id(self) -> int:
        """Placeholder for a token that has not been generated yet."""
        return -2

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_emb.weight.dtype

    @property
    def num_codebooks(self) -> int:
        return self.n_q + 1

    @property
    def num_audio_codebooks(self) -> int:
        return self.n_q

    @property
    def audio_offset(self) -> int:
        """Index of the first audio stream (after the text stream)."""
        return 1

    def initial_tokens(self, batch_size: int = 1) -> torch.Tensor:
        """Tokens `[B, K, 1]` fed before the first frame: `text_card` for text, `card` for every audio stream."""
        tokens = torch.full((batch_size, self.num_codebooks, 1), self.initial_token_id, dtype=torch.long,
                            device=self.device)
        tokens[:, 0] = self.text_initial_token_id
        return tokens

    def check_codes(self, codes: torch.Tensor, what: str = "codes") -> None:
        """Raise a ValueError naming the stream and value when `codes` `[B, K, T]` holds an invalid token."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"{what} must be [B, {self.num_codebooks}, T] (text + {self.n_q} audio streams), "
                             f"got shape {list(codes.shape)}")
        self._check_range(codes[:, :1], self.text_card, f"{what} text stream")
        self._check_range(codes[:, 1:], self.card, f"{what} audio streams")

    def _check_range(self, tokens: torch.Tensor, card: int, what: str) -> None:
        bad = (tokens < self.zero_token_id) | (tokens >= card)
        if bool(bad.any()):
            value = int(tokens[bad][0])
            raise ValueError(f"{what}: token {value} is outside the vocabulary [0, {card}) (or {self.zero_token_id} "
                             "for no input)")

    def embed(self, sequence: torch.Tensor) -> torch.Tensor:
        """Sum of the stream embeddings of `sequence` `[B, K, S]` -> `[B, S, dim]`."""
        x = self.text_emb(sequence[:, 0])
        for k, emb in enumerate(self.emb):
            x = x + emb(sequence[:, self.audio_offset + k])
        return x

    def forward_text(
        self, sequence: torch.Tensor, sum_condition: None = None, cross_attention_src: None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Main transformer on delayed input tokens `[B, K, S]`.

        Returns the normalised transformer output `[B, S, dim]` and the text logits `[B, 1, S, text_card_out]`.
        Continues the stream when streaming. The conditioning arguments of upstream's signature must stay None.
        """
        if sum_condition is not None or cross_attention_src is not None:
            raise NotImplementedError("LMModel.forward_text: conditioning is not supported by this fork")
        if sequence.shape[1] != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} streams, got sequence of shape {list(sequence.shape)}")
        transformer_out = self.out_norm(self.transformer(self.embed(sequence)))
        return transformer_out, self.text_linear(transformer_out)[:, None]

    def _depformer_input(self, cb_index: int, previous_token: torch.Tensor, transformer_out: torch.Tensor):
        """Depformer input for codebook `cb_index`: projected transformer output + embedding of the previous token."""
        linear_index = 0
        if self.depformer_multi_linear:
            schedule = self.depformer_weights_per_step_schedule
            linear_index = cb_index if schedule is None else schedule[cb_index]
        projected = self.depformer_in[linear_index](transformer_out)
        table = self.depformer_text_emb if cb_index == 0 else self.depformer_emb[cb_index - 1]
        return projected + table(previous_token)

    def forward_depformer(
        self, depformer_cb_index: int, sequence: torch.Tensor, transformer_out: torch.Tensor
    ) -> torch.Tensor:
        """One depformer step (inside the depformer's own stream): logits `[B, 1, 1, card]` for that codebook.

        `sequence` `[B, 1, 1]` is the previous token (the text token for codebook 0); `transformer_out` `[B, 1, dim]`.
        """
        if sequence.shape[1:] != (1, 1) or transformer_out.shape[1] != 1:
            raise ValueError("forward_depformer takes one codebook of one step: sequence [B, 1, 1], "
                             f"transformer_out [B, 1, dim]; got {list(sequence.shape)}, {list(transformer_out.shape)}")
        x = self._depformer_input(depformer_cb_index, sequence[:, 0], transformer_out)
        out = self.depformer(x)
        return self.linears[depformer_cb_index](self.depformer_norms[depformer_cb_index](out))[:, None]

    def forward_depformer_training(self, sequence: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
        """All codebooks of all steps in parallel: logits `[B, dep_q, S, card]`.

        `sequence` `[B, K, S]` holds, at step s, the tokens generated at s (delayed layout); `transformer_out` is
        `[B, S, dim]`.
        """
        B, _, S = sequence.shape
        inputs = [
            self._depformer_input(k, sequence[:, k], transformer_out) for k in range(self.dep_q)
        ]
        x = torch.stack(inputs, dim=2).flatten(0, 1)
        out = self.depformer(x)
        logits = [self.linears[k](self.depformer_norms[k](out[:, k])).unflatten(0, (B, S)) for k in range(self.dep_q)]
        return torch.stack(logits, dim=1)

    def forward(self, codes: torch.Tensor) -> LMOutput:
        """Score `codes` `[B, K, T]` (text, own audio, user audio) in parallel, with teacher forcing.

        `logits[:, k, t]` predicts `codes[:, 1 + k, t]`, `text_logits[:, 0, t]` predicts `codes[:, 0, t]`.
        """
        self.check_codes(codes)
        B = codes.shape[0]
        initial = self.initial_tokens(B)
        delayed = torch.cat([initial, delay_streams(codes, self.delays, initial)], dim=2)
        transformer_out, text_logits = self.forward_text(delayed[:, :, :-1])
        logits = self.forward_depformer_training(delayed[:, :, 1:], transformer_out)
        audio_streams = slice(self.audio_offset, self.audio_offset + self.dep_q)
        logits, mask = undelay_streams(logits, self.delays[audio_streams], float("nan"))
        mask &= codes[:, audio_streams] != self.zero_token_id
        text_logits, text_mask = undelay_streams(text_logits, self.delays[:1], float("nan"))
        text_mask &= codes[:, :1] != self.zero_token_id
        return LMOutput(logits, mask, text_logits, text_mask)


__all__ = ["LMGen", "LMModel", "LMOutput", "StepWithLogits"]
