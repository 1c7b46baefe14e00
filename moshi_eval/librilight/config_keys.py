"""The keys `moshi_eval.librilight` reads from settings files and mappings, and the `LibriLightConfig` fields they set.

Besides the field names themselves, the keys of the moshi-finetune TTT fork's training files are understood. Their
LibriLight settings sit in the `paper_metrics:` section (read with `scoring.settings.read_settings_section`), next to
the keys of other metrics:

- renamed keys: `librilight_audio_dir`, `librilight_max_chapters`, `librilight_num_sequences`, `librilight_max_tokens`
  (-> `max_sequence_length`), `librilight_max_files` (-> `max_files`: the first N sequences in name order),
  `first_codebook_weight_multiplier`, and `librilight_streaming.max_sequence_length`;
- the book selection of the fork's evaluator (its `PaperMetricsEvaluator`): `librilight_evaluation_mode`
  (`single_book`, `multi_book`, `pre_concatenated`) with `librilight_speaker_id` + `librilight_book_name`
  (-> `books`) or `librilight_concatenated_dir` (-> `audio_dir` read as plain files, one sequence per file). In a
  `paper_metrics:` section the mode defaults to `single_book`, as it does there, and `single_book` without a speaker
  and book means that evaluator's default book, `100/emerald_city_librivox_64kb_mp3`. As there,
  `librilight_num_sequences` only counts in `multi_book` (a note says when it is not used);
- keys accepted and ignored with a note naming them: streaming and verification switches (the evaluation is always one
  exact streaming pass), training-loop switches, result-file switches and the keys of other metrics (sBLIMP, sWUGGY,
  StoryCloze, Figure 5, long-context files).

Any other key is an error that suggests the closest known key. Notes are returned, never printed or warned here: the
command line prints them and the Python API warns (`scoring.errors.warn_notes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..scoring.errors import ConfigError, warn_notes
from ..scoring.settings import listed, parse_float_list, read_settings_section, unknown_keys_message
from .config import LibriLightConfig, parse_positions

PAPER_METRICS_SECTION = "paper_metrics"
NUM_SEQUENCES_KEY = "librilight_num_sequences"
RENAMED_KEYS = {
    "librilight_audio_dir": "audio_dir",
    "librilight_max_chapters": "max_chapters",
    NUM_SEQUENCES_KEY: "num_sequences",
    "librilight_max_tokens": "max_sequence_length",
    "librilight_max_files": "max_files",
    "first_codebook_weight_multiplier": "first_codebook_weight",
}
STREAMING_SECTION = "librilight_streaming"
STREAMING_RENAMED_KEYS = {"max_sequence_length": "max_sequence_length"}
STREAMING_SWITCHES = frozenset({"enabled", "memory_check", "cache_clear_interval", "use_fixed_method",
                                "ttt_verification", "memory_log_interval", "verify_loss_computation"})
OBSOLETE_KEYS = frozenset({"use_fixed_streaming", "verify_loss_computation", "ttt_verification_enabled",
                           "memory_check_enabled", "ttt_optimize_chunk_size", "ttt_prefer_efficiency"})
MODE_KEY = "librilight_evaluation_mode"
SPEAKER_KEY = "librilight_speaker_id"
BOOK_KEY = "librilight_book_name"
CONCATENATED_DIR_KEY = "librilight_concatenated_dir"
SELECTION_KEYS = frozenset({MODE_KEY, SPEAKER_KEY, BOOK_KEY, CONCATENATED_DIR_KEY})
SUGGESTED_TARGETS = RENAMED_KEYS | {MODE_KEY: "books", SPEAKER_KEY: "books", BOOK_KEY: "books",
                                    CONCATENATED_DIR_KEY: "audio_dir"}
EVALUATION_MODES = ("single_book", "multi_book", "pre_concatenated")
FORK_DEFAULT_SPEAKER = "100"
FORK_DEFAULT_BOOK = "emerald_city_librivox_64kb_mp3"
IGNORED_KEY_GROUPS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"paper_metrics_eval", "paper_metrics_freq"}),
     "training-loop switches (when to evaluate during training)"),
    (frozenset({"paper_metrics_use_silence", "paper_metrics_use_user_stream", "use_silence_codes"}),
     "user-stream switches of the other metrics (LibriLight's user stream is `user_stream`, default: Mimi silence)"),
    (frozenset({"results_dir", "save_results_json"}),
     "result-file switches (results go to `output`, --output)"),
)
OTHER_METRIC_PREFIXES = ("sblimp_", "swuggy_", "sstory_", "tstory_", "ttt_fig5_", "long_context_")
DATA_SOURCE_FIELDS = ("audio_dir", "audio_files", "codes")
INTEGER_FIELDS = ("max_chapters", "batch_size", "max_sequence_length", "window", "bin_size", "num_sequences", "seed",
                  "chunk_size", "max_files", "check_every", "encode_chunk_frames", "top_k_text")
LIST_FIELDS = ("audio_files", "codes", "exclude_genres", "books")


@dataclasses.dataclass
class MappedSettings:
    """`LibriLightConfig` keyword arguments read from a file or mapping, with the notes a person must see.

    `source_fields` are fields that belong to the data source the file names (the `files` layout that
    `librilight_concatenated_dir` implies): a data flag on the command line replaces them together with the source.
    """

    values: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)
    source_fields: frozenset[str] = frozenset()


class _Collector:
    """Sorts the keys of one mapping into field values, selection keys, ignored keys and unknown keys."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.fields = set(LibriLightConfig.field_names())
        self.values: dict[str, Any] = {}
        self.set_by: dict[str, str] = {}
        self.selection: dict[str, Any] = {}
        self.obsolete: list[str] = []
        self.switches: list[str] = []
        self.groups: dict[str, list[str]] = {}
        self.other_metrics: list[str] = []
        self.unknown: list[str] = []

    def put(self, field_name: str, value: Any, key: str) -> None:
        if field_name in self.values and self.values[field_name] != value:
            raise ConfigError(f"{self.source}: {key!r} sets {field_name} to {value!r}, but "
                              f"{self.set_by[field_name]!r} already set it to {self.values[field_name]!r}")
        self.values[field_name] = value
        self.set_by[field_name] = key

    def add(self, key: str, value: Any) -> None:
        if key == STREAMING_SECTION:
            self.add_streaming(value)
        elif key in RENAMED_KEYS:
            self.put(RENAMED_KEYS[key], value, key)
        elif key in self.fields:
            self.put(key, value, key)
        elif key in SELECTION_KEYS:
            self.selection[key] = value
        elif key in OBSOLETE_KEYS:
            self.obsolete.append(key)
        elif key.startswith(OTHER_METRIC_PREFIXES):
            self.other_metrics.append(key)
        else:
            for names, reason in IGNORED_KEY_GROUPS:
                if key in names:
                    self.groups.setdefault(reason, []).append(key)
                    return
            self.unknown.append(key)

    def add_streaming(self, section: Any) -> None:
        if section is None:
            return
        if not isinstance(section, Mapping):
            raise ConfigError(f"{self.source}: {STREAMING_SECTION!r} must be a mapping, got {type(section).__name__}")
        for key, value in section.items():
            name = f"{STREAMING_SECTION}.{key}"
            if key in STREAMING_RENAMED_KEYS:
                self.put(STREAMING_RENAMED_KEYS[key], value, name)
            elif key in OBSOLETE_KEYS:
                self.obsolete.append(name)
            elif key in STREAMING_SWITCHES:
                self.switches.append(name)
            else:
                self.unknown.append(name)

    def notes(self) -> list[str]:
        notes = []
        if self.obsolete:
            notes.append(f"{self.source}: deprecated key(s) {listed(sorted(self.obsolete))} ignored: the evaluation is "
                         "exact and streaming by construction, these settings mean nothing here")
        if self.switches:
            notes.append(f"{self.source}: streaming and verification switch(es) {listed(sorted(self.switches))} "
                         "ignored: the evaluation is always one exact streaming pass")
        for reason, keys in self.groups.items():
            notes.append(f"{self.source}: ignoring {reason}: {listed(sorted(keys))}")
        if self.other_metrics:
            notes.append(f"{self.source}: ignoring {len(self.other_metrics)} key(s) of other metrics "
                         f"({listed(sorted(self.other_metrics), 4)}): moshi_eval.librilight scores LibriLight only")
        return notes


