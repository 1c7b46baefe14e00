"""The metrics a training run's `paper_metrics:` section names (moshi-finetune TTT fork): the four paper-metrics
benchmarks and LibriLight, scored together and reported in one dashboard-shaped results file.

    from moshi_eval import PaperMetricsEvaluator
    evaluator = PaperMetricsEvaluator(mimi_encoder=mimi, interleaved_tokenizer=tokenizer, device="cuda",
                                      config=paper_metrics_section)
    metrics = evaluator.evaluate_all(model)      # numbers for a logger, and `librilight_progression`

`PaperMetricsEvaluator` is the class the fork's training and evaluation scripts construct. `config` is the section
(`paper_metrics.section`); the tokenizer is accepted and not used (scores are on audio only); `device` is recorded, the
model and Mimi run where they are. Each `evaluate_<bench>` method scores that benchmark alone; `evaluate_all` scores
every configured one in one batched run, then LibriLight when the section names its data (`librilight_audio_dir` or
`librilight_concatenated_dir`), read from the same section with the defaults of the fork's evaluator
(`librilight.config_keys`), with the TTT inner losses when `ttt_fig5_enable` is on and the model has TTT layers. A
benchmark asked for but not configured is an error, not a zero; `<bench>_max_pairs: 0` skips it. Notes on the keys
are `UserWarning`s.

`python -m moshi_eval.paper_metrics --config train.yaml` (`main`) does the same from the command line when the file's
section names LibriLight data: its results file holds every key the fork's dashboard reads (`DASHBOARD_KEYS`, null
where undefined), the paper-metrics results and LibriLight's `librilight_*` keys (with `ttt_inner_losses` when
recorded); LibriLight's own results (curves, windows, sequences) go next to it, to `<output stem>.librilight.json`.
Without LibriLight data it is the paper-metrics command (`paper_metrics.cli`).

This module is the layer above both benchmark packages, which never import each other.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moshi.modules.ttt import ttt_layers_by_index
from moshi.utils.files import write_json_atomic

from .librilight import cli as librilight_cli
from .librilight.config import LibriLightConfig
from .librilight.config_keys import MappedSettings, map_settings
from .librilight.evaluate import evaluate_librilight
from .paper_metrics import cli as paper_metrics_cli
from .paper_metrics.config import GOLD_BENCHMARKS, PaperMetricsConfig
from .paper_metrics.evaluate import evaluate_paper_metrics
from .paper_metrics.pairs import BENCHMARKS
from .paper_metrics.results import PaperMetricsResult
from .paper_metrics.section import INNER_LOSSES_SWITCH, UserSection, read_user_section
from .scoring.cli import Command, Invocation, model_request
from .scoring.errors import print_notes, warn_notes
from .scoring.files import is_finite_number
from .scoring.run import init_distributed

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

DASHBOARD_KEYS = (
    *(f"{name}_{measure}" for name in BENCHMARKS for measure in ("accuracy", "samples")),
    "paper_metrics_avg",
    *(f"librilight_{measure}_{position}" for measure in ("loss", "perplexity") for position in ("8k", "16k", "24k")),
    "librilight_slope",
    "librilight_samples",
    "librilight_progression",
)
LISTS_LOGGED = ("librilight_progression", "ttt_inner_losses")
SETTINGS_SHARED = ("cache_dir", "use_cache", "encode_chunk_frames", "resume", "context", "rope_max_period")


def librilight_settings(section: UserSection) -> MappedSettings:
    """LibriLight's settings from the section's LibriLight keys, with the defaults of the fork's evaluator."""
    return map_settings(section.librilight, section.source, fork_defaults=True)


def inner_losses_asked(section: UserSection, lm: LMModel) -> tuple[bool, list[str]]:
    """Whether LibriLight records the TTT inner losses: `ttt_fig5_enable` is on and the model has TTT layers (a note
    when it has none)."""
    if not section.ttt_inner_losses:
        return False, []
    if ttt_layers_by_index(lm.transformer.layers):
        return True, []
    return False, [f"{section.source}: {INNER_LOSSES_SWITCH}: the model has no TTT layers; no inner losses recorded"]


def librilight_metrics(data: Mapping[str, Any]) -> dict[str, Any]:
    """LibriLight's part of the training metrics: every `librilight_*` key of its results dict `data` (window losses
    and perplexities, slope, samples, mean loss, `librilight_progression`) and `ttt_inner_losses` when recorded."""
    return {key: value for key, value in data.items() if key.startswith("librilight_") or key == "ttt_inner_losses"}


