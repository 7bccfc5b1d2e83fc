"""When a paired difference appears: each comparison's mean difference in the score at every
evaluation both configurations ran, on the (task, seed) pairs that have it, with the sign-flip
test and its inverted interval. Descriptive: a difference at one of several evaluations is not
a confirmed one (the pre-registered tests name their evaluation or the area under the curve)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eva_rl.stats import sign_flip_interval, sign_flip_test


@dataclass
class StepDifference:
    step: int
    n: int  # (task, seed) pairs evaluated at this step
    mean_diff: float
    ci: tuple[float, float]
    p: float


def scores_by_step(rows) -> dict[int, dict[tuple[str, int], float]]:
    """step -> (task, seed) -> score, from every run's evaluation curve."""
    out: dict[int, dict[tuple[str, int], float]] = {}
    for r in rows:
        for step, metrics in r.curve:
            if "score" in metrics:
                out.setdefault(step, {})[(r.task, r.seed)] = metrics["score"]
    return out


def step_differences(rows, reference_rows) -> list[StepDifference]:
    """`rows` minus `reference_rows` at each evaluation step after 0 with 2+ common pairs."""
    mine, theirs = scores_by_step(rows), scores_by_step(reference_rows)
    out = []
    for step in sorted(set(mine) & set(theirs) - {0}):  # step 0: the same base agent
        pairs = sorted(set(mine[step]) & set(theirs[step]))
        if len(pairs) < 2:
            continue
        diffs = np.array([mine[step][p] - theirs[step][p] for p in pairs])
        p, _ = sign_flip_test(diffs)
        out.append(StepDifference(step, len(pairs), float(diffs.mean()),
                                  sign_flip_interval(diffs), p))  # fmt: skip
    return out


def timelines(stats, comparisons) -> list[tuple[object, list[StepDifference]]]:
    """Each comparison between two configurations of `stats` with its step differences (the
    pooled `key=value` comparisons span several configurations and are left out)."""
    by_label = {s.label: s for s in stats}
    out = []
    for c in comparisons:
        if c.label in by_label and c.reference in by_label:
            steps = step_differences(by_label[c.label].rows, by_label[c.reference].rows)
            if len(steps) > 1:  # one evaluation: the comparison table already shows it
                out.append((c, steps))
    return out
