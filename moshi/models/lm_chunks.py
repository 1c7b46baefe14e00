"""Teacher-forced scoring of many steps per call, on the same streaming state as `LMGen.step_with_logits`.

`step_chunk_with_logits(lm_gen, user, own, text)` does what C consecutive calls of
`lm_gen.step_with_logits(user[..., i:i+1], own[..., i:i+1], text_replace_tokens=text[:, i])` would do, with one
main-transformer pass over the C steps (the KV caches and TTT states advance by C) and one parallel depformer pass.

All inputs are known in advance except the greedy text, whose token at step t is an input of step t + 1. It is found by
speculation: run the chunk with proposed text tokens from a checkpoint of the streaming state, accept the leading steps
whose text inputs equal the model's own argmax (plus the first corrected token), roll back, commit the accepted
steps and continue with the argmax as the next proposal. Accepted steps saw exactly the inputs the step-by-step greedy
pass gives them, so the result is the same.

Steps read and record tokens through the same delayed ring as `LMGen`'s per-step path (`moshi.models.lm_ring`), and
windows of one step take that path itself.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .lm_ring import ReadyFrames

if TYPE_CHECKING:
    from .lm import LMGen


@dataclasses.dataclass
class ChunkWithLogits:
    """What C steps return together, for the F frames they complete (F = C, minus the first `max_delay` steps unless
    the `LMGen` has `support_out_of_sync`).

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


def _frames_of_new_steps(lm_gen: LMGen, steps_before: int, frames: ReadyFrames) -> ReadyFrames:
    """Drop the leading frames of steps taken before `max_delay` steps had passed (no frame is complete there).

    With `support_out_of_sync` every step keeps its frame, as `LMGen.step` then never returns None: items reset at
    different times each mark their own incomplete frames with `ungenerated_token_id`.
    """
    if lm_gen.support_out_of_sync:
        return frames
    first = max(0, lm_gen.max_delay - steps_before)
    audio = frames.audio_logits
    return ReadyFrames(frames.tokens[:, :, first:], frames.text_logits[:, :, first:],
                       None if audio is None else audio[:, :, first:])