def logged_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a training logger takes: the finite int and float values, and `librilight_progression` and
    `ttt_inner_losses` as they are."""
    return {key: value for key, value in metrics.items() if is_finite_number(value) or key in LISTS_LOGGED}


def dashboard_results(paper: PaperMetricsResult | None, librilight: Mapping[str, Any],
                      librilight_output: str | None) -> dict[str, Any]:
    """One results dict: every `DASHBOARD_KEYS` key (null where undefined), the paper-metrics results (when a
    benchmark ran), the metrics of LibriLight's results dict `librilight`, and where its whole results are
    (`librilight.results`) with its flags."""
    data: dict[str, Any] = dict.fromkeys(DASHBOARD_KEYS)
    if paper is not None:
        data.update(paper.data)
    else:
        data["model"] = librilight["model"]
    data.update(librilight_metrics(librilight))
    data["librilight"] = {"results": librilight_output, "num_sequences": librilight["num_sequences"],
                          "flags": librilight["flags"]}
    return data


def librilight_config(paper: PaperMetricsConfig, mapped: MappedSettings, **fields: Any) -> LibriLightConfig:
    """LibriLight's settings: the section's LibriLight keys, the codes cache, resuming and model context of the
    paper-metrics settings `paper`, and `fields`."""
    shared = {name: getattr(paper, name) for name in SETTINGS_SHARED}
    return LibriLightConfig(**mapped.values | shared | fields)


class PaperMetricsEvaluator:
    """sWUGGY, sBLIMP, sStoryCloze, tStoryCloze (and LibriLight) for a model, configured by a training file's
    `paper_metrics:` section."""

    def __init__(self, mimi_encoder: MimiModel, interleaved_tokenizer: Any = None, device: str = "cuda",
                 config: Mapping[str, Any] | None = None) -> None:
        self.mimi = mimi_encoder
        self.tokenizer = interleaved_tokenizer
        self.device = device
        self.section: UserSection = read_user_section(dict(config or {}), "config")
        self.base = self.section.config()
        warn_notes(self.section.notes(librilight_elsewhere=False))

    def evaluate_swuggy(self, model: LMModel, max_samples: int | None = None) -> dict[str, Any]:
        return self.evaluate(model, ["swuggy"], max_samples)

    def evaluate_sblimp(self, model: LMModel, max_samples: int | None = None) -> dict[str, Any]:
        return self.evaluate(model, ["sblimp"], max_samples)

    def evaluate_sstory(self, model: LMModel, max_samples: int | None = None) -> dict[str, Any]:
        return self.evaluate(model, ["sstory"], max_samples)

    def evaluate_tstory(self, model: LMModel, max_samples: int | None = None) -> dict[str, Any]:
        return self.evaluate(model, ["tstory"], max_samples)

    def evaluate_story_cloze(self, model: LMModel, dataset: str = "tstory",
                             max_samples: int | None = None) -> dict[str, Any]:
        if dataset not in ("sstory", "tstory"):
            raise ValueError(f"dataset must be 'sstory' or 'tstory', got {dataset!r}")
        return self.evaluate(model, [dataset], max_samples)

    def evaluate_librilight_long_context(self, model: LMModel) -> dict[str, Any]:
        """LibriLight's numbers (`librilight_loss_8k`, perplexities, slope, samples, ...), `librilight_progression`,
        and `ttt_inner_losses` when `ttt_fig5_enable` records them."""
        if not self.section.names_librilight:
            raise ValueError("LibriLight is not configured: set librilight_audio_dir in the section")
        mapped = librilight_settings(self.section)
        inner_losses, notes = inner_losses_asked(self.section, model)
        warn_notes([*mapped.notes, *notes])
        config = librilight_config(self.base, mapped, ttt_inner_losses=inner_losses)
        result = evaluate_librilight(model, self.mimi, config, progress=False)
        return logged_metrics(librilight_metrics(result.data))

    def evaluate_librilight_only(self, model: LMModel) -> dict[str, Any]:
        return self.evaluate_librilight_long_context(model)

    def evaluate_all_without_librilight(self, model: LMModel) -> dict[str, Any]:
        return self.evaluate(model, self.base.benchmarks, None)

    def evaluate_all(self, model: LMModel) -> dict[str, Any]:
        """Every configured benchmark, then LibriLight when the section names its data; `paper_metrics_avg` is over
        the four benchmarks."""
        if not self.base.benchmarks and not self.section.names_librilight:
            raise ValueError("nothing to evaluate: the section names no benchmark folder (or skips them all) and no "
                             "librilight_audio_dir")
        metrics = self.evaluate(model, self.base.benchmarks, None) if self.base.benchmarks else {}
        if self.section.names_librilight:
            metrics.update(self.evaluate_librilight_long_context(model))
        return metrics

    def evaluate(self, model: LMModel, benchmarks: list[str], max_samples: int | None) -> dict[str, Any]:
        """The flat metrics of `benchmarks` scored together (`max_samples` pairs each when given)."""
        missing = [name for name in benchmarks if name not in self.base.benchmarks]
        if missing:
            name = missing[0]
            if name in self.section.skipped:
                raise ValueError(f"{name} is skipped by the section ({name}_max_pairs: 0)")
            raise ValueError(f"{', '.join(missing)} not configured: set {name}_audio_dir in the section")
        config = self.restricted(benchmarks, max_samples)
        return logged_metrics(evaluate_paper_metrics(model, self.mimi, config, progress=False).headline())

    def restricted(self, benchmarks: list[str], max_samples: int | None) -> PaperMetricsConfig:
        changes: dict[str, Any] = {}
        for name in BENCHMARKS:
            if name not in benchmarks:
                changes.update({f"{name}_dir": None, f"{name}_max_pairs": None})
                if name in GOLD_BENCHMARKS:
                    changes[f"{name}_gold"] = None
            elif max_samples is not None:
                changes[f"{name}_max_pairs"] = max_samples
        return self.base.replace(**changes)


def librilight_output(output: str) -> str:
    """`results.json` -> `results.librilight.json`: where LibriLight's own results go."""
    path = Path(output)
    return str(path.with_name(f"{path.stem}.librilight.json"))


