"""Reading audio as mono float32 blocks at the codec's sample rate, in bounded memory.

Files are read block by block with soundfile, mixed down to mono and resampled with a streaming soxr resampler. The
output of a file of `n` samples at `sr` Hz has exactly `round(n * target_rate / sr)` samples (the resampler's own count
is trimmed or zero-padded by at most a few samples), so durations add up exactly when chapters are joined.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .sources import Chapter, DataError

READ_BLOCK_SECONDS = 10.0
UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)  # written by streaming encoders that could not seek back to fill the size in


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
