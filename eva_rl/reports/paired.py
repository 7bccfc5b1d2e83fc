"""Each configuration against a reference on the same (task, seed) pairs, as pure functions:
the paired statistics of `eva_rl.stats` (sign-flip test and its interval, Holm over the
design's family, probability of improvement, detectable difference)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from eva_rl.adapters.methods import METHODS
from eva_rl.errors import UserError
from eva_rl.reports.aggregate import ConfigStats, config_label
from eva_rl.reports.runs import unpaired
from eva_rl.stats import (
    holm,
    minimum_detectable_difference,
    probability_of_improvement,
    sign_flip_interval,
    sign_flip_test,
)


@dataclass
class TaskDifference:
    task: str
    n: int
    mean_diff: float
    p: float  # two-sided sign-flip test
    exact: bool
    p_holm: float = 1.0  # over the tasks of one comparison


@dataclass
class Comparison:
    """A configuration minus the reference, on their common (task, seed) pairs."""

    label: str
    reference: str
    n: int
    tasks: int
    mean_diff: float
    ci: tuple[float, float]  # 95%, the inverted two-sided sign-flip test
    sd: float  # of the paired differences
    p: float  # sign-flip permutation test
    exact: bool
    p_holm: float = 1.0  # Holm-adjusted over the family (every comparison the sweep plans)
    family: int = 1  # comparisons under Holm's correction, those without runs yet included
    poi: float | None = None  # rliable's probability of improvement
    # smallest true difference detected with 80% power at 5% / family (Holm's strictest step)
    mde: float | None = None
    # pooled comparisons: the (task, seed) blocks the test flips whole (their pairs' mean), as
    # the configurations of one task and seed share its batches and evaluation episodes
    blocks: int | None = None
    # per task with 2+ pairs, where the comparison spans several tasks: exploratory, since no
    # per-task test is fixed before the data (Holm over this comparison's tasks only)
    per_task: list[TaskDifference] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.p_holm < 0.05:
            return "higher" if self.mean_diff > 0 else "lower"
        return "no difference detected"


def reference_of(s: ConfigStats, stats: list[ConfigStats], reference: str):
    """The configuration `s` is compared with under one `--reference` entry: a method name ->
    that method at the same rank (or its only configuration) and variant; `METHOD:REF` -> the
    same, for METHOD's configurations only; `key=value` -> the same configuration with that
    value of a variant key (`precision=fp32`), `k1=v1,k2=v2` with those values of keys a sweep
    varies together (`policy=stochastic,td3.enabled=False`). None if `s` is a reference itself
    or has none."""
    if "=" in reference:
        values, mine = settings(reference), dict(s.variant)
        if all(mine.get(k, v) == v for k, v in values.items()):  # s is the reference itself
            return None
        want = tuple((k, values.get(k, v)) for k, v in s.variant)
        same = (s.method, s.rank, s.rho, want)
        return next((r for r in stats if (r.method, r.rank, r.rho, r.variant) == same), None)
    method, _, reference = reference.rpartition(":")
    if s.method == reference or method not in ("", s.method):
        return None
    refs = [r for r in stats if r.method == reference and r.variant == s.variant]
    return next((r for r in refs if r.rank == s.rank), refs[0] if len(refs) == 1 else None)


def check_reference(stats: list[ConfigStats], reference: str, planned=()) -> None:
    """A `--reference` entry that names no method or no configuration of these runs (or of
    the `planned` ones of their sweep) is an error: a typo would otherwise give a report
    without its comparisons."""
    if "=" in reference:
        variants = {f"{k}={v}" for s in stats for k, v in s.variant}
        if not set(reference.split(",")) <= variants:
            listed = ", ".join(sorted(variants)) or "none: the sweep varies no other key"
            raise UserError(
                f"--reference {reference} matches no configuration (variants: {listed})"
            )
        return
    for name in reference.split(":") if reference.count(":") == 1 else [reference]:
        if name not in METHODS:
            raise UserError(
                f"--reference {reference!r}: {name!r} is not a method; give METHOD, "
                "METHOD:REFERENCE or key=value (see eva-rl methods)"
            )
        if ":" in reference and name not in {s.method for s in [*stats, *planned]}:
            raise UserError(f"--reference {reference}: these runs have no {name} configuration")


def compare(
    stats: list[ConfigStats], references: str | list[str], planned: list[tuple] = ()
) -> list[Comparison]:
    """Every configuration against its reference under each entry of `references`
    (`reference_of`; `["lora", "eva-dora:dora"]`: everything against LoRA, and EVA+DoRA against
    DoRA too), paired by (task, seed); Holm's correction over all of them and over those the
    sweep plans (`planned` configurations) that cannot be tested yet (fewer than 2 finished
    pairs), at p = 1: an interim report's adjusted p-values then hold for the whole family the
    design fixed."""
    references = [references] if isinstance(references, str) else list(references)
    configs = [Planned(m, rank, rho, variant) for m, rank, rho, variant in planned]
    for reference in references:
        check_reference(stats, reference, configs)
    out, seen = [], set()
    for reference in references:
        matched = []
        for s in stats:
            ref = reference_of(s, stats, reference)
            if ref is not None and (s.label, ref.label) not in seen:
                comparison = paired(s, ref)
                if comparison is not None:  # else (< 2 pairs yet) it stays pending below
                    seen.add((s.label, ref.label))
                    out.append(comparison)
                    matched.append((s, ref))
        if "=" in reference:
            out += pooled(matched, reference)
    pending = {
        (c.label, ref.label)
        for reference in references
        for c in configs
        if (ref := reference_of(c, configs, reference)) is not None
    } - seen
    for reference in (r for r in references if "=" in r):  # pooled ones not made yet, too
        made = {value for value, n in _groups(stats, reference, seen).items() if n >= 2}
        fixed = _groups(configs, reference)
        pending |= {(v, reference) for v, n in fixed.items() if n >= 2 and v not in made}
    adjusted = holm([c.p for c in out] + [1.0] * len(pending))
    for c, p in zip(out, adjusted, strict=False):
        c.p_holm, c.family = p, len(adjusted)
        # a verdict needs Holm p < 0.05, which the first step grants only below 0.05 / family
        c.mde = minimum_detectable_difference(c.sd, c.blocks or c.n, alpha=0.05 / c.family)
    return out


@dataclass
class Planned:
    """A configuration a sweep plans, as `reference_of` sees configurations."""

    method: str
    rank: int
    rho: float
    variant: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return config_label(self.method, self.rank, self.rho, self.variant)


def paired(s: ConfigStats, ref: ConfigStats) -> Comparison | None:
    """`s` minus `ref` on the (task, seed) pairs both ran; None with fewer than two."""
    pairs, diffs = differences(s, ref)
    if len(pairs) < 2:
        return None
    comparison = difference(s.label, ref.label, pairs, diffs)
    tasks = sorted({t for t, _ in pairs})
    seeds = sorted({seed for _, seed in pairs})
    if all((t, seed) in set(pairs) for t in tasks for seed in seeds):
        comparison.poi = probability_of_improvement(
            s.matrix(tasks, seeds), ref.matrix(tasks, seeds)
        )
    return comparison


def differences(s: ConfigStats, ref: ConfigStats) -> tuple[list[tuple[str, int]], np.ndarray]:
    """The (task, seed) pairs both ran, sorted, and `s`'s score minus `ref`'s on each."""
    mine = {(r.task, r.seed): r for r in s.rows}
    theirs = {(r.task, r.seed): r for r in ref.rows}
    pairs = sorted(set(mine) & set(theirs))
    for pair in pairs:
        if (why := unpaired(mine[pair], theirs[pair])) is not None:
            raise UserError(f"{s.label} and {ref.label} cannot be paired on {pair[0]}, seed "
                            f"{pair[1]}: {why}; report runs of one protocol together")  # fmt: skip
    return pairs, np.array([mine[p].score - theirs[p].score for p in pairs])


def difference(label: str, reference: str, pairs: list[tuple], diffs: np.ndarray) -> Comparison:
    """The paired statistics of `diffs`, one per pair (task first in each pair's key)."""
    tasks = sorted({t for t, _ in pairs})
    p, exact = sign_flip_test(diffs)
    comparison = Comparison(
        label=label,
        reference=reference,
        n=len(pairs),
        tasks=len(tasks),
        mean_diff=float(diffs.mean()),
        ci=sign_flip_interval(diffs),
        sd=float(diffs.std(ddof=1)),
        p=p,
        exact=exact,
    )
    if len(tasks) > 1:
        comparison.per_task = task_differences(pairs, diffs)
    return comparison


def settings(reference: str) -> dict[str, str]:
    """`--reference k1=v1,k2=v2` -> {k1: v1, k2: v2}."""
    return dict(item.split("=", 1) for item in reference.split(","))


def pooled(matched: list[tuple[ConfigStats, ConfigStats]], reference: str):
    """Under `--reference key=value`, the configurations with another value of `key` against
    themselves at `value`, pooled: one comparison per other value over every (configuration,
    task, seed) pair (`all 4 configurations precision=bf16`), where 2+ configurations have
    one. Does the setting matter, whatever the method? Keys varied together count as one.
    The configurations of one (task, seed) share its batches and evaluation episodes, so their
    differences are not independent: the test flips each (task, seed) block whole (the mean of
    its pairs), and the mean difference is the mean over blocks."""
    out = []
    for other in sorted({values_of(s, reference) for s, _ in matched}):
        group = [(s, ref) for s, ref in matched if values_of(s, reference) == other]
        if len(group) < 2:
            continue
        by_block: dict[tuple[str, int], list[float]] = {}
        for s, ref in group:
            for pair, diff in zip(*differences(s, ref), strict=True):
                by_block.setdefault(pair, []).append(float(diff))
        blocks = sorted(by_block)
        means = np.array([np.mean(by_block[b]) for b in blocks])
        label = f"all {len(group)} configurations {other}"
        comparison = difference(label, reference, blocks, means)
        comparison.n, comparison.blocks = sum(map(len, by_block.values())), len(blocks)
        out.append(comparison)
    return out


def values_of(s, reference: str) -> str:
    """A configuration's values of the keys a `key=value` reference names (`precision=bf16`)."""
    return ",".join(f"{k}={dict(s.variant)[k]}" for k in settings(reference))


def _groups(configs, reference: str, compared: set | None = None) -> dict[str, int]:
    """Other value of `reference`'s keys -> how many configurations with it have a reference
    (only those whose comparison is made, where `compared` holds the made (label, ref) pairs)."""
    return Counter(
        values_of(c, reference)
        for c in configs
        if (ref := reference_of(c, configs, reference)) is not None
        and (compared is None or (c.label, ref.label) in compared)
    )


def task_differences(pairs: list[tuple[str, int]], diffs: np.ndarray) -> list[TaskDifference]:
    """The paired differences split by task (tasks with 2+ pairs), Holm over those tasks."""
    out = []
    for task in sorted({t for t, _ in pairs}):
        mine = diffs[[t == task for t, _ in pairs]]
        if len(mine) >= 2:
            out.append(TaskDifference(task, len(mine), float(mine.mean()), *sign_flip_test(mine)))
    for t, adjusted in zip(out, holm([t.p for t in out]), strict=True):
        t.p_holm = adjusted
    return out