def say_librilight_when_interrupted(invocation: Invocation, librilight: LibriLightConfig) -> None:
    """From here on Ctrl-C speaks of LibriLight's sequences and their records (the benchmarks are done)."""
    invocation.config, invocation.unit, invocation.partial_results = librilight, "sequence", True


def training_metrics_command(args: argparse.Namespace, invocation: Invocation) -> int:
    """The paper-metrics command, with LibriLight when the settings file's section names its data."""
    section, notes = paper_metrics_cli.read_section(args.config) if "config" in vars(args) else (None, [])
    if section is None or not section.names_librilight:
        return paper_metrics_cli.evaluate_section(args, invocation, section, notes)
    context = init_distributed()
    config = PaperMetricsConfig(**paper_metrics_cli.merged_settings(args, section))
    invocation.config = config
    mapped = librilight_settings(section)
    librilight = librilight_config(config, mapped, output=librilight_output(config.output))
    if context.is_main:
        print_notes([*notes, *section.notes(librilight_elsewhere=False), *mapped.notes])
    request = model_request(args, config)
    paper_metrics_cli.check_before_work(config, request, args.config, set(vars(args)), benchmark_needed=False)
    librilight_cli.check_before_work(librilight, None, {name: args.config for name in mapped.values})
    lm, mimi = paper_metrics_cli.load_models(request, args, context)
    inner_losses, inner_notes = inner_losses_asked(section, lm)
    if context.is_main:
        print_notes(inner_notes)
    progress = not getattr(args, "quiet", False)
    with torch.no_grad():
        paper = None
        if config.benchmarks:
            paper = evaluate_paper_metrics(lm, mimi, config, model_source=request.describe(), progress=progress)
        say_librilight_when_interrupted(invocation, librilight)
        result = evaluate_librilight(lm, mimi, librilight.replace(ttt_inner_losses=inner_losses),
                                     model_source=request.describe(), progress=progress)
    if context.is_main:
        librilight_data = result.data
        write_json_atomic(config.output, dashboard_results(paper, librilight_data, librilight.output))
        if paper is not None:
            paper_metrics_cli.print_summary(paper)
        librilight_cli.print_summary(librilight_data, librilight.output)
        print(f"results written to {config.output}", flush=True)
    return 0


COMMAND = Command(paper_metrics_cli.PROGRAM, paper_metrics_cli.build_parser, training_metrics_command,
                  unit="utterance")


def main(argv: list[str] | None = None) -> int:
    """`python -m moshi_eval.paper_metrics`."""
    return COMMAND.main(argv)
