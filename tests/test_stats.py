"""Metrics as pure functions, against hand-computed values: rliable intervals and IQM, AUC, the
exact sign-flip test against enumeration, Holm, the paired bootstrap, the detectable difference."""

import itertools

import numpy as np
import pytest

from eva_rl.stats import (
    curve_auc,
    holm,
    interval,
    minimum_detectable_difference,
    sign_flip_interval,
    sign_flip_test,
)


def test_intervals_are_reproducible_and_leave_numpys_generator_alone():
    scores = np.random.default_rng(0).random((3, 3))
    np.random.seed(7)
    expected_draw = np.random.random()
    np.random.seed(7)
    first = interval(scores, "iqm")
    assert np.random.random() == expected_draw  # the caller's global state is restored
    assert interval(scores, "iqm") == first  # rliable's global-generator draws are seeded


def test_iqm_and_mean_of_a_known_matrix():
    scores = np.array([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 1.0]])  # 2 seeds x 4 tasks
    iqm, low, high = interval(scores, "iqm")
    assert iqm == pytest.approx(0.35)  # middle half of the 8 values: 0.2, 0.3, 0.4, 0.5
    assert low <= iqm <= high
    mean, low, high = interval(scores, "mean")
    assert mean == pytest.approx(0.3875) and low < mean < high
    assert interval(np.full((3, 2), 0.7)) == pytest.approx((0.7, 0.7, 0.7))  # no spread
    # runs resampled within each task: every draw's mean is 0.5 (pooled draws would spread)
    assert interval([[0.0, 1.0]] * 3) == pytest.approx((0.5, 0.5, 0.5))


def test_bootstrap_interval_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few = rng.random((3, 4))
    many = rng.random((300, 4))
    assert np.ptp(interval(many)[1:]) < np.ptp(interval(few)[1:]) / 4


def test_auc_is_the_trapezoid_area_over_the_span():
    points = [(0, 0.0), (100, 0.5), (300, 1.0)]
    assert curve_auc(points) == pytest.approx((100 * 0.25 + 200 * 0.75) / 300)
    assert curve_auc(points[:1]) is None


def test_sign_flip_test_is_exact_against_enumeration():
    diffs = np.array([0.3, -0.1, 0.2, 0.4, 0.1, -0.2, 0.5])
    observed = abs(diffs.mean())
    flips = [np.array(s) * diffs for s in itertools.product([1, -1], repeat=len(diffs))]
    expected = np.mean([abs(f.mean()) >= observed - 1e-12 for f in flips])
    p, exact = sign_flip_test(diffs)
    assert exact and p == pytest.approx(expected)
    p_mc, exact = sign_flip_test(np.tile(diffs, 4))  # 28 pairs: Monte Carlo
    from collections import Counter

    tenths = [round(10 * d) for d in np.tile(diffs, 4)]  # the exact p by counting signed sums
    sums = Counter({0: 1})
    for c in tenths:
        sums = Counter({t + c: n for t, n in sums.items()}) + Counter(
            {t - c: n for t, n in sums.items()}
        )
    exact_p = sum(n for t, n in sums.items() if abs(t) >= abs(sum(tenths))) / 2**28
    assert not exact and abs(p_mc - exact_p) < 4 * (exact_p / 100_000) ** 0.5  # 4 binomial sd
    assert sign_flip_test(np.zeros(5)) == (1.0, True)


def test_holm_and_detectable_difference():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    # (t_.975 + t_.8) with 9 df times sd / sqrt(n): 2.262 + 0.883 = 3.145
    assert minimum_detectable_difference(0.3, 10) == pytest.approx(3.1449 * 0.3 / 10**0.5, 1e-3)
    assert minimum_detectable_difference(0.3, 1) is None
    assert minimum_detectable_difference(0.3, 5) is None  # sign-flip p >= 2/32: never below 5%
    assert minimum_detectable_difference(0.0, 10) is None  # no spread to scale by


