"""The paper-metrics pipeline: read the benchmarks, resume, encode, score every utterance once, gather, report.

`evaluate_paper_metrics(lm, mimi, config)` is the Python entry point (the command line calls it too). Utterances of all
benchmarks are scored in one run of the shared scorer: `ChunkedScorer` by default (slots refilled as utterances end,
so a 10k-file set takes a few hundred calls), `StepScorer` with `mode="step"`; both give the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..scoring.data import MimiSequenceEncoder, SequenceSource, read_audio_header
from ..scoring.errors import DataError
from ..scoring.files import digest, file_identity
from ..scoring.model import computation_identity, eval_mode
from ..scoring.run import DistributedContext, EvaluationRun, SequenceLosses, init_distributed, output_lock
from ..scoring.scorer import ChunkedScorer, ScoredSequence, ScoringItem
from .config import PaperMetricsConfig
from .data import load_benchmarks
from .pairs import BenchmarkSet, Utterance
from .placement import place_utterance
from .results import PaperMetricsResult
from .scores import utterance_score
from .submission import check_submission_splits, write_submission

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

UNLIMITED_FRAMES = 1 << 40


def evaluate_paper_metrics(lm: LMModel, mimi: MimiModel, config: PaperMetricsConfig | Mapping[str, Any] | None = None,
                           *, model_source: dict[str, Any] | None = None, progress: bool = True,
                           **overrides: Any) -> PaperMetricsResult:
    """Score `lm` on the configured benchmarks; the results (also written to `config.output` when set), which read as
    the results dict (`result["swuggy_accuracy"]`; `result.to_dict()` is a plain dict).

    `config` is a `PaperMetricsConfig` or a mapping of its fields; `overrides` are fields too. The LM and Mimi are put
    in eval mode for the call and given back in the mode they were in (so a training loop can call this with the model
    it trains). Under torchrun every rank returns the full results and rank 0 writes the files.
    """
    parsed = as_config(config).replace(**overrides)
    with output_lock(parsed.output), eval_mode(lm, mimi), torch.no_grad():
        return PaperMetricsRun(lm, mimi, parsed, init_distributed(), model_source, progress).execute()


def as_config(config: PaperMetricsConfig | Mapping[str, Any] | None) -> PaperMetricsConfig:
    if config is None:
        return PaperMetricsConfig()
    if isinstance(config, PaperMetricsConfig):
        return config
    return PaperMetricsConfig(**dict(config))


class PaperMetricsRun(EvaluationRun[Utterance]):
    """One evaluation: the benchmarks, the utterances finished so far and the timings."""

    def __init__(self, lm: LMModel, mimi: MimiModel, config: PaperMetricsConfig, context: DistributedContext,
                 model_source: dict[str, Any] | None, progress: bool) -> None:
        super().__init__("paper_metrics", "utterance", lm, mimi, config, context, model_source, progress)
        self.config: PaperMetricsConfig = config
        self.weights = config.resolved_codebook_weights(self.shape.dep_q)

    def identify(self, entry: Utterance) -> tuple[str, Any]:
        return entry.utterance_id, file_identity(entry.path)

    def execute(self) -> PaperMetricsResult:
        started = time.perf_counter()
        config = self.config
        if config.stream == "user" and self.shape.num_user == 0:
            raise ValueError("stream 'user' needs a model with a user stream; this one has only its own (n_q == dep_q)")
        if config.zerospeech_submission is not None:
            check_submission_splits({name: getattr(config, f"{name}_dir") for name in config.benchmarks})
        benchmarks = load_benchmarks(config)
        utterances = sorted({u for benchmark in benchmarks for u in benchmark.utterances})
        self.log(", ".join(f"{b.name}: {len(b.pairs)} pairs" for b in benchmarks) + f"; {len(utterances)} utterances")
        encoder = self.make_encoder()
        self.open_store(self.run_key(encoder))
        todo = self.resume(self.context.shard(utterances))
        self.score(self.prepare(todo, encoder))
        self.gather([])
        self.timing["total_seconds"] = time.perf_counter() - started
        result = self.result(benchmarks)
        if self.context.is_main:
            self.report(result)
        self.context.barrier()
        return result

    def make_encoder(self) -> MimiSequenceEncoder:
        if self.mimi is None:
            raise ValueError("paper metrics read audio: pass a Mimi model to encode it")
        return self.mimi_encoder()

    def run_key(self, encoder: MimiSequenceEncoder) -> str:
        """Everything that changes an utterance's per-token losses."""
        config = self.config
        return digest({"evaluation": "paper_metrics", **computation_identity(self.identity),
                       "text_policy": config.text_policy, "stream": config.stream,
                       "other_stream": config.other_stream, "mimi": encoder.mimi_fingerprint}, length=32)

    def prepare(self, utterances: list[Utterance], encoder: MimiSequenceEncoder) -> list[tuple[Utterance, ScoringItem]]:
        """Codes of every utterance to score, placed in the configured streams; unusable audio is an error."""
        started = time.perf_counter()
        encoded = []
        for utterance in self.progress_bar(utterances, desc="encoding", unit="utt"):
            source = SequenceSource(utterance.utterance_id, chapters=(read_audio_header(utterance.path),))
            codes = encoder.encode_source(source, UNLIMITED_FRAMES)
            if codes.shape[-1] == 0:
                raise DataError(f"{utterance.path}: the audio encodes to no frames")
            encoded.append((utterance, codes))
        silence = None
        if encoded and self.config.other_stream == "silence":
            silence = encoder.encode_silence(max(codes.shape[-1] for _, codes in encoded))
        items = [(utterance, place_utterance(utterance.utterance_id, codes, self.shape, self.config.stream, silence))
                 for utterance, codes in encoded]
        self.timing["encode_seconds"] = time.perf_counter() - started
        self.count_cache_use(encoder)
        return items

    def score(self, prepared: list[tuple[Utterance, ScoringItem]]) -> None:
        if not prepared:
            return
        by_id = {utterance.utterance_id: utterance for utterance, _ in prepared}

        def finished(scored: ScoredSequence) -> None:
            utterance = by_id[scored.sequence_id]
            self.keep(utterance, SequenceLosses(scored.sequence_id, scored.codebook_losses, [str(utterance.path)]))

        scorer = self.make_scorer()
        self.run_scorer(scorer, [item for _, item in prepared], finished)
        if isinstance(scorer, ChunkedScorer):
            self.timing["scorer_calls"] = scorer.calls

    def result(self, benchmarks: list[BenchmarkSet]) -> PaperMetricsResult:
        scores = {key: utterance_score(record.codebook_losses, self.weights) for key, record in self.finished.items()}
        timing = dict(self.timing)
        scored = len(self.finished) - self.resumed
        timing.update(scored_frames=self.scored_frames, scored_utterances=scored, resumed_utterances=self.resumed,
                      world_size=self.context.world_size)
        if self.timing.get("score_seconds"):
            timing["utterances_per_second"] = scored / self.timing["score_seconds"]
            timing["frames_per_second"] = self.scored_frames / self.timing["score_seconds"]
        return PaperMetricsResult(benchmarks, scores, self.config.normalization, self.settings(), self.identity,
                                  timing)

    def settings(self) -> dict[str, Any]:
        config = self.config
        return {
            "stream": config.stream,
            "other_stream": config.other_stream,
            "text_policy": config.text_policy,
            "codebook_weights": self.weights,
            "normalization": config.normalization,
            "seed": config.seed,
            "max_pairs": {name: getattr(config, f"{name}_max_pairs") for name in config.benchmarks},
            "mode": config.mode,
            "chunk_size": config.chunk_size,
            "batch_size": config.batch_size,
            "context": config.context,
            "rope_max_period": config.rope_max_period,
        }

    def report(self, result: PaperMetricsResult) -> None:
        if self.config.output:
            result.write_json(self.config.output)
            self.log(f"results written to {self.config.output}")
        if self.config.zerospeech_submission is not None:
            written = write_submission(result, self.config.zerospeech_submission)
            self.log(f"ZeroSpeech submission files: {', '.join(str(path) for path in written)}")
