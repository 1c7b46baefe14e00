"""The delayed token layout of streaming generation, kept as a ring: what each step reads and which frame it completes.

Stream k is delayed by `delays[k]` frames, so a step writes the tokens of different frames at once. Positions count
steps: step s reads the input column at position s and writes what it generates (text and own audio) at position s + 1;
the user's frame fed at step s sits at position s + delay of each user stream. The frame whose last stream arrives at
position p is complete there; its stream k sits at position `p - max_delay + delays[k]`.

`DelayRing` keeps the last `max_delay + 2` positions of every stream (and the logits of the last `max_delay + 1`
generated positions) per batch item. Both streaming paths use it: `LMGen` one step at a time, the chunked scorer
(`moshi.models.lm_chunks`) many teacher-forced steps per call.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class ReadyFrames:
    """The frames completed by consecutive steps, one per step.

    tokens `[B, 1 + dep_q, F]`: text then own audio (`ungenerated_token_id` where a frame is not complete yet);
    text_logits `[B, 1, F, text_card_out]` and audio_logits `[B, dep_q, F, card]` (None when the steps kept none):
    the logits each token was drawn (or teacher-forced) from.
    """

    tokens: torch.Tensor
    text_logits: torch.Tensor | None
    audio_logits: torch.Tensor | None


def _ring_index(ring: torch.Tensor, dim: int, start: torch.Tensor, count: int) -> torch.Tensor:
    """Gather/scatter index of positions `start + 0..count-1` modulo the ring's width along `dim`.

    `start` broadcasts to `ring.shape[:dim]` (one position per item, or per item and stream).
    """
    positions = (start.unsqueeze(-1) + torch.arange(count, device=start.device)) % ring.shape[dim]
    positions = positions.expand(*ring.shape[:dim], count)
    trailing = ring.shape[dim + 1:]
    return positions.view(*positions.shape, *([1] * len(trailing))).expand(*positions.shape, *trailing)


def _ring_read(ring: torch.Tensor, dim: int, start: torch.Tensor, count: int) -> torch.Tensor:
    """Entries of `ring` along `dim` at positions `start + 0..count-1`."""
    return ring.gather(dim, _ring_index(ring, dim, start, count))


def _ring_write(ring: torch.Tensor, dim: int, start: torch.Tensor, values: torch.Tensor, where: torch.Tensor) -> None:
    """Write `values` (`count` entries along `dim`) at positions `start + 0..count-1`, for the items in `where` `[B]`.

    Only the last `width` entries are written when there are more, so no slot is written twice.
    """
    width, count = ring.shape[dim], values.shape[dim]
    if count > width:
        values = values.narrow(dim, count - width, width)
        start, count = start + (count - width), width
    index = _ring_index(ring, dim, start, count)
    keep = (~where).view(-1, *([1] * (ring.dim() - 1)))
    ring.scatter_(dim, index, torch.where(keep, ring.gather(dim, index), values))


@dataclasses.dataclass
class DelayRing:
    """Per-item ring of the delayed layout; `G = 1 + dep_q` generated streams come first, then the user streams.

    tokens `[B, K, max_delay + 2]`: position p at slot `p % width`; text_logits `[B, max_delay + 1, text_card_out]`
    and audio_logits `[B, dep_q, max_delay + 1, card]`: the logits behind the generated tokens of the same positions;
    offsets `[B]`: the position each item reads next (its steps since the start or its last reset); initial `[B, K, 1]`:
    the tokens read before a stream's first real position; delays `[K]`, and on the host the text stream's delay and
    the own audio streams'.
    """

    tokens: torch.Tensor
    text_logits: torch.Tensor
    audio_logits: torch.Tensor
    offsets: torch.Tensor
    initial: torch.Tensor
    delays: torch.Tensor
    text_delay: int
    own_delays: list[int]
    ungenerated_token_id: int

    @classmethod
    def empty(cls, initial: torch.Tensor, delays: list[int], dep_q: int, text_card_out: int, card: int,
              logits_dtype: torch.dtype, ungenerated_token_id: int) -> DelayRing:
        """A ring for `initial` `[B, K, 1]` streams where nothing was written yet."""
        B, K, _ = initial.shape
        device, depth = initial.device, max(delays) + 1
        return cls(
            tokens=torch.full((B, K, depth + 1), ungenerated_token_id, dtype=torch.long, device=device),
            text_logits=torch.zeros(B, depth, text_card_out, dtype=logits_dtype, device=device),
            audio_logits=torch.zeros(B, dep_q, depth, card, dtype=logits_dtype, device=device),
            offsets=torch.zeros(B, dtype=torch.long, device=device),
            initial=initial,
            delays=torch.tensor(delays, dtype=torch.long, device=device),
            text_delay=delays[0],
            own_delays=list(delays[1: 1 + dep_q]),
            ungenerated_token_id=ungenerated_token_id,
        )

    def _frames_of(self, past: torch.Tensor, new: torch.Tensor, count: int, delay: int) -> torch.Tensor:
        """The entries `[B, count, ...]` of the `count` frames completed by the new positions, for a stream delayed by
        `delay`, from the last `max_delay` positions `past` and the new ones `new` (`new` itself when the delay is the
        largest)."""
        start = delay - self.max_delay  # of the frames, counted from the first new position
        if start == 0:
            return new
        if start + count <= 0:
            return past[:, delay: delay + count]
        return torch.cat([past[:, delay:], new[:, : start + count]], dim=1)

    @property
    def max_delay(self) -> int:
        return self.text_logits.shape[1] - 1

    @property
    def num_generated(self) -> int:
        """G: the text stream and the own audio streams."""
        return 1 + self.audio_logits.shape[1]

    def reset(self, reset_mask: torch.Tensor) -> None:
        """Items in `reset_mask` `[B]` start again from position 0 (older slots are never read again)."""
        self.offsets.masked_fill_(reset_mask, 0)

    def step_inputs(self, user: torch.Tensor, ahead: torch.Tensor | None, executing: torch.Tensor) -> torch.Tensor:
        """The input columns `[B, K, C]` of the next C steps (the ring is only read).

        user `[B, K - G, C]`: the user frame fed at each step; ahead `[B, G, C - 1]`: the tokens the first C - 1 steps
        will generate (teacher forcing, or a guess; None for one step); executing `[B]`: items that take the steps.
        """
        G, C = self.num_generated, user.shape[2]
        start = self.offsets
        cached = _ring_read(self.tokens, 2, start[:, None], self.max_delay + 1)
        generated = cached[:, :G, :1] if ahead is None else torch.cat([cached[:, :G, :1], ahead], dim=2)
        user_delays = self.delays[G:, None]
        steps = torch.arange(C, device=user.device)
        from_ring = steps < user_delays
        index = torch.where(from_ring, steps.clamp(max=self.max_delay), self.max_delay + 1 + steps - user_delays)
        pool = torch.cat([cached[:, G:], user], dim=2)
        users = pool.gather(2, index.expand(user.shape[0], -1, -1))
        columns = torch.cat([generated, users], dim=1)
        before_stream = (start[:, None, None] + steps) <= self.delays[:, None]
        use_initial = before_stream | ~executing[:, None, None]
        return torch.where(use_initial, self.initial, columns)

    def append(self, user: torch.Tensor, generated: torch.Tensor, text_logits: torch.Tensor,
               audio_logits: torch.Tensor | None, executing: torch.Tensor) -> ReadyFrames:
        """Record what C steps were fed and generated and return the frames they complete.

        user `[B, K - G, C]`: the user frames fed (as given to `step_inputs`); generated `[B, G, C]`; text_logits
        `[B, C, text_card_out]` or None (not kept: zeros in the ring); audio_logits `[B, dep_q, C, card]` or None (the
        own audio was forced without logits); executing `[B]`: items that took the steps (the others keep their ring).
        """
        G, C, depth = self.num_generated, generated.shape[2], self.max_delay
        start = self.offsets
        history = start + 1 - depth
        tokens = torch.cat([_ring_read(self.tokens[:, :G], 2, history[:, None], depth), generated], dim=2)
        frame_index = torch.arange(C, device=generated.device) + self.delays[:G, None]
        ready_tokens = tokens.gather(2, frame_index.expand(generated.shape[0], -1, -1))
        not_ready = (start[:, None] + torch.arange(1, C + 1, device=generated.device) <= depth) | ~executing[:, None]
        ready_tokens = ready_tokens.masked_fill(not_ready[:, None], self.ungenerated_token_id)
        ready_text = None
        if text_logits is not None:
            past_text = _ring_read(self.text_logits, 1, history, depth)
            ready_text = self._frames_of(past_text, text_logits, C, self.text_delay)[:, None]
        else:
            text_logits = self.text_logits.new_zeros(()).expand(generated.shape[0], C, self.text_logits.shape[2])
        ready_audio = None
        if audio_logits is not None:
            past = _ring_read(self.audio_logits, 2, history[:, None], depth)
            ready_audio = torch.stack([self._frames_of(past[:, k], audio_logits[:, k], C, delay)
                                       for k, delay in enumerate(self.own_delays)], dim=1)
            _ring_write(self.audio_logits, 2, start[:, None] + 1, audio_logits, executing)
        _ring_write(self.tokens[:, G:], 2, start[:, None] + self.delays[G:], user, executing)
        _ring_write(self.tokens[:, :G], 2, start[:, None] + 1, generated, executing)
        _ring_write(self.text_logits, 1, start + 1, text_logits, executing)
        self.offsets.add_(executing.long() * C)
        return ReadyFrames(ready_tokens, ready_text, ready_audio)
