"""Teacher-forced scoring of many steps per call, on the same streaming state as `LMGen.step_with_logits`.

`step_chunk_with_logits(lm_gen, user, own, text)` does what C consecutive calls of
`lm_gen.step_with_logits(user[..., i:i+1], own[..., i:i+1], text_replace_tokens=text[:, i])` would do, with one
main-transformer pass over the C steps (the KV caches and TTT states advance by C) and one parallel depformer pass.

All inputs are known in advance except the greedy text, whose token at step t is an input of step t + 1. It is found by
speculation: run the chunk with proposed text tokens from a checkpoint of the streaming state, accept the leading steps
whose text inputs equal the model's own argmax (plus the first corrected token), roll back, commit the accepted
steps and continue with the argmax as the next proposal. Accepted steps saw exactly the inputs the step-by-step greedy
pass gives them, so the result is the same.

Positions are in upstream's delayed layout: step s reads input position s and writes position s + 1 of the token cache.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .lm import LMModel
    from .lm_gen import LMGen


@dataclasses.dataclass
class ChunkWithLogits:
    """What C steps return together, for the F frames they complete (F = C, minus the first `max_delay` steps).

    tokens `[B, dep_q + 1, F]`, text_logits `[B, 1, F, text_card_out]`, audio_logits `[B, dep_q, F, card]` are aligned
    like `StepWithLogits`; transformer_out `[B, C, dim]` is the main transformer output of the C steps;
    `main_steps` counts the steps the main transformer evaluated, rejected speculation included (C without it), so
    `C / main_steps` is the speculation acceptance rate.
    """

    tokens: torch.Tensor
    text_logits: torch.Tensor
    audio_logits: torch.Tensor
    transformer_out: torch.Tensor
    main_steps: int


def teacher_forced_step_inputs(
    lm: LMModel, own: torch.Tensor, user: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step inputs that teacher-force the own audio `own` `[B, dep_q, T]` (and optional user audio `[B, n_user, T]`).

    Returns user tokens `[B, n_q - dep_q, S]` and own tokens `[B, dep_q, S]` for the S = T + max_delay steps of the pass,
    in the layout `step_with_logits` and `step_chunk_with_logits` take: step s gets codebook k of frame
    `s - delays[1 + k]` (0 outside the sequence) and user frame `s - 1` (the zero token outside).
    """
    B, K, T = own.shape
    steps = T + max(lm.delays)
    owns = own.new_zeros(B, K, steps)
    for k, delay in enumerate(lm.delays[1: 1 + K]):
        owns[:, k, delay: delay + T] = own[:, k]
    users = own.new_full((B, lm.n_q - lm.dep_q, steps), lm.zero_token_id)
    if user is not None:
        users[:, :, 1: T + 1] = user
    return users, owns


def _ring_columns(ring: torch.Tensor, dim: int, start: torch.Tensor, count: int) -> torch.Tensor:
    """Entries of `ring` along `dim` at positions `start + 0..count-1` (modulo its width), per item `start` `[B]`."""
    width = ring.shape[dim]
    index = (start[:, None] + torch.arange(count, device=start.device)) % width
    shape = [1] * ring.dim()
    shape[0], shape[dim] = index.shape
    index = index.view(shape).expand(*[n if i != dim else count for i, n in enumerate(ring.shape)])
    return ring.gather(dim, index)


