"""Exact teacher-forced scoring of audio sequences in one streaming pass with `LMGen.step_with_logits`.

The sequence's audio is the model's own stream, teacher-forced in the layout of `teacher_forced_step_inputs`
(`moshi.models.lm_utils`): at step s the own-stream codebook k is forced to frame `s - delays[1 + k]` (0 outside the
sequence), the user stream gets frame `s - 1` (the zero token outside), and the text token follows the text policy.
`step_with_logits` returns, `max_delay` steps later, the logits of every codebook of frame `f = s - max_delay`; their
cross-entropy against the true codes is the loss. Codebook k of the last `delays[1 + k]` frames has no defined
prediction (it would need frames after the end) and is stored as NaN, as `LMModel.forward` masks it.

Several sequences share one batch: each slot of the batch takes the next sequence as soon as its previous one ends (the
slot alone is reset with `reset_streaming(mask)`), so nothing an item does touches the others. `StepScorer` stops a
slot with nothing left (`set_exec_mask`); `ChunkedScorer` refills slots between calls and lets an idle slot run on
padding. While they score, the main transformer's attention context is cut to the longest sequence
(`moshi.modules.transformer.bounded_attention_context`: same attention, KV caches of that length). Only per-frame,
per-codebook losses are kept: float32, on CPU.

Text policies (`text_policy`): `greedy`, `sample` (per step only), `pad` and `zero` (no text at all).

The scored codes are normally the forced own stream itself. A `ScoringItem` may instead name other `targets`: the own
stream is then forced to `own` (say the zero token, or silence) and its predictions are scored against `targets` (the
cross-stream score of an utterance placed in the user stream).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from moshi.models.lm import LMGen, LMModel
from moshi.models.lm_utils import teacher_forced_step_inputs
from moshi.models.loaders import mimi_codebooks
from moshi.modules.transformer import bounded_attention_context
from moshi.modules.ttt import inner_loss_trackers

from .errors import NonFiniteLossError
from .model import eval_mode
from .settings import CHUNKED_TEXT_POLICIES, check_text_policy, forced_text_token


@dataclasses.dataclass
class ScoringItem:
    """A sequence to score: own-stream codes `[dep_q, T]` (forced, the zero token allowed), optional user-stream codes
    `[n_q - dep_q, T]`, and optional `targets` `[dep_q, T]` the own-stream predictions are scored against (`own` when
    None)."""

    sequence_id: str
    own: torch.Tensor
    user: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return int(self.own.shape[-1])

    @property
    def scored(self) -> torch.Tensor:
        """The codes `[dep_q, T]` the losses are measured against."""
        return self.own if self.targets is None else self.targets


@dataclasses.dataclass
class ScoredSequence:
    """Per-frame, per-codebook cross-entropy `[T, dep_q]` (float32, NaN where the frame's codebook is undefined)."""

    sequence_id: str
    codebook_losses: np.ndarray


SequenceCallback = Callable[[ScoredSequence], None]
ProgressCallback = Callable[[int], None]


@dataclasses.dataclass
class _Slot:
    item: ScoringItem
    step: int = 0


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What scoring and the data depend on in an LM: its streams, their delays, the audio card and the zero token."""

    dep_q: int
    n_q: int
    card: int
    zero_token_id: int
    delays: tuple[int, ...]

    @classmethod
    def of(cls, lm: LMModel) -> ModelShape:
        return cls(int(lm.dep_q), int(lm.n_q), int(lm.card), int(lm.zero_token_id), tuple(int(d) for d in lm.delays))

    @property
    def num_user(self) -> int:
        return self.n_q - self.dep_q

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def own_delays(self) -> tuple[int, ...]:
        return self.delays[1: 1 + self.dep_q]

    @property
    def mimi_codebooks(self) -> int:
        return mimi_codebooks(self.n_q, self.dep_q)

    def check_item(self, item: ScoringItem) -> None:
        """Raise a ValueError naming the sequence when its codes do not fit the LM's streams."""
        if item.own.dim() != 2 or item.own.shape[0] != self.dep_q:
            raise ValueError(f"{item.sequence_id}: own codes must be [{self.dep_q}, T], got {list(item.own.shape)}")
        if item.num_frames < 1:
            raise ValueError(f"{item.sequence_id}: no frames to score")
        if item.user is not None and tuple(item.user.shape) != (self.num_user, item.num_frames):
            raise ValueError(f"{item.sequence_id}: user codes must be [{self.num_user}, {item.num_frames}], "
                             f"got {list(item.user.shape)}")
        if item.targets is not None and tuple(item.targets.shape) != (self.dep_q, item.num_frames):
            raise ValueError(f"{item.sequence_id}: targets must be [{self.dep_q}, {item.num_frames}], "
                             f"got {list(item.targets.shape)}")
        if item.targets is not None and (int(item.targets.min()) < 0 or int(item.targets.max()) >= self.card):
            raise ValueError(f"{item.sequence_id}: targets must lie in [0, {self.card})")


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy `[...]` of each target token `[...]` under its logits `[..., card]`, in float32."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[..., None])[..., 0]


def undefined_predictions(length: int, own_delays: Sequence[int]) -> np.ndarray:
    """`[length, dep_q]` True where codebook k's frame has no prediction: its last `own_delays[k]` frames."""
    undefined = np.zeros((length, len(own_delays)), dtype=bool)
    for codebook, delay in enumerate(own_delays):
        if delay > 0:
            undefined[length - delay:, codebook] = True
    return undefined


class _SlotScorer(abc.ABC):
    """What both scorers share: the LM, its shape and the text policy, and how a run is set up.

    `run` checks the items and takes them longest first, puts the LM in eval mode (given back afterwards) and scores
    them in `sessions`: each bounds the attention to its longest sequence and streams `make_lm_gen()` with one batch
    entry per slot (no more slots than items), each slot taking one item at a time; `slot_run` holds the buffers and
    the loop of one session.
    """

    def __init__(self, lm: LMModel, text_policy: str) -> None:
        self.lm = lm
        self.text_policy = text_policy
        self.shape = ModelShape.of(lm)

    def make_lm_gen(self) -> LMGen:
        """Per-item resets need `support_out_of_sync`: a slot restarted mid-run must not stall the others."""
        return LMGen(self.lm, use_sampling=False, support_out_of_sync=True)

    @abc.abstractmethod
    def slot_run(self, lm_gen: LMGen, batch_size: int, max_frames: int) -> _SlotRun:
        """The buffers and the loop of one run."""

    def sessions(self, queue: list[ScoringItem], batch_size: int) -> list[list[ScoringItem]]:
        """The streaming sessions of a run, given its items longest first: one for all of them (slots refilled as
        sequences end)."""
        return [queue]

    @torch.no_grad()
    def run(self, items: Sequence[ScoringItem], batch_size: int, on_sequence: SequenceCallback,
            on_frames: ProgressCallback | None = None) -> None:
        """Score every item; `on_sequence` gets each result as soon as its sequence is done."""
        if not items:
            return
        for item in items:
            self.shape.check_item(item)
        queue = sorted(items, key=lambda item: -item.num_frames)
        batch_size = max(1, batch_size)
        with eval_mode(self.lm):
            for session in self.sessions(queue, batch_size):
                slots = min(batch_size, len(session))
                longest = session[0].num_frames
                lm_gen = self.make_lm_gen()
                with bounded_attention_context(self.lm.transformer, longest + self.shape.max_delay), \
                        lm_gen.streaming(slots):
                    self.slot_run(lm_gen, slots, longest).run(session, on_sequence, on_frames)


class _SlotRun(abc.ABC):
    """One run of a scorer: the device buffers both scorers keep per slot, and the run's loop (`run`).

    users `[B, n_user, S]` and owns `[B, dep_q, S]` hold each slot's step inputs (S = longest frames + max_delay),
    targets `[B, dep_q, T]` the codes its predictions are scored against, losses `[B, T, dep_q]` its per-frame losses;
    lengths `[B]` counts the frames of its sequence and steps `[B]` the steps it took since it was loaded.
    """

    def __init__(self, scorer: _SlotScorer, lm_gen: LMGen, batch_size: int, max_frames: int) -> None:
        self.scorer = scorer
        self.shape = shape = scorer.shape
        self.lm_gen = lm_gen
        self.batch_size = batch_size
        self.max_frames = max_frames
        self.device = device = scorer.lm.device
        width = max_frames + shape.max_delay
        self.users = torch.full((batch_size, shape.num_user, width), shape.zero_token_id, dtype=torch.long,
                                device=device)
        self.owns = torch.zeros(batch_size, shape.dep_q, width, dtype=torch.long, device=device)
        self.targets = torch.zeros(batch_size, shape.dep_q, max_frames, dtype=torch.long, device=device)
        self.losses = torch.zeros(batch_size, max_frames, shape.dep_q, dtype=torch.float32, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.own_delays = torch.tensor(shape.own_delays, dtype=torch.long, device=device)
        self.inner_loss_trackers = inner_loss_trackers(scorer.lm)

    @abc.abstractmethod
    def run(self, queue: list[ScoringItem], on_sequence: SequenceCallback, on_frames: ProgressCallback | None) -> None:
        """Score the queued items, slot by slot as they free up."""

    def load_inputs(self, index: int, item: ScoringItem) -> torch.Tensor:
        """The item's step inputs, targets and length in slot `index`; returns its own codes `[dep_q, T]` on the
        device."""
        own = item.own.to(self.device)
        user = None if item.user is None else item.user.to(self.device)[None]
        users, owns = teacher_forced_step_inputs(self.scorer.lm, own[None], user)
        steps, frames = owns.shape[2], item.num_frames
        self.users[index].fill_(self.shape.zero_token_id)
        self.users[index, :, :steps] = users[0]
        self.owns[index].zero_()
        self.owns[index, :, :steps] = owns[0]
        self.targets[index, :, :frames] = item.scored.to(self.device)
        self.lengths[index] = frames
        self.limit_inner_losses(index, frames + self.shape.max_delay)
        return own

    def limit_inner_losses(self, index: int, steps: int) -> None:
        """TTT inner-loss recordings (if any) count the first `steps` positions of slot `index`: its sequence's steps,
        not the padding a slot may run on after them."""
        for tracker in self.inner_loss_trackers:
            tracker.limit[index] = steps

    def scored_sequence(self, index: int, item: ScoringItem) -> ScoredSequence:
        """Slot `index`'s losses of `item`, NaN where a codebook's frame has no prediction."""
        frames = item.num_frames
        self.limit_inner_losses(index, 0)
        losses = self.losses[index, :frames].cpu().numpy().astype(np.float32, copy=True)
        losses[undefined_predictions(frames, self.shape.own_delays)] = np.nan
        return ScoredSequence(item.sequence_id, losses)


class StepScorer(_SlotScorer):
    """Scores sequences with one `step_with_logits` call per frame, `batch_size` sequences at a time.

    Losses are checked every `check_every` steps and when a sequence ends: a non-finite loss stops the run then, naming
    the sequence, frame and codebook.
    """

    def __init__(self, lm: LMModel, text_policy: str = "greedy", seed: int = 0, temp_text: float = 0.7,
                 top_k_text: int = 25, check_every: int = 250) -> None:
        check_text_policy(text_policy)
        super().__init__(lm, text_policy)
        self.seed = seed
        self.temp_text = temp_text
        self.top_k_text = top_k_text
        self.check_every = check_every

    def make_lm_gen(self) -> LMGen:
        """Per-item resets need `support_out_of_sync`: a slot restarted mid-run must not stall the others. The `sample`
        policy draws its text tokens from torch's generator, seeded here with `seed`."""
        if self.text_policy == "sample":
            torch.manual_seed(self.seed)
        return LMGen(self.lm, use_sampling=self.text_policy == "sample", temp_text=self.temp_text,
                     top_k_text=self.top_k_text, support_out_of_sync=True)

    def slot_run(self, lm_gen: LMGen, batch_size: int, max_frames: int) -> _BatchRun:
        return _BatchRun(self, lm_gen, batch_size, max_frames)


class _BatchRun(_SlotRun):
    """The slot bookkeeping of one `StepScorer.run` (buffers of `_SlotRun`): forced `[B, dep_q, T]` holds each
    slot's own codes, active `[B]` which slots hold a sequence; nonfinite and misaligned `[B]` flag what
    `raise_on_bad_values` reports."""

    def __init__(self, scorer: StepScorer, lm_gen: LMGen, batch_size: int, max_frames: int) -> None:
        super().__init__(scorer, lm_gen, batch_size, max_frames)
        self.scorer: StepScorer = scorer
        device = self.device
        self.forced = torch.zeros(batch_size, self.shape.dep_q, max_frames, dtype=torch.long, device=device)
        self.active = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.active_cpu = [False] * batch_size
        self.nonfinite = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.misaligned = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.rows = torch.arange(batch_size, device=device)
        self.slots: list[_Slot | None] = [None] * batch_size
        self.text_replace = None
        text_token = forced_text_token(scorer.lm, scorer.text_policy)
        if text_token is not None:
            self.text_replace = torch.full((batch_size,), text_token, dtype=torch.long, device=device)

    def run(self, queue: list[ScoringItem], on_sequence: SequenceCallback, on_frames: ProgressCallback | None) -> None:
        pending = list(queue)
        total_steps = 0
        while True:
            self.fill_free_slots(pending)
            if not any(self.slots):
                break
            self.step()
            total_steps += 1
            if on_frames is not None:
                on_frames(self.frames_scored_by_last_step())
            if total_steps % self.scorer.check_every == 0:
                self.raise_on_bad_values()
            for index, slot in enumerate(self.slots):
                if slot is not None and slot.step == slot.item.num_frames + self.shape.max_delay:
                    on_sequence(self.finish(index, slot))

    def frames_scored_by_last_step(self) -> int:
        """Number of slots whose last step produced the loss of one of their frames."""
        max_delay = self.shape.max_delay
        return sum(1 for slot in self.slots
                   if slot is not None and 0 <= slot.step - 1 - max_delay < slot.item.num_frames)

    def fill_free_slots(self, pending: list[ScoringItem]) -> None:
        """Put the next sequences into free slots, reset those slots, and mask out slots left empty."""
        reset = [False] * self.batch_size
        for index in range(self.batch_size):
            if self.slots[index] is None and pending:
                self.load(index, pending.pop(0))
                reset[index] = True
        if any(reset):
            self.lm_gen.reset_streaming(torch.tensor(reset, device=self.device))
        active = [slot is not None for slot in self.slots]
        if any(reset) or active != self.active_cpu:
            self.active_cpu = active
            self.active.copy_(torch.tensor(active, device=self.device))
            self.lm_gen.set_exec_mask(self.active.clone())

    def load(self, index: int, item: ScoringItem) -> None:
        self.forced[index, :, :item.num_frames] = self.load_inputs(index, item)
        self.steps[index] = 0
        self.nonfinite[index] = False
        self.misaligned[index] = False
        self.slots[index] = _Slot(item)

    def step(self) -> None:
        at = self.steps.clamp(max=self.owns.shape[2] - 1)[:, None, None]
        forced = self.owns.gather(2, at.expand(-1, self.shape.dep_q, 1))
        user_tokens = self.users.gather(2, at.expand(-1, self.shape.num_user, 1))
        self.record(self.lm_gen.step_with_logits(user_tokens, forced, text_replace_tokens=self.text_replace))
        self.steps += self.active.long()
        for slot in self.slots:
            if slot is not None:
                slot.step += 1

    def record(self, out: Any) -> None:
        """Store the cross-entropy of frame `step - max_delay` for each scoring slot."""
        frame = self.steps - self.shape.max_delay
        scoring = self.active & (frame >= 0) & (frame < self.lengths)
        target_index = frame.clamp(0, self.max_frames - 1)[:, None, None].expand(-1, self.shape.dep_q, 1)
        targets = self.targets.gather(2, target_index)[..., 0]
        forced = self.forced.gather(2, target_index)[..., 0]
        losses = token_cross_entropy(out.audio_logits[:, :, 0], targets)
        defined = scoring[:, None] & (frame[:, None] + self.own_delays[None, :] < self.lengths[:, None])
        self.nonfinite |= (defined & ~torch.isfinite(losses)).any(dim=1)
        self.misaligned |= (defined & (out.tokens[:, 1: 1 + self.shape.dep_q, 0] != forced)).any(dim=1)
        at = frame.clamp(0, self.max_frames - 1)
        kept = self.losses[self.rows, at]
        self.losses[self.rows, at] = torch.where(scoring[:, None], losses, kept)

    def raise_on_bad_values(self) -> None:
        if bool(self.misaligned.any()):
            index = int(self.misaligned.nonzero()[0, 0])
            item = self.slots[index].item  # type: ignore[union-attr]
            raise RuntimeError(f"{item.sequence_id}: step_with_logits returned tokens that differ from the forced "
                               "audio; its output alignment does not match the teacher forcing")
        if bool(self.nonfinite.any()):
            index = int(self.nonfinite.nonzero()[0, 0])
            item = self.slots[index].item  # type: ignore[union-attr]
            done = self.losses[index, : item.num_frames].cpu().numpy()
            scored = max(0, self.slots[index].step - self.shape.max_delay)  # type: ignore[union-attr]
            bad = np.argwhere(~np.isfinite(done[:scored]))
            frame, codebook = (int(bad[0, 0]), int(bad[0, 1])) if len(bad) else (-1, -1)
            raise NonFiniteLossError(item.sequence_id, frame, codebook)

    def finish(self, index: int, slot: _Slot) -> ScoredSequence:
        self.raise_on_bad_values()
        self.slots[index] = None
        return self.scored_sequence(index, slot.item)




class ChunkedScorer(_SlotScorer):
    """Scores sequences `chunk_size` steps per call with `LMGen.step_chunk_with_logits`; same results as `StepScorer`.

    Sequences are taken longest first. When each fits in one call (short utterances), consecutive ones share a call
    of their own (`sessions`: at most `batch_size` of them and `chunk_size` steps over all slots), as
    lm-evaluation-harness batches requests. Otherwise `batch_size` slots share the calls: a call advances every slot by
    the same number of steps, up to `chunk_size` and no further than the longest remaining sequence; a slot whose
    sequence ends within a call runs on padding to the call's end (outputs never read), and before the next call it is
    reset alone and takes the next sequence. Either way a slot's padding is never read. Text policies `greedy`
    (speculation), `pad` and `zero`; no text logits are kept. `acceptance_rate` is the share of main-transformer steps
    that were kept. A non-finite loss stops the run at the end of the call that produced it.
    """

    def __init__(self, lm: LMModel, text_policy: str = "greedy", chunk_size: int = 64) -> None:
        check_text_policy(text_policy, CHUNKED_TEXT_POLICIES)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        super().__init__(lm, text_policy)
        self.chunk_size = chunk_size
        self.kept_steps = 0
        self.main_steps = 0
        self.calls = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.kept_steps / self.main_steps if self.main_steps else None

    def sessions(self, queue: list[ScoringItem], batch_size: int) -> list[list[ScoringItem]]:
        """Sequences that each fit in one call (short utterances) are batched the way lm-evaluation-harness batches
        requests: longest first, consecutive ones in one call, each call a session of its own that runs exactly its
        longest sequence (no idle slot, caches of that length). A call takes up to `batch_size` of them, and no more
        than keep its steps over all slots within `chunk_size` (long calls only wait longer on memory on a CPU).
        Longer sequences share one session whose slots are refilled as sequences end."""
        max_delay = self.shape.max_delay
        if queue[0].num_frames + max_delay > self.chunk_size:
            return [queue]
        calls, start = [], 0
        while start < len(queue):
            size = max(1, min(batch_size, self.chunk_size // (queue[start].num_frames + max_delay)))
            calls.append(queue[start: start + size])
            start += size
        return calls

    def slot_run(self, lm_gen: LMGen, batch_size: int, max_frames: int) -> _ChunkedRun:
        return _ChunkedRun(self, lm_gen, batch_size, max_frames)


class _ChunkedRun(_SlotRun):
    """The slot bookkeeping of one `ChunkedScorer.run` (buffers of `_SlotRun`): slot_steps counts on the host the
    steps each slot took since it was loaded."""

    def __init__(self, scorer: ChunkedScorer, lm_gen: LMGen, batch_size: int, max_frames: int) -> None:
        super().__init__(scorer, lm_gen, batch_size, max_frames)
        self.scorer: ChunkedScorer = scorer
        self.slots: list[ScoringItem | None] = [None] * batch_size
        self.slot_steps = [0] * batch_size
        self.text_token = forced_text_token(scorer.lm, scorer.text_policy)

    def run(self, queue: list[ScoringItem], on_sequence: SequenceCallback, on_frames: ProgressCallback | None) -> None:
        pending = list(queue)
        while True:
            self.fill_free_slots(pending)
            remaining = [self.remaining_steps(index) for index in range(self.batch_size)]
            if max(remaining) <= 0:
                break
            count = min(self.scorer.chunk_size, max(remaining))
            scored = self.call(count)
            if on_frames is not None:
                on_frames(scored)
            for index, item in enumerate(self.slots):
                if item is not None and self.remaining_steps(index) <= 0:
                    on_sequence(self.finish(index, item))

    def remaining_steps(self, index: int) -> int:
        item = self.slots[index]
        if item is None:
            return 0
        return item.num_frames + self.shape.max_delay - self.slot_steps[index]

    def fill_free_slots(self, pending: list[ScoringItem]) -> None:
        """Load the next sequences into free slots and reset them, idle slots too (so that every slot restarts at
        the same position and TTT layers keep one mini-batch phase)."""
        loaded = False
        for index in range(self.batch_size):
            if self.slots[index] is None and pending:
                self.load(index, pending.pop(0))
                loaded = True
        if loaded:
            fresh = [item is None or self.slot_steps[index] == 0 for index, item in enumerate(self.slots)]
            self.lm_gen.reset_streaming(torch.tensor(fresh, device=self.device))
            self.steps.masked_fill_(torch.tensor(fresh, device=self.device), 0)

    def load(self, index: int, item: ScoringItem) -> None:
        self.load_inputs(index, item)
        self.losses[index, :item.num_frames] = 0
        self.slots[index] = item
        self.slot_steps[index] = 0

    def call(self, count: int) -> int:
        """Advance every slot by `count` steps; store the losses of the frames they complete; return how many."""
        width = self.owns.shape[2]
        at = self.steps[:, None] + torch.arange(count, device=self.device)
        active = torch.tensor([item is not None for item in self.slots], device=self.device)
        inside = (at < width) & active[:, None]
        index = at.clamp(max=width - 1)[:, None]
        users = self.users.gather(2, index.expand(-1, self.shape.num_user, -1))
        users = users.masked_fill(~inside[:, None], self.shape.zero_token_id)
        owns = self.owns.gather(2, index.expand(-1, self.shape.dep_q, -1)).masked_fill(~inside[:, None], 0)
        text = None
        if self.text_token is not None:
            text = torch.full((self.batch_size, count), self.text_token, dtype=torch.long, device=self.device)
        out = self.lm_gen.step_chunk_with_logits(users, owns, text_replace_tokens=text, keep_text_logits=False)
        self.scorer.calls += 1
        self.scorer.kept_steps += out.transformer_out.shape[1]
        self.scorer.main_steps += out.main_steps
        scored = self.record(out.audio_logits, at - self.shape.max_delay, active)
        self.steps += count
        for index in range(self.batch_size):
            self.slot_steps[index] += count
        return scored

    def record(self, audio_logits: torch.Tensor, frame: torch.Tensor, active: torch.Tensor) -> int:
        """Losses of the frames completed by the call's steps: step j of slot b completes `frame[b, j]` (its step
        minus max_delay), scored when the slot is `active` `[B]` and the frame lies in its sequence."""
        scoring = active[:, None] & (frame >= 0) & (frame < self.lengths[:, None])
        index = frame.clamp(0, self.max_frames - 1)
        targets = self.targets.gather(2, index[:, None].expand(-1, self.shape.dep_q, -1))
        losses = token_cross_entropy(audio_logits, targets).transpose(1, 2)
        self.raise_on_non_finite(losses, frame, scoring)
        slot, step = scoring.nonzero(as_tuple=True)  # one host read
        self.losses[slot, index[slot, step]] = losses[slot, step]
        return slot.numel()

    def raise_on_non_finite(self, losses: torch.Tensor, frame: torch.Tensor, scoring: torch.Tensor) -> None:
        """NonFiniteLossError for the first non-finite loss `[B, C, dep_q]` of the call at a defined frame and codebook
        of a slot's sequence (padding is never read)."""
        defined = scoring[:, :, None] & (frame[:, :, None] + self.own_delays < self.lengths[:, None, None])
        bad = (defined & ~torch.isfinite(losses)).nonzero()
        if len(bad):
            slot, step, codebook = (int(value) for value in bad[0])
            item = self.slots[slot]
            raise NonFiniteLossError(item.sequence_id if item else f"slot {slot}", int(frame[slot, step]), codebook)

    def finish(self, index: int, item: ScoringItem) -> ScoredSequence:
        """The item's losses (non-finite losses were errors already); the slot is free again."""
        self.slots[index] = None
        return self.scored_sequence(index, item)
