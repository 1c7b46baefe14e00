"""What an evaluation reads: sequences of audio files (or pre-encoded codes), read in bounded memory and encoded with
Mimi through a shared codes cache.

- `SequenceSource` is one scored sequence (audio chapters joined in order, or one codes file); `Skip` records an input
  left out and why; `SkipCollector` gathers them (or, in strict mode, raises `DataError` on the first).
- Audio is read block by block with soundfile, mixed down to mono and resampled with a streaming soxr resampler. The
  output of a file of `n` samples at `sr` Hz has exactly `round(n * target_rate / sr)` samples (the resampler's own
  count is trimmed or zero-padded by at most a few samples), so durations add up exactly when chapters are joined.
- `MimiSequenceEncoder` feeds the joined chapters through one Mimi stream in chunks of `chunk_frames` whole frames
  (flat memory on hour-long chapters); the last partial frame is zero-padded, so a sequence of N samples gives
  ceil(N / frame_size) frames. Digital silence (the default user stream) is encoded the same way; Mimi is causal, so
  the silence codes of a short sequence are a prefix of those of a long one and one cached entry serves every length.
- `CodesCache` is a folder of Mimi codes in safetensors files, each filed under a digest of what it is made from (the
  source files' identities, the Mimi weights fingerprint, the number of codebooks, the encoding version): the same
  audio is encoded once and reused by every run and every LM checkpoint. An entry may hold only the first frames of a
  long sequence (`complete` false): it serves any request for at most that many frames. Entries are checked when read
  (`files.read_checked`: their checksum, what they were made from, codes within the card); one that fails is reported
  in one line and encoded again. Entries are written atomically, so concurrent runs never see half-written ones. A
  cache that cannot be written (a colleague's read-only cache, a full disk) is still read: new codes are then not
  stored, with one note.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import DataError, FileNoteWarning
from .files import digest, file_identity, read_checked, weights_fingerprint, write_checked

if TYPE_CHECKING:
    from moshi.models.compression import MimiModel

READ_BLOCK_SECONDS = 10.0
UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)  # written by streaming encoders that could not seek back to fill the size in
ENCODING_VERSION = 2  # 2: entries carry what they were made from and a checksum
DEFAULT_CACHE_ENV = "MOSHI_EVAL_CACHE"
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


@dataclasses.dataclass(frozen=True)
class Chapter:
    """One audio file of a sequence, with its duration read from the header and the metadata beside it (if any)."""

    path: Path
    num_samples: int
    sample_rate: int
    metadata: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


@dataclasses.dataclass(frozen=True)
class SequenceSource:
    """One evaluated sequence: either audio chapters joined in order or one pre-encoded codes file."""

    sequence_id: str
    chapters: tuple[Chapter, ...] = ()
    codes_path: Path | None = None

    @property
    def duration(self) -> float:
        return sum(chapter.duration for chapter in self.chapters)

    @property
    def files(self) -> list[str]:
        if self.codes_path is not None:
            return [str(self.codes_path)]
        return [str(chapter.path) for chapter in self.chapters]


@dataclasses.dataclass(frozen=True)
class Skip:
    """Something left out of the evaluation, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class SkipCollector:
    """Collects skips; in strict mode the first skip raises DataError instead."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skipped: list[Skip] = []

    def skip(self, path: Path | str, reason: str) -> None:
        if self.strict:
            raise DataError(f"{path}: {reason} (strict mode turns skipped inputs into errors)")
        self.skipped.append(Skip(str(path), reason))


def read_audio_header(path: Path) -> Chapter:
    """The file's length and sample rate from its header; DataError naming the file when it is unreadable, empty, or
    a WAV file cut short (libsndfile would silently read what is left)."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception as error:  # libsndfile raises its own error types for every unreadable file
        raise DataError(f"{path}: not a readable audio file ({error})") from error
    if info.frames <= 0:
        raise DataError(f"{path}: audio file holds no samples")
    if info.format == "WAV":
        check_wav_data_size(path)
    return Chapter(path=path, num_samples=int(info.frames), sample_rate=int(info.samplerate))


