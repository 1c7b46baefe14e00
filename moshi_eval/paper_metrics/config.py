"""Paper-metrics settings: one dataclass; every field has a CLI flag of the same name (`--swuggy-dir` for
`swuggy_dir`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..scoring.settings import CHUNKED_TEXT_POLICIES, CheckedSettings, weights_for_codebooks
from .pairs import BENCHMARKS
from .scores import NORMALIZATIONS

STREAMS = ("own", "user")
OTHER_STREAMS = ("zero", "silence")
SCORING_MODES = ("chunked", "step")
GOLD_BENCHMARKS = ("swuggy", "sblimp")


@dataclasses.dataclass
class PaperMetricsConfig(CheckedSettings):
    """What to score and how (see docs/paper_metrics.md).

    A benchmark runs when its folder is given. `<bench>_gold` defaults to `<folder>/gold.csv`; `<bench>_max_pairs` takes
    a random subset of that many pairs, drawn with `seed`. `stream` is where each utterance is placed (`own`: the
    model's stream, scored against its own predictions; `user`: the user stream, the own stream's predictions scored
    against it), `other_stream` what the other audio stream holds (`zero`: no input; `silence`: Mimi codes of digital
    silence), `text_policy` what the text stream holds. `codebook_weights` weight the tokens of each codebook (equal by
    default); `normalization` picks the score `<bench>_accuracy` compares (`mean` or `sum` log-probability).
    `context` and `rope_max_period` record the attention context and RoPE period the LM was built with when they
    change its function (`--context`, `--rope-max-period`; None: the checkpoint's).
    """

    swuggy_dir: str | None = None
    swuggy_gold: str | None = None
    swuggy_max_pairs: int | None = None
    sblimp_dir: str | None = None
    sblimp_gold: str | None = None
    sblimp_max_pairs: int | None = None
    sstory_dir: str | None = None
    sstory_max_pairs: int | None = None
    tstory_dir: str | None = None
    tstory_max_pairs: int | None = None
    seed: int = 0
    stream: str = "own"
    other_stream: str = "zero"
    text_policy: str = "zero"
    codebook_weights: list[float] | None = None
    normalization: str = "mean"
    mode: str = "chunked"
    chunk_size: int = 1024
    batch_size: int = 16
    cache_dir: str | None = None
    use_cache: bool = True
    encode_chunk_frames: int = 25
    output: str | None = None
    resume: bool = True
    zerospeech_submission: str | None = None
    context: int | None = None
    rope_max_period: float | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        choices = {"stream": STREAMS, "other_stream": OTHER_STREAMS, "text_policy": CHUNKED_TEXT_POLICIES,
                   "normalization": NORMALIZATIONS, "mode": SCORING_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("chunk_size", "batch_size", "encode_chunk_frames"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for benchmark in BENCHMARKS:
            limit = getattr(self, f"{benchmark}_max_pairs")
            if limit is not None and int(limit) < 1:
                raise ValueError(f"{benchmark}_max_pairs must be at least 1, got {limit!r}")
        for benchmark in GOLD_BENCHMARKS:
            if getattr(self, f"{benchmark}_gold") is not None and getattr(self, f"{benchmark}_dir") is None:
                raise ValueError(f"{benchmark}_gold is given without {benchmark}_dir")
        weights = self.codebook_weights
        if weights is not None and (any(weight < 0 for weight in weights) or sum(weights) <= 0):
            raise ValueError(f"codebook_weights must be non-negative with a positive sum, got {weights}")
        if self.zerospeech_submission is not None:
            for benchmark in GOLD_BENCHMARKS:
                if getattr(self, f"{benchmark}_max_pairs") is not None:
                    raise ValueError(f"zerospeech_submission needs every file of the split: drop {benchmark}_max_pairs")

    @property
    def benchmarks(self) -> list[str]:
        """The benchmarks to run, in the order of `BENCHMARKS`."""
        return [benchmark for benchmark in BENCHMARKS if getattr(self, f"{benchmark}_dir") is not None]

    def gold_file(self, benchmark: str) -> Path:
        given = getattr(self, f"{benchmark}_gold")
        return Path(given) if given is not None else Path(getattr(self, f"{benchmark}_dir")) / "gold.csv"

    def resolved_codebook_weights(self, num_codebooks: int) -> list[float] | None:
        """The weights, checked against the number of scored codebooks (None: equal weights)."""
        return weights_for_codebooks(self.codebook_weights, num_codebooks)
