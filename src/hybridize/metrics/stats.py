"""The statistics every recall figure carries: a 95% interval for a rate, and a paired test of two models on the
same prompts. Pure Python (no scipy): exact where it is cheap, the usual closed form otherwise.

    wilson_interval(17, 24)          # (0.508, 0.851): 17 of 24 prompts right
    mcnemar_p(only_a=9, only_b=2)    # 0.065: of the prompts the two models disagree on, A alone was right on 9
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (95% by default): stays inside [0, 1] and keeps a sensible width
    at 0 or n successes, unlike the normal approximation. n = 0 gives (0, 1): nothing is known."""
    if not (isinstance(successes, int) and isinstance(n, int)) or n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need whole counts 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # at 0 or n successes one end is exactly 0 or 1 (rounding would leave 1 - 1e-16)
    return (0.0 if successes == 0 else lo), (1.0 if successes == n else hi)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test of two models scored on the same prompts: `only_a` prompts only model A got right,
    `only_b` only model B. Under "no difference" each discordant prompt is a fair coin, so p = P(|X - d/2| >= |only_a -
    d/2|) for X ~ Binomial(d, 1/2), d = only_a + only_b (1.0 when they never disagree)."""
    if not (isinstance(only_a, int) and isinstance(only_b, int)) or only_a < 0 or only_b < 0:
        raise ValueError(f"need whole counts >= 0, got only_a={only_a!r}, only_b={only_b!r}")
    d = only_a + only_b
    if d == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(d, i) for i in range(k + 1)) / 2**d  # P(X <= k)
    return min(1.0, 2 * tail)


def paired_counts(a: list[bool], b: list[bool]) -> dict[str, int]:
    """Per-prompt results of two models on the same prompts -> {"both", "only_a", "only_b", "neither"}."""
    if len(a) != len(b):
        raise ValueError(f"paired results need the same prompts: {len(a)} vs {len(b)} results")
    counts = {"both": 0, "only_a": 0, "only_b": 0, "neither": 0}
    for x, y in zip(a, b):
        counts["both" if x and y else "only_a" if x else "only_b" if y else "neither"] += 1
    return counts
