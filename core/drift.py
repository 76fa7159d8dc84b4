"""Drift statistics for model monitoring: pure functions on numbers, no framework.

- `wilson_interval`: the band a flag rate is expected to stay in, for a window of n results,
  when the true rate is the reference's (Wilson score interval around the reference rate).
- `decile_cuts` / `bin_fractions`: ten bins by the reference's deciles, and how a sample falls
  into them.
- `psi`: population stability index between the reference's bins and the window's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

BINS = 10
PSI_FLOOR = 1e-4  # an empty bin's share, so that ln(a/e) stays finite


def wilson_interval(rate: float, n: int, *, confidence: float = 0.99) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for a proportion `rate` seen in `n` trials:
    where the share of n results may fall by chance alone when the true rate is `rate`."""
    if n <= 0:
        return (0.0, 1.0)
    rate = min(max(rate, 0.0), 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (rate + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def effective_n(n: int, reference_n: int) -> int:
    """The window's n, shrunk for the reference's own sampling error when the reference is a
    sample too (1/n_eff = 1/n + 1/n_ref): a band around a rate seen in 20,000 results is not
    exact, and treating it so would alert on noise."""
    if n <= 0 or reference_n <= 0:
        return max(n, 0)
    return max(1, round(1 / (1 / n + 1 / reference_n)))


def decile_cuts(scores: Sequence[float]) -> list[float]:
    """The 9 inner cut points (10%, 20%, ... 90% quantiles, linear interpolation) of scores."""
    ordered = sorted(float(s) for s in scores)
    if not ordered:
        return []
    cuts = []
    for k in range(1, BINS):
        position = (len(ordered) - 1) * k / BINS
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        cuts.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return cuts


def bin_index(score: float, cuts: Sequence[float]) -> int:
    """The bin of a score: 0 below the first cut, i when cuts[i-1] <= score < cuts[i]."""
    return sum(1 for c in cuts if score >= c)


def bin_fractions(scores: Sequence[float], cuts: Sequence[float]) -> list[float]:
    """The share of `scores` in each of the len(cuts)+1 bins (zeros for no scores)."""
    counts = [0] * (len(cuts) + 1)
    for s in scores:
        counts[bin_index(float(s), cuts)] += 1
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), shares floored at
    PSI_FLOOR. Below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one."""
    if len(expected) != len(actual):
        raise ValueError("expected and actual need the same bins")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, PSI_FLOOR), max(a, PSI_FLOOR)
        total += (a - e) * math.log(a / e)
    return total
