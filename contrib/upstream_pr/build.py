"""Apply the `step_with_logits` change to upstream moshi's `moshi/models/lm.py` (the pull request of this folder).

    python contrib/upstream_pr/build.py --upstream DIR --out OUT

DIR holds upstream's package source: the folder with `moshi/models/lm.py` (an unpacked `moshi==0.2.13` sdist or wheel).
OUT (new or empty) receives a copy of DIR where only `moshi/models/lm.py` differs, and `OUT/step_with_logits.patch`,
the unified diff. Nothing of upstream is stored here: the code below is the change only, inserted at lines ("anchors")
found in upstream's file at run time. When an anchor is missing or ambiguous (another upstream version), the script
stops with one `error:` line and writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import shutil
import sys
import textwrap
from pathlib import Path

LM = Path("moshi/models/lm.py")
PATCH_NAME = "step_with_logits.patch"

STEP_WITH_LOGITS_CLASS = '''
@dataclass
class StepWithLogits:
    """What `LMGen.step_with_logits` returns; every field refers to the frame of `tokens`.

    tokens `[B, dep_q + 1, 1]`: what `LMGen.step` returns for the same call.
    text_logits `[B, 1, 1, text_card]`: the logits the text token was sampled from (before any replacement).
    audio_logits `[B, dep_q, 1, card]`: the logits each audio token was sampled or teacher-forced from.
    transformer_out `[B, 1, dim]`: the main transformer's output at this step.
    """

    tokens: torch.Tensor
    text_logits: torch.Tensor
    audio_logits: torch.Tensor
    transformer_out: torch.Tensor


'''

STATE_FIELDS = '''
graphed_depth_forced: CUDAGraphed | None = None
# Logits behind the tokens of `cache`, same slots: [B, 1, CT, text_card], [B, dep_q, CT, card].
text_logits: torch.Tensor | None = None
audio_logits: torch.Tensor | None = None
'''

ALLOCATE_RINGS = '''
state.graphed_depth_forced = CUDAGraphed(self._depformer_pass, disable=disable)
slots, factory = cache.shape[2], {"device": lm_model.device, "dtype": lm_model.dtype}
state.text_logits = torch.zeros(batch_size, 1, slots, lm_model.text_linear.weight.shape[0], **factory)
state.audio_logits = torch.zeros(batch_size, lm_model.dep_q, slots, lm_model.card, **factory)
'''

STEP_KEYWORDS = '''
text_replace_tokens: torch.Tensor | None = None, keep_logits: bool = False,
'''

REPLACE_TEXT = '''
if text_replace_tokens is not None:
    text_token = text_replace_tokens.to(text_token)
'''

FORCED_DEPFORMER = '''
if keep_logits:
    audio_logits = state.graphed_depth_forced(text_token, transformer_out, audio_tokens)[1]
'''

WRITE_RINGS = '''
ring_mask = state.exec_mask[:, None, None, None]
text_slot = positions[..., None].expand(-1, -1, -1, state.text_logits.shape[-1])
scatter_with_mask_(state.text_logits, 2, text_slot, text_logits.to(state.text_logits), ring_mask)
if audio_logits is not None:
    audio_logits = audio_logits[:, :, None].to(state.audio_logits)
    audio_slot = positions[..., None].expand_as(audio_logits)
    scatter_with_mask_(state.audio_logits, 2, audio_slot, audio_logits, ring_mask)

'''

READ_RINGS = '''
if keep_logits:
    text_index = index[:, :1, :, None].expand(-1, -1, -1, state.text_logits.shape[-1])
    audio_index = index[:, 1:, :, None].expand(-1, -1, -1, state.audio_logits.shape[-1])
    return StepWithLogits(out, state.text_logits.gather(2, text_index),
                          state.audio_logits.gather(2, audio_index), transformer_out)
'''

STEP_WITH_LOGITS_METHOD = '''
def step_with_logits(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None, *,
                     text_replace_tokens: torch.Tensor | None = None) -> StepWithLogits | None:
    """`step`, plus the logits behind the tokens it returns, from the same streaming state and random draws.

    With `depformer_replace_tokens` `[B, dep_q, 1]` the depformer still runs, teacher-forced (codebook k + 1 is
    conditioned on the given token of codebook k), so `out.audio_logits[:, k]` are the model's logits for
    `out.tokens[:, 1 + k]`. `text_replace_tokens` `[B]` replaces the sampled text token. Returns None exactly when
    `step` does.
    """
    out = self._step(input_tokens, depformer_replace_tokens, text_replace_tokens=text_replace_tokens,
                     keep_logits=True)
    assert out is None or isinstance(out, StepWithLogits)
    return out

'''

DEPFORMER_STEP = '''
def depformer_step(self, text_token: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
    return self._depformer_pass(text_token, transformer_out)[0]

'''

DEPFORMER_DOC = '''
"""The depformer over the own codebooks of one step: tokens `[B, dep_q]` and their logits `[B, dep_q, card]`.

