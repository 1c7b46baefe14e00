"""Evaluation settings: one dataclass, built from keyword arguments, a YAML file or a legacy config dict.

Researchers' existing YAML files use `librilight_*` keys and a `librilight_streaming` section; those are mapped onto the
fields below. Keys from older evaluation scripts that no longer mean anything are accepted with a warning naming them,
and any other unknown key is an error.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..scoring.text_policy import CHUNKED_TEXT_POLICIES, TEXT_POLICIES

USER_STREAMS = ("silence", "zero")
SCORING_MODES = ("step", "chunked")
DEFAULT_POSITIONS = (8000, 16000, 24000)

LEGACY_KEYS = {
    "librilight_audio_dir": "audio_dir",
    "librilight_max_chapters": "max_chapters",
    "first_codebook_weight_multiplier": "first_codebook_weight",
}
STREAMING_SECTION = "librilight_streaming"
STREAMING_SECTION_KEYS = {"max_sequence_length": "max_sequence_length"}
OBSOLETE_KEYS = frozenset(
    {
        "use_fixed_streaming",
        "verify_loss_computation",
        "ttt_verification_enabled",
        "memory_check_enabled",
        "ttt_optimize_chunk_size",
        "ttt_prefer_efficiency",
    }
)


class ConfigError(ValueError):
    """A settings file or value that cannot be used; the message names it."""


@dataclasses.dataclass
class LibriLightConfig:
    """What to evaluate and how; every field has a CLI flag of the same name (`--max-chapters` for `max_chapters`)."""

    audio_dir: str | None = None
    audio_files: list[str] | None = None
    codes: list[str] | None = None
    layout: str = "auto"
    max_chapters: int = 3
    num_sequences: int | None = None
    min_snr: float | None = None
    min_duration: float | None = None
    exclude_genres: list[str] = dataclasses.field(default_factory=list)
    seed: int = 0
    strict: bool = False
    batch_size: int = 1
    max_sequence_length: int = 50000
    text_policy: str = "greedy"
    mode: str = "step"
    chunk_size: int = 1024
    user_stream: str | None = None
    temp_text: float = 0.7
    top_k_text: int = 25
    codebook_weights: list[float] | None = None
    first_codebook_weight: float | None = None
    positions: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_POSITIONS))
    window: int = 1000
    bin_size: int = 100
    cache_dir: str | None = None
    use_cache: bool = True
    encode_chunk_frames: int = 25
    output: str | None = None
    plot: str | None = None
    resume: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.layout not in ("auto", "librilight", "files"):
            raise ValueError(f"layout must be 'auto', 'librilight' or 'files', got {self.layout!r}")
        if self.text_policy not in TEXT_POLICIES:
            raise ValueError(f"text_policy must be one of {TEXT_POLICIES}, got {self.text_policy!r}")
        if self.mode not in SCORING_MODES:
            raise ValueError(f"mode must be one of {SCORING_MODES}, got {self.mode!r}")
        if self.mode == "chunked" and self.text_policy not in CHUNKED_TEXT_POLICIES:
            raise ValueError(f"mode 'chunked' supports the text policies {', '.join(CHUNKED_TEXT_POLICIES)}; use mode "
                             "'step' to sample")
        if self.user_stream is not None and self.user_stream not in USER_STREAMS:
            raise ValueError(f"user_stream must be one of {USER_STREAMS}, got {self.user_stream!r}")
        for name in ("max_chapters", "batch_size", "max_sequence_length", "window", "bin_size", "encode_chunk_frames",
                     "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.num_sequences is not None and self.num_sequences < 1:
            raise ValueError(f"num_sequences must be at least 1, got {self.num_sequences!r}")
        if not self.positions:
            raise ValueError("positions must list at least one frame position")
        for position in self.positions:
            if int(position) < self.window:
                raise ValueError(f"position {position} is smaller than the window ({self.window} frames)")
        if self.codebook_weights is not None and any(w < 0 for w in self.codebook_weights):
            raise ValueError(f"codebook_weights must be non-negative, got {self.codebook_weights}")
        if self.codebook_weights is not None and sum(self.codebook_weights) <= 0:
            raise ValueError("codebook_weights must have a positive sum")
        if self.first_codebook_weight is not None:
            if self.codebook_weights is not None:
                raise ValueError("give codebook_weights or first_codebook_weight, not both")
            if self.first_codebook_weight <= 0:
                raise ValueError(f"first_codebook_weight must be positive, got {self.first_codebook_weight}")

    def resolved_codebook_weights(self, num_codebooks: int) -> list[float] | None:
        """Per-codebook weights for `num_codebooks` codebooks (None: plain mean); ValueError on a count mismatch."""
        if self.first_codebook_weight is not None:
            return [float(self.first_codebook_weight)] + [1.0] * (num_codebooks - 1)
        if self.codebook_weights is not None and len(self.codebook_weights) != num_codebooks:
            raise ValueError(f"codebook_weights has {len(self.codebook_weights)} values; the model scores "
                             f"{num_codebooks} codebooks")
        return None if self.codebook_weights is None else [float(w) for w in self.codebook_weights]

    def replace(self, **changes: Any) -> LibriLightConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_field_names() -> list[str]:
    return [field.name for field in dataclasses.fields(LibriLightConfig)]


def normalize_config_mapping(raw: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Map a user's mapping (new names, legacy `librilight_*` names, obsolete keys) onto `LibriLightConfig` fields.

    Obsolete keys are dropped with one warning naming them all; unknown keys raise ValueError naming them and `source`.
    """
    fields = set(config_field_names())
    result: dict[str, Any] = {}
    obsolete: list[str] = []
    unknown: list[str] = []

    def put(field_name: str, value: Any, key: str) -> None:
        if field_name in result and result[field_name] != value:
            raise ValueError(f"{source}: {key!r} sets {field_name} again with a different value")
        result[field_name] = value

    for key, value in raw.items():
        if key == STREAMING_SECTION:
            if not isinstance(value, Mapping):
                raise ValueError(f"{source}: {STREAMING_SECTION!r} must be a mapping, got {type(value).__name__}")
            for sub_key, sub_value in value.items():
                if sub_key in STREAMING_SECTION_KEYS:
                    put(STREAMING_SECTION_KEYS[sub_key], sub_value, f"{STREAMING_SECTION}.{sub_key}")
                elif sub_key in OBSOLETE_KEYS:
                    obsolete.append(f"{STREAMING_SECTION}.{sub_key}")
                else:
                    unknown.append(f"{STREAMING_SECTION}.{sub_key}")
        elif key in LEGACY_KEYS:
            put(LEGACY_KEYS[key], value, key)
        elif key in fields:
            put(key, value, key)
        elif key in OBSOLETE_KEYS:
            obsolete.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known keys: {', '.join(sorted(fields))}")
    if obsolete:
        warnings.warn(
            f"{source}: ignoring obsolete key(s) {', '.join(sorted(obsolete))}: the evaluation is exact and streaming "
            "by construction, these settings no longer mean anything",
            DeprecationWarning,
            stacklevel=2,
        )
    return coerce_field_types(result, source)


