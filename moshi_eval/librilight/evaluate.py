"""The evaluation pipeline: discover, resume, encode, score, gather, report.

`evaluate_librilight(lm, mimi, config)` is the Python entry point; the command line and the demo call it too.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from moshi.modules.ttt import recording_inner_losses, ttt_layers_by_index
from moshi.modules.ttt_inner_losses import InnerLossBins

from ..scoring.data import MimiSequenceEncoder, SequenceSource, Skip
from ..scoring.errors import DataError, WorseThanUniformWarning
from ..scoring.files import digest
from ..scoring.model import computation_identity, scoring_flags
from ..scoring.run import DistributedContext, EvaluationRun, init_distributed, output_lock
from ..scoring.scorer import ChunkedScorer, ModelShape, ScoredSequence, ScoringItem
from .config import LibriLightConfig
from .config_keys import normalize_config_mapping
from .data import discover_sequences
from .prepare import ItemPreparer, source_identity
from .results import LibriLightResult, SequenceLosses

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

DEFAULT_FRAME_RATE = 12.5
SequenceHook = Callable[[SequenceLosses], None]


def evaluate_librilight(
    lm: LMModel,
    mimi: MimiModel | None = None,
    config: LibriLightConfig | None = None,
    *,
    model_source: dict[str, Any] | None = None,
    progress: bool = True,
    on_sequence: SequenceHook | None = None,
    **overrides: Any,
) -> LibriLightResult:
    """Score `lm` on the configured sequences and return the results (also written to `config.output` if set).

    `overrides` are `LibriLightConfig` fields, e.g. `evaluate_librilight(lm, mimi, audio_dir="...", batch_size=4)`.
    `on_sequence` is called with each sequence's losses as soon as it is finished (and saved for resuming).
    Under torchrun, every rank gets the full result and rank 0 writes the files.
    """
    config = (config or LibriLightConfig()).replace(**overrides)
    with output_lock(config.output):
        return LibriLightRun(lm, mimi, config, init_distributed(), model_source, progress, on_sequence).execute()


def evaluate_librilight_long_context(model: LMModel, mimi: MimiModel | None,
                                     config: Mapping[str, Any] | LibriLightConfig | None = None) -> dict[str, Any]:
    """The results dict (`librilight_loss_8k/16k/24k`, `librilight_slope`, `librilight_samples`, ...) of `model` on
    settings that may use the keys of a moshi-finetune TTT fork's `paper_metrics:` section (ignored and mapped keys are
    reported as `UserWarning`s). For a logger that takes only numbers, use `evaluate_librilight(...).flat_metrics()`."""
    if config is None or isinstance(config, LibriLightConfig):
        parsed = config or LibriLightConfig()
    else:
        parsed = LibriLightConfig(**normalize_config_mapping(config, source="config"))
    return evaluate_librilight(model, mimi, parsed, progress=False).to_dict()


def resolve_user_stream(requested: str | None, shape: ModelShape) -> str:
    """`silence` by default when the model has a user stream; a model without one only takes `zero`."""
    if shape.num_user == 0:
        return "zero"
    return requested or "silence"


class LibriLightRun(EvaluationRun[SequenceSource]):
    """One evaluation: the sequences, what is finished, what was skipped and the timings."""

    def __init__(self, lm: LMModel, mimi: MimiModel | None, config: LibriLightConfig, context: DistributedContext,
                 model_source: dict[str, Any] | None, progress: bool, on_sequence: SequenceHook | None) -> None:
        super().__init__("librilight", "sequence", lm, mimi, config, context, model_source, progress)
        self.config: LibriLightConfig = config
        self.on_sequence = on_sequence
        self.user_stream = resolve_user_stream(config.user_stream, self.shape)
        self.codebook_weights = config.resolved_codebook_weights(self.shape.dep_q)
        self.model_flags = scoring_flags(lm)
        self.discovery_skips: list[Skip] = []
        self.sequence_skips: list[Skip] = []
        self.sources: list[SequenceSource] = []
        self.inner_losses: dict[str, dict[str, list[Any]]] | None = None
        if config.ttt_inner_losses and not ttt_layers_by_index(lm.transformer.layers):
            raise ValueError("ttt_inner_losses: the model has no TTT layers")

    def identify(self, entry: SequenceSource) -> tuple[str, Any]:
        return entry.sequence_id, source_identity(entry)

    def execute(self) -> LibriLightResult:
        started = time.perf_counter()
        config = self.config
        discovery = discover_sequences(
            audio_dir=config.audio_dir, audio_files=config.audio_files, codes=config.codes, layout=config.layout,
            max_chapters=config.max_chapters, num_sequences=config.num_sequences, min_snr=config.min_snr,
            min_duration=config.min_duration, exclude_genres=config.exclude_genres, seed=config.seed,
            strict=config.strict, books=config.books, max_files=config.max_files)
        self.sources = discovery.sequences
        self.discovery_skips = list(discovery.skipped)
        self.log(f"{len(self.sources)} sequence(s) selected, {len(self.discovery_skips)} input(s) skipped")
        encoder = self.make_encoder()
        self.open_store(self.run_key(encoder))
        todo = self.resume_unless_recording(self.context.shard(self.sources))
        items = self.prepare(todo, encoder)
        self.score(items)
        self.sequence_skips = self.gather(self.sequence_skips)
        self.timing["total_seconds"] = time.perf_counter() - started
        result = self.result(complete=True)
        if self.context.is_main:
            self.report(result)
        self.context.barrier()
        return result

    def resume_unless_recording(self, sources: list[SequenceSource]) -> list[SequenceSource]:
        """The sources to score: those not finished yet, or all of them when TTT inner losses are recorded (they
        cover the sequences scored in this run, so finished ones are scored again)."""
        if not self.config.ttt_inner_losses:
            return self.resume(sources)
        if self.store is not None:
            self.log("TTT inner losses are recorded while scoring: finished sequences are scored again")
        return sources

    def needs_mimi(self) -> bool:
        audio = any(source.codes_path is None for source in self.sources)
        return audio or (self.user_stream == "silence")

    def make_encoder(self) -> MimiSequenceEncoder | None:
        if self.mimi is None:
            if any(source.codes_path is None for source in self.sources):
                raise ValueError("audio input needs a Mimi model to encode it (pass mimi, or pre-encoded codes)")
            return None
        if not self.needs_mimi():
            return None
        return self.mimi_encoder()

    def run_key(self, encoder: MimiSequenceEncoder | None) -> str:
        """Everything that changes the per-frame losses of a sequence."""
        config = self.config
        sampling = {"seed": config.seed, "temp_text": config.temp_text, "top_k_text": config.top_k_text}
        return digest({
            **computation_identity(self.identity),
            "text_policy": config.text_policy, "sampling": sampling if config.text_policy == "sample" else None,
            "user_stream": self.user_stream, "max_sequence_length": config.max_sequence_length,
            "mimi": encoder.mimi_fingerprint if encoder is not None else None,
        }, length=32)

    def prepare(self, sources: list[SequenceSource], encoder: MimiSequenceEncoder | None) -> list[ScoringItem]:
        """Codes for every source to score; sources that fail are skipped (errors in strict mode)."""
        started = time.perf_counter()
        preparer = ItemPreparer(self.shape, self.user_stream, self.config.max_sequence_length, encoder)
        items = []
        for source in self.progress_bar(sources, desc="encoding", unit="seq"):
            try:
                own, user = preparer.own_and_user(source)
            except DataError as error:
                if self.config.strict:
                    raise
                self.sequence_skips.append(Skip(source.sequence_id, f"sequence skipped: {error}"))
                self.log(f"skipping {source.sequence_id}: {error}")
                continue
            items.append(ScoringItem(source.sequence_id, own, user))
        preparer.add_user_streams(items)
        self.timing["encode_seconds"] = time.perf_counter() - started
        self.count_cache_use(encoder)
        return items

    def score(self, items: list[ScoringItem]) -> None:
        """Score the items (with the TTT inner losses when asked: every rank takes part in gathering them)."""
        with self.inner_loss_recording() as bins:
            self.score_items(items)
        if self.config.ttt_inner_losses:
            self.inner_losses = self.gathered_inner_losses(bins)

    def score_items(self, items: list[ScoringItem]) -> None:
        if not items:
            return
        files = {source.sequence_id: source.files for source in self.sources}
        by_id = {source.sequence_id: source for source in self.sources}

        def finished(scored: ScoredSequence) -> None:
            sequence = SequenceLosses(scored.sequence_id, scored.codebook_losses, files[scored.sequence_id])
            self.keep(by_id[sequence.sequence_id], sequence)
            if self.config.output and self.context.is_main:
                self.result(complete=False).write_json(self.config.output)
            if self.on_sequence is not None:
                self.on_sequence(sequence)

        config = self.config
        scorer = self.make_scorer(seed=config.seed, temp_text=config.temp_text, top_k_text=config.top_k_text,
                                  check_every=config.check_every)
        self.run_scorer(scorer, items, finished)
        if isinstance(scorer, ChunkedScorer) and scorer.acceptance_rate is not None:
            self.timing["speculation_acceptance_rate"] = scorer.acceptance_rate
            self.timing["main_steps_per_frame"] = 1 / scorer.acceptance_rate

    def inner_loss_recording(self) -> contextlib.AbstractContextManager[dict[int, InnerLossBins]]:
        """Bins of `bin_size` steps covering the longest possible sequence, for every TTT layer, while
        `ttt_inner_losses` is on."""
        config = self.config
        if not config.ttt_inner_losses:
            return contextlib.nullcontext({})
        steps = config.max_sequence_length + self.shape.max_delay
        return recording_inner_losses(self.lm.transformer.layers, config.bin_size, steps)

    def gathered_inner_losses(self, bins: dict[int, InnerLossBins]) -> dict[str, dict[str, list[Any]]]:
        """Each TTT layer's inner-loss summary over the sequences of every rank, by layer index."""
        if self.context.enabled:
            mine = json.dumps({index: [b.totals.tolist(), b.counts.tolist()] for index, b in bins.items()}).encode()
            parts = [json.loads(part) for part in self.context.all_gather_bytes(mine)]
            for index, layer_bins in bins.items():
                for position, target in enumerate((layer_bins.totals, layer_bins.counts)):
                    target.copy_(sum(torch.tensor(part[str(index)][position]) for part in parts))
        return {str(index): layer_bins.summary() for index, layer_bins in sorted(bins.items())}

    def result(self, complete: bool) -> LibriLightResult:
        order = [source.sequence_id for source in self.sources if source.sequence_id in self.finished]
        timing = dict(self.timing)
        timing["scored_frames"] = self.scored_frames
        timing["resumed_sequences"] = self.resumed
        timing["world_size"] = self.context.world_size
        if self.timing.get("score_seconds"):
            timing["frames_per_second"] = self.scored_frames / self.timing["score_seconds"]
        config = self.config.to_dict() | {"user_stream": self.user_stream}
        skipped = [skip.to_dict() for skip in self.discovery_skips + self.sequence_skips]
        return LibriLightResult(
            sequences=[self.finished[sequence_id] for sequence_id in order], card=self.shape.card,
            frame_rate=float(getattr(self.mimi, "frame_rate", DEFAULT_FRAME_RATE)),
            positions=list(self.config.positions), window=self.config.window, bin_size=self.config.bin_size,
            codebook_weights=self.codebook_weights, config=config, model=self.identity, timing=timing,
            skipped=skipped, complete=complete, legacy_keys=self.config.legacy_keys, model_flags=self.model_flags,
            ttt_inner_losses=self.inner_losses)

    def report(self, result: LibriLightResult) -> None:
        data = result.write_json(self.config.output) if self.config.output else result.data
        for flag in data["flags"]:
            if flag not in result.model_flags:
                warnings.warn(flag, WorseThanUniformWarning, stacklevel=3)
        if self.config.output:
            self.log(f"results written to {self.config.output}")
        if self.config.plot:
            from .plot import plot_result

            plot_result(data, self.config.plot)
            self.log(f"plot written to {self.config.plot}")
