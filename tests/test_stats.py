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
