"""Metrics as pure functions: confidence intervals (rliable's stratified bootstrap), IQM, the area
under a learning curve, and the paired comparison of two methods run on the same (task, seed)
pairs: bootstrap interval of the mean difference, exact or Monte-Carlo sign-flip test, Holm's
correction, rliable's probability of improvement, and the smallest difference the design could
detect."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from scipy import stats as sps


def interval(scores, aggregate: str = "mean", reps: int = 2000, seed: int = 0):
    """Point estimate and 95% stratified-bootstrap interval (rliable) of `aggregate` ("mean" or
    "iqm") over a (runs x tasks) score matrix; runs are resampled within each task."""
    from rliable import library, metrics

    func = {"mean": metrics.aggregate_mean, "iqm": metrics.aggregate_iqm}[aggregate]
    matrix = np.asarray(scores, dtype=np.float64)
    # rliable draws its stratified indices from numpy's global generator (np.random.choice),
    # whatever random_state says: seed it here, and give the caller's state back afterwards
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # rliable passes arch's deprecated random_state
            warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
            point, ci = library.get_interval_estimates(
                {"x": matrix},
                lambda x: np.array([func(x)]),
                reps=reps,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(saved)
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def stratified_bootstrap_ci(groups: list) -> tuple[float, float]:
    """95% interval of the mean of group means, resampling within each group (groups = envs,
    values = episodes; every group the same size)."""
    if len({len(g) for g in groups}) != 1:
        raise ValueError("every group needs the same number of values")
    _, low, high = interval([list(col) for col in zip(*groups, strict=True)])
    return low, high


def curve_auc(points: list[tuple[int, float]]) -> float | None:
    """Area under a curve of (step, value) points (trapezoids) divided by the steps it spans:
    1.0 for a success curve at 1 from the first point on, so higher = faster adaptation.
    None with fewer than two points."""
    points = sorted(points)
    if len(points) < 2:
        return None
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in itertools.pairwise(points))
    return area / (points[-1][0] - points[0][0])


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the mean (a learning curve's band over seeds); one value: no
    width."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def paired_bootstrap_ci(
    diffs, strata=None, reps: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the mean paired difference, resampling pairs with
    replacement within each stratum (task), so every task keeps its number of pairs. A stratum
    of one pair has no spread to resample, so with any such stratum (one seed per task) the
    pairs are resampled across strata instead. Each stratum's deviations from its mean are
    scaled by sqrt(n / (n - 1)) first (the rescaled bootstrap): a plain bootstrap of n pairs
    has variance (n - 1) / n of the unbiased one, half of it with 2 seeds per task."""
    diffs = np.asarray(diffs, dtype=np.float64)
    strata = np.zeros(len(diffs), int) if strata is None else np.asarray(strata)
    if np.unique(strata, return_counts=True)[1].min() < 2:
        strata = np.zeros(len(diffs), int)
    rng = np.random.default_rng(seed)
    means = np.zeros(reps)
    for value in np.unique(strata):
        group = diffs[strata == value]
        n = len(group)
        group = group.mean() + (group - group.mean()) * np.sqrt(n / (n - 1))
        picks = rng.integers(0, n, size=(reps, n))
        means += group[picks].sum(axis=1)
    means /= len(diffs)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def sign_flip_test(
    diffs, exact_up_to: int = 16, resamples: int = 100_000, seed: int = 0, alternative="two-sided"
):
    """p-value of the paired sign-flip permutation test of mean difference 0 against
    `alternative` ("two-sided", or "less" / "greater": a mean below / above 0, for a direction
    fixed before the data): exact (all 2^n sign patterns) for n <= `exact_up_to`, else
    `resamples` random patterns. Returns (p, exact)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n = len(diffs)
    if n == 0 or not np.any(diffs):
        return 1.0, True
    exact = n <= exact_up_to
    result = sps.permutation_test(
        (diffs,),
        np.mean,
        permutation_type="samples",
        alternative=alternative,
        n_resamples=np.inf if exact else resamples,
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue), exact


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the comparisons)."""
    order = np.argsort(pvalues)
    m = len(pvalues)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted.tolist()


def probability_of_improvement(x, y) -> float:
    """rliable's P(X > Y): per task the Mann-Whitney probability that a run of X beats a run of
    Y, averaged over tasks; x and y are (runs x tasks) score matrices."""
    from rliable import metrics

    return float(metrics.probability_of_improvement(np.asarray(x, float), np.asarray(y, float)))


def minimum_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8):
    """The smallest true mean paired difference a two-sided paired t-test at level `alpha`
    detects with probability `power`, given the paired differences' standard deviation `sd`
    over `n` pairs: (t_{1-alpha/2} + t_{power}) * sd / sqrt(n), with n - 1 degrees of freedom.
    None where no difference is detectable or the spread says nothing: with n pairs the two-sided
    sign-flip test's smallest p is 2 / 2^n (n <= 5 can never reach 5%), and sd 0 (all pairs
    equal, e.g. every run at 0) is no estimate of the spread."""
    if 2.0 / 2**n >= alpha or sd <= 1e-12:  # (float noise of equal differences)
        return None
    df = n - 1
    return float((sps.t.ppf(1 - alpha / 2, df) + sps.t.ppf(power, df)) * sd / math.sqrt(n))
