"""Markdown tables of a report: configurations, tasks, paired comparisons, per-task
differences, hypotheses and the timeline of differences. Pure text from aggregated numbers."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from eva_rl import markdown
from eva_rl.reports.plots import SCORE_LABEL
from eva_rl.results import EvalResult


@cache
def paper() -> dict:
    """The paper's figures (`paper.yaml`): context for the tables."""
    return yaml.safe_load((Path(__file__).with_name("paper.yaml")).read_text())


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ci(est, spec: str, seeds: int) -> str:
    """Mean [low, high]; one seed has no interval over seeds to show."""
    if seeds < 2:
        return f"{est[0]:{spec}} (one seed)"
    return f"{est[0]:{spec}} [{est[1]:{spec}}, {est[2]:{spec}}]"


def score_spec(score: str) -> str:
    return ".2f" if score == "success_final" else ".1f"


def difference_spec(score: str) -> str:
    """Differences of success rates carry a third decimal (0.049 vs 0.05 matters in a test)."""
    return ".3f" if score == "success_final" else ".1f"


def configuration_table(stats, score: str) -> str:
    spec = score_spec(score)
    success = score == "success_final"
    header = ["configuration", f"{SCORE_LABEL[score]}: mean [95% CI]", "IQM [95% CI]"]
    header += ["any-step success"] if success else []
    header += ["AUC", "held-out loss", "train loss", "grad signal", "trainable params"]
    header += ["wall s/run"] + (["paper: method", "paper: this rank"] if success else [])
    rows = []
    for s in stats:
        m = s.means
        cells = [s.label, _ci(s.mean, spec, s.seeds), _ci(s.iqm, spec, s.seeds)]
        if success:
            cells.append(_fmt(m["success_any"], ".2f"))
        cells += [
            _fmt(m["auc"], spec),
            _fmt(m["heldout_loss"], ".4f"),
            _fmt(m["final_loss"], ".4f"),
            _fmt(m["gradient_signal"], ".3g"),
            f"{m['trainable_parameters']:,.0f}",
            f"{m['wall_seconds']:.0f}",
        ]
        if success:
            by_rank = paper()["ranks"].get(s.method, {}).get(s.rank)
            cells += [_fmt(paper()["methods"].get(s.method), ".2f"), _fmt(by_rank, ".2f")]
        rows.append([*cells, f"{len(s.tasks)} x {s.seeds}"])
    return markdown.table([*header, "tasks x seeds"], rows)


def task_table(stats, baselines: dict[str, EvalResult], score: str) -> str:
    spec = score_spec(score)
    tasks = sorted({t for s in stats for t in s.tasks})
    rows = []
    if any(t in baselines for t in tasks):
        cells = [_fmt(baselines[t].mean("score"), spec) if t in baselines else "-" for t in tasks]
        rows.append(["base agent (no fine-tuning)", *cells])
    for s in stats:
        cells = [_ci(s.per_task[t], spec, s.seeds) if t in s.per_task else "-" for t in tasks]
        rows.append([s.label, *cells])
    return markdown.table(["configuration", *tasks], rows)


def comparison_table(comparisons, score: str) -> str:
    spec = difference_spec(score)
    header = [
        "configuration", "reference", "pairs (tasks)", "mean difference [95% paired CI]",
        "sign-flip p", "Holm p", "P(improvement)", "detectable at 80% power", "verdict",
    ]  # fmt: skip
    rows = []
    for c in comparisons:
        p = f"{c.p:.3g}" + ("" if c.exact else " (MC)")
        diff = f"{c.mean_diff:+{spec}} [{c.ci[0]:+{spec}}, {c.ci[1]:+{spec}}]"
        pairs = f"{c.n} ({c.tasks})" + (f" in {c.blocks} blocks" if c.blocks else "")
        rows.append([c.label, c.reference, pairs, diff, p, f"{c.p_holm:.3g}",
                     _fmt(c.poi, ".2f"), _fmt(c.mde, spec), c.verdict])  # fmt: skip
    return markdown.table(header, rows)


def task_difference_table(comparisons, score: str) -> str:
    """Each comparison's mean difference per task, its sign-flip p and Holm over its tasks;
    empty where no comparison spans several tasks with 2+ pairs each."""
    spec = difference_spec(score)
    tasks = sorted({t.task for c in comparisons for t in c.per_task})
    if not tasks:
        return ""
    rows = []
    for c in (c for c in comparisons if c.per_task):
        by = {t.task: t for t in c.per_task}
        cells = [
            f"{by[t].mean_diff:+{spec}} ({by[t].n}; p {by[t].p:.2g}"
            + ("" if by[t].exact else " MC") + f", Holm {by[t].p_holm:.2g})"
            if t in by else "-"
            for t in tasks
        ]  # fmt: skip
        rows.append([c.label, c.reference, *cells])
    return markdown.table(["configuration", "reference", *tasks], rows)


def hypothesis_table(tests, score: str) -> str:
    spec = difference_spec(score)
    header = ["hypothesis", "claim", "comparison (metric)", "tasks; ranks; seeds", "pairs",
              "mean difference [paired CI, level]", "p (alternative)", "alpha", "verdict",
              "p, seeds as blocks"]  # fmt: skip
    rows = []
    for t in tests:
        h = t.hypothesis
        metric = {"score": score, "gain": f"{score} at the end - at step 0"}.get(h.metric, h.metric)
        where = f"{', '.join(h.tasks)}; r {', '.join(map(str, h.ranks))}; {len(h.seeds)} seeds"
        level = f"{100 * (1 - h.interval_alpha):.3g}%"
        diff = (
            f"{t.mean_diff:+{spec}} [{t.ci[0]:+{spec}}, {t.ci[1]:+{spec}}] {level}"
            if t.p is not None else "-"
        )  # fmt: skip
        p = "-" if t.p is None else f"{t.p:.3g}" + ("" if t.exact else " MC")
        comparison = f"{h.method} - {h.reference}" if h.reference else f"{h.method} vs 0"
        rows.append([h.name, h.claim, f"{comparison} ({metric})", where,
                     f"{t.finished} of {len(h.planned)}", diff, f"{p} ({h.alternative})",
                     f"{h.alpha:g}", t.verdict, _fmt(t.p_seeds, ".3g")])  # fmt: skip
    return markdown.table(header, rows)


def timeline_table(steps, score: str, unit: str = "updates") -> str:
    """One row per comparison, one column per evaluation step (`unit`: updates, env steps)."""
    spec = difference_spec(score)
    columns = sorted({d.step for _, rows in steps for d in rows})
    rows = []
    for c, differences in steps:
        at = {d.step: d for d in differences}
        cells = [
            f"{d.mean_diff:+{spec}} [{d.ci[0]:+{spec}}, {d.ci[1]:+{spec}}] ({d.n}; p {d.p:.2g})"
            if (d := at.get(step)) else "-"
            for step in columns
        ]  # fmt: skip
        rows.append([f"{c.label} - {c.reference}", *cells])
    one = unit.removesuffix("s")
    return markdown.table(["comparison", *(f"{one} {s}" for s in columns)], rows)