def check_wav_data_size(path: Path) -> None:
    """DataError when the `data` chunk of a RIFF/WAVE file announces more bytes than the file holds."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(12)[8:12] != b"WAVE":
            return
        block_align = 0
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return
            chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk == b"fmt ":
                block_align = struct.unpack("<H", handle.read(16)[12:14])[0]
                handle.seek(length - 16 + length % 2, 1)
            elif chunk == b"data":
                break
            else:
                handle.seek(length + length % 2, 1)
        held = size - handle.tell()
    if length in UNKNOWN_WAV_SIZES or length <= held or not block_align:
        return
    raise DataError(f"{path}: truncated audio, the header announces {length // block_align} samples but the file "
                    f"holds {held // block_align}")


def resampled_length(num_samples: int, sample_rate: int, target_rate: int) -> int:
    """Number of samples of a `num_samples`-long signal once resampled from `sample_rate` to `target_rate`."""
    return round(num_samples * target_rate / sample_rate)


def read_blocks(path: Path, block_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Mono float32 blocks `[n]` of the file and its sample rate; DataError for unreadable or truncated files."""
    import soundfile

    try:
        info = soundfile.info(str(path))
        expected = int(info.frames)
        read = 0
        for block in soundfile.blocks(str(path), blocksize=block_size, dtype="float32", always_2d=True):
            read += block.shape[0]
            yield block.mean(axis=1, dtype=np.float32), int(info.samplerate)
    except DataError:
        raise
    except Exception as error:  # libsndfile reports corrupt data with its own error types
        raise DataError(f"{path}: cannot decode audio, the file is truncated or corrupt ({error})") from error
    if read != expected:
        raise DataError(f"{path}: truncated audio, the header announces {expected} samples but {read} could be read")


