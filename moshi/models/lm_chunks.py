"""The main-transformer passes of teacher-forced chunks, C steps per call (`LMGen.step_chunk_with_logits`).

Every input of a teacher-forced step is known in advance except, with greedy text, the text token, which step t
generates and step t + 1 reads. Forced text makes a chunk one pass. Greedy text is found by speculation:

- a pass runs a window of L steps on proposed text tokens from a checkpoint of the main transformer's streaming state;
- each batch item keeps the leading steps whose text inputs equal its own argmax (plus the first corrected token): they
  saw exactly the inputs of the step-by-step greedy pass, so their outputs are final;
- the state is rolled back to each item's kept prefix without recomputing it (attention caches are truncated, TTT fast
  weights re-absorb the kept tokens' gradient sums), and items advance by their own kept length;
- the argmaxes of the rest of the window become the next proposals (Jacobi iteration: when the text follows the audio
  they hold even though their inputs were not final yet); steps no pass reached propose the padding token.

The window length follows the measured cost per kept step (`WindowPolicy`): long windows where the text is predictable,
single steps (no checkpoint, CUDA-graphed on a GPU) where it is not. The depformer runs once per call over the kept
steps, in parallel (`LMGen` does that and the ring bookkeeping).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..modules.transformer import AttentionState

if TYPE_CHECKING:
    from .lm import LMModel

LONGEST_WINDOW = 4096
"""No speculation window is longer (nor longer than an attention cache)."""
InputsFor = Callable[[torch.Tensor], torch.Tensor]
"""The input columns `[B, K, C]` of a chunk's C steps, given the text tokens `[B, C]` they generate."""
MainStep = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""`LMModel.forward_text` on the input column `[B, K, 1]` of one step (the CUDA-graphed one of `LMGen`)."""


@dataclasses.dataclass
class ChunkWithLogits:
    """What C steps return together, for the F frames they complete (F = C, minus the first `max_delay` steps unless
    the `LMGen` has `support_out_of_sync`).

    tokens `[B, dep_q + 1, F]`, text_logits `[B, 1, F, text_card_out]` (None when not kept), audio_logits
    `[B, dep_q, F, card]` are aligned like `StepWithLogits`; transformer_out `[B, C, dim]` is the main transformer
    output of the C steps; `main_steps` counts the steps of the main-transformer passes, rejected speculation included
    (C without it), so `C / main_steps` is the speculation acceptance rate and `main_steps / C` the main steps per
    frame.
    """

    tokens: torch.Tensor
    text_logits: torch.Tensor | None
    audio_logits: torch.Tensor
    transformer_out: torch.Tensor
    main_steps: int


@dataclasses.dataclass
class MainPasses:
    """The main transformer over a chunk's C steps: the text tokens they generate `[B, C]`, transformer_out
    `[B, C, dim]`, text logits `[B, 1, C, text_card_out]` (None when not kept), and the steps the passes took
    (`ChunkWithLogits`)."""

    text: torch.Tensor
    transformer_out: torch.Tensor
    text_logits: torch.Tensor | None
    main_steps: int


@dataclasses.dataclass
class WindowPolicy:
    """The length of the next speculative pass, among `1, 2, 4, ...` up to `longest`: the one with the lowest measured
    seconds per kept step, found by trying the lengths next to the current one.

    A length is measured over `period` passes (the cost of a pass counts only its share of executing items, so the
    passes that finish a chunk for the last items are not held against it), and its cost is averaged with its earlier
    measurements. After each measurement the policy moves to the cheapest of the current length and its two neighbours;
    when the current one is the cheapest it tries a neighbour (the longer first) never measured or measured more than
    `stale` measurements ago, so a change in how predictable the text is, or in the machine's load, is followed. A pass
    that every item kept whole ends its measurement at once, and moves to the longer window if that one was never
    measured: predictable text reaches long windows in a few passes.
    """

    longest: int
    level: int = 2
    period: int = 2
    stale: int = 8
    costs: dict[int, float] = dataclasses.field(default_factory=dict)
    measured_at: dict[int, int] = dataclasses.field(default_factory=dict)
    measurements: int = 0
    seconds: float = 0.0
    kept: int = 0
    passes: int = 0

    def __post_init__(self) -> None:
        self.level = min(self.level, self.top)

    @property
    def top(self) -> int:
        return max(0, self.longest.bit_length() - 1)

    @property
    def window(self) -> int:
        return 1 << self.level

    def record(self, seconds: float, kept: int, executing: float = 1.0, whole: bool = False) -> None:
        """Account one pass at the current length: its duration, the steps it kept (summed over items), the share of
        items that executed it and whether each of them kept the whole window."""
        self.seconds += seconds * executing
        self.kept += kept
        self.passes += 1
        if self.passes < self.period and not whole:
            return
        cost = self.seconds / max(self.kept, 1)
        earlier = self.costs.get(self.level)
        self.costs[self.level] = cost if earlier is None else (cost + earlier) / 2
        self.measured_at[self.level] = self.measurements
        self.measurements += 1
        self.seconds, self.kept, self.passes = 0.0, 0, 0
        climb = whole and self.level < self.top and self.level + 1 not in self.costs
        self.level = self.level + 1 if climb else self._next_level()

    def _next_level(self) -> int:
        near = [level for level in (self.level + 1, self.level - 1) if 0 <= level <= self.top]
        known = [level for level in near if level in self.costs]
        cheapest = min([self.level, *known], key=self.costs.__getitem__)
        if cheapest != self.level:
            return cheapest
        due = [level for level in near
               if self.measurements - self.measured_at.get(level, -self.stale - 1) > self.stale]
        return due[0] if due else self.level


def verified_steps(proposed: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """`[B]` how many leading steps of a pass saw correct text inputs: step i + 1 reads the text token of step i, so it
    needs `proposed[:, :i + 1] == greedy[:, :i + 1]` (both `[B, L]`)."""
    wrong = proposed[:, :-1] != greedy[:, :-1]
    first_wrong = wrong.int().argmax(dim=1)
    return torch.where(wrong.any(dim=1), first_wrong + 1, proposed.shape[1])


class GreedyChunk:
    """The speculation over one chunk of `count` steps: the text tokens `[B, C]` (kept ones, then proposals), each
    item's next step `[B]`, and the kept steps' transformer_out `[B, C, dim]` and text logits `[B, C, text_card_out]`
    (when kept). Each buffer has one more column, which takes the writes that must not land (so a pass is recorded
    without reading the device on the host).
    """

    def __init__(self, lm: LMModel, inputs_for: InputsFor, batch_size: int, count: int, keep_text_logits: bool) -> None:
        device = lm.device
        self.inputs_for = inputs_for
        self.count = count
        self.text = torch.full((batch_size, count + 1), lm.text_padding_token_id, dtype=torch.long, device=device)
        self.position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.transformer_out = torch.empty(batch_size, count + 1, lm.dim, dtype=lm.dtype, device=device)
        self.text_logits = None
        if keep_text_logits:
            self.text_logits = torch.empty(batch_size, count + 1, lm.text_card_out, dtype=lm.text_linear.weight.dtype,
                                           device=device)
        self.main_steps = 0
        self.masked = False  # whether items done with the chunk were taken out of the main transformer's exec mask

    def steps_left(self) -> int:
        """The steps the furthest-behind item still has to take (0 when the chunk is done)."""
        return self.count - int(self.position.min())

    def window(self, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each item's next `length` steps `[B, L]` (past the chunk's end for items close to it), their input columns
        `[B, K, L]` on the current proposals, and which items `[B]` still have steps to take."""
        steps = self.position[:, None] + torch.arange(length, device=self.position.device)
        inside = steps.clamp(max=self.count - 1)
        columns = self.inputs_for(self.text[:, :self.count])
        return steps, columns.gather(2, inside[:, None].expand(-1, columns.shape[1], -1)), self.position < self.count

    def proposed(self, steps: torch.Tensor) -> torch.Tensor:
        """The text tokens `[B, L]` the window's steps were run with (the input of each following step)."""
        return self.text.gather(1, steps.clamp(max=self.count - 1))

    def keep(self, steps: torch.Tensor, greedy: torch.Tensor, out: torch.Tensor, logits: torch.Tensor,
             kept: torch.Tensor, active: torch.Tensor) -> None:
        """Record a pass over `steps` `[B, L]`: its argmaxes `[B, L]` become the text of those steps (final for the
        first `kept[b]`, proposals after), and the kept steps' outputs `[B, L, dim]` and logits `[B, L, card]` are
        stored; items advance by `kept`."""
        spare = self.count  # the column that takes what must not land
        ahead = (steps < self.count) & active[:, None]
        self.text.scatter_(1, torch.where(ahead, steps, spare), greedy)
        final = torch.arange(steps.shape[1], device=steps.device) < kept[:, None]
        index = torch.where(final, steps, spare)[..., None]
        self.transformer_out.scatter_(1, index.expand_as(out), out.to(self.transformer_out.dtype))
        if self.text_logits is not None:
            self.text_logits.scatter_(1, index.expand_as(logits), logits.to(self.text_logits.dtype))
        self.position += kept
        self.main_steps += steps.shape[1]

    def passes(self) -> MainPasses:
        count = self.count
        text_logits = None if self.text_logits is None else self.text_logits[:, None, :count]
        return MainPasses(self.text[:, :count], self.transformer_out[:, :count], text_logits, self.main_steps)


