"""`PaperMetricsEvaluator`: the class our users' training and evaluation scripts construct, on our evaluation.

    from moshi_eval import PaperMetricsEvaluator
    evaluator = PaperMetricsEvaluator(mimi_encoder=mimi, interleaved_tokenizer=tokenizer, device="cuda",
                                      config=paper_metrics_section)
    metrics = evaluator.evaluate_all(model)      # flat {name: number}, ready for a logger

`config` is their `paper_metrics:` section (see `section.py`); the tokenizer is accepted and not used (scores are on
audio only); `device` is recorded, the model and Mimi run where they are. Each `evaluate_<bench>` method scores that
benchmark alone; `evaluate_all` scores every configured one in one batched run, then LibriLight when the section names
its data (`librilight_audio_dir` or `librilight_concatenated_dir`), read from the same section with the defaults of
their evaluator (`moshi_eval.librilight.config_keys`). A benchmark asked for but not configured is an error, not a zero.
Notes on ignored keys are `UserWarning`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .librilight import LibriLightConfig, evaluate_librilight
from .librilight.config_keys import map_settings
from .paper_metrics.config import PaperMetricsConfig
from .paper_metrics.evaluate import run_paper_metrics
from .paper_metrics.pairs import BENCHMARKS
from .paper_metrics.section import UserSection, read_user_section
from .scoring.errors import warn_notes
from .scoring.files import is_finite_number


class PaperMetricsEvaluator:
    """sWUGGY, sBLIMP, sStoryCloze, tStoryCloze (and LibriLight) for a model, configured by a users' section."""

    def __init__(self, mimi_encoder: Any, interleaved_tokenizer: Any = None, device: str = "cuda",
                 config: Mapping[str, Any] | None = None) -> None:
        self.mimi = mimi_encoder
        self.tokenizer = interleaved_tokenizer
        self.device = device
        self.raw = dict(config or {})
        self.section: UserSection = read_user_section(self.raw, "config")
        self.base = self.section.config()
        warn_notes(self.section.notes(librilight_elsewhere=False))

    def evaluate_swuggy(self, model: Any, max_samples: int | None = None) -> dict[str, float]:
        return self.evaluate(model, ["swuggy"], max_samples)

    def evaluate_sblimp(self, model: Any, max_samples: int | None = None) -> dict[str, float]:
        return self.evaluate(model, ["sblimp"], max_samples)

    def evaluate_sstory(self, model: Any, max_samples: int | None = None) -> dict[str, float]:
        return self.evaluate(model, ["sstory"], max_samples)

    def evaluate_tstory(self, model: Any, max_samples: int | None = None) -> dict[str, float]:
        return self.evaluate(model, ["tstory"], max_samples)

    def evaluate_story_cloze(self, model: Any, dataset: str = "tstory",
                             max_samples: int | None = None) -> dict[str, float]:
        if dataset not in ("sstory", "tstory"):
            raise ValueError(f"dataset must be 'sstory' or 'tstory', got {dataset!r}")
        return self.evaluate(model, [dataset], max_samples)

    def evaluate_librilight_long_context(self, model: Any) -> dict[str, float]:
        """LibriLight's flat metrics (`librilight_loss_8k`, perplexities, slope, samples, ...) for the section."""
        if not self.section.names_librilight:
            raise ValueError("LibriLight is not configured: set librilight_audio_dir in the section")
        mapped = map_settings(self.section.librilight, "config", old_evaluator_defaults=True)
        warn_notes(mapped.notes)
        result = evaluate_librilight(model, self.mimi, LibriLightConfig(**mapped.values), progress=False)
        return result.flat_metrics()

    def evaluate_librilight_only(self, model: Any) -> dict[str, float]:
        return self.evaluate_librilight_long_context(model)

    def evaluate_all_without_librilight(self, model: Any) -> dict[str, float]:
        return self.evaluate(model, self.base.benchmarks, None)

    def evaluate_all(self, model: Any) -> dict[str, float]:
        """Every configured benchmark, then LibriLight when the section names its data; `paper_metrics_avg` is over
        the four benchmarks."""
        if not self.base.benchmarks and not self.section.names_librilight:
            raise ValueError("nothing to evaluate: the section names no benchmark folder and no librilight_audio_dir")
        metrics = self.evaluate(model, self.base.benchmarks, None) if self.base.benchmarks else {}
        if self.section.names_librilight:
            metrics.update(self.evaluate_librilight_long_context(model))
        return metrics

    def evaluate(self, model: Any, benchmarks: list[str], max_samples: int | None) -> dict[str, float]:
        """The flat metrics of `benchmarks` scored together (`max_samples` pairs each when given)."""
        missing = [name for name in benchmarks if name not in self.base.benchmarks]
        if missing:
            raise ValueError(f"{', '.join(missing)} not configured: set {missing[0]}_audio_dir in the section")
        config = self.restricted(benchmarks, max_samples)
        return finite_numbers(run_paper_metrics(model, self.mimi, config, progress=False).headline())

    def restricted(self, benchmarks: list[str], max_samples: int | None) -> PaperMetricsConfig:
        changes: dict[str, Any] = {}
        for name in BENCHMARKS:
            if name not in benchmarks:
                changes.update({f"{name}_dir": None, f"{name}_max_pairs": None})
                if name in ("swuggy", "sblimp"):
                    changes[f"{name}_gold"] = None
            elif max_samples is not None:
                changes[f"{name}_max_pairs"] = max_samples
        return self.base.replace(**changes)


def finite_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Only the finite int and float values (what training loggers accept)."""
    return {key: value for key, value in metrics.items() if is_finite_number(value)}