`forced` `[B, dep_q]` replaces the sampled tokens (teacher forcing: no random draw); logits are the model's.
"""
'''

FORCE_TOKEN = '''
if forced is not None:
    next_token = forced[:, cb_index]
'''


class AnchorError(Exception):
    """An expected line of upstream's lm.py is missing or not unique."""


@dataclasses.dataclass
class Edit:
    """At the line starting with `anchor` (after stripping) inside `scope`: replace `old` by `new` in it, and insert
    `before` / `after` it (indented like it, plus `indent` spaces)."""

    scope: str
    anchor: str
    before: str = ""
    after: str = ""
    old: str = ""
    new: str = ""
    indent: int = 0
    above_decorator: bool = False


EDITS = [
    Edit("class _LMGenState(", "class _LMGenState(", before=STEP_WITH_LOGITS_CLASS, above_decorator=True),
    Edit("class _LMGenState(", "set_exec_mask_callback:", after=STATE_FIELDS),
    Edit("def _init_streaming_state(", "graphed_depth = CUDAGraphed(self.depformer_step",
         old="self.depformer_step", new="self._depformer_pass"),
    Edit("def _init_streaming_state(", "cfg_is_masked_until=cfg_is_masked_until)", after=ALLOCATE_RINGS, indent=-4),
    Edit("def _step(", "depformer_replace_tokens: torch.Tensor | None = None", old="= None", new="= None, *,",
         after=STEP_KEYWORDS),
    Edit("def _step(", ") -> tuple[torch.Tensor, torch.Tensor] | None:", old="| None", new="| StepWithLogits | None"),
    Edit("def _step(", "text_token = text_token[:, 0, 0]", after=REPLACE_TEXT),
    Edit("def _step(", "if state.graphed_depth is None:", before="audio_logits = None\n"),
    Edit("def _step(", "audio_tokens = state.graphed_depth(text_token, transformer_out)",
         old="audio_tokens =", new="audio_tokens, audio_logits ="),
    Edit("def _step(", "audio_tokens = depformer_replace_tokens.squeeze(-1)", after=FORCED_DEPFORMER),
    Edit("def _step(", "state.offsets = torch.where(state.exec_mask, state.offsets + 1, state.offsets)"),
    Edit("def _step(", "if not self.support_out_of_sync and state.offset_cpu <= self.max_delay:", before=WRITE_RINGS),
    Edit("def _step(", "index = (state.offsets[:, None, None] - self.max_delay + gen_delays_cuda[:, None]) % CT"),
    Edit("def _step(", "return out, transformer_out", before=READ_RINGS),
    Edit("def step_with_extra_heads(", "def step_with_extra_heads(", before=STEP_WITH_LOGITS_METHOD,
         above_decorator=True),
    Edit("def depformer_step(", "def depformer_step(", before=DEPFORMER_STEP, old="depformer_step",
         new="_depformer_pass"),
    Edit("def depformer_step(", "transformer_out: torch.Tensor,", after="forced: torch.Tensor | None = None,\n"),
    Edit("def depformer_step(", ") -> torch.Tensor:", old="torch.Tensor:", new="tuple[torch.Tensor, torch.Tensor]:",
         after=DEPFORMER_DOC, indent=4),
    Edit("def depformer_step(", "depformer_tokens: list[torch.Tensor] = []",
         after="depformer_logits: list[torch.Tensor] = []\n"),
    Edit("def depformer_step(", "next_token = sample_token(", before="depformer_logits.append(logits[:, 0, 0])\n"),
    Edit("def depformer_step(", "self.use_sampling,", old="self.use_sampling,",
         new="self.use_sampling and forced is None,"),
    Edit("def depformer_step(", "next_token = next_token[:, 0, 0]", after=FORCE_TOKEN),
    Edit("def depformer_step(", "return out", old="return out", new="return out, torch.stack(depformer_logits, dim=1)"),
]
"""The change, in file order within each scope. The ones with nothing to insert or replace only check that a line
the inserted code relies on (a name it uses) is there."""


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _scope(lines: list[str], header: str) -> range:
    """The lines of the class or function whose first line starts with `header` (after stripping), decorators
    excluded: up to the next non-blank line indented no deeper than the header."""
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(header)]
    if len(starts) != 1:
        raise AnchorError(f"{len(starts)} lines start with {header!r} (expected one)")
    start, depth = starts[0], _indent_of(lines[starts[0]])
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent_of(lines[end]) > depth
                                or lines[end].strip().startswith(")")):
        end += 1
    return range(start, end)