def iter_resampled(path: Path, target_rate: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of `path` at `target_rate`, exactly `round(n * target_rate / sr)` samples in total."""
    import soundfile
    import soxr

    try:
        info = soundfile.info(str(path))
    except Exception as error:
        raise DataError(f"{path}: not a readable audio file ({error})") from error
    source_rate = int(info.samplerate)
    target_total = resampled_length(int(info.frames), source_rate, target_rate)
    block_size = max(1, int(READ_BLOCK_SECONDS * source_rate))
    emitted = 0

    def bounded(chunk: np.ndarray) -> np.ndarray:
        nonlocal emitted
        chunk = chunk[: max(0, target_total - emitted)]
        emitted += chunk.shape[0]
        return chunk

    if source_rate == target_rate:
        for block, _ in read_blocks(path, block_size):
            yield bounded(block)
    else:
        resampler = soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")
        for block, _ in read_blocks(path, block_size):
            out = bounded(resampler.resample_chunk(block, last=False))
            if out.size:
                yield out
        out = bounded(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        if out.size:
            yield out
    if emitted < target_total:
        yield np.zeros(target_total - emitted, dtype=np.float32)


def read_resampled(path: Path, target_rate: int) -> np.ndarray:
    """The whole file as one mono float32 array `[N]` at `target_rate` (for tests and short files)."""
    blocks = list(iter_resampled(path, target_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def iter_joined(paths: list[Path], target_rate: int) -> Iterator[np.ndarray]:
    """The files one after the other, each resampled to exact length, as a single stream of blocks."""
    for path in paths:
        yield from iter_resampled(path, target_rate)


class FrameChunker:
    """Regroups blocks of any size into chunks of exactly `chunk_size` samples; the last one is zero-padded."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.pending: list[np.ndarray] = []
        self.pending_size = 0

    def push(self, block: np.ndarray) -> Iterator[np.ndarray]:
        self.pending.append(block)
        self.pending_size += block.shape[0]
        while self.pending_size >= self.chunk_size:
            joined = np.concatenate(self.pending)
            yield joined[: self.chunk_size]
            rest = joined[self.chunk_size:]
            self.pending = [rest]
            self.pending_size = rest.shape[0]

    def flush(self, multiple: int) -> np.ndarray | None:
        """What is left, zero-padded up to a multiple of `multiple` samples; None when nothing is left."""
        if self.pending_size == 0:
            return None
        joined = np.concatenate(self.pending)
        padded = -(-joined.shape[0] // multiple) * multiple
        self.pending, self.pending_size = [], 0
        return np.pad(joined, (0, padded - joined.shape[0]))


def default_cache_dir() -> Path:
    """`$MOSHI_EVAL_CACHE`, else `moshi_eval/codes` in the user's cache folder (`$XDG_CACHE_HOME`, `~/.cache`)."""
    if os.environ.get(DEFAULT_CACHE_ENV):
        return Path(os.environ[DEFAULT_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moshi_eval" / "codes"


def codes_problem(codes: torch.Tensor, num_codebooks: int, card: int) -> str | None:
    """What makes `codes` unusable as `[num_codebooks, T]` codes of a codec with `card` values, or None."""
    if codes.dtype != torch.long or codes.dim() != 2 or codes.shape[0] != num_codebooks:
        return f"holds {codes.dtype} codes {list(codes.shape)}, not int64 [{num_codebooks}, T]"
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= card):
        return f"holds codes outside [0, {card}) (found [{int(codes.min())}, {int(codes.max())}])"
    return None


class CodesCache:
    """`get(made_from, ...)` / `put(made_from, codes, complete)` over checked safetensors files in `directory`."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self.writable = True

    def path_for(self, made_from: dict[str, Any]) -> Path:
        return self.directory / f"{digest(made_from, length=32)}.safetensors"

    def get(self, made_from: dict[str, Any], min_frames: int, num_codebooks: int, card: int,
            label: str) -> torch.Tensor | None:
        """Cached codes `[num_codebooks, T]` (cut to `min_frames` when longer), or None when absent, too short or
        failing its checks (reported); `label` names the sequence in the report."""
        entry = read_checked(self.path_for(made_from), "codes", made_from, f"codes cache entry of {label}",
                             "encoding it again", lambda codes: codes_problem(codes, num_codebooks, card))
        if entry is None:
            self.misses += 1
            return None
        codes, metadata = entry
        complete = metadata.get("complete") == "true"
        if codes.shape[-1] < min_frames and not complete:
            self.misses += 1
            return None
        self.hits += 1
        return codes[..., :min_frames]

    def put(self, made_from: dict[str, Any], codes: torch.Tensor, complete: bool, label: str = "") -> None:
        """Store `codes` (`complete`: the whole source, not only its first frames); a cache that cannot be written is
        noted once and left as it is."""
        if not self.writable:
            return
        metadata = {"complete": "true" if complete else "false", "description": label}
        try:
            write_checked(self.path_for(made_from), "codes", codes, made_from, metadata)
        except OSError as error:
            if error.errno not in UNWRITABLE:
                raise
            self.writable = False
            warnings.warn(f"{self.directory}: the codes cache cannot be written ({os.strerror(error.errno)}); it is "
                          "still read, but codes encoded by this run are not stored", FileNoteWarning, stacklevel=2)


class MimiSequenceEncoder:
    """Encodes `SequenceSource`s and silence into codes `[num_codebooks, T]` (int64, CPU), using `cache` when given."""

    def __init__(self, mimi: MimiModel, num_codebooks: int, cache: CodesCache | None = None,
                 chunk_frames: int = 25) -> None:
        self.mimi = mimi
        self.num_codebooks = num_codebooks
        self.cache = cache
        self.chunk_frames = chunk_frames
        self.frame_size = int(mimi.frame_size)
        self.sample_rate = int(mimi.sample_rate)
        self.card = int(mimi.cardinality)
        self.device = next(iter(mimi.parameters())).device
        self.mimi_fingerprint = weights_fingerprint(mimi)

    def made_from(self, kind: str, identity: Any) -> dict[str, Any]:
        """What codes of this encoder depend on: the cache files them under it and checks it when reading them."""
        return {"kind": kind, "identity": identity, "mimi": self.mimi_fingerprint,
                "num_codebooks": self.num_codebooks, "version": ENCODING_VERSION}

    def encode_source(self, source: SequenceSource, max_frames: int) -> torch.Tensor:
        """Codes `[K, T]` of the source's chapters joined in order, T <= max_frames."""
        made_from = self.made_from("audio", [file_identity(chapter.path) for chapter in source.chapters])
        blocks = iter_joined([chapter.path for chapter in source.chapters], self.sample_rate)
        return self.encode_cached(made_from, blocks, max_frames, label=source.sequence_id)

    def encode_silence(self, num_frames: int) -> torch.Tensor:
        """Codes `[K, num_frames]` of digital silence."""
        blocks = silence_blocks(num_frames * self.frame_size)
        return self.encode_cached(self.made_from("silence", None), blocks, num_frames, "silence", endless=True)

    def encode_cached(self, made_from: dict[str, Any], blocks: Iterator[np.ndarray], max_frames: int, label: str,
                      endless: bool = False) -> torch.Tensor:
        """Codes from the cache, or encoded and stored; an `endless` signal (silence) is never marked complete."""
        if self.cache is not None:
            cached = self.cache.get(made_from, max_frames, self.num_codebooks, self.card, label)
            if cached is not None:
                return cached
        codes, complete = self.encode_blocks(blocks, max_frames)
        if self.cache is not None:
            self.cache.put(made_from, codes, complete=complete and not endless, label=label)
        return codes

    @torch.no_grad()
    def encode_blocks(self, blocks: Iterator[np.ndarray], max_frames: int) -> tuple[torch.Tensor, bool]:
        """Codes of a block stream, stopping once `max_frames` frames are encoded; also whether the stream ended."""
        chunker = FrameChunker(self.chunk_frames * self.frame_size)
        pieces: list[torch.Tensor] = []
        frames = 0
        with self.codebooks_set(), self.mimi.streaming(1):
            for block in blocks:
                for chunk in chunker.push(block):
                    pieces.append(self.encode_chunk(chunk))
                    frames += pieces[-1].shape[-1]
                    if frames >= max_frames:
                        return torch.cat(pieces, dim=-1)[:, :max_frames], False
            tail = chunker.flush(self.frame_size)
            if tail is not None:
                pieces.append(self.encode_chunk(tail))
        if not pieces:
            return torch.zeros(self.num_codebooks, 0, dtype=torch.long), True
        return torch.cat(pieces, dim=-1)[:, :max_frames], True

    def encode_chunk(self, chunk: np.ndarray) -> torch.Tensor:
        wav = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(self.device)[None, None]
        codes = self.mimi.encode(wav)
        return codes[0, : self.num_codebooks].to(device="cpu", dtype=torch.long)

    @contextlib.contextmanager
    def codebooks_set(self) -> Iterator[None]:
        """Make Mimi emit at least `num_codebooks` codebooks for the duration of an encoding, then restore it."""
        previous = int(self.mimi.num_codebooks)
        if previous < self.num_codebooks:
            self.mimi.set_num_codebooks(self.num_codebooks)
        try:
            yield
        finally:
            if previous < self.num_codebooks:
                self.mimi.set_num_codebooks(previous)


def silence_blocks(num_samples: int, block_size: int = 240000) -> Iterator[np.ndarray]:
    for start in range(0, num_samples, block_size):
        yield np.zeros(min(block_size, num_samples - start), dtype=np.float32)
