"""One run of an evaluation: what it keeps, resumes, shares between ranks, and the lock on its output.

- `EvaluationRun` holds one evaluation's finished records (`SequenceLosses` by id), its counters and timings, and the
  `SequenceStore` that keeps records for resuming; it resumes from the store, encodes with the codes cache, scores
  with a progress bar and gathers the ranks' records under torchrun. Each benchmark subclasses it with what it scores
  (`Entry`: a sequence source, an utterance), how an entry is identified in the store (`identify`), and its own data,
  results and report.
- `SequenceLosses`: the scores of one sequence, per-frame and per-codebook cross-entropy, and their weighted means.
- `SequenceStore`: each finished sequence is written as it completes to `<output stem>.sequences/<key>.safetensors`
  (per-frame, per-codebook losses `[T, dep_q]` plus its id and files in the metadata), atomically. What a record is
  made from is the run key (a digest of the model fingerprint and every setting that changes the losses), the
  sequence's id and its source files' identities; its file name digests them, so a record is looked up only by a run
  that would compute exactly the same thing. Records are checked when read (`files.read_checked`: their checksum, what
  they were made from, losses that are cross-entropies of `dep_q` codebooks); one that fails is reported in one line
  and scored again.
- Ranks under `torchrun`: rank r scores sequences r, r + N, r + 2N, ...; every rank then publishes what it finished
  (`RankReport`: safetensors with one `[T, dep_q]` loss array per sequence and everything else as a JSON text in a
  `uint8` tensor; no pickle travels between ranks) through the launcher's key-value store, reads every other rank's,
  and sorting by sequence id gives exactly what one process computes. No collective backend (gloo, NCCL) is started:
  the only traffic is one small report per rank, sent once, and ranks can finish hours apart on real chapters, longer
  than a collective's default timeout of 30 minutes; the store's `wait` takes an explicit deadline instead.
- One run per output: a lock file next to the results (`results.json.lock`) names the process that writes them (its
  pid, host, process start time and start date). It is created atomically (a hard link of a complete file: no reader
  sees it half-written) and removed when the run ends, also on an error or Ctrl-C. A second run on the same output
  stops with `OutputLockedError` naming the holder. A lock whose process is gone (killed, the machine rebooted: same
  host, no process with that pid and start time) is taken over with a note. A holder on another host cannot be checked
  from here: that lock is honoured, and the message says which file to delete if that run is gone. A process takes a
  lock once and may take it again (`OutputLock` counts); under torchrun only the main rank takes it. Command lines
  claim the lock before loading the model (`claim_output`) and hold it until the command ends (`release_claims`); the
  Python API holds it around each evaluation (`output_lock`).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch
from safetensors.torch import load, save

from moshi.utils.files import folder_problem

from .data import CodesCache, MimiSequenceEncoder, Skip, default_cache_dir
from .errors import ConfigError, FileNoteWarning, OutputLockedError
from .files import digest, read_checked, write_checked
from .model import check_long_context, model_identity
from .scorer import ChunkedScorer, ModelShape, ScoringItem, SequenceCallback, StepScorer
from .settings import EvaluationSettings

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

Entry = TypeVar("Entry")
SLOWEST_RANK_TIMINGS = ("encode_seconds", "score_seconds")
SUMMED_TIMINGS = ("codes_cache_hits", "codes_cache_misses", "scorer_calls")
RECORD_FORMAT = 2  # 2: records carry what they were made from and a checksum
GATHER_TIMEOUT = datetime.timedelta(days=7)
KEY_PREFIX = "moshi_eval.scoring"
LOCK_SUFFIX = ".lock"
UNREADABLE = -1  # the pid of a lock file that cannot be read: none of ours (they are written whole), taken over


class EvaluationRun(abc.ABC, Generic[Entry]):
    """One evaluation of `lm`: finished records, counters, timings, and the steps every evaluation shares.

    `name` prefixes the log lines (`[name] ...`), `unit` names an entry in them (`sequence`, `utterance`). Progress
    (log lines and bars on stderr) shows on the main rank only, when `progress` is set.
    """

    def __init__(self, name: str, unit: str, lm: LMModel, mimi: MimiModel | None, config: EvaluationSettings,
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


# -- records --------------------------------------------------------------------------------------------------------


def defined_codebook_losses(codebook_losses: np.ndarray, weights: Sequence[float] | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What every weighted mean of the losses `[T, K]` starts from: the losses (float64) with the undefined (NaN) ones
    set to 0, the mask `[T, K]` of the defined ones, and the codebook weights `[K]` (1 each when None; ValueError unless
    there is one per codebook)."""
    losses = np.asarray(codebook_losses, dtype=np.float64)
    w = np.ones(losses.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (losses.shape[1],):
        raise ValueError(f"codebook_weights has {w.shape[0]} values but the losses have {losses.shape[1]} codebooks")
    defined = np.isfinite(losses)
    return np.where(defined, losses, 0.0), defined, w


def frame_losses(codebook_losses: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Per-frame loss `[T]`: weighted mean over the defined codebooks of `[T, K]` (NaN when none is defined)."""
    losses, defined, w = defined_codebook_losses(codebook_losses, weights)
    total_weight = (defined * w).sum(axis=1)
    weighted = losses @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total_weight > 0, weighted / np.where(total_weight > 0, total_weight, 1.0), np.nan)


@dataclasses.dataclass
class SequenceLosses:
    """One scored sequence: per-frame, per-codebook cross-entropy `[T, dep_q]` (NaN where undefined)."""

    sequence_id: str
    codebook_losses: np.ndarray
    files: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.codebook_losses.shape[0])

    def frame_losses(self, weights: list[float] | None = None) -> np.ndarray:
        return frame_losses(self.codebook_losses, weights)


def uniform_loss(card: int) -> float:
    """Cross-entropy of a uniform guess over `card` tokens: ln(card) nats."""
    return math.log(card)


def above_uniform_flags(window_losses: dict[str, float | None], card: int) -> list[str]:
    """Messages for every window loss above ln(card), i.e. worse than guessing uniformly."""
    limit = uniform_loss(card)
    return [f"{name} = {loss:.4f} is above ln(card) = {limit:.4f}: worse than uniform guessing over {card} tokens"
            for name, loss in window_losses.items() if loss is not None and loss > limit]


# -- resuming -------------------------------------------------------------------------------------------------------


def store_dir_for(output: str | Path) -> Path:
    """`results.json` -> `results.sequences/`."""
    output = Path(output)
    return output.with_name(f"{output.stem}.sequences")


def losses_problem(losses: torch.Tensor, num_codebooks: int) -> str | None:
    """What makes `losses` unusable as per-frame, per-codebook cross-entropies `[T, num_codebooks]`, or None."""
    if losses.dtype != torch.float32 or losses.dim() != 2 or losses.shape[1] != num_codebooks or not losses.shape[0]:
        return f"holds {losses.dtype} losses {list(losses.shape)}, not float32 [T, {num_codebooks}]"
    defined = losses[~losses.isnan()]
    if bool((defined < 0).any()) or not bool(defined.isfinite().all()):
        return "holds losses that are no cross-entropies (negative or infinite)"
    return None


class SequenceStore:
    """`load(sequence_id, source)` / `save(source, sequence)` of finished sequences in `directory`, for one `run_key`
    and a model of `num_codebooks` scored codebooks."""

    def __init__(self, directory: Path | str, run_key: str, num_codebooks: int) -> None:
        self.directory = Path(directory)
        self.run_key = run_key
        self.num_codebooks = num_codebooks

    def made_from(self, sequence_id: str, source_identity: Any) -> dict[str, Any]:
        return {"run": self.run_key, "sequence": sequence_id, "source": source_identity, "format": RECORD_FORMAT}

    def path_for(self, sequence_id: str, source_identity: Any) -> Path:
        key = digest(self.made_from(sequence_id, source_identity), length=32)
        return self.directory / f"{key}.safetensors"

    def load(self, sequence_id: str, source_identity: Any) -> SequenceLosses | None:
        """The record of this sequence read from these sources, or None when absent or failing its checks
        (reported)."""
        entry = read_checked(self.path_for(sequence_id, source_identity), "codebook_losses",
                             self.made_from(sequence_id, source_identity), f"resume record of {sequence_id}",
                             "scoring it again", lambda losses: losses_problem(losses, self.num_codebooks))
        if entry is None:
            return None
        losses, metadata = entry
        return SequenceLosses(sequence_id, losses.numpy(), json.loads(metadata.get("files", "[]")))

    def save(self, source_identity: Any, sequence: SequenceLosses) -> None:
        write_checked(self.path_for(sequence.sequence_id, source_identity), "codebook_losses",
                      torch.from_numpy(sequence.codebook_losses), self.made_from(sequence.sequence_id, source_identity),
                      {"sequence_id": sequence.sequence_id, "files": json.dumps(sequence.files)})

def check_records_folder(output: str | Path, flag: str) -> None:
    """The folder of resume records next to `output` (`<stem>.sequences/`) is, or can be created as, a writable
    directory: found before the first record is scored, not after."""
    records = store_dir_for(output)
    problem = folder_problem(records)
    if problem is not None:
        raise ConfigError(f"{flag} {output}: its resume records folder {records}: {problem}; make it writable or turn "
                          "resuming off (--no-resume)")


# -- ranks ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """This process's place among the ranks; `store` is shared by all ranks (None in a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    store: torch.distributed.Store | None = None
    rounds: Iterator[int] = dataclasses.field(default_factory=itertools.count, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank:: self.world_size]

    def all_gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's `payload`, in rank order. Every rank must call it the same number of times."""
        if not self.enabled:
            return [payload]
        round_key = f"gather{next(self.rounds)}"
        self.store.set(f"{round_key}/{self.rank}", payload)
        keys = [f"{round_key}/{rank}" for rank in range(self.world_size)]
        self.store.wait(keys, GATHER_TIMEOUT)
        parts = [bytes(self.store.get(key)) for key in keys]
        self._meet(f"{round_key}/read")
        return parts

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.enabled:
            self._meet(f"barrier{next(self.rounds)}")

    def _meet(self, key: str) -> None:
        if self.store.add(f"{key}/arrived", 1) == self.world_size:
            self.store.set(f"{key}/all", b"1")
        self.store.wait([f"{key}/all"], GATHER_TIMEOUT)


_context: DistributedContext | None = None


def init_distributed() -> DistributedContext:
    """The context from torchrun's environment variables (the same object on every call until `shutdown_distributed`).

    With several ranks it connects to the launcher's store (torchrun's agent store, or one hosted by rank 0 when the
    launcher only sets MASTER_ADDR/MASTER_PORT), under a prefix that is new for each run and restart.
    """
    global _context
    if _context is None:
        _context = _context_from_environment()
    return _context


def _context_from_environment() -> DistributedContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    store, _, _ = next(torch.distributed.rendezvous("env://"))
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = torch.distributed.PrefixStore(f"{KEY_PREFIX}/{run}/{attempt}", store)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, store=prefixed)


def shutdown_distributed() -> None:
    """Forget the context: every rank has read what it needs once `all_gather_bytes` or `barrier` returned."""
    global _context
    _context = None


@dataclasses.dataclass
class RankReport:
    finished: dict[str, SequenceLosses]
    skips: list[Skip]
    scored_frames: int
    resumed: int
    timing: dict[str, float]

    def to_bytes(self) -> bytes:
        sequences = list(self.finished.values())
        tensors = {f"losses{index}": torch.from_numpy(sequence.codebook_losses).contiguous()
                   for index, sequence in enumerate(sequences)}
        summary = {
            "sequences": [{"id": sequence.sequence_id, "files": sequence.files} for sequence in sequences],
            "skips": [skip.to_dict() for skip in self.skips],
            "scored_frames": self.scored_frames,
            "resumed": self.resumed,
            "timing": self.timing,
        }
        tensors["summary"] = torch.frombuffer(bytearray(json.dumps(summary).encode()), dtype=torch.uint8)
        return save(tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> RankReport:
        tensors = load(data)
        summary: dict[str, Any] = json.loads(tensors["summary"].numpy().tobytes())
        finished = {}
        for index, entry in enumerate(summary["sequences"]):
            finished[entry["id"]] = SequenceLosses(entry["id"], tensors[f"losses{index}"].numpy(), entry["files"])
        return cls(finished=finished, skips=[Skip(**skip) for skip in summary["skips"]],
                   scored_frames=summary["scored_frames"], resumed=summary["resumed"], timing=summary["timing"])


# -- one run per output ---------------------------------------------------------------------------------------------


def lock_path_for(output: str | Path) -> Path:
    """`results.json` -> `results.json.lock`."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where that cannot be read: with its pid
    it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """The process a lock file names."""

    pid: int
    host: str
    started: str | None
    since: str
    command: str

    @classmethod
    def this_process(cls) -> LockHolder:
        return cls(os.getpid(), socket.gethostname(), process_start(os.getpid()),
                   datetime.datetime.now().astimezone().isoformat(timespec="seconds"), " ".join(sys.argv))

    @classmethod
    def read(cls, path: Path) -> LockHolder | None:
        """The holder a lock file names; None when it is gone or cannot be read as a lock."""
        try:
            fields = json.loads(path.read_text())
            return cls(int(fields["pid"]), str(fields["host"]), fields.get("started"), str(fields["since"]),
                       str(fields.get("command", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return cls(UNREADABLE, socket.gethostname(), None, "", "")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"

    def describe(self) -> str:
        if self.pid == UNREADABLE:
            return "an unreadable lock file"
        return f"pid {self.pid} on {self.host} since {self.since}"

    def is_running(self) -> bool:
        """Whether the process may still run: always on another host (it cannot be checked from here)."""
        if self.host != socket.gethostname():
            return True
        if self.pid in (UNREADABLE, os.getpid()):  # a lock naming this process that it does not hold: a leftover
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = process_start(self.pid)
        return self.started is None or started is None or started == self.started


_held: dict[Path, OutputLock] = {}


class OutputLock:
    """The lock of one output file; `acquire` may be called again by the holder (each call needs a `release`)."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = lock_path_for(output).absolute()
        self.count = 0

    @classmethod
    def of(cls, output: str | Path) -> OutputLock:
        """This process's lock of `output` (the same object on every call while it is held)."""
        path = lock_path_for(output).absolute()
        return _held.get(path) or cls(output)

    def acquire(self) -> None:
        if self.count == 0:
            self.create()
            _held[self.path] = self
        self.count += 1

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _held.pop(self.path, None)
        holder = LockHolder.read(self.path)
        if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def create(self) -> None:
        """Write the lock file, taking over a stale one; OutputLockedError when a running process holds it."""
        mine = LockHolder.this_process()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self.link(mine):
            holder = LockHolder.read(self.path)
            if holder is None:
                continue
            if holder.is_running():
                raise OutputLockedError(self.locked_message(holder))
            self.take_over(holder)

    def locked_message(self, holder: LockHolder) -> str:
        elsewhere = holder.host != socket.gethostname()
        return (f"{self.output} is being written by another run ({holder.describe()}); wait for it to end or choose "
                f"another output (lock file {self.path}"
                + ("; that host cannot be checked from here: delete the lock file if that run is gone)" if elsewhere
                   else ")"))

    def link(self, holder: LockHolder) -> bool:
        """Create the lock file with `holder` in it at once; False when a lock file is already there."""
        temporary = self.path.with_name(f".{self.path.name}.{holder.pid}.tmp")
        temporary.write_text(holder.to_json())
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create it exclusively, then fill it in
            return self.create_exclusive(holder)
        finally:
            temporary.unlink(missing_ok=True)

    def create_exclusive(self, holder: LockHolder) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as file:
            file.write(holder.to_json())
        return True

    def take_over(self, stale: LockHolder) -> None:
        """Remove a lock whose process is gone, unless another run replaced it meanwhile."""
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if LockHolder.read(aside) != stale:
            os.rename(aside, self.path)
            return
        aside.unlink()
        warnings.warn(f"{self.path}: taking over the lock of a run that is gone ({stale.describe()})", FileNoteWarning,
                      stacklevel=2)


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a process on its own."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def output_lock(output: str | Path | None) -> Iterator[None]:
    """Hold the lock of `output` for the block (nothing when there is no output, or on ranks other than the main)."""
    if output is None or not is_main_process():
        yield
        return
    lock = OutputLock.of(output)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


_claims: list[OutputLock] = []


def claim_output(output: str | Path | None) -> None:
    """Take the lock of `output` until `release_claims` (a command line, before it loads the model); nothing when there
    is no output, or on ranks other than the main."""
    if output is None or not is_main_process():
        return
    lock = OutputLock.of(output)
    lock.acquire()
    _claims.append(lock)


def release_claims() -> None:
    """Release the locks `claim_output` took."""
    while _claims:
        _claims.pop().release()
