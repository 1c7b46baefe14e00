"""Moshi's language model over parallel token streams: a main transformer over time and a depformer over codebooks.

Streams (`K = 1 + n_q`): stream 0 is text, streams 1..dep_q are the model's own audio codebooks (predicted by the
depformer), the rest are the user's audio codebooks (input only). Stream k is delayed by `delays[k]` frames.

- `LMModel.forward(codes [B, K, T])` scores a whole sequence in parallel (teacher forcing).
- `LMGen` runs the model step by step in streaming. Each step feeds the user's audio tokens of one frame, runs the
  main transformer once and the depformer once per own audio codebook; because streams are delayed, it returns the
  tokens of frame `step - max_delay` (None before). `LMGen.step_with_logits` is `step` plus the logits behind the
  returned tokens, from the very same streaming state (KV caches, TTT fast weights); with `depformer_replace_tokens` it
  teacher-forces the own audio while the depformer still runs, so no second forward pass is needed.
  `LMGen.step_chunk_with_logits` returns what C teacher-forced `step_with_logits` calls would, in a few passes
  (`moshi.models.lm_chunks`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..conditioners import ConditionFuser, ConditionProvider, ConditionTensors
from ..modules.norms import make_norm
from ..modules.streaming import State, StreamingContainer, StreamingModule
from ..modules.transformer import StreamingTransformer
from ..modules.ttt import TTTBlock, TTTConfig
from ..utils.compile import CUDAGraphed
from ..utils.sampling import sample_token
from .lm_chunks import ChunkPasses, ChunkWithLogits
from .lm_ring import DelayRing, ReadyFrames
from .lm_utils import (
    ScaledEmbedding,
    delay_streams,
    explains_teacher_forcing_tokens,
    init_scaled_normal_,
    undelay_streams,
)

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
    `ttt`: optional test-time-training configuration for the main transformer: a `moshi.modules.ttt.TTTConfig`, its
    dict, or a moshi-finetune `ttt:` training section (`TTTConfig.from_section`). Streaming a config whose mini-batch is
    non-causal warns once and computes its causal form.
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
        self.ttt_config = ttt if ttt is None or isinstance(ttt, TTTConfig) else TTTConfig.from_section(ttt)
        num_layers = main_kwargs.get("num_layers", 0)
        ttt_blocks = {}
        if self.ttt_config is not None:
            ttt_blocks = self.ttt_config.build_blocks(dim, num_heads, num_layers, **factory)
        self.transformer = StreamingTransformer(
            d_model=dim, num_heads=num_heads, dim_feedforward=int(hidden_scale * dim), norm=norm, context=context,
            causal=causal, ttt_blocks=ttt_blocks, checkpointing=gradient_checkpointing, **factory, **main_kwargs,
        )
        if self.ttt_config is not None:
            self.transformer.set_attention_contexts(self.ttt_config.attention_contexts(num_layers))
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
        depformer_kwargs.update(
            {k.removeprefix("depformer_"): v for k, v in kwargs.items() if k.startswith("depformer_")})
        depformer_kwargs.update(positional_embedding=depformer_pos_emb, context=None)
        if depformer_weights_per_step:
            depformer_kwargs["weights_per_step"] = dep_q
            depformer_kwargs["weights_per_step_schedule"] = depformer_weights_per_step_schedule
        if depformer_dim_feedforward is None:
            depformer_dim_feedforward = int(hidden_scale * depformer_dim)
        self.depformer = StreamingTransformer(
            d_model=depformer_dim, dim_feedforward=depformer_dim_feedforward, norm=norm, causal=causal,
            checkpointing=gradient_checkpointing, **factory, **depformer_kwargs,
        )
        self.depformer.set_streaming_detached(True)
        self.extra_heads = nn.ModuleList(
            nn.Linear(dim, extra_heads_dim, bias=False, **factory) for _ in range(extra_heads_num_heads)
        )
        self.linears = nn.ModuleList(nn.Linear(depformer_dim, card, bias=bias_proj, **factory) for _ in range(dep_q))
        self.condition_provider: ConditionProvider | None = None
        self.fuser: ConditionFuser | None = None
        self.to(**{k: v for k, v in factory.items() if v is not None})
        self._init_weights()

    def _init_weights(self) -> None:
        for module in (*self.emb, *self.depformer_emb, self.text_emb, self.depformer_text_emb, self.text_linear,
                       *self.linears):
            init_scaled_normal_(module)
        for layer in self.transformer.layers:
            for child in layer.children():
                if not isinstance(child, TTTBlock):
                    child.apply(init_scaled_normal_)

    def _init_streaming_state(self, batch_size: int) -> State:
        if self.ttt_config is not None:
            self.ttt_config.warn_if_streamed_non_causal()
        return super()._init_streaming_state(batch_size)

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
    def text_padding_ids(self) -> tuple[int, int]:
        """The text tokens that say nothing: padding and end of padding."""
        return self.text_padding_token_id, self.end_of_text_padding_id

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
        self.check_token_range(codes[:, :1], self.text_card, f"{what} text stream")
        self.check_token_range(codes[:, 1:], self.card, f"{what} audio streams")

    def check_token_range(self, tokens: torch.Tensor, card: int, what: str) -> None:
        """Raise a ValueError naming `what` and the value when a token is outside `[0, card)` and not "no input"."""
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
        self, sequence: torch.Tensor, sum_condition: torch.Tensor | None = None,
        cross_attention_src: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Main transformer on delayed input tokens `[B, K, S]`.

        Returns the normalised transformer output `[B, S, dim]` and the text logits `[B, 1, S, text_card_out]`.
        Continues the stream when streaming. The conditioning arguments of upstream's signature must stay None.
        """
        if sum_condition is not None or cross_attention_src is not None:
            raise NotImplementedError("LMModel.forward_text: conditioning is not supported by this fork")
        transformer_out = self.forward_main(sequence)
        return transformer_out, self.text_linear(transformer_out)[:, None]

    def forward_main(self, sequence: torch.Tensor) -> torch.Tensor:
        """`forward_text` without the text logits: the normalised transformer output `[B, S, dim]`."""
        if sequence.shape[1] != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} streams, got sequence of shape {list(sequence.shape)}")
        return self.out_norm(self.transformer(self.embed(sequence)))

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

    def forward(self, codes: torch.Tensor, condition_tensors: ConditionTensors | None = None) -> LMOutput:
        """Score `codes` `[B, K, T]` (text, own audio, user audio) in parallel, with teacher forcing.

        `logits[:, k, t]` predicts `codes[:, 1 + k, t]`, `text_logits[:, 0, t]` predicts `codes[:, 0, t]`.
        `condition_tensors` completes upstream's signature (training code passes None); models here are unconditioned.
        """
        if condition_tensors is not None:
            raise NotImplementedError("LMModel.forward: condition_tensors must be None (this fork has no conditioned "
                                      "models; condition_provider and fuser are None)")
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


