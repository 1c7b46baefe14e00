"""The benchmarks a configuration names, read from disk, with their pairs selected."""

from __future__ import annotations

from pathlib import Path

from .config import PaperMetricsConfig
from .pairs import BenchmarkSet, select_pairs
from .storycloze import story_pairs
from .zerospeech import SBLIMP, SWUGGY, gold_pairs

GOLD_LAYOUTS = {"swuggy": SWUGGY, "sblimp": SBLIMP}


def load_benchmark(config: PaperMetricsConfig, name: str) -> BenchmarkSet:
    """Every pair of benchmark `name`, and the selection of them the configuration asks for."""
    directory = Path(getattr(config, f"{name}_dir"))
    max_pairs = getattr(config, f"{name}_max_pairs")
    ignored: list[str] = []
    gold = None
    if name in GOLD_LAYOUTS:
        gold = config.gold_file(name)
        pairs = gold_pairs(GOLD_LAYOUTS[name], directory, gold)
    else:
        pairs, ignored = story_pairs(name, directory)
    selected = select_pairs(pairs, None if max_pairs is None else int(max_pairs), config.seed)
    return BenchmarkSet(name, directory, gold, selected, len(pairs), max_pairs, ignored)


def load_benchmarks(config: PaperMetricsConfig) -> list[BenchmarkSet]:
    names = config.benchmarks
    if not names:
        raise ValueError("no benchmark to run: give at least one of swuggy_dir, sblimp_dir, sstory_dir, tstory_dir")
    return [load_benchmark(config, name) for name in names]
