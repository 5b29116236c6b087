"""Statistics the benchmarks report."""
from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile (q in 0..1) of `values`, which must not be empty."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