def _anchor(lines: list[str], edit: Edit) -> int:
    scope = _scope(lines, edit.scope)
    found = [i for i in scope if lines[i].strip().startswith(edit.anchor)]
    if len(found) != 1:
        raise AnchorError(f"{len(found)} lines start with {edit.anchor!r} in {edit.scope.rstrip('(')} (expected one)")
    if edit.old not in lines[found[0]]:
        raise AnchorError(f"no {edit.old!r} in the line starting with {edit.anchor!r}")
    return found[0]


def _block(code: str, indent: int) -> list[str]:
    """`code` indented by `indent`, followed by one blank line per newline it ends with beyond the first."""
    text = textwrap.dedent(code).strip("\n")
    blank_lines = max(0, len(code) - len(code.rstrip("\n")) - 1)
    return [(" " * indent + line) if line else "" for line in text.split("\n")] + [""] * blank_lines


def apply(source: str) -> str:
    """`source` (upstream's lm.py) with the change; AnchorError when a line it needs is missing or not unique."""
    lines = source.split("\n")
    located = [(edit, _anchor(lines, edit)) for edit in EDITS]
    for edit, index in sorted(located, key=lambda pair: pair[1], reverse=True):
        indent = _indent_of(lines[index]) + edit.indent
        if edit.old:
            lines[index] = lines[index].replace(edit.old, edit.new, 1)
        top = index
        if edit.above_decorator:
            while top > 0 and lines[top - 1].strip().startswith("@"):
                top -= 1
        lines[index + 1: index + 1] = _block(edit.after, indent) if edit.after else []
        lines[top:top] = _block(edit.before, indent) if edit.before else []
    return "\n".join(lines)


def diff(original: str, patched: str) -> str:
    return "".join(difflib.unified_diff(original.splitlines(keepends=True), patched.splitlines(keepends=True),
                                        fromfile=f"a/{LM}", tofile=f"b/{LM}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="folder holding upstream's moshi/models/lm.py")
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder for the patched copy")
    args = parser.parse_args()
    source_file = args.upstream / LM
    if not source_file.is_file():
        print(f"error: {source_file} not found (--upstream is the folder that holds moshi/models/lm.py)",
              file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty", file=sys.stderr)
        return 2
    original = source_file.read_text()
    try:
        patched = apply(original)
    except AnchorError as error:
        print(f"error: {source_file}: {error}; this change is written for moshi 0.2.13", file=sys.stderr)
        return 2
    shutil.copytree(args.upstream, args.out, dirs_exist_ok=True)
    (args.out / LM).write_text(patched)
    patch = diff(original, patched)
    (args.out / PATCH_NAME).write_text(patch)
    added = sum(line.startswith("+") and not line.startswith("+++") for line in patch.splitlines())
    removed = sum(line.startswith("-") and not line.startswith("---") for line in patch.splitlines())
    print(f"wrote {args.out} ({LM}: +{added} -{removed} lines) and {args.out / PATCH_NAME}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
