"""The model side of a spoken conversation: 80 ms of the user's audio in, 80 ms of the model's speech and text out.

`ServedModel` owns Mimi and an `LMGen`, both streaming one item for the whole life of the server. Every conversation
starts with `start_conversation()`, which resets every streaming state (Mimi's convolutions and attention caches, the
LM's KV caches, delayed-token cache and TTT fast weights) and reseeds the sampler, so that a conversation never hears
the previous one and the same input gives the same reply. `step(pcm)` then handles one frame.

On a GPU the Mimi encoder and decoder calls are replayed as CUDA graphs, as are the LM's steps (`LMGen` graphs them
itself); `warmup()` runs a few silent frames so that the graphs are captured before the first user arrives. All calls
must come from one thread (the server runs them on its single model thread).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import torch

from ..models import LMGen, MimiModel
from ..utils.compile import CUDAGraphed

DEFAULT_SEED = 42424242
"""The seed every conversation starts from (upstream's server seeds its process with this value)."""

WORD_BOUNDARY = "\u2581"
"""Sentencepiece's marker of a word start, sent to the client as a space."""


class TextTokenizer(Protocol):
    """What the server needs of a text tokenizer (a `sentencepiece.SentencePieceProcessor` is one)."""

    def vocab_size(self) -> int: ...

    def id_to_piece(self, token: int) -> str: ...


@dataclasses.dataclass
class ReplyFrame:
    """One frame of the model's reply: speech `[frame_size]` float32, its text token and the token's text piece (""
    for padding)."""

    pcm: np.ndarray
    text: str
    token: int


class ServedModel:
    """Mimi + `LMGen` + text tokenizer, streaming one conversation at a time, one frame per `step`.

    `seed` None leaves the random generators alone between conversations.
    """

    def __init__(self, mimi: MimiModel, lm_gen: LMGen, tokenizer: TextTokenizer,
                 seed: int | None = DEFAULT_SEED) -> None:
        lm = lm_gen.lm_model
        if tokenizer.vocab_size() < lm.text_card:
            raise ValueError(f"the text tokenizer has {tokenizer.vocab_size()} pieces but the model's text_card is "
                             f"{lm.text_card}: is it the tokenizer of this checkpoint?")
        if mimi.num_codebooks < lm_gen.num_user_streams or mimi.num_codebooks < lm.dep_q:
            raise ValueError(f"Mimi produces {mimi.num_codebooks} codebooks; the model needs "
                             f"{lm_gen.num_user_streams} user and {lm.dep_q} own audio codebooks")
        self.mimi, self.lm_gen, self.tokenizer, self.seed = mimi, lm_gen, tokenizer, seed
        self.device = lm.device
        self.silent_text_tokens = lm.text_padding_ids
        on_gpu = self.device.type == "cuda"
        self._encode = CUDAGraphed(mimi.encode, disable=not on_gpu)
        self._decode = CUDAGraphed(mimi.decode, disable=not on_gpu)
        self._frames_seen = 0
        mimi.streaming_forever(1)
        lm_gen.streaming_forever(1)

    @property
    def sample_rate(self) -> int:
        return self.mimi.sample_rate

    @property
    def frame_size(self) -> int:
        """Samples per frame (1920 at 24 kHz and 12.5 Hz)."""
        return self.mimi.frame_size

    @property
    def frame_seconds(self) -> float:
        return self.frame_size / self.sample_rate

    def start_conversation(self) -> None:
        """Forget everything: every streaming state back to its start, the sampler reseeded."""
        if self.seed is not None:
            torch.manual_seed(self.seed)
        self.mimi.reset_streaming()
        self.lm_gen.reset_streaming()
        self._frames_seen = 0

    @torch.no_grad()
    def step(self, pcm: np.ndarray) -> ReplyFrame | None:
        """Feed one frame of the user's audio `[frame_size]` (float, 24 kHz); returns the model's frame that this step
        completed, or None while the LM's streams are still filling (the first steps of a conversation)."""
        if pcm.shape != (self.frame_size,):
            raise ValueError(f"expected one frame of {self.frame_size} samples, got shape {list(pcm.shape)}")
        audio = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)).to(self.device)[None, None]
        codes = self._encode(audio)
        if self._frames_seen == 0:
            # The first frame is encoded against Mimi's left padding and lies in the model's past: its codes still go
            # to the LM, but Mimi restarts so that the next frame is encoded against fresh padding (as upstream does).
            self.mimi.reset_streaming()
        self._frames_seen += 1
        tokens = self.lm_gen.step(codes[:, :, :1])
        if tokens is None:
            return None
        speech = self._decode(tokens[:, 1:]).float().cpu().numpy()[0, 0]
        token = int(tokens[0, 0, 0])
        return ReplyFrame(speech, self.text_piece(token), token)

    def text_piece(self, token: int) -> str:
        """The text of one text token: "" for padding, word starts as spaces."""
        if token in self.silent_text_tokens:
            return ""
        return self.tokenizer.id_to_piece(token).replace(WORD_BOUNDARY, " ")

    def warmup(self, frames: int = 4) -> None:
        """Run a few silent frames (capturing the CUDA graphs on a GPU), then wait for the device."""
        silence = np.zeros(self.frame_size, dtype=np.float32)
        self.start_conversation()
        for _ in range(frames):
            self.step(silence)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start_conversation()
