"""Mimi encoding of sequences in streaming chunks (flat memory on hour-long chapters), through the codes cache.

Chapters are resampled to the codec rate and fed, joined, through one Mimi stream in chunks of `chunk_frames` whole
frames; the last partial frame is zero-padded, so a sequence of N samples gives ceil(N / frame_size) frames. Digital
silence (the default user stream) is encoded the same way; Mimi is causal, so the silence codes of a short sequence are
a prefix of those of a long one and one cached entry serves every length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .audio import FrameChunker, iter_joined
from .codes_cache import CodesCache
from .fingerprint import digest, file_identity, weights_fingerprint
from .sources import SequenceSource

ENCODING_VERSION = 1


class MimiSequenceEncoder:
    """Encodes `SequenceSource`s and silence into codes `[num_codebooks, T]` (int64, CPU), using `cache` when given."""

    def __init__(self, mimi: Any, num_codebooks: int, cache: CodesCache | None = None, chunk_frames: int = 25) -> None:
        self.mimi = mimi
        self.num_codebooks = num_codebooks
        self.cache = cache
        self.chunk_frames = chunk_frames
        self.frame_size = int(mimi.frame_size)
        self.sample_rate = int(mimi.sample_rate)
        self.device = next(iter(mimi.parameters())).device
        self.mimi_fingerprint = weights_fingerprint(mimi)

    def cache_key(self, kind: str, identity: Any) -> str:
        return digest({"kind": kind, "identity": identity, "mimi": self.mimi_fingerprint,
                       "num_codebooks": self.num_codebooks, "version": ENCODING_VERSION}, length=32)

    def encode_source(self, source: SequenceSource, max_frames: int) -> torch.Tensor:
        """Codes `[K, T]` of the source's chapters joined in order, T <= max_frames."""
        identity = [file_identity(chapter.path) for chapter in source.chapters]
        key = self.cache_key("audio", identity)
        blocks = iter_joined([chapter.path for chapter in source.chapters], self.sample_rate)
        return self.encode_cached(key, blocks, max_frames, description=source.sequence_id)

    def encode_silence(self, num_frames: int) -> torch.Tensor:
        """Codes `[K, num_frames]` of digital silence."""
        key = self.cache_key("silence", None)
        blocks = silence_blocks(num_frames * self.frame_size)
        return self.encode_cached(key, blocks, num_frames, "silence", endless=True)

    def encode_cached(self, key: str, blocks: Iterator[np.ndarray], max_frames: int, description: str,
                      endless: bool = False) -> torch.Tensor:
        """Codes from the cache, or encoded and stored; an `endless` signal (silence) is never marked complete."""
        if self.cache is not None:
            cached = self.cache.get(key, max_frames)
            if cached is not None:
                return cached
        codes, complete = self.encode_blocks(blocks, max_frames)
        if self.cache is not None:
            self.cache.put(key, codes, complete=complete and not endless, description=description)
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
