"""Streaming generation with an `LMModel`: one frame per step, optionally with the logits behind every token.

Each step feeds the user's audio tokens of one frame, runs the main transformer once and the depformer once per own
audio codebook. Because streams are delayed, the step returns the tokens of frame `step - max_delay` (None before).

`step_with_logits` is `step` plus the logits that produced the returned tokens, taken from the very same streaming state
(KV caches, TTT fast weights). With `depformer_replace_tokens` it teacher-forces the model's own audio while still running
the depformer, so the returned audio logits score the given tokens: no second forward pass is needed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..modules.streaming import State, StreamingModule
from ..utils.compile import CUDAGraphed
from ..utils.sampling import sample_token
from .lm_chunks import ChunkWithLogits, SpeculationWindow, step_chunk_with_logits

if TYPE_CHECKING:
    from .lm import LMModel


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
    """Token cache `[B, K, max_delay + 2]` in the delayed layout, the tokens fed before the first frame `[B, K, 1]`,
    per-item offsets `[B]`, and the steps taken since the start or the last reset (of any item, as upstream: after a
    reset, `step` returns None for `max_delay` steps unless `support_out_of_sync`).

    The logits rings `[B, max_delay + 1, text_card_out]` and `[B, dep_q, max_delay + 1, card]` keep the logits of the
    last steps so that `step_with_logits` can return them aligned with the tokens.
    """

    cache: torch.Tensor
    initial_tokens: torch.Tensor
    offsets: torch.Tensor
    text_logits_ring: torch.Tensor
    audio_logits_ring: torch.Tensor
    graphed_main: CUDAGraphed
    graphed_depformer: CUDAGraphed
    graphed_forced_depformer: CUDAGraphed
    steps: int = 0
    speculation: SpeculationWindow = dataclasses.field(default_factory=SpeculationWindow)

    def reset(self, reset_mask: torch.Tensor) -> None:
        super().reset(reset_mask)
        self.offsets.masked_fill_(reset_mask, 0)
        self.steps = 0


def _write_where(tensor: torch.Tensor, dim: int, index: torch.Tensor, value: torch.Tensor, mask: torch.Tensor):
    """`tensor.scatter_(dim, index, value)` for the batch items where `mask` (broadcastable) is True only."""
    tensor.scatter_(dim, index, torch.where(mask, value, tensor.gather(dim, index)))


class LMGen(StreamingModule[LMGenState]):
    """Streaming generation; constructor arguments follow upstream moshi.

    `use_sampling` False means greedy decoding. `temp`/`top_k` apply to audio, `temp_text`/`top_k_text` to text.
    `check` validates that no ungenerated token is ever fed. Hooks receive the text logits `[B, 1, 1, text_card_out]`,
    the text tokens `[B]` and the audio tokens `[B, dep_q]` of every step. With `support_out_of_sync`, steps never return
    None; items whose frame is not ready yet get `ungenerated_token_id`.
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
        on_text_hook: Callable[[torch.Tensor], None] | None = None,
        on_text_logits_hook: Callable[[torch.Tensor], None] | None = None,
        on_audio_hook: Callable[[torch.Tensor], None] | None = None,
        support_out_of_sync: bool = False,
        **unsupported: Any,
    ) -> None:
        if lm_model.training:
            raise RuntimeError("LMGen needs the model in eval mode: call lm_model.eval() first")
        if cfg_coef != 1.0 or any(v is not None and v is not False for v in unsupported.values()):
            raise NotImplementedError(
                f"classifier-free guidance and conditioning are not supported (cfg_coef={cfg_coef}, "
                f"{sorted(unsupported)})")
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
        self.delays_cuda = torch.tensor(lm_model.delays, device=lm_model.device, dtype=torch.long)

    @property
    def num_user_streams(self) -> int:
        return self.lm_model.n_q - self.lm_model.dep_q

    def _init_streaming_state(self, batch_size: int) -> LMGenState:
        lm = self.lm_model
        device = lm.device
        ring = self.max_delay + 1
        logits_dtype = lm.text_linear.weight.dtype
        on_gpu = device.type == "cuda"
        return LMGenState(
            batch_size,
            device,
            cache=torch.full((batch_size, lm.num_codebooks, self.max_delay + 2), lm.ungenerated_token_id,
                             dtype=torch.long, device=device),
            initial_tokens=lm.initial_tokens(batch_size),
            offsets=torch.zeros(batch_size, dtype=torch.long, device=device),
            text_logits_ring=torch.zeros(batch_size, ring, lm.text_card_out, dtype=logits_dtype, device=device),
            audio_logits_ring=torch.zeros(batch_size, lm.dep_q, ring, lm.card, dtype=logits_dtype, device=device),
            graphed_main=CUDAGraphed(lm.forward_text, disable=not on_gpu),
            graphed_depformer=CUDAGraphed(functools.partial(self._depformer_pass, forced=None), disable=not on_gpu),
            graphed_forced_depformer=CUDAGraphed(self._depformer_pass, disable=not on_gpu),
        )

    def _check_inputs(self, input_tokens: torch.Tensor, replace: torch.Tensor | None,
                      text_replace: torch.Tensor | None) -> torch.Tensor:
        state, lm = self.streaming_state, self.lm_model
        if input_tokens.dim() != 3 or input_tokens.shape[0] != state.batch_size or input_tokens.shape[2] != 1:
            raise ValueError(f"input_tokens must be [B={state.batch_size}, {self.num_user_streams}, 1], "
                             f"got {list(input_tokens.shape)}")
        if input_tokens.shape[1] < self.num_user_streams:
            raise ValueError(f"input_tokens has {input_tokens.shape[1]} user streams, the model needs "
                             f"{self.num_user_streams}")
        user = input_tokens[:, :self.num_user_streams]
        lm._check_range(user, lm.card, "input_tokens (user audio)")
        user = user.to(state.device)
        if replace is not None:
            if tuple(replace.shape) != (state.batch_size, lm.dep_q, 1):
                raise ValueError(f"depformer_replace_tokens must be [B={state.batch_size}, dep_q={lm.dep_q}, 1], "
                                 f"got {list(replace.shape)}")
            lm._check_range(replace, lm.card, "depformer_replace_tokens")
        if text_replace is not None:
            if tuple(text_replace.shape) != (state.batch_size,):
                raise ValueError(f"text_replace_tokens must be [B={state.batch_size}], got {list(text_replace.shape)}")
            lm._check_range(text_replace, lm.text_card, "text_replace_tokens")
        return user

    def _model_input(self, user_tokens: torch.Tensor) -> torch.Tensor:
        """Record the user tokens at their delayed positions and read this step's input column `[B, K, 1]`."""
        state, lm = self.streaming_state, self.lm_model
        width = state.cache.shape[2]
        user_streams = slice(lm.dep_q + 1, lm.num_codebooks)
        write_at = (state.offsets[:, None, None] + self.delays_cuda[user_streams, None]) % width
        _write_where(state.cache[:, user_streams], 2, write_at, user_tokens, state.exec_mask[:, None, None])
        read_at = (state.offsets % width)[:, None, None].expand(-1, lm.num_codebooks, 1)
        column = state.cache.gather(2, read_at)
        use_initial = (state.offsets[:, None, None] <= self.delays_cuda[:, None]) | ~state.exec_mask[:, None, None]
        column = torch.where(use_initial, state.initial_tokens, column)
        if self.check and bool((column == lm.ungenerated_token_id).any()):
            raise RuntimeError(f"feeding a token that was never generated at offsets {state.offsets.tolist()}")
        return column

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

    def _record(self, text_token: torch.Tensor, audio_tokens: torch.Tensor | None, text_logits: torch.Tensor,
                audio_logits: torch.Tensor | None) -> None:
        """Advance by one step and store this step's tokens (and logits) at the new offset."""
        state, lm = self.streaming_state, self.lm_model
        state.offsets.add_(state.exec_mask.long())
        state.steps += 1
        executing = state.exec_mask[:, None, None]
        slot = (state.offsets % state.cache.shape[2])[:, None, None]
        _write_where(state.cache[:, :1], 2, slot, text_token[:, None, None], executing)
        if audio_tokens is not None:
            _write_where(state.cache[:, 1: lm.dep_q + 1], 2, slot.expand(-1, lm.dep_q, 1), audio_tokens[:, :, None],
                         executing)
        ring_slot = state.offsets % state.text_logits_ring.shape[1]
        text_index = ring_slot[:, None, None].expand(-1, 1, lm.text_card_out)
        _write_where(state.text_logits_ring, 1, text_index, text_logits[:, 0, 0][:, None], executing)
        if audio_logits is not None:
            audio_index = ring_slot[:, None, None, None].expand(-1, lm.dep_q, 1, lm.card)
            _write_where(state.audio_logits_ring, 2, audio_index, audio_logits[:, :, None], executing[..., None])

    def _ready_frame_index(self, width: int) -> torch.Tensor:
        """Indices `[B, dep_q + 1, 1]` (modulo `width`) of the tokens of the frame that is now complete."""
        state, lm = self.streaming_state, self.lm_model
        generated_delays = self.delays_cuda[: lm.dep_q + 1]
        return ((state.offsets[:, None] - self.max_delay + generated_delays) % width)[:, :, None]

    def _ready_tokens(self) -> torch.Tensor:
        state, lm = self.streaming_state, self.lm_model
        tokens = state.cache.gather(2, self._ready_frame_index(state.cache.shape[2]))
        not_ready = (state.offsets <= self.max_delay) | ~state.exec_mask
        return tokens.masked_fill(not_ready[:, None, None], lm.ungenerated_token_id)

    def _ready_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Text logits `[B, 1, 1, text_card_out]` and audio logits `[B, dep_q, 1, card]` of the completed frame."""
        state, lm = self.streaming_state, self.lm_model
        index = self._ready_frame_index(state.text_logits_ring.shape[1])
        text = state.text_logits_ring.gather(1, index[:, :1].expand(-1, 1, lm.text_card_out))
        audio = state.audio_logits_ring.gather(2, index[:, 1:, :, None].expand(-1, -1, 1, lm.card))
        return text[:, None], audio

    @torch.no_grad()
    def _step(
        self,
        input_tokens: torch.Tensor,
        depformer_replace_tokens: torch.Tensor | None,
        text_replace_tokens: torch.Tensor | None,
        keep_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The one step path shared by `step` and `step_with_logits`; returns (tokens, transformer_out) or None."""
        state = self.streaming_state
        user_tokens = self._check_inputs(input_tokens, depformer_replace_tokens, text_replace_tokens)
        transformer_out = self._advance(user_tokens, depformer_replace_tokens, text_replace_tokens, keep_logits)
        if state.steps <= self.max_delay and not self.support_out_of_sync:
            return None
        return self._ready_tokens(), transformer_out

    def _advance(self, user_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None,
                 text_replace_tokens: torch.Tensor | None, keep_logits: bool, hooks: bool = True) -> torch.Tensor:
        """Run one checked step (CUDA-graphed on a GPU) and record it; returns its transformer_out `[B, 1, dim]`."""
        state = self.streaming_state
        transformer_out, text_logits = state.graphed_main(self._model_input(user_tokens))
        if hooks and self.on_text_logits_hook is not None:
            self.on_text_logits_hook(text_logits)
        text_token = sample_token(text_logits.float(), self.use_sampling, self.temp_text, self.top_k_text)[:, 0, 0]
        if text_replace_tokens is not None:
            text_token = text_replace_tokens.to(text_token)
        if hooks and self.on_text_hook is not None:
            self.on_text_hook(text_token)
        audio_logits = None
        if depformer_replace_tokens is None:
            audio_tokens, audio_logits = state.graphed_depformer(text_token, transformer_out)
        elif keep_logits:
            forced = depformer_replace_tokens[:, :, 0].to(text_token)
            audio_tokens, audio_logits = state.graphed_forced_depformer(text_token, transformer_out, forced)
        else:
            audio_tokens = depformer_replace_tokens[:, :, 0].to(text_token)
        if hooks and self.on_audio_hook is not None:
            self.on_audio_hook(audio_tokens)
        self._record(text_token, audio_tokens, text_logits, audio_logits)
        return transformer_out

    def step(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None,
             *, text_replace_tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """Feed one frame of user tokens `[B, n_q - dep_q, 1]`; returns the tokens `[B, dep_q + 1, 1]` of the frame
        completed by this step, or None during the first `max_delay` steps.

        `depformer_replace_tokens` `[B, dep_q, 1]` replaces the own audio tokens of this step (delayed layout: entry k
        is codebook k of frame `step - delays[1 + k]`); `text_replace_tokens` `[B]` replaces the text token.
        """
        out = self._step(input_tokens, depformer_replace_tokens, text_replace_tokens, keep_logits=False)
        return None if out is None else out[0]

    def step_with_logits(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None,
                         *, text_replace_tokens: torch.Tensor | None = None) -> StepWithLogits | None:
        """`step`, plus the logits behind the returned tokens, from the same streaming state.

        The depformer always runs (teacher-forced with `depformer_replace_tokens`), so
        `cross_entropy(out.audio_logits[:, k, 0], out.tokens[:, 1 + k, 0])` is the model's loss on codebook k of the
        returned frame. Returns None exactly when `step` would.
        """
        out = self._step(input_tokens, depformer_replace_tokens, text_replace_tokens, keep_logits=True)
        if out is None:
            return None
        tokens, transformer_out = out
        text_logits, audio_logits = self._ready_logits()
        return StepWithLogits(tokens, text_logits, audio_logits, transformer_out)

    def step_chunk_with_logits(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor,
                               *, text_replace_tokens: torch.Tensor | None = None) -> ChunkWithLogits:
        """C teacher-forced `step_with_logits` calls in one pass: inputs `[B, n_q - dep_q, C]`, `[B, dep_q, C]` and
        optionally `[B, C]` text; greedy text is found by speculation. See `moshi.models.lm_chunks`."""
        return step_chunk_with_logits(self, input_tokens, depformer_replace_tokens, text_replace_tokens)
