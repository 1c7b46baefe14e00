"""Paper-metrics settings: one dataclass; every field has a CLI flag of the same name (`--swuggy-dir` for
`swuggy_dir`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..scoring.settings import CHUNKED_TEXT_POLICIES, EvaluationSettings, check_at_least_one, check_choice
from .pairs import BENCHMARKS
from .scores import NORMALIZATIONS

STREAMS = ("own", "user")
OTHER_STREAMS = ("zero", "silence")
GOLD_BENCHMARKS = ("swuggy", "sblimp")


@dataclasses.dataclass
class PaperMetricsConfig(EvaluationSettings):
    """What to score and how (see docs/paper_metrics.md).

    A benchmark runs when its folder is given. `<bench>_gold` defaults to `<folder>/gold.csv`; `<bench>_max_pairs` takes
    a random subset of that many pairs, drawn with `seed`. `stream` is where each utterance is placed (`own`: the
    model's stream, scored against its own predictions; `user`: the user stream, the own stream's predictions scored
    against it), `other_stream` what the other audio stream holds (`zero`: no input; `silence`: Mimi codes of digital
    silence); `normalization` picks the score `<bench>_accuracy` compares (`mean` or `sum` log-probability). The fields
    every evaluation has are `EvaluationSettings`'; here the text stream holds the zero token by default, and
    utterances are scored 16 at a time in chunked mode.
    """

    text_policies = CHUNKED_TEXT_POLICIES

    batch_size: int = 16
    mode: str = "chunked"
    text_policy: str = "zero"
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
    normalization: str = "mean"
    zerospeech_submission: str | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        super().validate()
        for name, allowed in (("stream", STREAMS), ("other_stream", OTHER_STREAMS),
                              ("normalization", NORMALIZATIONS)):
            check_choice(name, getattr(self, name), allowed)
        check_at_least_one(self, *(f"{benchmark}_max_pairs" for benchmark in BENCHMARKS))
        for benchmark in GOLD_BENCHMARKS:
            if getattr(self, f"{benchmark}_gold") is not None and getattr(self, f"{benchmark}_dir") is None:
                raise ValueError(f"{benchmark}_gold is given without {benchmark}_dir")
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
