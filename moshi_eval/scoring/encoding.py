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

from .codes_cache import CodesCache
from .data import FrameChunker, iter_joined
from .fingerprint import file_identity, weights_fingerprint
from .sources import SequenceSource

ENCODING_VERSION = 2  # 2: entries carry what they were made from and a checksum


class MimiSequenceEncoder:
    """Encodes `SequenceSource`s and silence into codes `[num_codebooks, T]` (int64, CPU), using `cache` when given."""

    def __init__(self, mimi: Any, num_codebooks: int, cache: CodesCache | None = None, chunk_frames: int = 25) -> None:
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
