"""The interval and the paired test, against values computed by hand and known textbook cases."""

from __future__ import annotations

import math

import pytest

from hybridize.metrics.stats import mcnemar_p, paired_counts, wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(17, 24)
    assert (round(lo, 3), round(hi, 3)) == (0.508, 0.851)
    assert wilson_interval(0, 10)[0] == 0.0 and 0.27 < wilson_interval(0, 10)[1] < 0.28  # 0.2775
    assert wilson_interval(10, 10)[1] == 1.0 and 0.72 < wilson_interval(10, 10)[0] < 0.73
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(100, 200)  # large n: close to p +- 1.96 sqrt(p(1-p)/n)
    assert math.isclose(hi - lo, 2 * 1.96 * math.sqrt(0.25 / 200), rel_tol=0.01)
    for bad in ((5, 4), (-1, 4), (1.5, 4)):
        with pytest.raises(ValueError, match="need whole counts"):
            wilson_interval(*bad)


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(6, 0) == pytest.approx(2 / 64)  # six discordant prompts, all one way
    assert mcnemar_p(9, 2) == pytest.approx(2 * sum(math.comb(11, i) for i in range(3)) / 2**11)
    assert mcnemar_p(2, 9) == mcnemar_p(9, 2)
    with pytest.raises(ValueError, match="need whole counts"):
        mcnemar_p(-1, 2)


def test_paired_counts():
    assert paired_counts([True, True, False, False], [True, False, True, False]) == \
        {"both": 1, "only_a": 1, "only_b": 1, "neither": 1}
    with pytest.raises(ValueError, match="the same prompts"):
        paired_counts([True], [True, False])


def test_mean_interval_bootstraps_the_mean_reproducibly():
    from hybridize.metrics.stats import mean_interval

    xs = [2.0, 2.1, 1.9, 2.05, 1.95, 2.2, 1.8, 2.0]
    lo, hi = mean_interval(xs)
    assert lo < sum(xs) / len(xs) < hi and hi - lo < 0.3 and (lo, hi) == mean_interval(xs)
    assert mean_interval([3.0]) == (3.0, 3.0) and mean_interval([1.0] * 5) == (1.0, 1.0)
    wide = mean_interval([0.0, 10.0] * 4)
    assert wide[1] - wide[0] > 3
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_paired_permutation_p_exact_and_sampled():
    from hybridize.metrics.stats import paired_permutation_p

    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # every difference +0.5: only the all-plus and all-minus sign patterns reach it, 2 of 64
    assert paired_permutation_p([x + 0.5 for x in a], a) == pytest.approx(2 / 64)
    assert paired_permutation_p(a, a) == 1.0  # no difference at all
    # one difference of 1 among zeros: half the patterns have |sum| = 1
    assert paired_permutation_p([1.0, 0, 0], [0.0, 0, 0]) == 1.0
    many = [float(i) for i in range(30)]
    p = paired_permutation_p([x + 0.1 for x in many], many, n_perm=2000)
    assert p == pytest.approx(1 / 2001)  # sampled: no random pattern reaches the all-plus sum
    assert paired_permutation_p(many, [x + (0.1 if i % 2 else -0.1) for i, x in enumerate(many)], n_perm=2000) > 0.5
    with pytest.raises(ValueError, match="same items"):
        paired_permutation_p([1.0], [1.0, 2.0])
