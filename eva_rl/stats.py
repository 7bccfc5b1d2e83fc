"""Metrics as pure functions: confidence intervals (rliable's stratified bootstrap), IQM and
the area under a success curve."""

from __future__ import annotations

import itertools
import warnings


def interval(scores, aggregate: str = "mean", reps: int = 2000, seed: int = 0):
    """Point estimate and 95% stratified-bootstrap interval (rliable) of `aggregate` ("mean" or
    "iqm") over a (runs x tasks) score matrix; runs are resampled within each task."""
    import numpy as np
    from rliable import library, metrics

    func = {"mean": metrics.aggregate_mean, "iqm": metrics.aggregate_iqm}[aggregate]
    matrix = np.asarray(scores, dtype=np.float64)
    with warnings.catch_warnings():  # rliable passes arch's deprecated random_state
        warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
        point, ci = library.get_interval_estimates(
            {"x": matrix},
            lambda x: np.array([func(x)]),
            reps=reps,
            random_state=np.random.RandomState(seed),
        )
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def stratified_bootstrap_ci(groups: list) -> tuple[float, float]:
    """95% interval of the mean of group means, resampling within each group (groups = envs,
    values = episodes; every group the same size)."""
    if len({len(g) for g in groups}) != 1:
        raise ValueError("every group needs the same number of values")
    _, low, high = interval([list(col) for col in zip(*groups, strict=True)])
    return low, high


def success_auc(evals: list[dict], steps: int) -> float | None:
    """Area under success-vs-updates (trapezoids between evaluations) divided by the updates it
    spans: 1.0 means solved from the first evaluation on, so higher = faster adaptation."""
    points = [(e["step"], e["success_any"]) for e in evals if e.get("success_any") is not None]
    if len(points) < 2:
        return None
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in itertools.pairwise(points))
    return area / (points[-1][0] - points[0][0])
