"""What every evaluation run does the same way around the scorer.

An `EvaluationRun` holds one evaluation's finished records (`SequenceLosses` by id), its counters and timings, and the
`SequenceStore` that keeps records for resuming; it resumes from the store, encodes with the codes cache, scores with a
progress bar and gathers the ranks' records under torchrun. Each evaluation (LibriLight, paper metrics) subclasses it
with what it scores (`Entry`: a sequence source, an utterance), how an entry is identified in the store (`identify`),
and its own data, results and report.
"""

from __future__ import annotations

import abc
import sys
import time
from typing import Any, Generic, Protocol, TypeVar

from .cli import check_records_folder
from .codes_cache import CodesCache, default_cache_dir
from .distributed import DistributedContext
from .encoding import MimiSequenceEncoder
from .model import check_long_context, model_identity
from .rank_report import RankReport
from .records import SequenceLosses
from .scorer import ChunkedScorer, ModelShape, ScoringItem, SequenceCallback, StepScorer
from .sources import Skip
from .store import SequenceStore, store_dir_for

Entry = TypeVar("Entry")
SLOWEST_RANK_TIMINGS = ("encode_seconds", "score_seconds")
SUMMED_TIMINGS = ("codes_cache_hits", "codes_cache_misses", "scorer_calls")


class RunSettings(Protocol):
    """The settings every evaluation has (its config dataclass has more)."""

    output: str | None
    resume: bool
    batch_size: int
    mode: str
    text_policy: str
    chunk_size: int
    use_cache: bool
    cache_dir: str | None
    encode_chunk_frames: int
    context: int | None
    rope_max_period: float | None


class EvaluationRun(abc.ABC, Generic[Entry]):
    """One evaluation of `lm`: finished records, counters, timings, and the steps every evaluation shares.

    `name` prefixes the log lines (`[name] ...`), `unit` names an entry in them (`sequence`, `utterance`). Progress
    (log lines and bars on stderr) shows on the main rank only, when `progress` is set.
    """

    def __init__(self, name: str, unit: str, lm: Any, mimi: Any | None, config: RunSettings,
                 context: DistributedContext, model_source: dict[str, Any] | None, progress: bool) -> None:
        self.name = name
        self.unit = unit
        self.lm = lm
        self.mimi = mimi
        self.config = config
        self.context = context
        self.progress = progress and context.is_main
        self.shape = ModelShape.of(lm)
        check_long_context(lm, config.context, config.rope_max_period)
        self.identity = model_identity(lm, model_source)
        self.finished: dict[str, SequenceLosses] = {}
        self.timing: dict[str, Any] = {"encode_seconds": 0.0, "score_seconds": 0.0}
        self.scored_frames = 0
        self.resumed = 0
        self.store: SequenceStore | None = None

    @abc.abstractmethod
    def identify(self, entry: Entry) -> tuple[str, Any]:
        """The entry's id and the identity of what it is read from (its store record is reused only while both stay
        the same)."""

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    def progress_bar(self, iterable: Any, **kwargs: Any) -> Any:
        """`iterable` wrapped in a tqdm bar on stderr when progress shows (then `iterable=None` gives a bar to update
        by hand), else `iterable` itself."""
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, file=sys.stderr, **kwargs)

    def open_store(self, run_key: str) -> None:
        """The store of finished records next to the output file, when there is one and resuming is on (its folder
        checked writable before anything is scored); `run_key` digests everything that changes a record."""
        if self.config.output and self.config.resume:
            check_records_folder(self.config.output, "output")
            self.store = SequenceStore(store_dir_for(self.config.output), run_key, self.shape.dep_q)

    def resume(self, entries: list[Entry]) -> list[Entry]:
        """Load finished entries from the store; return the entries still to score."""
        if self.store is None:
            return entries
        todo = []
        for entry in entries:
            record = self.store.load(*self.identify(entry))
            if record is None:
                todo.append(entry)
            else:
                self.finished[record.sequence_id] = record
        self.resumed = len(entries) - len(todo)
        if self.resumed:
            self.log(f"resuming: {self.resumed} finished {self.unit}(s) loaded from {self.store.directory}")
        return todo

    def mimi_encoder(self) -> MimiSequenceEncoder:
        """An encoder of the LM's Mimi codebooks, with the codes cache unless the settings turn it off."""
        config = self.config
        cache = CodesCache(config.cache_dir or default_cache_dir()) if config.use_cache else None
        return MimiSequenceEncoder(self.mimi, self.shape.mimi_codebooks, cache, config.encode_chunk_frames)

    def count_cache_use(self, encoder: MimiSequenceEncoder | None) -> None:
        """The codes cache's hits and misses in the timings (nothing without a cache)."""
        if encoder is not None and encoder.cache is not None:
            self.timing["codes_cache_hits"] = encoder.cache.hits
            self.timing["codes_cache_misses"] = encoder.cache.misses

    def make_scorer(self, **step_options: Any) -> StepScorer | ChunkedScorer:
        """The scorer of the configured mode; `step_options` are `StepScorer`'s sampling and checking settings."""
        config = self.config
        if config.mode == "chunked":
            return ChunkedScorer(self.lm, text_policy=config.text_policy, chunk_size=config.chunk_size)
        return StepScorer(self.lm, text_policy=config.text_policy, **step_options)

    def keep(self, entry: Entry, record: SequenceLosses) -> None:
        """A record just scored: finished, counted, and saved for resuming when there is a store."""
        self.finished[record.sequence_id] = record
        self.scored_frames += record.num_frames
        if self.store is not None:
            _, identity = self.identify(entry)
            self.store.save(identity, record)

    def run_scorer(self, scorer: StepScorer | ChunkedScorer, items: list[ScoringItem],
                   on_sequence: SequenceCallback) -> None:
        """Score `items` in batches of the configured size with a bar of frames; the time it took in the timings."""
        started = time.perf_counter()
        bar = self.progress_bar(None, desc="scoring", unit="frame", total=sum(item.num_frames for item in items))
        try:
            scorer.run(items, self.config.batch_size, on_sequence, on_frames=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
            self.timing["score_seconds"] = time.perf_counter() - started

    def gather(self, skips: list[Skip]) -> list[Skip]:
        """Collect every rank's finished records, counters and timings (identical on all ranks afterwards: the slowest
        rank's seconds, summed counts); returns every rank's `skips` (this rank's alone when not distributed)."""
        if not self.context.enabled:
            return skips
        mine = RankReport(self.finished, skips, self.scored_frames, self.resumed, self.timing)
        parts = [RankReport.from_bytes(part) for part in self.context.all_gather_bytes(mine.to_bytes())]
        self.finished = {key: value for part in parts for key, value in part.finished.items()}
        self.scored_frames = sum(part.scored_frames for part in parts)
        self.resumed = sum(part.resumed for part in parts)
        for name in SLOWEST_RANK_TIMINGS:
            self.timing[name] = max(part.timing[name] for part in parts)
        for name in SUMMED_TIMINGS:
            if any(name in part.timing for part in parts):
                self.timing[name] = sum(part.timing.get(name, 0) for part in parts)
        return [skip for part in parts for skip in part.skips]
