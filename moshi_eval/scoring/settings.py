"""Settings every evaluation shares, and reading them from files.

- `EvaluationSettings`: the settings every evaluation has (scoring mode, text policy, batch size, codebook weights,
  codes cache, output and resuming, the model's context), the base of each benchmark's settings dataclass.
- Text policies (`TEXT_POLICIES`): what the text stream gets at each teacher-forced step while audio is scored:
  `greedy` (the model's own argmax, the text Moshi would write; found by speculation in chunked scoring), `sample`
  (drawn from the model, seeded; per-step scoring only), `pad` (the text padding token: the model is told it says no
  word), `zero` (the zero token, "no input": the text stream is absent, as in a parallel forward whose text row is the
  zero token).
- Per-codebook weights of the token losses, read from a comma-separated list and checked against the codebooks scored.
- Settings files: a YAML (or JSON) file read whole, or one section of it. Researchers keep their evaluation settings
  inside training YAML files, in a section next to training keys (`batch_size`, `optim`, `ttt`, ...).
  `read_settings_section(path, name)` returns the raw mapping of that section together with one-line notes saying what
  around it was left out; a file without the section is read whole. Turning raw keys into an evaluation's settings is
  each benchmark's own business; the helpers here give all of them the same errors (`ConfigError`, naming the file)
  and the same message for unknown keys, with the closest known key suggested. A training file's `ttt:` section is
  never applied implicitly: reading a section leaves it out with a note.

Kept free of torch so that command lines can list the choices before loading anything.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import Self

from .errors import ConfigError

if TYPE_CHECKING:
    from moshi.models.lm import LMModel

TEXT_POLICIES = ("greedy", "sample", "pad", "zero")
CHUNKED_TEXT_POLICIES = ("greedy", "pad", "zero")
SCORING_MODES = ("step", "chunked")
NEVER_APPLIED_SECTIONS = ("ttt",)
LISTED_KEYS = 8


@dataclasses.dataclass
class EvaluationSettings:
    """The settings every evaluation has; each benchmark's settings dataclass adds its own fields and checks and may
    change the defaults. Checked when built and when copied with changes (`replace`); `to_dict()` lists every field
    (as the results record them).

    `mode`: `step` (one `step_with_logits` call per frame) or `chunked` (`chunk_size` frames per call, the same
    numbers); `text_policy`: one of the class's `text_policies`; `batch_size`: sequences scored together;
    `codebook_weights`: per-codebook weights of the token losses (None: equal); the codes cache in `cache_dir` (None:
    `data.default_cache_dir()`) unless `use_cache` is off, Mimi encoding `encode_chunk_frames` frames per call; results
    in `output`, their finished records kept for resuming when `resume` is on. `context` and `rope_max_period` record
    the attention context and RoPE period the LM was built with when they change its function (None: the
    checkpoint's); the model must have been built with them."""

    text_policies: ClassVar[tuple[str, ...]] = TEXT_POLICIES

    batch_size: int = 1
    mode: str = "step"
    text_policy: str = "greedy"
    chunk_size: int = 1024
    codebook_weights: list[float] | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    encode_chunk_frames: int = 25
    output: str | None = None
    resume: bool = True
    context: int | None = None
    rope_max_period: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work; a benchmark's settings check theirs next."""
        check_choice("mode", self.mode, SCORING_MODES)
        check_choice("text_policy", self.text_policy, self.text_policies)
        if self.mode == "chunked" and self.text_policy not in CHUNKED_TEXT_POLICIES:
            raise ValueError(f"mode 'chunked' supports the text policies {', '.join(CHUNKED_TEXT_POLICIES)}; use mode "
                             "'step' to sample")
        check_at_least_one(self, "batch_size", "chunk_size", "encode_chunk_frames")
        weights = self.codebook_weights
        if weights is not None and (any(weight < 0 for weight in weights) or sum(weights) <= 0):
            raise ValueError(f"codebook_weights must be non-negative with a positive sum, got {weights}")

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_codebook_weights(self, num_codebooks: int) -> list[float] | None:
        """The weights, checked against the number of scored codebooks (None: equal weights)."""
        return weights_for_codebooks(self.codebook_weights, num_codebooks)

    @classmethod
    def field_names(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    """ValueError naming the setting when `value` is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_at_least_one(settings: object, *names: str) -> None:
    """ValueError naming the first of the integer settings `names` that is below 1 (None is left alone)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value!r}")


def check_text_policy(text_policy: str, allowed: Sequence[str] = TEXT_POLICIES) -> None:
    """Raise a ValueError naming the policy when it is not one of `allowed`."""
    if text_policy not in allowed:
        raise ValueError(f"text policy {text_policy!r} is not supported here; use one of {', '.join(allowed)}")


def forced_text_token(lm: LMModel, text_policy: str) -> int | None:
    """The text token every step is forced to under `text_policy` (None: chosen by the model, greedy or sampled)."""
    if text_policy == "pad":
        return int(lm.text_padding_token_id)
    if text_policy == "zero":
        return int(lm.zero_token_id)
    return None


def parse_float_list(text: str) -> list[float]:
    """'100, 1,1' -> [100.0, 1.0, 1.0]; ValueError quoting the text when a part is not a number."""
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise ValueError(f"cannot read a comma-separated list of numbers from {text!r}") from error


def weights_for_codebooks(weights: Sequence[float] | None, num_codebooks: int) -> list[float] | None:
    """`weights` as floats, one per scored codebook (ValueError on a count mismatch); None stays None (equal
    weights)."""
    if weights is None:
        return None
    if len(weights) != num_codebooks:
        raise ValueError(f"codebook_weights has {len(weights)} values; the model scores {num_codebooks} codebooks")
    return [float(weight) for weight in weights]


@dataclasses.dataclass(frozen=True)
class SettingsSection:
    """The raw keys read from a settings file, and notes on what was left out (one line each)."""

    path: Path
    section: str | None
    values: dict[str, Any]
    notes: list[str]
    left_out: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """How messages name where the keys come from: `file.yaml` or `file.yaml [section]`."""
        return f"{self.path} [{self.section}]" if self.section else str(self.path)


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON file (empty for an empty file); ConfigError naming the file otherwise."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not a text file ({error.reason})") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from error
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
    return dict(raw)


