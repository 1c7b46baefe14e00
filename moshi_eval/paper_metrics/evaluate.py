"""The paper-metrics pipeline: read the benchmarks, resume, encode, score every utterance once, gather, report.

`evaluate_paper_metrics(lm, mimi, config)` is the Python entry point (the command line calls it too). Utterances of all
benchmarks are scored in one run of the shared scorer: `ChunkedScorer` by default (slots refilled as utterances end,
so a 10k-file set takes a few hundred calls), `StepScorer` with `mode="step"`; both give the same numbers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..scoring.audio import read_audio_header
from ..scoring.codes_cache import CodesCache, default_cache_dir
from ..scoring.distributed import DistributedContext, init_distributed
from ..scoring.encoding import MimiSequenceEncoder
from ..scoring.eval_mode import eval_mode
from ..scoring.fingerprint import digest, file_identity
from ..scoring.models import model_identity
from ..scoring.rank_report import RankReport
from ..scoring.records import SequenceLosses
from ..scoring.scorer import ChunkedScorer, ModelShape, ScoredSequence, ScoringItem, StepScorer
from ..scoring.sources import DataError, SequenceSource
from ..scoring.store import SequenceStore, store_dir_for
from .config import PaperMetricsConfig
from .data import load_benchmarks
from .pairs import BenchmarkSet, Utterance
from .placement import place_utterance
from .results import PaperMetricsResult
from .scores import utterance_score
from .submission import check_submission_splits, write_submission

UNLIMITED_FRAMES = 1 << 40


def evaluate_paper_metrics(lm: Any, mimi: Any, config: PaperMetricsConfig | Mapping[str, Any] | None = None, *,
                           model_source: dict[str, Any] | None = None, progress: bool = True,
                           **overrides: Any) -> dict[str, Any]:
    """Score `lm` on the configured benchmarks; the results dict (also written to `config.output` when set).

    `config` is a `PaperMetricsConfig` or a mapping of its fields; `overrides` are fields too. The LM and Mimi are put
    in eval mode for the call and given back in the mode they were in (so a training loop can call this with the model
    it trains). Under torchrun every rank returns the full results and rank 0 writes the files.
    """
    return run_paper_metrics(lm, mimi, config, model_source=model_source, progress=progress, **overrides).to_dict()


def run_paper_metrics(lm: Any, mimi: Any, config: PaperMetricsConfig | Mapping[str, Any] | None = None, *,
                      model_source: dict[str, Any] | None = None, progress: bool = True,
                      **overrides: Any) -> PaperMetricsResult:
    """`evaluate_paper_metrics`, returning the `PaperMetricsResult` itself."""
    parsed = as_config(config).replace(**overrides)
    with eval_mode(lm, mimi), torch.no_grad():
        return PaperMetricsRun(lm, mimi, parsed, init_distributed(), model_source, progress).execute()


def as_config(config: PaperMetricsConfig | Mapping[str, Any] | None) -> PaperMetricsConfig:
    if config is None:
        return PaperMetricsConfig()
    if isinstance(config, PaperMetricsConfig):
        return config
    return PaperMetricsConfig(**dict(config))


class PaperMetricsRun:
    """One evaluation: the benchmarks, the utterances finished so far and the timings."""

    def __init__(self, lm: Any, mimi: Any, config: PaperMetricsConfig, context: DistributedContext,
                 model_source: dict[str, Any] | None, progress: bool) -> None:
        self.lm = lm
        self.mimi = mimi
        self.config = config
        self.context = context
        self.progress = progress and context.is_main
        self.shape = ModelShape.of(lm)
        self.weights = config.resolved_codebook_weights(self.shape.dep_q)
        self.identity = model_identity(lm, model_source)
        self.finished: dict[str, SequenceLosses] = {}
        self.timing: dict[str, Any] = {"encode_seconds": 0.0, "score_seconds": 0.0}
        self.scored_frames = 0
        self.resumed = 0
        self.store: SequenceStore | None = None

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[paper_metrics] {message}", file=sys.stderr, flush=True)

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
        if config.output and config.resume:
            self.store = SequenceStore(store_dir_for(config.output), self.run_key(encoder))
        todo = self.resume(self.context.shard(utterances))
        self.score(self.prepare(todo, encoder))
        self.gather()
        self.timing["total_seconds"] = time.perf_counter() - started
        result = self.result(benchmarks)
        if self.context.is_main:
            self.report(result)
        self.context.barrier()
        return result

    def make_encoder(self) -> MimiSequenceEncoder:
        if self.mimi is None:
            raise ValueError("paper metrics read audio: pass a Mimi model to encode it")
        cache = CodesCache(self.config.cache_dir or default_cache_dir()) if self.config.use_cache else None
        return MimiSequenceEncoder(self.mimi, self.shape.mimi_codebooks, cache, self.config.encode_chunk_frames)

    def run_key(self, encoder: MimiSequenceEncoder) -> str:
        """Everything that changes an utterance's per-token losses."""
        config = self.config
        return digest({"evaluation": "paper_metrics", "model": self.identity["fingerprint"],
                       "dtype": self.identity["dtype"], "text_policy": config.text_policy, "stream": config.stream,
                       "other_stream": config.other_stream, "mimi": encoder.mimi_fingerprint}, length=32)

    def record_key(self, store: SequenceStore, utterance: Utterance) -> str:
        return store.key_for(utterance.utterance_id, file_identity(utterance.path))

    def resume(self, utterances: list[Utterance]) -> list[Utterance]:
        """Load finished utterances from the store; return those still to score."""
        if self.store is None:
            return utterances
        todo = []
        for utterance in utterances:
            record = self.store.load(self.record_key(self.store, utterance))
            if record is None:
                todo.append(utterance)
            else:
                self.finished[utterance.utterance_id] = record
        self.resumed = len(utterances) - len(todo)
        if self.resumed:
            self.log(f"resuming: {self.resumed} finished utterance(s) loaded from {self.store.directory}")
        return todo

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
        if encoder.cache is not None:
            self.timing["codes_cache_hits"] = encoder.cache.hits
            self.timing["codes_cache_misses"] = encoder.cache.misses
        return items

    def score(self, prepared: list[tuple[Utterance, ScoringItem]]) -> None:
        if not prepared:
            return
        started = time.perf_counter()
        by_id = {utterance.utterance_id: utterance for utterance, _ in prepared}
        items = [item for _, item in prepared]
        bar = self.progress_bar(None, desc="scoring", unit="frame", total=sum(item.num_frames for item in items))

        def finished(scored: ScoredSequence) -> None:
            utterance = by_id[scored.sequence_id]
            record = SequenceLosses(scored.sequence_id, scored.codebook_losses, [str(utterance.path)])
            self.finished[scored.sequence_id] = record
            self.scored_frames += record.num_frames
            if self.store is not None:
                self.store.save(self.record_key(self.store, utterance), record)

        scorer = self.make_scorer()
        try:
            scorer.run(items, self.config.batch_size, finished, on_frames=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
            self.timing["score_seconds"] = time.perf_counter() - started
            if isinstance(scorer, ChunkedScorer):
                self.timing["scorer_calls"] = scorer.calls

    def make_scorer(self) -> ChunkedScorer | StepScorer:
        if self.config.mode == "step":
            return StepScorer(self.lm, text_policy=self.config.text_policy)
        return ChunkedScorer(self.lm, text_policy=self.config.text_policy, chunk_size=self.config.chunk_size)

    def gather(self) -> None:
        """Collect every rank's finished utterances (identical on all ranks afterwards)."""
        if not self.context.enabled:
            return
        mine = RankReport(self.finished, [], self.scored_frames, self.resumed, self.timing)
        parts = [RankReport.from_bytes(part) for part in self.context.all_gather_bytes(mine.to_bytes())]
        self.finished = {key: value for part in parts for key, value in part.finished.items()}
        self.scored_frames = sum(part.scored_frames for part in parts)
        self.resumed = sum(part.resumed for part in parts)
        for name in ("encode_seconds", "score_seconds"):
            self.timing[name] = max(part.timing[name] for part in parts)
        for name in ("codes_cache_hits", "codes_cache_misses", "scorer_calls"):
            if any(name in part.timing for part in parts):
                self.timing[name] = sum(part.timing.get(name, 0) for part in parts)

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
        }

    def report(self, result: PaperMetricsResult) -> None:
        if self.config.output:
            result.write_json(self.config.output)
            self.log(f"results written to {self.config.output}")
        if self.config.zerospeech_submission is not None:
            written = write_submission(result, self.config.zerospeech_submission)
            self.log(f"ZeroSpeech submission files: {', '.join(str(path) for path in written)}")

    def progress_bar(self, iterable: Any, **kwargs: Any) -> Any:
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, file=sys.stderr, **kwargs)
