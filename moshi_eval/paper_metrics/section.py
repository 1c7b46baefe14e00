"""The `paper_metrics:` section of a moshi-finetune TTT fork's training YAML (or the dict its scripts pass) as settings.

Its paper-metrics keys map onto `PaperMetricsConfig`: `<bench>_audio_dir` -> `<bench>_dir`, `<bench>_gold_csv` ->
`<bench>_gold`, `<bench>_max_pairs` (0 skips the benchmark, with a note), `paper_metrics_use_silence: true` ->
`other_stream="silence"`, `paper_metrics_use_user_stream: true` -> `stream="user"`. Keys that steered the training
loop, plots or dashboards, or that its evaluator never read (`paper_metrics_eval`, `paper_metrics_freq`,
`<bench>_stream_config`, `use_silence_codes`, the Figure 5 plot settings `ttt_fig5_layers`, ...) are left out with a
note. `librilight_*` keys are LibriLight's (`moshi_eval.librilight` reads the same section, see
`librilight.config_keys`), and so is `ttt_fig5_enable`, the TTT inner-loss diagnostic recorded while LibriLight is
scored (`ttt_inner_losses`). Field names of `PaperMetricsConfig` are accepted as they are; any other key is an error
suggesting the closest known key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..scoring.errors import ConfigError
from ..scoring.settings import listed, unknown_keys_message
from .config import PaperMetricsConfig
from .pairs import BENCHMARKS

RENAMED = {f"{bench}_audio_dir": f"{bench}_dir" for bench in BENCHMARKS} | {
    "swuggy_gold_csv": "swuggy_gold",
    "sblimp_gold_csv": "sblimp_gold",
}
SWITCHES = {
    "paper_metrics_use_silence": ("other_stream", "silence", "zero"),
    "paper_metrics_use_user_stream": ("stream", "user", "own"),
}
IGNORED = frozenset({
    "paper_metrics_eval", "paper_metrics_freq",  # when the training loop evaluates
    "save_results_json", "results_dir", "use_silence_codes",  # read by none of the fork's evaluation code
    "ttt_fig5_layers", "ttt_fig5_max_T", "ttt_fig5_smooth",  # how the inner-loss plots were drawn
    *(f"{bench}_stream_config" for bench in BENCHMARKS),  # labels for the dashboards
})
IGNORED_NOTE = "training-loop, plotting and logging switches, or keys its evaluator never read"
INNER_LOSSES_SWITCH = "ttt_fig5_enable"
LIBRILIGHT_PREFIX = "librilight_"
LIBRILIGHT_KEYS = frozenset({"first_codebook_weight_multiplier"})
LIBRILIGHT_DATA_KEYS = ("librilight_audio_dir", "librilight_concatenated_dir")


@dataclasses.dataclass
class UserSection:
    """A training file's section split up: the paper-metrics settings, the LibriLight keys, whether the TTT inner losses
    are asked for, the benchmarks skipped (`<bench>_max_pairs: 0`), the keys left out, and where it came from."""

    paper_metrics: dict[str, Any]
    librilight: dict[str, Any]
    ignored: list[str]
    source: str = "paper_metrics"
    ttt_inner_losses: bool = False
    skipped: list[str] = dataclasses.field(default_factory=list)

    def config(self, **overrides: Any) -> PaperMetricsConfig:
        return PaperMetricsConfig(**(self.paper_metrics | overrides))

    @property
    def names_librilight(self) -> bool:
        """Whether the section asks for LibriLight (names its data, as the fork's evaluator required)."""
        return any(self.librilight.get(key) for key in LIBRILIGHT_DATA_KEYS)

    def notes(self, librilight_elsewhere: bool) -> list[str]:
        """One-line notes on the benchmarks skipped and the keys left out (and on the LibriLight keys, when another
        command runs them)."""
        notes = [f"{self.source}: {name}_max_pairs: 0 skips {name}" for name in self.skipped]
        if self.ignored:
            notes.append(f"{self.source}: ignoring {listed(self.ignored)} ({IGNORED_NOTE})")
        if librilight_elsewhere and self.librilight:
            notes.append(f"{self.source}: LibriLight keys ({listed(sorted(self.librilight))}) are read by "
                         "python -m moshi_eval.librilight --config with the same file")
        if self.ttt_inner_losses and (librilight_elsewhere or not self.names_librilight):
            where = ("python -m moshi_eval.librilight --ttt-inner-losses records them" if librilight_elsewhere
                     else "the section names no LibriLight data")
            notes.append(f"{self.source}: {INNER_LOSSES_SWITCH}: the TTT inner losses are recorded while LibriLight is "
                         f"scored; {where}")
        return notes


def read_user_section(section: Mapping[str, Any], source: str = "paper_metrics") -> UserSection:
    """The section's keys sorted out (ConfigError naming `source` for a key that is none of the above)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: settings must be a mapping of keys, got {type(section).__name__}")
    fields = {field.name for field in dataclasses.fields(PaperMetricsConfig)}
    ours: dict[str, Any] = {}
    librilight: dict[str, Any] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    inner_losses = False
    for key, value in section.items():
        key = str(key)
        if key == INNER_LOSSES_SWITCH:
            inner_losses = bool(value)
        elif key in RENAMED:
            ours[RENAMED[key]] = value
        elif key in SWITCHES:
            field, when_true, when_false = SWITCHES[key]
            ours[field] = when_true if value else when_false
        elif key in fields:
            ours[key] = value
        elif key.startswith(LIBRILIGHT_PREFIX) or key in LIBRILIGHT_KEYS:
            librilight[key] = value
        elif key in IGNORED:
            ignored.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(unknown_keys_message(source, unknown, fields, RENAMED))
    skipped = [name for name in BENCHMARKS if ours.get(f"{name}_max_pairs") == 0]
    for name in skipped:
        for field in (f"{name}_dir", f"{name}_gold", f"{name}_max_pairs"):
            ours.pop(field, None)
    return UserSection(ours, librilight, sorted(ignored), source, inner_losses, skipped)
