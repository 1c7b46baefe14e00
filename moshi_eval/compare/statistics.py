"""Bootstrap intervals for differences between runs, paired where two runs scored the same items.

A run's metric is a `Statistic` of its items (sequences, or a benchmark's pairs), written as a function of a count per
item: `replicates(weights)` takes, per resampling group, counts `[R, n]` (how often each of the n items is drawn in
each of R resamples) and gives the metric of each resample `[R]`; all ones give the metric itself (`full()`).

Resamples draw n items with replacement from each group of each run. When run r scored the same items of a group as
the first run (the same ids), it is resampled with the first run's draws (paired: the interval reflects how the two
runs differ on the same items); otherwise independently (unpaired). The interval of a difference d is
`d + [q_lo, q_hi]` of the resampled differences minus their value on the full data: the percentile interval when the
statistic recomputes the metric exactly (every metric but the slope, whose resamples use the binned per-sequence curves
for its spread). Draws come from `numpy.random.default_rng((seed, run, group))`: the same seed gives the same
intervals.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

BLOCK_ENTRIES = 2_000_000


class Statistic(abc.ABC):
    """A metric as a function of per-item counts; `exact` when all-ones counts give the reported value itself."""

    exact = True

    @abc.abstractmethod
    def sizes(self) -> dict[str, int]:
        """The number of items of each resampling group it reads."""

    @abc.abstractmethod
    def replicates(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        """`[R]` values for counts `weights[group]` `[R, n]` (NaN where a resample leaves it undefined)."""

    def full(self) -> float:
        return float(self.replicates({group: np.ones((1, n)) for group, n in self.sizes().items()})[0])


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


@dataclasses.dataclass
class RatioOfSums(Statistic):
    """`sum_i w_i a_i / sum_i w_i b_i` over the items of `group` (a mean of `a` when `b` is 1 or 0, a weighted mean
    of `a / b` otherwise)."""

    group: str
    numerators: np.ndarray
    denominators: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {self.group: len(self.numerators)}

    def replicates(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        counts = weights[self.group]
        return safe_ratio(counts @ self.numerators, counts @ self.denominators)


@dataclasses.dataclass
class CurveSlope(Statistic):
    """Least-squares slope of the mean of per-item curves `[n, bins]` (NaN past an item's end) against `positions`
    `[bins]`, each bin averaging the items that reach it."""

    group: str
    curves: np.ndarray
    positions: np.ndarray
    exact = False

    def sizes(self) -> dict[str, int]:
        return {self.group: len(self.curves)}

    def replicates(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        counts = weights[self.group]
        defined = np.isfinite(self.curves)
        mean = safe_ratio(counts @ np.where(defined, self.curves, 0.0), counts @ defined)
        used = np.isfinite(mean)
        points = used.sum(axis=1)
        x = np.where(used, self.positions, 0.0)
        y = np.where(used, mean, 0.0)
        x_mean = safe_ratio(x.sum(axis=1), points)[:, None]
        y_mean = safe_ratio(y.sum(axis=1), points)[:, None]
        dx = np.where(used, self.positions - x_mean, 0.0)
        slope = safe_ratio((dx * (y - y_mean)).sum(axis=1), (dx**2).sum(axis=1))
        return np.where(points >= 2, slope, np.nan)


@dataclasses.dataclass
class MeanOfStatistics(Statistic):
    """The mean of other statistics' values (those defined), e.g. `paper_metrics_avg` over the benchmarks."""

    parts: list[Statistic]

    def sizes(self) -> dict[str, int]:
        return {group: n for part in self.parts for group, n in part.sizes().items()}

    def replicates(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        values = np.stack([part.replicates(weights) for part in self.parts])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(values, axis=0)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: `resamples` resamples from `seed`, at `confidence`."""

    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 100:
            raise ValueError(f"resamples must be at least 100, got {self.resamples}")

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def is_paired(ids: Sequence[str], first_ids: Sequence[str]) -> bool:
    """Whether a group of items is the same set (no repeats) as the first run's."""
    return len(set(ids)) == len(ids) and sorted(ids) == sorted(first_ids)


def resample_counts(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """`[count, n]`: how often each of n items is drawn in each of `count` resamples of n draws."""
    if n == 0:
        return np.zeros((count, 0))
    draws = rng.integers(0, n, size=(count, n)) + n * np.arange(count)[:, None]
    return np.bincount(draws.ravel(), minlength=count * n).reshape(count, n).astype(np.float64)


@dataclasses.dataclass
class Replicates:
    """Per run, the resampled values `[R]` of each statistic, and which groups were paired with the first run."""

    values: list[dict[str, np.ndarray]]
    paired: list[dict[str, bool]]


def bootstrap_replicates(items: Sequence[Mapping[str, Sequence[str]]],
                         statistics: Sequence[Mapping[str, Statistic]], bootstrap: Bootstrap) -> Replicates:
    """Resample every run's items (`items[r][group]`: ids) and evaluate its statistics on each resample."""
    groups = sorted({group for run in items for group in run})
    first = items[0]
    paired = [{group: group in first and is_paired(ids, first[group]) for group, ids in run.items()} for run in items]
    positions = {group: {item: index for index, item in enumerate(ids)} for group, ids in first.items()}
    orders = [{group: [positions[group][item] for item in ids] for group, ids in run.items() if paired[r][group]}
              for r, run in enumerate(items)]
    generators = [{group: np.random.default_rng((bootstrap.seed, r, groups.index(group))) for group in run}
                  for r, run in enumerate(items)]
    total = bootstrap.resamples
    values = [{name: np.empty(total) for name in run} for run in statistics]
    largest = max((len(ids) for run in items for ids in run.values()), default=1)
    block = max(1, min(total, BLOCK_ENTRIES // max(1, largest)))
    for start in range(0, total, block):
        count = min(block, total - start)
        base = {group: resample_counts(generators[0][group], len(ids), count) for group, ids in first.items()}
        for r, run in enumerate(items):
            weights = {group: base[group][:, orders[r][group]] if paired[r][group]
                       else resample_counts(generators[r][group], len(ids), count) for group, ids in run.items()}
            for name, statistic in statistics[r].items():
                values[r][name][start: start + count] = statistic.replicates(weights)
    return Replicates(values, paired)


def centred_interval(estimate: float, resampled: np.ndarray, full: float, confidence: float) -> list[float] | None:
    """`estimate + quantiles(resampled - full)`: the percentile interval moved onto the reported estimate (None when
    no resample is defined)."""
    deviations = resampled[np.isfinite(resampled)] - full
    if deviations.size == 0 or not np.isfinite(full):
        return None
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(deviations, [tail, 1.0 - tail])
    return [float(estimate + low), float(estimate + high)]