def map_settings(raw: Mapping[str, Any], source: str = "config", *, fork_defaults: bool = False
                 ) -> MappedSettings:
    """Map a settings mapping onto `LibriLightConfig` keyword arguments (see the module docstring).

    `fork_defaults`: the mapping is a training file's `paper_metrics:` section, read with the defaults of the
    evaluator that consumed it (`librilight_evaluation_mode` defaults to `single_book`).
    Raises ConfigError naming `source` and the key for unknown keys, conflicting keys and unusable values.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: settings must be a mapping of keys, got {type(raw).__name__}")
    collector = _Collector(source)
    for key, value in raw.items():
        collector.add(str(key), value)
    if collector.unknown:
        raise ConfigError(unknown_keys_message(source, collector.unknown, collector.fields, SUGGESTED_TARGETS))
    notes = collector.notes()
    source_fields = apply_selection(collector, fork_defaults, notes)
    return MappedSettings(coerce_field_types(collector.values, source), notes, source_fields)


def apply_selection(collector: _Collector, fork_defaults: bool, notes: list[str]) -> frozenset[str]:
    """Turn the fork evaluator's book-selection keys into `books` / `audio_dir` + `layout`; returns the source
    fields."""
    selection, source = collector.selection, collector.source
    mode = selection.get(MODE_KEY)
    if mode is None and (fork_defaults or SPEAKER_KEY in selection or BOOK_KEY in selection):
        mode = "single_book"
        if fork_defaults and MODE_KEY not in selection:
            notes.append(f"{source}: no {MODE_KEY}: single_book, the default of the evaluator that read this section")
    if mode is None:
        if CONCATENATED_DIR_KEY in selection:
            notes.append(f"{source}: {CONCATENATED_DIR_KEY} is only used with {MODE_KEY}: pre_concatenated; ignored")
        return frozenset()
    if mode not in EVALUATION_MODES:
        raise ConfigError(f"{source}: {MODE_KEY} must be one of {', '.join(EVALUATION_MODES)}, got {mode!r}")
    used_by = {SPEAKER_KEY: "single_book", BOOK_KEY: "single_book", CONCATENATED_DIR_KEY: "pre_concatenated"}
    unused = [key for key, used_mode in used_by.items() if key in selection and used_mode != mode]
    if mode != "multi_book" and collector.set_by.get("num_sequences") == NUM_SEQUENCES_KEY:
        unused.append(NUM_SEQUENCES_KEY)
        del collector.values["num_sequences"]
    if unused:
        notes.append(f"{source}: {', '.join(unused)} not used in {MODE_KEY}: {mode}")
    if mode == "single_book":
        speaker = str(selection.get(SPEAKER_KEY, FORK_DEFAULT_SPEAKER))
        book = str(selection.get(BOOK_KEY, FORK_DEFAULT_BOOK))
        if SPEAKER_KEY not in selection or BOOK_KEY not in selection:
            notes.append(f"{source}: single_book without {SPEAKER_KEY} and {BOOK_KEY}: book {speaker}/{book} (the "
                         "default of the evaluator that read this section for what is missing; --book SPEAKER/BOOK "
                         "chooses others)")
        collector.put("books", [f"{speaker}/{book}"], MODE_KEY)
        return frozenset()
    if mode == "multi_book":
        notes.append(f"{source}: multi_book: a seeded random subset of num_sequences books (the suitability rules "
                     "of the evaluator that read this section are not applied; filter with min_snr, min_duration, "
                     "exclude_genres)")
        return frozenset()
    if CONCATENATED_DIR_KEY not in selection:
        return frozenset()
    if "audio_dir" in collector.values:
        notes.append(f"{source}: {collector.set_by['audio_dir']} not used in {MODE_KEY}: pre_concatenated "
                     f"({CONCATENATED_DIR_KEY} is)")
        del collector.values["audio_dir"]
    collector.put("audio_dir", selection[CONCATENATED_DIR_KEY], CONCATENATED_DIR_KEY)
    collector.put("layout", "files", MODE_KEY)
    return frozenset({"layout"})


def coerce_field_types(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn YAML scalars into the field types (a single path into a list, a comma string of positions into ints)."""
    out = dict(values)
    for name in LIST_FIELDS:
        if isinstance(out.get(name), str | Path):
            out[name] = [str(out[name])]
        elif isinstance(out.get(name), Sequence):
            out[name] = [str(item) for item in out[name]]
    if isinstance(out.get("audio_dir"), Path):
        out["audio_dir"] = str(out["audio_dir"])
    if isinstance(out.get("positions"), str):
        out["positions"] = parse_positions(out["positions"])
    if isinstance(out.get("codebook_weights"), str):
        out["codebook_weights"] = parse_float_list(out["codebook_weights"])
    for name in INTEGER_FIELDS:
        if out.get(name) is not None:
            try:
                out[name] = int(out[name])
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{source}: {name} must be an integer, got {out[name]!r}") from error
    if out.get("positions") is not None:
        try:
            out["positions"] = [int(p) for p in out["positions"]]
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{source}: positions must be frame numbers, got {out['positions']!r}") from error
    return out


def read_config_file(path: str | Path) -> MappedSettings:
    """The settings of a file: its `paper_metrics:` section when it has one (the training keys around it and its `ttt:`
    section are left out, with notes), else the whole file."""
    section = read_settings_section(path, PAPER_METRICS_SECTION)
    mapped = map_settings(section.values, section.source, fork_defaults=section.section is not None)
    mapped.notes[:0] = section.notes
    return mapped


def load_config_file(path: str | Path) -> dict[str, Any]:
    """`LibriLightConfig` keyword arguments from a settings file; its notes are emitted as `UserWarning`s."""
    mapped = read_config_file(path)
    warn_notes(mapped.notes)
    return mapped.values


def normalize_config_mapping(raw: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """`LibriLightConfig` keyword arguments from a mapping (field names or the keys above); notes are emitted as
    `UserWarning`s."""
    mapped = map_settings(raw, source)
    warn_notes(mapped.notes)
    return mapped.values
