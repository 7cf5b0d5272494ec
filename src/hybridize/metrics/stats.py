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


def mean_interval(xs: list[float], n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of independent values (per-window NLLs, say): `n_boot` resamples
    with replacement, drawn from a fixed seed so that a report reproduces. One value gives (x, x)."""
    import random

    xs = [float(x) for x in xs]
    if not xs:
        raise ValueError("mean_interval needs at least one value")
    if len(xs) == 1:
        return xs[0], xs[0]
    rng, n = random.Random(seed), len(xs)
    means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(n_boot))
    return means[int(0.025 * (n_boot - 1))], means[int(round(0.975 * (n_boot - 1)))]


def paired_permutation_p(a: list[float], b: list[float], n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided paired sign-flip test of mean(a - b) = 0 for two models' values on the same items (per-window NLLs on
    the same windows): under "no difference" each item's difference is as likely negated. Exact over all 2^n sign
    patterns up to n = 12 items, else `n_perm` random patterns from a fixed seed with p = (hits + 1) / (n_perm + 1)."""
    import itertools

    if len(a) != len(b) or not a:
        raise ValueError(f"a paired test needs the same items, at least one: {len(a)} vs {len(b)} values")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    observed = abs(sum(d)) * (1 - 1e-12)  # ties with the observed sum count as extreme
    if len(d) <= 12:
        hits = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed
                   for signs in itertools.product((1, -1), repeat=len(d)))
        return hits / 2 ** len(d)
    import torch

    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n_perm, len(d)), generator=g, dtype=torch.float64).mul_(2).sub_(1)
    hits = int(((signs @ torch.tensor(d, dtype=torch.float64)).abs() >= observed).sum())
    return (hits + 1) / (n_perm + 1)
