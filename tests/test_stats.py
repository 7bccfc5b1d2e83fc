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
    paired_bootstrap_ci,
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
    assert not exact and p_mc < p
    assert sign_flip_test(np.zeros(5)) == (1.0, True)


def test_holm_paired_interval_and_detectable_difference():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    low, high = paired_bootstrap_ci([0.1] * 10, strata=[0] * 5 + [1] * 5)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)  # no spread, no width
    low, high = paired_bootstrap_ci(np.r_[np.zeros(20), np.ones(20)], strata=[0] * 20 + [1] * 20)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)  # per-task means are fixed
    # rescaled: the bootstrap sd of the mean of n pairs is the unbiased sd / sqrt(n), even for 2
    pairs = np.array([0.0, 1.0])
    low, high = paired_bootstrap_ci(pairs, reps=200_000)
    assert low == pytest.approx(0.5 - 0.5 * np.sqrt(2), abs=1e-9)  # values 0.5 -+ 0.707
    assert high == pytest.approx(0.5 + 0.5 * np.sqrt(2), abs=1e-9)  # (one of 4 draws each)
    # one pair per task (one seed): the pairs are resampled across tasks, so the 0/1 split shows
    low, high = paired_bootstrap_ci([0.0] * 10 + [1.0] * 10, strata=list(range(20)))
    assert low < 0.35 and high > 0.65  # binomial: sd of the mean 0.11
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
