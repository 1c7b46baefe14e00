"""Our users' `paper_metrics:` section (of their training YAMLs, or the dict their scripts pass) as settings.

Their paper-metrics keys map onto `PaperMetricsConfig`: `<bench>_audio_dir` -> `<bench>_dir`, `<bench>_gold_csv` ->
`<bench>_gold`, `<bench>_max_pairs`, `paper_metrics_use_silence: true` -> `other_stream="silence"`,
`paper_metrics_use_user_stream: true` -> `stream="user"`. Keys that steered their training loop, plots or dashboards,
or that their evaluator never read (`paper_metrics_eval`, `paper_metrics_freq`, `<bench>_stream_config`,
`use_silence_codes`, ...) are left out and named in `ignored`;
`librilight_*` keys (and the other keys `moshi_eval.librilight` reads) go to `librilight`. Field names of
`PaperMetricsConfig` are accepted as they are; any other key is an error naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

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
    "paper_metrics_eval", "paper_metrics_freq",  # when their training loop evaluates
    "save_results_json", "results_dir", "use_silence_codes",  # read by none of their evaluation code
    "ttt_fig5_enable", "ttt_fig5_layers", "ttt_fig5_max_T", "ttt_fig5_smooth",  # their TTT inner-loop plots
    *(f"{bench}_stream_config" for bench in BENCHMARKS),  # labels for their dashboards
})
IGNORED_NOTE = "training-loop, plotting and logging switches, or keys their evaluator never read"
LIBRILIGHT_PREFIX = "librilight_"
LIBRILIGHT_KEYS = frozenset({"first_codebook_weight_multiplier"})


@dataclasses.dataclass
class UserSection:
    """A users' section split up: our settings, the LibriLight part, and the keys left out."""

    paper_metrics: dict[str, Any]
    librilight: dict[str, Any]
    ignored: list[str]

    def config(self, **overrides: Any) -> PaperMetricsConfig:
        return PaperMetricsConfig(**(self.paper_metrics | overrides))


def read_user_section(section: Mapping[str, Any], source: str = "paper_metrics") -> UserSection:
    fields = {field.name for field in dataclasses.fields(PaperMetricsConfig)}
    ours: dict[str, Any] = {}
    librilight: dict[str, Any] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in section.items():
        if key in RENAMED:
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
        raise ValueError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    return UserSection(ours, librilight, sorted(ignored))