def read_settings_section(path: str | Path, section: str) -> SettingsSection:
    """The keys of `section` in the file at `path` (the whole file when it has no such section).

    When the section is there, every other top-level key is left out, named in one note, and each section of
    `NEVER_APPLIED_SECTIONS` (`ttt`) gets a note of its own.
    """
    path = Path(path)
    raw = read_settings_file(path)
    if section not in raw:
        return SettingsSection(path, None, raw, [])
    values = raw[section]
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"config file {path}: the {section!r} section must be a mapping of keys, "
                          f"got {type(values).__name__}")
    left_out = tuple(key for key in raw if key != section)
    notes = []
    if left_out:
        notes.append(f"{path}: reading its {section!r} section; ignoring the {len(left_out)} training key(s) around "
                     f"it ({listed(left_out, limit=40)})")
    notes.extend(f"{path}: its {name!r} section is not applied (a training file's {name} settings are never used "
                 "implicitly; the model is evaluated as its checkpoint and LM config define it, or as a "
                 f"`--{name}-config` file sets them)"
                 for name in NEVER_APPLIED_SECTIONS if name in left_out)
    return SettingsSection(path, section, dict(values), notes, left_out)


def listed(names: Iterable[str], limit: int = LISTED_KEYS) -> str:
    """`a, b, c` -- at most `limit` names, then how many more."""
    names = list(names)
    shown = ", ".join(str(name) for name in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def closest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key most like `key` (a typo, or the same name with or without a prefix such as a benchmark's)."""
    known = list(known)
    matches = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if matches:
        return matches[0]
    stripped = {name.split("_", 1)[1]: name for name in known if "_" in name}
    for candidate in (key, key.split("_", 1)[-1]):
        if candidate in known and candidate != key:
            return candidate
        if candidate in stripped and stripped[candidate] != key:
            return stripped[candidate]
    return None


def unknown_keys_message(source: str, unknown: Iterable[str], fields: Iterable[str],
                         renamed: Mapping[str, str] | None = None) -> str:
    """One line naming the unknown keys of `source`, each with the closest known key (and the field it maps onto)."""
    fields = sorted(fields)
    renamed = dict(renamed or {})
    described = []
    for key in sorted(unknown):
        guess = closest_key(key, [*fields, *renamed])
        if guess is None:
            described.append(repr(key))
        elif guess in renamed and renamed[guess] != guess:
            described.append(f"{key!r} (did you mean {guess!r}, which sets {renamed[guess]}?)")
        else:
            described.append(f"{key!r} (did you mean {guess!r}?)")
    return f"{source}: unknown key(s) {', '.join(described)}; known keys: {', '.join(fields)}"
