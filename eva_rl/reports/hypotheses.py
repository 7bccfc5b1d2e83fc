"""Pre-registered hypotheses: a YAML file, committed before the runs that test it have finished,
names paired comparisons with a direction and a level. The report tests each one once, when all
its planned pairs have finished, and lists it as waiting until then: a confirmatory test that is
looked at while its data come in is no longer one (optional stopping)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from eva_rl.adapters.methods import METHODS
from eva_rl.config import load_config
from eva_rl.errors import UserError
from eva_rl.reports.runs import Row, unpaired
from eva_rl.stats import sign_flip_interval, sign_flip_test


@dataclass
class Hypothesis:
    name: str  # H1: how notes cite it
    claim: str  # in words, what a rejection of "no difference" in `alternative`'s direction says
    method: str
    tasks: list[str]
    seeds: list[int]
    ranks: list[int]  # adapter ranks (both methods at the same rank)
    # `method` minus `reference`, paired by (task, seed, rank); None: `method`'s values
    # against 0, which only `gain` (the lift over the run's own start) means anything for
    reference: str | None = None
    alternative: Literal["less", "greater", "two-sided"] = "two-sided"  # of the mean difference
    alpha: float = 0.05  # the level of this one test (any correction over a family included)
    metric: Literal["score", "success_final", "success_any", "ret", "auc", "heldout_loss",
                    "gain"] = "score"  # fmt: skip

    def __post_init__(self):
        if self.reference is None and self.metric != "gain":
            raise UserError(f"hypothesis {self.name}: name a reference method (only metric gain, "
                            "the lift over each run's own start, is tested against 0)")  # fmt: skip
        for name in (n for n in (self.method, self.reference) if n is not None):
            if name not in METHODS:
                raise UserError(f"hypothesis {self.name}: unknown method {name!r} (eva-rl methods)")
        if self.method == self.reference:
            raise UserError(f"hypothesis {self.name}: method and reference are both {self.method}")
        if not (self.tasks and self.seeds and self.ranks):
            raise UserError(f"hypothesis {self.name}: tasks, seeds and ranks must not be empty")
        if not 0 < self.alpha < 1:
            raise UserError(f"hypothesis {self.name}: alpha must be in (0, 1), not {self.alpha}")

    @property
    def interval_alpha(self) -> float:
        """The level of the interval that agrees with this test: a one-sided test at alpha
        rejects exactly when the two-sided interval at 1 - 2 alpha excludes 0 on its side."""
        return self.alpha if self.alternative == "two-sided" else 2 * self.alpha

    @property
    def planned(self) -> list[tuple[str, int, int]]:
        """The (task, seed, rank) pairs the test waits for."""
        return [(t, s, r) for t in self.tasks for s in self.seeds for r in self.ranks]


@dataclass
class HypothesesFile:
    hypotheses: list[Hypothesis] = field(default_factory=list)

    def __post_init__(self):
        if not self.hypotheses:
            raise UserError("the hypotheses file lists no hypotheses")
        names = [h.name for h in self.hypotheses]
        if len(set(names)) != len(names):
            raise UserError(f"hypothesis names repeat ({', '.join(names)}); give each its own")


def load_hypotheses(path: str | Path) -> list[Hypothesis]:
    return load_config(HypothesesFile, path).hypotheses


@dataclass
class HypothesisTest:
    hypothesis: Hypothesis
    finished: int  # planned pairs with both runs finished
    mean_diff: float | None = None  # the rest only once every planned pair has finished
    ci: tuple[float, float] | None = None  # the inverted two-sided test at `interval_alpha`
    p: float | None = None
    exact: bool = True
    # the same test with each seed's pairs as one block (their mean flipped whole), where a seed
    # has several pairs (tasks, ranks): runs of one seed share batches and evaluation episodes,
    # so their pairs need not be independent, which the registered test assumes
    p_seeds: float | None = None

    @property
    def verdict(self) -> str:
        h = self.hypothesis
        if self.p is None:
            return f"waiting: {self.finished} of {len(h.planned)} pairs finished"
        return f"supported (p < {h.alpha:g})" if self.p < h.alpha else "not supported"


# A registered test enumerates every sign pattern up to this many pairs (2^20: ~1.5 s, ~330 MB),
# so that a design that says "exact" (the budget study's H4 pools 2 tasks x 10 seeds) gets it;
# the tables' many comparisons stay exact up to 16 and Monte Carlo beyond.
EXACT_PAIRS = 20


def evaluate_hypotheses(
    rows: list[Row], hypotheses: list[Hypothesis], planned: set[str] = frozenset()
) -> list[HypothesisTest]:
    """Each hypothesis on its planned pairs among `rows` (every finished run, whatever the
    tables hold): tested once all have finished, else counted. A task must have runs or be
    `planned` by the sweep (one with none finished yet waits)."""
    tasks = {r.task for r in rows} | set(planned)
    out = []
    for h in hypotheses:
        unknown = sorted(set(h.tasks) - tasks)
        if unknown:
            raise UserError(f"hypothesis {h.name} names task(s) no run has and no sweep plans: "
                            f"{', '.join(unknown)}")  # fmt: skip
        ends: dict[tuple[int, ...], str] = {}
        mine = _by_pair(rows, h, h.method, ends)
        theirs = _by_pair(rows, h, h.reference, ends) if h.reference else dict.fromkeys(mine, 0.0)
        pairs = [p for p in h.planned if p in mine and p in theirs]
        if h.reference is not None:
            _check_paired(rows, h, pairs)
        test = HypothesisTest(h, finished=len(pairs))
        if len(pairs) == len(h.planned):
            diffs = np.array([mine[p] - theirs[p] for p in pairs])
            test.mean_diff = float(diffs.mean())
            # symmetric patterns beyond EXACT_PAIRS: a one-sided verdict then still agrees with
            # the two-sided interval at twice its level, as it does exactly below
            patterns = {"exact_up_to": EXACT_PAIRS, "symmetric": True}
            test.ci = sign_flip_interval(diffs, h.interval_alpha, **patterns)
            test.p, test.exact = sign_flip_test(diffs, alternative=h.alternative, **patterns)
            if len(pairs) > len(h.seeds):
                seeds = np.array([seed for _, seed, _ in pairs])
                blocks = [diffs[seeds == seed].mean() for seed in h.seeds]
                test.p_seeds, _ = sign_flip_test(blocks, alternative=h.alternative, **patterns)
        out.append(test)
    return out


def tested_runs(rows: list[Row], hypotheses: list[Hypothesis]) -> list[Path]:
    """The folders of the finished runs that some hypothesis tests (either side of a pair)."""
    found: set[Path] = set()
    for h in hypotheses:
        planned = set(h.planned)
        sides = (h.method, h.reference)
        found |= {r.path for r in rows if r.path is not None and r.method in sides
                  and (r.task, r.seed, r.rank) in planned}  # fmt: skip
    return sorted(found)


def _check_paired(rows: list[Row], h: Hypothesis, pairs) -> None:
    """Both runs of each pair ran the same evaluation (`unpaired`)."""
    runs = {(r.method, r.task, r.seed, r.rank): r for r in rows}
    for task, seed, rank in pairs:
        a, b = runs[(h.method, task, seed, rank)], runs[(h.reference, task, seed, rank)]
        if (why := unpaired(a, b)) is not None:
            raise UserError(f"hypothesis {h.name}: {why}; a pair needs one protocol")


def _by_pair(
    rows: list[Row], h: Hypothesis, method: str, ends: dict[tuple[int, ...], str]
) -> dict[tuple[str, int, int], float]:
    """`method`'s finished runs of the hypothesis's pairs: (task, seed, rank) -> metric. An AUC
    is the registered one only over the whole curve: from step 0 (the run's own evaluation or
    the base agent's) through the same evaluations on every run (`ends`: the curve's steps -> a
    run, shared by both sides; a run missing an evaluation has trapezoids over other spans)."""
    planned, out = set(h.planned), {}
    for r in rows:
        key = (r.task, r.seed, r.rank)
        if r.method != method or key not in planned:
            continue
        if key in out:
            raise UserError(
                f"hypothesis {h.name}: {method} has several runs of task {r.task}, seed {r.seed}, "
                f"rank {r.rank} (sweep variants); report the variant's runs apart"
            )
        value = getattr(r, h.metric)
        if value is None:
            needs = {"gain": " (a step-0 evaluation on the episodes of its last one)",
                     "auc": " (two evaluations or more)"}.get(h.metric, "")  # fmt: skip
            raise UserError(f"hypothesis {h.name}: the run {r.run} has no {h.metric}{needs}")
        if not np.isfinite(value):
            raise UserError(f"hypothesis {h.name}: the run {r.run} has {h.metric} {value} (did "
                            "it diverge?); a sign-flip test needs finite values")  # fmt: skip
        if h.metric == "auc":
            if r.auc_from != 0:
                raise UserError(f"hypothesis {h.name}: the run {r.run}'s curve starts at step "
                                f"{r.auc_from}, not 0 (no step-0 evaluation and no base-agent "
                                "evaluation in _baseline/), so its AUC is not the registered "
                                "one; report it beside its sweep's _baseline/")  # fmt: skip
            ends[auc_steps(r)] = r.run
        out[key] = value
    if len(ends) > 1:
        (a, run_a), (b, run_b) = sorted(ends.items())[:2]
        raise UserError(f"hypothesis {h.name}: the AUCs cover different evaluations ({run_a} at "
                        f"steps {_steps(a)}, {run_b} at steps {_steps(b)}); test runs of one "
                        "budget and schedule that all made every evaluation")  # fmt: skip
    return out


def auc_steps(r: Row) -> tuple[int, ...]:
    """The steps a run's AUC integrates over: its evaluations with a score, from `auc_from`."""
    steps = [step for step, metrics in r.curve if "score" in metrics]
    return tuple(([r.auc_from] if steps and r.auc_from < steps[0] else []) + steps)


def _steps(steps: tuple[int, ...]) -> str:
    return " ".join(str(s) for s in steps)
