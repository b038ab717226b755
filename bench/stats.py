"""Percentiles and spread of interleaved samples. No I/O.

Spread: the samples of one target are cut into BLOCKS contiguous slices in time order; because
every target is measured in the same iterations (interleaved), block k of target A and block k of
target B saw the same machine conditions. The spread of a p50 is the range of the block p50s,
and the spread of a ratio A/B is the range of the per-block ratios: that is what drift and
neighbours on this shared machine do to the number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = 5


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (q in 0..100) of unsorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def blocks(values: Sequence[float], count: int = BLOCKS) -> list[list[float]]:
    """`count` contiguous slices of (nearly) equal size, in order; fewer if there are few values."""
    count = max(1, min(count, len(values)))
    size = len(values) / count
    return [list(values[round(i * size):round((i + 1) * size)]) for i in range(count)]


def summary(values: Sequence[float]) -> dict:
    """p50/p90/p99/min/mean and the block-p50 spread of one target's samples."""
    block_p50 = [percentile(b, 50) for b in blocks(values)]
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
        "p50_blocks": block_p50,
        "p50_lo": min(block_p50) if block_p50 else math.nan,
        "p50_hi": max(block_p50) if block_p50 else math.nan,
    }


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """p50(numerator)/p50(denominator) overall, and per time block (same iterations)."""
    overall = percentile(numerator, 50) / percentile(denominator, 50)
    per_block = [percentile(a, 50) / percentile(b, 50)
                 for a, b in zip(blocks(numerator), blocks(denominator), strict=False) if a and b]
    return {"ratio": overall, "blocks": per_block,
            "lo": min(per_block) if per_block else math.nan,
            "hi": max(per_block) if per_block else math.nan}


def verdict(value: float, limit: float, higher_is_better: bool, lo: float | None = None,
            hi: float | None = None) -> str:
    """'met' / 'not met', with '(within noise)' when the block range straddles the limit."""
    met = value >= limit if higher_is_better else value <= limit
    text = "met" if met else "not met"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)) and lo <= limit <= hi:
        text += " (within noise)"
    return text