def _main_pass(lm_gen: LMGen, user: torch.Tensor, generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Record the user frames and run the main transformer over the steps that generate `generated` `[B, G, C]`:
    transformer_out `[B, C, dim]` and text logits `[B, 1, C, text_card_out]`."""
    state = lm_gen.streaming_state
    inputs = state.ring.step_inputs(user, generated[:, :, :-1], state.exec_mask)
    return lm_gen.lm_model.forward_text(inputs)


def _finish(lm_gen: LMGen, generated: torch.Tensor, transformer_out: torch.Tensor, text_logits: torch.Tensor,
            main_steps: int) -> ChunkWithLogits:
    """Depformer pass over steps whose main pass is final, then record them and return the frames they complete."""
    state = lm_gen.streaming_state
    audio_logits = lm_gen.lm_model.forward_depformer_training(generated, transformer_out)
    steps_before = state.steps
    frames = state.ring.append(generated, text_logits[:, 0], audio_logits, state.exec_mask)
    state.steps += generated.shape[2]
    frames = _frames_of_new_steps(lm_gen, steps_before, frames)
    return ChunkWithLogits(frames.tokens, frames.text_logits, frames.audio_logits, transformer_out, main_steps)


def _generated(text: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """What the steps generate, `[B, 1 + dep_q, C]`: text `[B, C]` over the own audio `[B, dep_q, C]`."""
    return torch.cat([text[:, None], own], dim=1)


def _commit(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor, text: torch.Tensor, rejected_steps: int = 0):
    """Run and record steps whose text tokens are known: one main pass, one parallel depformer pass."""
    generated = _generated(text, own)
    transformer_out, text_logits = _main_pass(lm_gen, user, generated)
    return _finish(lm_gen, generated, transformer_out, text_logits, own.shape[2] + rejected_steps)


def _single_step(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor) -> ChunkWithLogits:
    """One greedy step through `LMGen.step_frame` (CUDA-graphed on a GPU, where a one-step chunk is launch-bound):
    a window of one step is always accepted, so it needs no speculation."""
    steps_before = lm_gen.streaming_state.steps
    out = lm_gen.step_frame(user, own)
    frames = _frames_of_new_steps(lm_gen, steps_before, ReadyFrames(out.tokens, out.text_logits, out.audio_logits))
    return ChunkWithLogits(frames.tokens, frames.text_logits, frames.audio_logits, out.transformer_out.clone(),
                           main_steps=1)


def _verified_steps(proposed: torch.Tensor, greedy: torch.Tensor) -> int:
    """How many leading steps saw correct text inputs: step i + 1 needs `proposed[:, :i + 1] == greedy[:, :i + 1]`."""
    agree = (proposed[:, :-1] == greedy[:, :-1]).all(dim=0)
    disagreements = (~agree).nonzero()
    return int(disagreements[0]) + 1 if len(disagreements) else proposed.shape[1]


@dataclasses.dataclass
class SpeculationWindow:
    """How many steps the next greedy speculation pass covers; kept in the `LMGen` state across calls.

    The window doubles after each pass accepted whole and shrinks to the accepted length after a partial one. A pass
    rejected from its second step on (unpredictable text) drops to single steps, which are always accepted, for a
    back-off that doubles with each such rejection before a longer window is tried again.
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
        checkpoint = lm_gen.checkpoint_streaming(stop - start)
        span = slice(start, stop)
        generated = _generated(proposal[:, span], own[:, :, span])
        transformer_out, text_logits = _main_pass(lm_gen, user[:, :, span], generated)
        greedy = text_logits[:, 0].argmax(dim=-1)
        accepted = _verified_steps(proposal[:, span], greedy)
        proposal[:, span] = greedy
        if accepted == stop - start:
            generated[:, 0, -1] = greedy[:, -1]
            parts.append(_finish(lm_gen, generated, transformer_out, text_logits, stop - start))
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


def _check_chunk(lm_gen: LMGen, user: torch.Tensor, own: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    """The user tokens `[B, n_q - dep_q, C]` on the model's device, once the chunk's inputs are checked."""
    if own.dim() != 3:
        raise ValueError(f"depformer_replace_tokens must be [B, dep_q, C], got {list(own.shape)}")
    user = lm_gen.check_step_inputs(user, own, text, steps=own.shape[2])
    if text is None and lm_gen.use_sampling:
        raise ValueError("chunked scoring needs greedy text (use_sampling=False) or forced text tokens")
    if not bool(lm_gen.streaming_state.exec_mask.all()):
        raise ValueError("chunked scoring advances every batch item: clear the exec mask first")
    if lm_gen.has_hooks:
        raise ValueError("chunked scoring does not call the per-step hooks: clear on_text_hook, on_text_logits_hook "
                         "and on_audio_hook, or use step_with_logits")
    return user


@torch.no_grad()
def step_chunk_with_logits(
    lm_gen: LMGen,
    input_tokens: torch.Tensor,
    depformer_replace_tokens: torch.Tensor,
    text_replace_tokens: torch.Tensor | None = None,
) -> ChunkWithLogits:
    """C teacher-forced steps at once: `input_tokens` `[B, n_q - dep_q, C]`, `depformer_replace_tokens` `[B, dep_q, C]`
    (step-by-step layout of `step_with_logits`), optional `text_replace_tokens` `[B, C]`; greedy text otherwise."""
    user = _check_chunk(lm_gen, input_tokens, depformer_replace_tokens, text_replace_tokens)
    own = depformer_replace_tokens.to(user.device)
    if text_replace_tokens is not None:
        return _commit(lm_gen, user, own, text_replace_tokens.to(user.device))
    return _concatenate(_speculate_greedy(lm_gen, user, own))