def coerce_field_types(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn YAML scalars into the field types (a single path into a list, a comma string of positions into ints)."""
    out = dict(values)
    for name in ("audio_files", "codes", "exclude_genres"):
        if isinstance(out.get(name), str | Path):
            out[name] = [str(out[name])]
    if isinstance(out.get("positions"), str):
        out["positions"] = parse_positions(out["positions"])
    if isinstance(out.get("codebook_weights"), str):
        out["codebook_weights"] = parse_float_list(out["codebook_weights"])
    if isinstance(out.get("exclude_genres"), Sequence):
        out["exclude_genres"] = [str(genre) for genre in out["exclude_genres"]]
    for name in ("max_chapters", "batch_size", "max_sequence_length", "window", "bin_size", "num_sequences", "seed",
                 "chunk_size"):
        if out.get(name) is not None:
            try:
                out[name] = int(out[name])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{source}: {name} must be an integer, got {out[name]!r}") from error
    if out.get("positions") is not None:
        out["positions"] = [int(p) for p in out["positions"]]
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read an `eval.yaml` (or JSON) file into normalized `LibriLightConfig` keyword arguments."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read config file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from error
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
    return normalize_config_mapping(raw, source=str(path))


def parse_positions(text: str) -> list[int]:
    """'8k,16k,24000' -> [8000, 16000, 24000]."""
    positions = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        scale = 1000 if part.lower().endswith("k") else 1
        number = part[:-1] if scale == 1000 else part
        try:
            positions.append(int(float(number) * scale))
        except ValueError as error:
            raise ValueError(f"cannot read position {part!r} (use frames, e.g. 8000 or 8k)") from error
    return positions


def parse_float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise ValueError(f"cannot read a comma-separated list of numbers from {text!r}") from error


def position_key(position: int) -> str:
    """8000 -> '8k', 1500 -> '1500': the suffix of `librilight_loss_<key>`."""
    return f"{position // 1000}k" if position % 1000 == 0 else str(position)
