"""Metrics as pure functions: confidence intervals (rliable's stratified bootstrap), IQM, the area
under a learning curve, and the paired comparison of two methods run on the same (task, seed)
pairs: exact or Monte-Carlo sign-flip test and the interval that inverts it (so an interval
excludes 0 exactly when the test rejects), Holm's correction, rliable's probability of
improvement, and the smallest difference the design could detect."""

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

    func = {"mean": metrics.aggregate_mean, "iqm": iqm}[aggregate]
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


def iqm(scores) -> float:
    """rliable's `aggregate_iqm` (scipy's `trim_mean(scores, 0.25, axis=None)`), bit for bit:
    the same partition and mean without scipy's array-API wrapper, which costs 15x the
    computation per call, and a report's intervals make ~240,000 calls."""
    flat = np.asarray(scores).ravel()
    cut = int(0.25 * flat.size)
    return np.mean(np.partition(flat, (cut, flat.size - cut - 1))[cut : flat.size - cut])


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
    None with fewer than two points or no span (every point at one step)."""
    points = sorted(points)
    if len(points) < 2 or points[-1][0] == points[0][0]:
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


TIE = 1e-9  # differences of mean statistics closer than this count as ties (as extreme)


def _finite(diffs) -> np.ndarray:
    """The paired differences as floats; a NaN or inf (a diverged run's loss) has no sign to
    flip and would make every pattern look less extreme (p = 0), so it is refused."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if not np.all(np.isfinite(diffs)):
        raise ValueError(f"non-finite paired differences at positions "
                         f"{np.flatnonzero(~np.isfinite(diffs)).tolist()}")  # fmt: skip
    return diffs


def _flips(
    n: int, exact_up_to: int, resamples: int, seed: int, symmetric: bool = False
) -> tuple[np.ndarray, bool]:
    """The sign patterns of the test, True = flipped: all 2^n for n <= `exact_up_to`, else the
    identity plus `resamples` seeded random ones; `symmetric`: the identity, its negation and
    `resamples // 2` random ones with their negations, a set closed under flipping every sign
    as the exact one is, so that a one-sided p is exactly half the two-sided one and a
    one-sided test agrees with the two-sided interval at twice its level. Returns (patterns,
    exact)."""
    if n <= exact_up_to:
        codes = np.arange(2**n)[:, None] >> np.arange(n) & 1
        return codes.astype(bool), True
    identity = np.zeros((1, n), bool)
    if symmetric:
        random = np.random.default_rng(seed).random((resamples // 2, n)) < 0.5
        return np.vstack([identity, ~identity, random, ~random]), False
    random = np.random.default_rng(seed).random((resamples, n)) < 0.5
    return np.vstack([identity, random]), False


def _thresholds(diffs: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Per pattern, the shift delta from which, up to the mean, it is as extreme as the observed
    (|mean(s * (d - delta))| >= |mean(d - delta)|). With A the flipped pairs' sum of d - delta
    and D everyone's (> 0 below the mean), |D - 2A| >= D holds iff A <= 0 or A >= D, i.e. iff
    delta >= the flipped pairs' mean or delta >= the others' mean: monotone in delta, so the
    two-sided p below the mean is the fraction of patterns whose threshold is <= delta."""
    flipped = flips.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        flipped_mean = np.where(flipped > 0, (flips @ diffs) / flipped, -np.inf)
        kept_mean = np.where(
            flipped < len(diffs), (~flips @ diffs) / (len(diffs) - flipped), -np.inf
        )
    return np.sort(np.minimum(flipped_mean, kept_mean))


def sign_flip_test(
    diffs, exact_up_to: int = 16, resamples: int = 100_000, seed: int = 0, alternative="two-sided",
    symmetric: bool = False,
):  # fmt: skip
    """p-value of the paired sign-flip permutation test of mean difference 0 against
    `alternative` ("two-sided", or "less" / "greater": a mean below / above 0, for a direction
    fixed before the data): exact (all 2^n sign patterns) for n <= `exact_up_to`, else
    `resamples` seeded random patterns plus the observed one (`symmetric`: see `_flips`). The
    two-sided p is computed as `sign_flip_interval` inverts it, so the two always agree.
    Returns (p, exact)."""
    diffs = _finite(diffs)
    n = len(diffs)
    if n == 0 or not np.any(diffs):
        return 1.0, True
    flips, exact = _flips(n, exact_up_to, resamples, seed, symmetric)
    if alternative == "two-sided":
        mean = diffs.mean()
        if mean == 0:
            return 1.0, exact
        side = diffs if mean > 0 else -diffs
        return float(np.mean(_thresholds(side, flips) <= TIE)), exact
    means = np.where(flips, -diffs, diffs).mean(axis=1)
    if alternative == "greater":
        return float(np.mean(means >= diffs.mean() - TIE)), exact
    if alternative == "less":
        return float(np.mean(means <= diffs.mean() + TIE)), exact
    raise ValueError(f"alternative must be two-sided, less or greater, not {alternative!r}")


def sign_flip_interval(
    diffs, alpha: float = 0.05, exact_up_to: int = 16, resamples: int = 100_000, seed: int = 0,
    symmetric: bool = False,
) -> tuple[float, float]:  # fmt: skip
    """The 1 - alpha interval of the mean paired difference that inverts the two-sided
    sign-flip test: every shift delta that the test of d - delta does not reject at `alpha`.
    It excludes 0 exactly when `sign_flip_test` gives p < alpha, and is unbounded where no
    pattern count can reach alpha (n <= 5 pairs at 5%: the smallest p is 2 / 2^n)."""
    diffs = _finite(diffs)
    flips, _ = _flips(len(diffs), exact_up_to, resamples, seed, symmetric)
    needed = math.ceil(alpha * len(flips) - 1e-9)  # patterns as extreme for p >= alpha
    low = _thresholds(diffs, flips)[needed - 1] - TIE
    high = -(_thresholds(-diffs, flips)[needed - 1] - TIE)
    return float(low), float(high)


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