def _token_tape(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Tokens `[B, K, C + 1]` at positions s..s+C (s = current offset), from the cache and this chunk's inputs.

    Text and own audio at position s + r (r >= 1) are the tokens of step s + r - 1; user stream j at position s + r is
    the input of step s + r - delay_j (written before the chunk when that step is earlier).
    """
    state, lm = lm_gen.streaming_state, lm_gen.lm_model
    C = own.shape[2]
    cached = _ring_columns(state.cache, 2, state.offsets, min(C + 1, state.cache.shape[2]))
    tape = torch.full((own.shape[0], lm.num_codebooks, C + 1), lm.ungenerated_token_id, dtype=torch.long,
                      device=own.device)
    tape[:, :1, 0] = cached[:, :1, 0]
    tape[:, 1: lm.dep_q + 1, 0] = cached[:, 1: lm.dep_q + 1, 0]
    tape[:, :1, 1:] = text[:, None]
    tape[:, 1: lm.dep_q + 1, 1:] = own
    for j, delay in enumerate(lm.delays[lm.dep_q + 1:]):
        stream = lm.dep_q + 1 + j
        available = min(C, C + 1 - delay)
        tape[:, stream, :delay] = cached[:, stream, :delay]
        tape[:, stream, delay: delay + available] = user[:, j, :available]
    return tape


def _main_inputs(lm_gen: LMGen, tape: torch.Tensor) -> torch.Tensor:
    """Input columns `[B, K, C]` of the chunk's steps, with initial tokens before each stream's delay."""
    state = lm_gen.streaming_state
    C = tape.shape[2] - 1
    positions = state.offsets[:, None, None] + torch.arange(C, device=tape.device)
    use_initial = positions <= lm_gen.delays_cuda[:, None]
    return torch.where(use_initial, state.initial_tokens, tape[:, :, :C])


def _depformer_logits(lm_gen: LMGen, tape: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
    """Teacher-forced depformer logits `[B, dep_q, C, card]` of all steps in one parallel pass."""
    return lm_gen.lm_model.forward_depformer_training(tape[:, :, 1:], transformer_out)


def _record_chunk(lm_gen: LMGen, tape: torch.Tensor, text_logits: torch.Tensor, audio_logits: torch.Tensor) -> None:
    """Write the chunk's tokens and logits into the step caches and advance every item by C steps."""
    state = lm_gen.streaming_state
    C = tape.shape[2] - 1
    width, ring = state.cache.shape[2], state.text_logits_ring.shape[1]
    for r in range(max(0, C + 1 - width), C + 1):
        slot = ((state.offsets + r) % width)[:, None, None].expand(-1, tape.shape[1], 1)
        state.cache.scatter_(2, slot, tape[:, :, r: r + 1])
    for i in range(max(0, C - ring), C):
        slot = (state.offsets + i + 1) % ring
        state.text_logits_ring[torch.arange(len(slot)), slot] = text_logits[:, 0, i]
        state.audio_logits_ring[torch.arange(len(slot)), :, slot] = audio_logits[:, :, i]
    state.offsets.add_(C)
    state.steps += C


def _completed_frames(lm_gen: LMGen, tape: torch.Tensor, steps_before: int, offsets_before: torch.Tensor,
                      text_logits: torch.Tensor, audio_logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Tokens and logits of the frames completed by the chunk's steps, gathered like `LMGen._ready_tokens`."""
    state, lm = lm_gen.streaming_state, lm_gen.lm_model
    max_delay, C = lm_gen.max_delay, tape.shape[2] - 1
    first = max(0, max_delay - steps_before)
    history_tokens = _ring_columns(state.cache, 2, offsets_before + 1 - max_delay, max_delay)
    tokens_tape = torch.cat([history_tokens[:, : lm.dep_q + 1], tape[:, : lm.dep_q + 1, 1:]], dim=2)
    history_text = _ring_columns(state.text_logits_ring, 1, offsets_before + 1 - max_delay, max_delay)
    history_audio = _ring_columns(state.audio_logits_ring, 2, offsets_before + 1 - max_delay, max_delay)
    text_tape = torch.cat([history_text[:, None], text_logits], dim=2)
    audio_tape = torch.cat([history_audio, audio_logits], dim=2)
    frames = torch.arange(first, C, device=tape.device)
    tokens = torch.stack([tokens_tape[:, k, frames + delay] for k, delay in enumerate(lm.delays[: lm.dep_q + 1])], 1)
    text = text_tape[:, :, frames]
    audio = torch.stack([audio_tape[:, k, frames + lm.delays[1 + k]] for k in range(lm.dep_q)], dim=1)
    not_ready = (offsets_before[:, None] + frames + 1) <= max_delay
    tokens = tokens.masked_fill(not_ready[:, None], lm.ungenerated_token_id)
    return tokens, text, audio


def _check_chunk(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor, text: torch.Tensor | None) -> None:
    state, lm = lm_gen.streaming_state, lm_gen.lm_model
    B = state.batch_size
    if own.dim() != 3 or own.shape[:2] != (B, lm.dep_q):
        raise ValueError(f"depformer_replace_tokens must be [B={B}, dep_q={lm.dep_q}, C], got {list(own.shape)}")
    C = own.shape[2]
    if tuple(user.shape) != (B, lm_gen.num_user_streams, C):
        raise ValueError(f"input_tokens must be [B={B}, {lm_gen.num_user_streams}, C={C}], got {list(user.shape)}")
    if text is not None and tuple(text.shape) != (B, C):
        raise ValueError(f"text_replace_tokens must be [B={B}, C={C}], got {list(text.shape)}")
    if text is None and lm_gen.use_sampling:
        raise ValueError("chunked scoring needs greedy text (use_sampling=False) or forced text tokens")
    if not bool(state.exec_mask.all()):
        raise ValueError("chunked scoring advances every batch item: clear the exec mask first")
    lm._check_range(user, lm.card, "input_tokens (user audio)")
    lm._check_range(own, lm.card, "depformer_replace_tokens")
    if text is not None:
        lm._check_range(text, lm.text_card, "text_replace_tokens")


def _main_pass(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor, text: torch.Tensor):
    """Main transformer over the steps of `own` with the given text tokens: tape, transformer_out, text_logits."""
    tape = _token_tape(lm_gen, user, own, text)
    transformer_out, text_logits = lm_gen.lm_model.forward_text(_main_inputs(lm_gen, tape))
    return tape, transformer_out, text_logits


def _finish(lm_gen: LMGen, tape: torch.Tensor, transformer_out: torch.Tensor, text_logits: torch.Tensor,
            steps_before: int, offsets_before: torch.Tensor, main_steps: int) -> ChunkWithLogits:
    """Depformer pass over steps whose main pass is final, then record them and gather the completed frames."""
    audio_logits = _depformer_logits(lm_gen, tape, transformer_out)
    tokens, text, audio = _completed_frames(lm_gen, tape, steps_before, offsets_before, text_logits, audio_logits)
    _record_chunk(lm_gen, tape, text_logits, audio_logits)
    return ChunkWithLogits(tokens, text, audio, transformer_out, main_steps)


def _commit(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor, text: torch.Tensor, rejected_steps: int = 0):
    """Run and record steps whose text tokens are known: one main pass, one parallel depformer pass."""
    state = lm_gen.streaming_state
    steps_before, offsets_before = state.steps, state.offsets.clone()
    tape, transformer_out, text_logits = _main_pass(lm_gen, user, own, text)
    main_steps = own.shape[2] + rejected_steps
    return _finish(lm_gen, tape, transformer_out, text_logits, steps_before, offsets_before, main_steps)


def _single_step(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor) -> ChunkWithLogits:
    """One greedy step through `LMGen`'s per-step path (CUDA-graphed on a GPU, where a one-step chunk is launch-bound):
    a window of one step is always accepted, so it needs no speculation."""
    transformer_out = lm_gen._advance(user, own, None, keep_logits=True, hooks=False)
    frames = 1 if lm_gen.streaming_state.steps > lm_gen.max_delay else 0
    text_logits, audio_logits = lm_gen._ready_logits()
    return ChunkWithLogits(lm_gen._ready_tokens()[:, :, :frames], text_logits[:, :, :frames],
                           audio_logits[:, :, :frames], transformer_out, main_steps=1)


def _verified_steps(proposed: torch.Tensor, greedy: torch.Tensor) -> int:
    """How many leading steps saw correct text inputs: step i + 1 needs `proposed[:, :i + 1] == greedy[:, :i + 1]`."""
    agree = (proposed[:, :-1] == greedy[:, :-1]).all(dim=0)
    disagreements = (~agree).nonzero()
    return int(disagreements[0]) + 1 if len(disagreements) else proposed.shape[1]


@dataclasses.dataclass
class SpeculationWindow:
    """How many steps the next greedy speculation pass covers; kept in the `LMGen` state across calls.

    The window doubles after each pass accepted whole and shrinks to the accepted length after a partial one. A pass
    rejected from its second step on (unpredictable text) drops to single steps, which are always accepted, for a back-off
    that doubles with each such rejection before a longer window is tried again.
    """

    length: int = 1 << 30
    hold: int = 0
    misses: int = 0

    def update(self, accepted: int, tried: int) -> None:
        if accepted == tried:
            if self.hold:
                self.hold -= 1
                return
            self.length = max(self.length, 2 * tried)
            if tried > 1:
                self.misses = 0
        elif accepted == 1:
            self.misses += 1
            self.length, self.hold = 1, 2 ** min(self.misses, 8)
        else:
            self.length, self.misses = accepted, 0


def _speculate_greedy(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor) -> list[ChunkWithLogits]:
    """Greedy text by speculation over a sliding window (sized by the state's `SpeculationWindow`).

    Run the window with proposed text, keep the leading steps whose inputs agree with the model's argmax (plus the first
    corrected token), roll the streaming state back, commit those steps, and propose the argmax for the rest. A window
    accepted whole is kept as it is, without a second pass; a window of one step takes the per-step path.
    """
    lm = lm_gen.lm_model
    B, _, C = own.shape
    proposal = torch.full((B, C), lm.text_padding_token_id, dtype=torch.long, device=own.device)
    parts: list[ChunkWithLogits] = []
    start = 0
    while start < C:
        state = lm_gen.streaming_state
        stop = min(C, start + state.speculation.length)
        if stop - start == 1:
            parts.append(_single_step(lm_gen, user[:, :, start: stop], own[:, :, start: stop]))
            state.speculation.update(1, 1)
            start = stop
            continue
        steps_before, offsets_before = state.steps, state.offsets.clone()
        checkpoint = lm_gen.checkpoint_streaming(stop - start)
        span = slice(start, stop)
        tape, transformer_out, text_logits = _main_pass(lm_gen, user[:, :, span], own[:, :, span], proposal[:, span])
        greedy = text_logits[:, 0].argmax(dim=-1)
        accepted = _verified_steps(proposal[:, span], greedy)
        proposal[:, span] = greedy
        if accepted == stop - start:
            tape[:, 0, -1] = greedy[:, -1]
            parts.append(_finish(lm_gen, tape, transformer_out, text_logits, steps_before, offsets_before, stop - start))
        else:
            lm_gen.rollback_streaming(checkpoint)
            kept = slice(start, start + accepted)
            parts.append(_commit(lm_gen, user[:, :, kept], own[:, :, kept], proposal[:, kept], stop - start))
        state.speculation.update(accepted, stop - start)
        start += accepted
    return parts


def _concatenate(parts: list[ChunkWithLogits]) -> ChunkWithLogits:
    if len(parts) == 1:
        return parts[0]
    return ChunkWithLogits(
        tokens=torch.cat([p.tokens for p in parts], dim=2),
        text_logits=torch.cat([p.text_logits for p in parts], dim=2),
        audio_logits=torch.cat([p.audio_logits for p in parts], dim=2),
        transformer_out=torch.cat([p.transformer_out for p in parts], dim=1),
        main_steps=sum(p.main_steps for p in parts),
    )


@torch.no_grad()
def step_chunk_with_logits(
    lm_gen: LMGen,
    input_tokens: torch.Tensor,
    depformer_replace_tokens: torch.Tensor,
    text_replace_tokens: torch.Tensor | None = None,
) -> ChunkWithLogits:
    """C teacher-forced steps at once: `input_tokens` `[B, n_q - dep_q, C]`, `depformer_replace_tokens` `[B, dep_q, C]`
    (step-by-step layout of `step_with_logits`), optional `text_replace_tokens` `[B, C]`; greedy text otherwise."""
    _check_chunk(lm_gen, input_tokens, depformer_replace_tokens, text_replace_tokens)
    if text_replace_tokens is not None:
        return _commit(lm_gen, input_tokens, depformer_replace_tokens, text_replace_tokens)
    return _concatenate(_speculate_greedy(lm_gen, input_tokens, depformer_replace_tokens))
