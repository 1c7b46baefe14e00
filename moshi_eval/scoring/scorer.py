"""Exact teacher-forced scoring of audio sequences in one streaming pass with `LMGen.step_with_logits`.

The sequence's audio is the model's own stream, teacher-forced in the layout of `teacher_forced_step_inputs`
(`moshi.models.lm_utils`): at step s the own-stream codebook k is forced to frame `s - delays[1 + k]` (0 outside the
sequence), the user stream gets frame `s - 1` (the zero token outside), and the text token follows the text policy.
`step_with_logits` returns, `max_delay` steps later, the logits of every codebook of frame `f = s - max_delay`; their
cross-entropy against the true codes is the loss. Codebook k of the last `delays[1 + k]` frames has no defined
prediction (it would need frames after the end) and is stored as NaN, as `LMModel.forward` masks it.

Several sequences share one batch: each slot of the batch takes the next sequence as soon as its previous one ends (the
slot alone is reset with `reset_streaming(mask)`), and a slot with nothing left stops executing (`set_exec_mask`), so
nothing an item does touches the others. Only per-frame, per-codebook losses are kept: float32, on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from moshi.models.lm import LMGen, LMModel
from moshi.models.lm_utils import teacher_forced_step_inputs
from moshi.models.loaders import mimi_codebooks

from .sanity import NonFiniteLossError


@dataclasses.dataclass
class ScoringItem:
    """A sequence to score: own-stream codes `[dep_q, T]` and optional user-stream codes `[n_q - dep_q, T]`."""

    sequence_id: str
    own: torch.Tensor
    user: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return int(self.own.shape[-1])


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


class StepScorer:
    """Scores sequences with one `step_with_logits` call per frame, `batch_size` sequences at a time.

    Losses are checked every `check_every` steps and when a sequence ends: a non-finite loss stops the run then, naming
    the sequence, frame and codebook.
    """

    def __init__(self, lm: LMModel, text_policy: str = "greedy", seed: int = 0, temp_text: float = 0.7,
                 top_k_text: int = 25, check_every: int = 250) -> None:
        self.lm = lm
        self.text_policy = text_policy
        self.seed = seed
        self.temp_text = temp_text
        self.top_k_text = top_k_text
        self.check_every = check_every
        self.shape = ModelShape.of(lm)

    def make_lm_gen(self) -> LMGen:
        """Per-item resets need `support_out_of_sync`: a slot restarted mid-run must not stall the others."""
        return LMGen(self.lm, use_sampling=self.text_policy == "sample", temp_text=self.temp_text,
                     top_k_text=self.top_k_text, support_out_of_sync=True)

    @torch.no_grad()
    def run(self, items: Sequence[ScoringItem], batch_size: int, on_sequence: SequenceCallback,
            on_frames: ProgressCallback | None = None) -> None:
        """Score every item; `on_sequence` gets each result as soon as its sequence is done."""
        if not items:
            return
        for item in items:
            self.shape.check_item(item)
        queue = sorted(items, key=lambda item: -item.num_frames)
        batch_size = max(1, min(batch_size, len(queue)))
        was_training = self.lm.training
        self.lm.eval()
        try:
            if self.text_policy == "sample":
                torch.manual_seed(self.seed)
            lm_gen = self.make_lm_gen()
            with lm_gen.streaming(batch_size):
                _BatchRun(self, lm_gen, batch_size, max(item.num_frames for item in queue)).run(
                    queue, on_sequence, on_frames)
        finally:
            self.lm.train(was_training)


class _BatchRun:
    """The device buffers and the slot bookkeeping of one `StepScorer.run`.

    users `[B, n_user, S]` and owns `[B, dep_q, S]` hold each slot's step inputs (S = frames + max_delay), targets
    `[B, dep_q, frames]` its codes; steps `[B]` counts the steps each slot took since it was loaded.
    """

    def __init__(self, scorer: StepScorer, lm_gen: LMGen, batch_size: int, max_frames: int) -> None:
        self.scorer = scorer
        self.shape = scorer.shape
        self.lm_gen = lm_gen
        self.batch_size = batch_size
        self.max_frames = max_frames
        device = scorer.lm.device
        self.device = device
        shape = self.shape
        width = max_frames + shape.max_delay
        self.users = torch.full((batch_size, shape.num_user, width), shape.zero_token_id, dtype=torch.long,
                                device=device)
        self.owns = torch.zeros(batch_size, shape.dep_q, width, dtype=torch.long, device=device)
        self.targets = torch.zeros(batch_size, shape.dep_q, max_frames, dtype=torch.long, device=device)
        self.losses = torch.zeros(batch_size, max_frames, shape.dep_q, dtype=torch.float32, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.steps = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.active = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.active_cpu = [False] * batch_size
        self.nonfinite = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.misaligned = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.own_delays = torch.tensor(shape.own_delays, dtype=torch.long, device=device)
        self.rows = torch.arange(batch_size, device=device)
        self.slots: list[_Slot | None] = [None] * batch_size
        self.text_replace = None
        if scorer.text_policy == "pad":
            pad_id = int(scorer.lm.text_padding_token_id)
            self.text_replace = torch.full((batch_size,), pad_id, dtype=torch.long, device=device)

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
        own = item.own.to(self.device)
        user = None if item.user is None else item.user.to(self.device)[None]
        users, owns = teacher_forced_step_inputs(self.scorer.lm, own[None], user)
        steps, frames = owns.shape[2], item.num_frames
        self.users[index].fill_(self.shape.zero_token_id)
        self.users[index, :, :steps] = users[0]
        self.owns[index].zero_()
        self.owns[index, :, :steps] = owns[0]
        self.targets[index, :, :frames] = own
        self.lengths[index] = frames
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
        losses = token_cross_entropy(out.audio_logits[:, :, 0], targets)
        defined = scoring[:, None] & (frame[:, None] + self.own_delays[None, :] < self.lengths[:, None])
        self.nonfinite |= (defined & ~torch.isfinite(losses)).any(dim=1)
        self.misaligned |= (defined & (out.tokens[:, 1: 1 + self.shape.dep_q, 0] != targets)).any(dim=1)
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
        frames = slot.item.num_frames
        losses = self.losses[index, :frames].cpu().numpy().astype(np.float32, copy=True)
        losses[undefined_predictions(frames, self.shape.own_delays)] = np.nan
        self.slots[index] = None
        return ScoredSequence(slot.item.sequence_id, losses)


class ChunkedScorer:
    """Scores sequences `chunk_size` steps per call with `LMGen.step_chunk_with_logits`; same results as `StepScorer`.

    Sequences run in batches of `batch_size` from their first frame together; a sequence shorter than the longest of its
    batch keeps running on padding whose outputs are never read (each item only sees its own past). Text policies
    `greedy` (speculation) and `pad`. `acceptance_rate` is the share of main-transformer steps that were kept. A
    non-finite loss stops the run at the end of the chunk that produced it.
    """

    def __init__(self, lm: LMModel, text_policy: str = "greedy", chunk_size: int = 64) -> None:
        if text_policy not in ("greedy", "pad"):
            raise ValueError(f"chunked scoring supports the text policies 'greedy' and 'pad', not {text_policy!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.lm = lm
        self.text_policy = text_policy
        self.chunk_size = chunk_size
        self.shape = ModelShape.of(lm)
        self.kept_steps = 0
        self.main_steps = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.kept_steps / self.main_steps if self.main_steps else None

    @torch.no_grad()
    def run(self, items: Sequence[ScoringItem], batch_size: int, on_sequence: SequenceCallback,
            on_frames: ProgressCallback | None = None) -> None:
        """Score every item; `on_sequence` gets each result when its batch is done."""
        for item in items:
            self.shape.check_item(item)
        queue = sorted(items, key=lambda item: -item.num_frames)
        was_training = self.lm.training
        self.lm.eval()
        try:
            lm_gen = LMGen(self.lm, use_sampling=False)
            for start in range(0, len(queue), max(1, batch_size)):
                batch = queue[start: start + max(1, batch_size)]
                with lm_gen.streaming(len(batch)):
                    losses = self._score_batch(lm_gen, batch, on_frames)
                for item, item_losses in zip(batch, losses):
                    on_sequence(ScoredSequence(item.sequence_id, item_losses))
        finally:
            self.lm.train(was_training)

    def _step_inputs(self, batch: Sequence[ScoringItem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-step user tokens `[B, n_user, S]`, forced own tokens `[B, dep_q, S]` and targets `[B, dep_q, T]`."""
        shape = self.shape
        frames = batch[0].num_frames
        targets = torch.zeros(len(batch), shape.dep_q, frames, dtype=torch.long)
        user = torch.full((len(batch), shape.num_user, frames), shape.zero_token_id, dtype=torch.long)
        for b, item in enumerate(batch):
            targets[b, :, : item.num_frames] = item.own
            if item.user is not None and shape.num_user > 0:
                user[b, :, : item.num_frames] = item.user
        targets, user = targets.to(self.lm.device), user.to(self.lm.device)
        users, owns = teacher_forced_step_inputs(self.lm, targets, user)
        return users, owns, targets

    def _score_batch(self, lm_gen: LMGen, batch: Sequence[ScoringItem],
                     on_frames: ProgressCallback | None) -> list[np.ndarray]:
        users, owns, targets = self._step_inputs(batch)
        frames = targets.shape[2]
        losses = torch.zeros(len(batch), frames, self.shape.dep_q, dtype=torch.float32)
        pad = torch.full((len(batch), users.shape[2]), int(self.lm.text_padding_token_id), dtype=torch.long,
                         device=users.device)
        done = 0
        for start in range(0, users.shape[2], self.chunk_size):
            part = slice(start, start + self.chunk_size)
            text = pad[:, part] if self.text_policy == "pad" else None
            out = lm_gen.step_chunk_with_logits(users[:, :, part], owns[:, :, part], text_replace_tokens=text)
            self.kept_steps += out.transformer_out.shape[1]
            self.main_steps += out.main_steps
            count = out.audio_logits.shape[2]
            if count == 0:
                continue
            chunk_losses = token_cross_entropy(out.audio_logits, targets[:, :, done: done + count]).transpose(1, 2)
            losses[:, done: done + count] = chunk_losses.cpu()
            self._raise_on_non_finite(batch, losses[:, done: done + count], done)
            done += count
            if on_frames is not None:
                on_frames(sum(min(item.num_frames, done) - min(item.num_frames, done - count) for item in batch))
        return [self._finalize(item, losses[b]) for b, item in enumerate(batch)]

    def _raise_on_non_finite(self, batch: Sequence[ScoringItem], chunk_losses: torch.Tensor, start: int) -> None:
        """NonFiniteLossError for the first non-finite loss of a chunk `[B, C, dep_q]` (frames from `start`) at a
        defined frame and codebook of an item (padding frames of shorter items are never read)."""
        frames = torch.arange(start, start + chunk_losses.shape[1])[:, None]
        own_delays = torch.tensor(self.shape.own_delays)[None, :]
        for item, losses in zip(batch, chunk_losses):
            defined = frames + own_delays < item.num_frames
            bad = (defined & ~torch.isfinite(losses)).nonzero()
            if len(bad):
                raise NonFiniteLossError(item.sequence_id, start + int(bad[0, 0]), int(bad[0, 1]))

    def _finalize(self, item: ScoringItem, losses: torch.Tensor) -> np.ndarray:
        """The item's own frames, NaN where a codebook's frame is undefined (non-finite losses were errors already)."""
        length = item.num_frames
        result = losses[:length].numpy().astype(np.float32, copy=True)
        result[undefined_predictions(length, self.shape.own_delays)] = np.nan
        return result