class ChunkPasses:
    """Runs the main transformer of `lm` over teacher-forced chunks, and keeps the speculation's window policy across
    the calls of one streaming session (`LMGen` holds one in its streaming state)."""

    def __init__(self, lm: LMModel) -> None:
        self.lm = lm
        self.policy: WindowPolicy | None = None

    def forced(self, inputs_for: InputsFor, text: torch.Tensor, keep_text_logits: bool) -> MainPasses:
        """One pass over the steps of a chunk whose text tokens `[B, C]` are given (the text logits only when
        kept)."""
        if not keep_text_logits:
            return MainPasses(text, self.lm.forward_main(inputs_for(text)), None, text.shape[1])
        transformer_out, text_logits = self.lm.forward_text(inputs_for(text))
        return MainPasses(text, transformer_out, text_logits, text.shape[1])

    def greedy(self, inputs_for: InputsFor, batch_size: int, count: int, main_step: MainStep,
               keep_text_logits: bool) -> MainPasses:
        """The `count` steps of a chunk with greedy text, by speculation (see the module docstring): passes over
        windows whose length the policy picks, until every item has taken its `count` steps."""
        policy = self._window_policy()
        chunk = GreedyChunk(self.lm, inputs_for, batch_size, count, keep_text_logits)
        while steps_left := chunk.steps_left():
            started = time.perf_counter()
            window = policy.window
            kept, executing, whole = self._speculate(chunk, min(window, steps_left), main_step)
            policy.record(time.perf_counter() - started, kept, executing, whole and 1 < window <= steps_left)
        if chunk.masked:
            self.lm.transformer.set_exec_mask(torch.ones_like(chunk.position, dtype=torch.bool))
        return chunk.passes()

    def _speculate(self, chunk: GreedyChunk, length: int, main_step: MainStep) -> tuple[int, float, bool]:
        """One pass over the next `length` steps of every item still in the chunk (the others sit it out, their state
        unchanged); each keeps its verified steps. Returns the steps kept, the share of items that took part and
        whether each kept all its steps of the window."""
        lm = self.lm
        steps, columns, active = chunk.window(length)
        if chunk.masked or not bool(active.all()):
            lm.transformer.set_exec_mask(active)
            chunk.masked = True
        if length == 1:  # always verified: no checkpoint, and on a GPU the per-step CUDA graph
            out, logits = main_step(columns)
            greedy = logits[:, 0].argmax(dim=-1)
            kept = active.long()
        else:
            checkpoint = lm.transformer.checkpoint_streaming(length)
            out, logits = lm.forward_text(columns)
            greedy = logits[:, 0].argmax(dim=-1)
            kept = torch.minimum(verified_steps(chunk.proposed(steps), greedy), chunk.count - chunk.position) * active
            if bool((kept < length).any()):
                lm.transformer.rollback_streaming(checkpoint, kept)
        whole = bool((kept == torch.clamp(chunk.count - chunk.position, max=length))[active].all())
        chunk.keep(steps, greedy, out, logits[:, 0], kept, active)
        return int(kept.sum()), float(active.float().mean()), whole  # waits for the pass on a GPU (before the clock)

    def _window_policy(self) -> WindowPolicy:
        """The policy, created on the first greedy chunk: windows never longer than an attention cache (a longer pass
        could not keep part of its steps)."""
        if self.policy is None:
            caches = [state.capacity for state in self.lm.transformer.get_streaming_state().values()
                      if isinstance(state, AttentionState)]
            self.policy = WindowPolicy(min([LONGEST_WINDOW, *caches]))
        return self.policy