def test_one_sided_sign_flip_test_counts_one_tail():
    diffs = np.array([-0.3, -0.1, -0.2, -0.4, 0.1, -0.2, -0.5])
    flips = [np.array(s) * diffs for s in itertools.product([1, -1], repeat=len(diffs))]
    below = np.mean([f.mean() <= diffs.mean() + 1e-12 for f in flips])
    assert sign_flip_test(diffs, alternative="less")[0] == pytest.approx(below)
    above = np.mean([f.mean() >= diffs.mean() - 1e-12 for f in flips])
    assert sign_flip_test(diffs, alternative="greater")[0] == pytest.approx(above)
    assert sign_flip_test(-np.ones(10), alternative="less")[0] == pytest.approx(1 / 1024)


def _two_sided_p(diffs, delta):
    """The sign-flip p of d - delta by brute force over all sign patterns."""
    shifted = np.asarray(diffs) - delta
    flips = [np.array(s) * shifted for s in itertools.product([1, -1], repeat=len(shifted))]
    return np.mean([abs(f.mean()) >= abs(shifted.mean()) - 1e-12 for f in flips])


def test_sign_flip_interval_inverts_the_test_by_brute_force():
    diffs = np.array([0.3, -0.1, 0.2, 0.4, 0.1, -0.2, 0.5, 0.25])
    low, high = sign_flip_interval(diffs)
    assert low < diffs.mean() < high
    for bound, outward in ((low, -1), (high, 1)):
        assert _two_sided_p(diffs, bound - outward * 1e-6) >= 0.05  # just inside: kept
        assert _two_sided_p(diffs, bound + outward * 1e-6) < 0.05  # just outside: rejected
    assert sign_flip_interval(diffs[:5]) == (-np.inf, np.inf)  # 2 / 2^5 > 0.05: unbounded


def test_interval_excludes_zero_exactly_when_the_test_rejects():
    """Success-rate differences (multiples of 0.01, many ties) and continuous ones, exact and
    Monte Carlo: the interval and the two-sided p never disagree."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = [6, 8, 10, 12, 20][trial % 5]
        diffs = rng.normal(rng.choice([0.0, 0.05, 0.1]), 0.12, n)
        if trial % 2:
            diffs = np.round(diffs, 2)
        low, high = sign_flip_interval(diffs, resamples=2000)
        p, _ = sign_flip_test(diffs, resamples=2000)
        assert (low > 0 or high < 0) == (p < 0.05), (diffs, low, high, p)
    # the case: a difference whose test says p = 0.42 has an interval holding 0
    diffs = np.array([-0.15, 0.02, -0.21, 0.04, -0.09, 0.12, -0.01, 0.05, -0.11, 0.03, 0.08, -0.1])
    p, _ = sign_flip_test(diffs)
    low, high = sign_flip_interval(diffs)
    assert p > 0.05 and low < 0 < high


@pytest.mark.parametrize("n", [12, 10])
def test_sign_flip_interval_covers_a_known_effect(n):
    """Coverage by simulation, 3 seeds x 4 tasks and 10 seeds: the true mean difference lies in
    the 95% interval in about 95% of designs (at least 92% of 400, about 3 binomial sd)."""
    rng = np.random.default_rng(1)
    effect = -0.08
    covered = 0
    for _ in range(400):
        diffs = rng.normal(effect, 0.15, n)
        low, high = sign_flip_interval(diffs)
        covered += low <= effect <= high
    assert covered / 400 >= 0.92


def test_iqm_is_rliables_bit_for_bit():
    """The report's IQM, computed without scipy's wrapper, is rliable's aggregate_iqm exactly
    (ties, one run, one task, shapes whose quarter is not whole)."""
    from rliable import metrics

    from eva_rl.stats import iqm

    rng = np.random.default_rng(0)
    for _ in range(2000):
        shape = tuple(int(n) for n in rng.integers(1, [13, 6]))
        scores = rng.random(shape) if rng.random() < 0.5 else rng.integers(0, 5, shape) / 4
        assert iqm(scores) == metrics.aggregate_iqm(scores)