@dataclasses.dataclass
class StepWithLogits(Mapping):
    """What `LMGen.step_with_logits` returns; all fields refer to the same frame.

    tokens `[B, dep_q + 1, 1]`: text token then own audio tokens (as `LMGen.step` returns them).
    text_logits `[B, 1, 1, text_card_out]`: logits the text token was drawn from.
    audio_logits `[B, dep_q, 1, card]`: logits each audio token was drawn (or forced) from.
    transformer_out `[B, 1, dim]`: main transformer output of this step.
    Also readable as a mapping (`out["audio_logits"]`).
    """

    tokens: torch.Tensor
    text_logits: torch.Tensor
    audio_logits: torch.Tensor
    transformer_out: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


@dataclasses.dataclass
class LMGenState(State):
    """The delayed token ring (tokens, logits and per-item positions, see `moshi.models.lm_ring`), the CUDA-graphed
    passes, the main-transformer passes of chunks (`moshi.models.lm_chunks`, with their speculation policy), and the
    steps taken since the start or the last reset (of any item, as upstream: after a reset, `step` returns None for
    `max_delay` steps unless `support_out_of_sync`)."""

    ring: DelayRing
    graphed_main: CUDAGraphed
    graphed_depformer: CUDAGraphed
    graphed_forced_depformer: CUDAGraphed
    chunks: ChunkPasses
    steps: int = 0

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        self.ring.reset(reset_mask)
        self.steps = 0


