"""Turning sequence sources into scoring items: loading pre-encoded codes or encoding audio, and adding the user stream.

A codes file holds `codes` `[K, T]`: K = dep_q is the model's own audio only; K = n_q is own audio (first dep_q rows)
followed by the user stream. Sequences without a given user stream get the configured one: `silence` (Mimi codes of
digital silence) or `zero` (the model's zero token, i.e. no input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..scoring.data import MimiSequenceEncoder, SequenceSource
from ..scoring.errors import DataError
from ..scoring.files import file_identity
from ..scoring.scorer import ModelShape, ScoringItem


def source_identity(source: SequenceSource) -> list[dict[str, Any]]:
    """File identities of what a sequence is made of (used in resume keys)."""
    return [file_identity(path) for path in source.files]


def load_codes_file(path: Path, shape: ModelShape, max_frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Own codes `[dep_q, T]` and user codes `[n_q - dep_q, T]` (or None) from a codes file, checked against the
    model."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if "codes" not in names:
                raise DataError(f"{path}: no 'codes' tensor (found {', '.join(names) or 'nothing'})")
            codes = handle.get_tensor("codes")
    except SafetensorError as error:
        raise DataError(f"{path}: not a readable safetensors file ({error})") from error
    if codes.dim() != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise DataError(f"{path}: 'codes' must be an integer tensor [K, T], got {codes.dtype} {list(codes.shape)}")
    if codes.shape[0] not in (shape.dep_q, shape.n_q):
        raise DataError(f"{path}: 'codes' has {codes.shape[0]} codebooks; the model needs {shape.dep_q} (own audio) "
                        f"or {shape.n_q} (own audio then user stream)")
    if codes.shape[1] == 0:
        raise DataError(f"{path}: 'codes' has no frames")
    codes = codes[:, :max_frames].long()
    own = codes[: shape.dep_q]
    if own.min() < 0 or own.max() >= shape.card:
        raise DataError(f"{path}: own-audio codes must lie in [0, {shape.card}), found [{own.min()}, {own.max()}]")
    if codes.shape[0] == shape.dep_q:
        return own, None
    user = codes[shape.dep_q:]
    valid = ((user >= 0) & (user < shape.card)) | (user == shape.zero_token_id)
    if not bool(valid.all()):
        raise DataError(f"{path}: user-stream codes must lie in [0, {shape.card}) or be the zero token "
                        f"{shape.zero_token_id}")
    return own, user


class ItemPreparer:
    """Builds `ScoringItem`s for sources; needs an encoder for audio sources and for the `silence` user stream."""

    def __init__(self, shape: ModelShape, user_stream: str, max_frames: int,
                 encoder: MimiSequenceEncoder | None) -> None:
        self.shape = shape
        self.user_stream = user_stream
        self.max_frames = max_frames
        self.encoder = encoder

    def own_and_user(self, source: SequenceSource) -> tuple[torch.Tensor, torch.Tensor | None]:
        if source.codes_path is not None:
            return load_codes_file(source.codes_path, self.shape, self.max_frames)
        if self.encoder is None:
            raise ValueError(f"{source.sequence_id}: audio input needs a Mimi model to encode it")
        codes = self.encoder.encode_source(source, self.max_frames)
        if codes.shape[-1] == 0:
            raise DataError(f"{source.sequence_id}: the audio encodes to no frames")
        return codes[: self.shape.dep_q], None

    def add_user_streams(self, items: list[ScoringItem]) -> None:
        """Fill in the configured user stream for items that have none (silence is encoded once, at the longest)."""
        if self.shape.num_user == 0 or self.user_stream != "silence":
            return
        lacking = [item for item in items if item.user is None]
        if not lacking:
            return
        if self.encoder is None:
            raise ValueError("user_stream='silence' needs a Mimi model to encode silence; pass one or use "
                             "user_stream='zero'")
        silence = self.encoder.encode_silence(max(item.num_frames for item in lacking))
        for item in lacking:
            item.user = silence[: self.shape.num_user, : item.num_frames].clone()
