"""The statistics behind every figure and verdict of the report.

- Percentiles are exact: computed from every sample (no histogram buckets), with linear
  interpolation between the two nearest ranks (numpy's default, which vLLM's benchmark_serving uses).
- Each cell runs several times (`Matrix.runs`, at least 3). A figure is the mean of the per-run values;
  its 95% interval is Student's t over the runs (mean +- t(0.975, runs-1) * sd / sqrt(runs)), so the
  interval holds the run-to-run noise of a shared machine, which is what flipped verdicts before. With
  3 runs t is 4.30: intervals are wide, and verdicts honest about it.
- A verdict names a winner only when its interval clears the runner-up's (no overlap) and the difference
  is at least 10% (less is noise to a user); otherwise it is a tie naming every option in reach.
- A figure from fewer than MIN_SAMPLES samples in its cell (all runs together) is shown but not judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

__all__ = ["MIN_SAMPLES", "MIN_RUNS", "percentile", "Figure", "figure", "decide", "Decision", "T975"]

MIN_SAMPLES = 200
MIN_RUNS = 3
# Student's t, two-sided 95%, by degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t(df: int) -> float:
    if df in T975:
        return T975[df]
    below = [k for k in T975 if k < df]
    return T975[max(below)] if df <= 30 else 1.96


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `values`, exact: linear between the nearest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


@dataclass(frozen=True)
class Figure:
    """One figure of one cell over its runs."""

    value: float  # mean of the per-run values
    lo: float  # 95% interval (t over runs); -inf/inf with one run
    hi: float
    runs: tuple[float, ...]  # the per-run values: the run-to-run spread
    samples: int  # samples behind it, all runs together
    of: str  # what a sample is ("streams", "gaps between tokens", ...)

    @property
    def enough(self) -> bool:
        return self.samples >= MIN_SAMPLES and len(self.runs) >= MIN_RUNS

    def as_dict(self) -> dict:
        d = asdict(self)
        d["runs"] = list(self.runs)
        for k in ("lo", "hi"):
            if math.isinf(d[k]):
                d[k] = None
        return d


def figure(per_run: Iterable[float | None], samples: int, of: str) -> Figure | None:
    """A figure from its per-run values (None where a run had no sample)."""
    values = tuple(v for v in per_run if v is not None)
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Figure(mean, -math.inf, math.inf, values, samples, of)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t(n - 1) * sd / math.sqrt(n)
    lo = mean - half
    if lo < 0 <= min(values):  # times and costs are not negative: the interval stops at 0
        lo = 0.0
    return Figure(mean, lo, mean + half, values, samples, of)


@dataclass(frozen=True)
class Decision:
    winner: str | None  # None: a tie (or nothing to judge)
    tied: tuple[str, ...]  # the options whose intervals overlap the best's (the winner alone if it clears)
    order: tuple[str, ...]  # best first, by value
    unjudged: tuple[str, ...] = ()  # too few samples or runs

    @property
    def label(self) -> str:
        if self.winner:
            return self.winner
        if len(self.tied) > 1:
            return "tie: " + ", ".join(sorted(self.tied))  # sorted: the label does not hang on noise
        return "not measured"


def decide(cands: dict[str, Figure | None], lower: bool = True, min_gap: float = 0.10) -> Decision:
    """The best option if its interval clears the runner-up's and it is better by at least `min_gap`
    (a share of the runner-up's value: a smaller difference is noise to a user); else a tie of every
    option whose interval overlaps the best's or whose value is within that share."""
    usable = {k: f for k, f in cands.items() if f is not None and f.enough}
    unjudged = tuple(sorted(k for k, f in cands.items() if f is not None and not f.enough))
    if not usable:
        return Decision(None, (), (), unjudged)
    order = sorted(usable, key=lambda k: usable[k].value if lower else -usable[k].value)
    best = usable[order[0]]
    if len(order) == 1:
        return Decision(order[0], (order[0],), tuple(order), unjudged)

    def overlaps(f: Figure) -> bool:
        near = abs(f.value - best.value) < min_gap * max(abs(f.value), 1e-12)
        return near or (f.lo <= best.hi if lower else f.hi >= best.lo)

    tied = tuple(k for k in order if k == order[0] or overlaps(usable[k]))
    winner = order[0] if len(tied) == 1 else None
    return Decision(winner, tied, tuple(order), unjudged)