class LMGen(StreamingModule[LMGenState]):
    """Streaming generation; constructor arguments follow upstream moshi.

    Step methods, each feeding the next frame(s) of user tokens: `step` (the tokens of the completed frame) and
    `step_with_extra_heads` (plus the extra heads' outputs), as upstream; `step_with_logits` (plus the logits behind
    the tokens) and `step_chunk_with_logits` (C teacher-forced `step_with_logits` calls at once). The first three share
    one step (`_step`) and return None during the first `max_delay` steps; the chunk leaves those frames out.

    `use_sampling` False means greedy decoding. `temp`/`top_k` apply to audio, `temp_text`/`top_k_text` to text. `check`
    validates that no ungenerated token is ever fed. Hooks receive the text logits `[B, 1, 1, text_card_out]`, the text
    tokens `[B]` and the audio tokens `[B, dep_q]` of every step. With `support_out_of_sync`, steps never return None;
    items whose frame is not ready yet get `ungenerated_token_id`. Upstream's conditioning arguments
    (`condition_tensors`, `cfg_is_masked_until`, `cfg_is_no_text`) and `cfg_coef` are refused unless left at their
    defaults (None / False / 1.0); any other keyword is a TypeError.
    """

    def __init__(
        self,
        lm_model: LMModel,
        use_sampling: bool = True,
        temp: float = 0.8,
        temp_text: float = 0.7,
        top_k: int = 250,
        top_k_text: int = 25,
        cfg_coef: float = 1.0,
        check: bool = False,
        condition_tensors: ConditionTensors | None = None,
        on_text_hook: Callable[[torch.Tensor], None] | None = None,
        on_text_logits_hook: Callable[[torch.Tensor], None] | None = None,
        on_audio_hook: Callable[[torch.Tensor], None] | None = None,
        support_out_of_sync: bool = False,
        cfg_is_masked_until: list[int] | None = None,
        cfg_is_no_text: bool = False,
    ) -> None:
        if lm_model.training:
            raise RuntimeError("LMGen needs the model in eval mode: call lm_model.eval() first")
        conditioning = {"condition_tensors": condition_tensors, "cfg_is_masked_until": cfg_is_masked_until,
                        "cfg_is_no_text": cfg_is_no_text}
        given = [name for name, value in conditioning.items() if value is not None and value is not False]
        if cfg_coef != 1.0 or given:
            raise NotImplementedError(
                f"classifier-free guidance and conditioning are not supported (cfg_coef={cfg_coef}, {given})")
        super().__init__()
        self.lm_model = lm_model
        self.use_sampling = use_sampling
        self.temp, self.temp_text = temp, temp_text
        self.top_k, self.top_k_text = top_k, top_k_text
        self.check = check
        self.on_text_hook = on_text_hook
        self.on_text_logits_hook = on_text_logits_hook
        self.on_audio_hook = on_audio_hook
        self.support_out_of_sync = support_out_of_sync
        self.max_delay = max(lm_model.delays)

    @property
    def num_user_streams(self) -> int:
        return self.lm_model.n_q - self.lm_model.dep_q

    @property
    def has_hooks(self) -> bool:
        return any(hook is not None for hook in (self.on_text_hook, self.on_text_logits_hook, self.on_audio_hook))

    def _init_streaming_state(self, batch_size: int) -> LMGenState:
        lm = self.lm_model
        on_gpu = lm.device.type == "cuda"
        ring = DelayRing.empty(lm.initial_tokens(batch_size), lm.delays[: lm.num_codebooks], lm.dep_q,
                               lm.text_card_out, lm.card, lm.dtype, lm.ungenerated_token_id)
        return LMGenState(
            batch_size,
            lm.device,
            ring=ring,
            graphed_main=CUDAGraphed(lm.forward_text, disable=not on_gpu),
            graphed_depformer=CUDAGraphed(functools.partial(self._depformer_pass, forced=None), disable=not on_gpu),
            graphed_forced_depformer=CUDAGraphed(self._depformer_pass, disable=not on_gpu),
            chunks=ChunkPasses(lm),
        )

    def check_step_inputs(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None,
                          text_replace_tokens: torch.Tensor | None = None, steps: int = 1) -> torch.Tensor:
        """Validate the inputs of `steps` steps and return the user tokens `[B, n_q - dep_q, steps]` on the model's
        device.

        input_tokens `[B, >= n_q - dep_q, steps]` (extra streams are ignored, as upstream); depformer_replace_tokens
        `[B, dep_q, steps]`; text_replace_tokens `[B, steps]`. Shapes and token ranges raise a ValueError naming them.
        """
        state, lm = self.streaming_state, self.lm_model
        B, needed = state.batch_size, self.num_user_streams
        expected = f"[B={B}, n_q - dep_q={needed}, {steps}]"
        if input_tokens.dim() != 3 or input_tokens.shape[0] != B or input_tokens.shape[2] != steps:
            raise ValueError(f"input_tokens must be {expected}, got {list(input_tokens.shape)}")
        if input_tokens.shape[1] < needed:
            raise ValueError(f"input_tokens must be {expected} (the user stream has {needed} codebooks; extra rows are "
                             f"ignored), got {list(input_tokens.shape)}: {input_tokens.shape[1]} user codebooks")
        user = input_tokens[:, :needed]
        lm.check_token_range(user, lm.card, "input_tokens (user audio)")
        if depformer_replace_tokens is not None:
            if tuple(depformer_replace_tokens.shape) != (B, lm.dep_q, steps):
                raise ValueError(f"depformer_replace_tokens must be [B={B}, dep_q={lm.dep_q}, {steps}], "
                                 f"got {list(depformer_replace_tokens.shape)}")
            lm.check_token_range(depformer_replace_tokens, lm.card, "depformer_replace_tokens")
        if text_replace_tokens is not None:
            if tuple(text_replace_tokens.shape) != (B, steps):
                raise ValueError(f"text_replace_tokens must be [B={B}] for one step or [B={B}, C] for C steps, "
                                 f"got {list(text_replace_tokens.shape)}")
            lm.check_token_range(text_replace_tokens, lm.text_card, "text_replace_tokens")
        return user.to(state.device)

    def depformer_step(self, text_token: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
        """Sample the own audio tokens `[B, dep_q]` of one step, codebook by codebook (upstream's signature)."""
        return self._depformer_pass(text_token, transformer_out, None)[0]

    def _depformer_pass(
        self, text_token: torch.Tensor, transformer_out: torch.Tensor, forced: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the depformer over the own codebooks of one step, each conditioned on the previous codebook's token.

        `forced` `[B, dep_q]` replaces the sampled tokens (teacher forcing); the logits are the model's either way.
        """
        lm = self.lm_model
        previous, tokens, logits = text_token, [], []
        with lm.depformer.streaming(text_token.shape[0]):
            for k in range(lm.dep_q):
                step_logits = lm.forward_depformer(k, previous[:, None, None], transformer_out)[:, 0, 0]
                if forced is None:
                    previous = sample_token(step_logits.float(), self.use_sampling, self.temp, self.top_k)
                else:
                    previous = forced[:, k]
                tokens.append(previous)
                logits.append(step_logits)
        return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)

    def _own_audio(self, text_token: torch.Tensor, transformer_out: torch.Tensor, forced: torch.Tensor | None,
                   keep_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Own audio tokens `[B, dep_q]` of one step and their logits `[B, dep_q, card]` (None when forced tokens need
        no logits: the depformer is then skipped)."""
        state = self.streaming_state
        if forced is None:
            return state.graphed_depformer(text_token, transformer_out)
        forced = forced[:, :, 0].to(text_token)
        if keep_logits:
            return state.graphed_forced_depformer(text_token, transformer_out, forced)
        return forced, None

    @torch.no_grad()
    def _step(
        self,
        input_tokens: torch.Tensor,
        depformer_replace_tokens: torch.Tensor | None,
        text_replace_tokens: torch.Tensor | None,
        keep_logits: bool,
    ) -> tuple[ReadyFrames, torch.Tensor]:
        """The one step under `step`, `step_with_extra_heads` and `step_with_logits`: the frame it completes and its
        transformer_out `[B, 1, dim]`."""
        state = self.streaming_state
        forced_text = text_replace_tokens
        if forced_text is not None and forced_text.dim() == 1:
            forced_text = forced_text[:, None]
        user = self.check_step_inputs(input_tokens, depformer_replace_tokens, forced_text)
        inputs = state.ring.step_inputs(user, None, state.exec_mask)
        if self.check and bool((inputs == self.lm_model.ungenerated_token_id).any()):
            raise RuntimeError(f"feeding a token that was never generated at positions {state.ring.offsets.tolist()}")
        transformer_out, text_logits = state.graphed_main(inputs)
        if self.on_text_logits_hook is not None:
            self.on_text_logits_hook(text_logits)
        text_token = sample_token(text_logits.float(), self.use_sampling, self.temp_text, self.top_k_text)[:, 0, 0]
        if forced_text is not None:
            text_token = forced_text[:, 0].to(text_token)
        if self.on_text_hook is not None:
            self.on_text_hook(text_token)
        audio_tokens, audio_logits = self._own_audio(text_token, transformer_out, depformer_replace_tokens, keep_logits)
        if self.on_audio_hook is not None:
            self.on_audio_hook(audio_tokens)
        generated = torch.cat([text_token[:, None], audio_tokens], dim=1)[:, :, None]
        step_audio_logits = None if audio_logits is None else audio_logits[:, :, None]
        frames = state.ring.append(user, generated, text_logits[:, 0], step_audio_logits, state.exec_mask)
        state.steps += 1
        return frames, transformer_out

    def _no_frame_yet(self) -> bool:
        """True during the first `max_delay` steps, when `step` returns None (unless `support_out_of_sync`)."""
        return self.streaming_state.steps <= self.max_delay and not self.support_out_of_sync

    def step(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None,
             *, text_replace_tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """Feed one frame of user tokens `[B, n_q - dep_q, 1]`; returns the tokens `[B, dep_q + 1, 1]` of the frame
        completed by this step, or None during the first `max_delay` steps.

        `depformer_replace_tokens` `[B, dep_q, 1]` replaces the own audio tokens of this step (delayed layout: entry k
        is codebook k of frame `step - delays[1 + k]`); `text_replace_tokens` `[B]` replaces the text token.
        """
        frames, _ = self._step(input_tokens, depformer_replace_tokens, text_replace_tokens, keep_logits=False)
        return None if self._no_frame_yet() else frames.tokens

    @torch.no_grad()
    def step_with_extra_heads(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """`step`, plus the softmax of each of the LM's `extra_heads` on this step's transformer output
        (`[B, 1, extra_heads_dim]` each), as upstream; None when `step` would return None."""
        frames, transformer_out = self._step(input_tokens, depformer_replace_tokens, None, keep_logits=False)
        if self._no_frame_yet():
            return None
        return frames.tokens, [torch.softmax(head(transformer_out), dim=-1) for head in self.lm_model.extra_heads]

    @explains_teacher_forcing_tokens
    def step_with_logits(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None,
                         *, text_replace_tokens: torch.Tensor | None = None) -> StepWithLogits | None:
        """`step`, plus the logits behind the returned tokens, from the same streaming state.

        The depformer always runs (teacher-forced with `depformer_replace_tokens`), so
        `cross_entropy(out.audio_logits[:, k, 0], out.tokens[:, 1 + k, 0])` is the model's loss on codebook k of the
        returned frame. Returns None exactly when `step` would.
        """
        frames, transformer_out = self._step(input_tokens, depformer_replace_tokens, text_replace_tokens,
                                             keep_logits=True)
        if self._no_frame_yet():
            return None
        return StepWithLogits(frames.tokens, frames.text_logits, frames.audio_logits, transformer_out)

    @torch.no_grad()
    def step_chunk_with_logits(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor,
                               *, text_replace_tokens: torch.Tensor | None = None,
                               keep_text_logits: bool = True) -> ChunkWithLogits:
        """C consecutive teacher-forced `step_with_logits` calls at once, their frames concatenated along time (none
        for the first `max_delay` steps, as `step_with_logits` returns None there, unless `support_out_of_sync`).

        input_tokens `[B, n_q - dep_q, C]`; depformer_replace_tokens `[B, dep_q, C]` (the own audio is always
        forced); text_replace_tokens `[B, C]`, or greedy text found by speculation (`moshi.models.lm_chunks`). Greedy
        or forced text only, every item executing, no per-step hooks. `keep_text_logits=False` returns no text logits
        (None) and, with forced text, does not compute them (audio scoring needs none).
        """
        state = self.streaming_state
        user = self._check_chunk(input_tokens, depformer_replace_tokens, text_replace_tokens)
        own = depformer_replace_tokens.to(user.device)
        batch_size, count = own.shape[0], own.shape[2]

        def inputs_for(text: torch.Tensor) -> torch.Tensor:
            generated = torch.cat([text[:, None], own], dim=1)
            return state.ring.step_inputs(user, generated[:, :, :-1], state.exec_mask)

        if text_replace_tokens is None:
            passes = state.chunks.greedy(inputs_for, batch_size, count, state.graphed_main, keep_text_logits)
        else:
            passes = state.chunks.forced(inputs_for, text_replace_tokens.to(user.device), keep_text_logits)
        generated = torch.cat([passes.text[:, None], own], dim=1)
        audio_logits = self.lm_model.forward_depformer_training(generated, passes.transformer_out)
        steps_before = state.steps
        text_logits = None if passes.text_logits is None else passes.text_logits[:, 0]
        frames = state.ring.append(user, generated, text_logits, audio_logits, state.exec_mask)
        state.steps += count
        frames = self._returned_frames(frames, steps_before)
        return ChunkWithLogits(frames.tokens, frames.text_logits, frames.audio_logits, passes.transformer_out,
                               passes.main_steps)

    def _check_chunk(self, user: torch.Tensor, own: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """The user tokens `[B, n_q - dep_q, C]` on the model's device, once the chunk's inputs are checked."""
        if own.dim() != 3:
            raise ValueError(f"depformer_replace_tokens must be [B, dep_q, C], got {list(own.shape)}")
        user = self.check_step_inputs(user, own, text, steps=own.shape[2])
        if text is None and self.use_sampling:
            raise ValueError("chunked scoring needs greedy text (use_sampling=False) or forced text tokens")
        if not bool(self.streaming_state.exec_mask.all()):
            raise ValueError("chunked scoring advances every batch item: clear the exec mask first")
        if self.has_hooks:
            raise ValueError("chunked scoring does not call the per-step hooks: clear on_text_hook, "
                             "on_text_logits_hook and on_audio_hook, or use step_with_logits")
        return user

    def _returned_frames(self, frames: ReadyFrames, steps_before: int) -> ReadyFrames:
        """The frames of consecutive steps taken after `steps_before` steps that `step` would return: those of the
        first `max_delay` steps are dropped unless `support_out_of_sync` (items reset at different times then mark
        their own incomplete frames with `ungenerated_token_id`)."""
        if self.support_out_of_sync:
            return frames
        first = max(0, self.max_delay - steps_before)
        text, audio = frames.text_logits, frames.audio_logits
        return ReadyFrames(frames.tokens[:, :, first:], None if text is None else text[:, :, first:],
                           None if audio is None else audio[:, :, first:])


__all__ = ["LMGen", "LMGenState", "LMModel", "LMOutput", "StepWithLogits"]
