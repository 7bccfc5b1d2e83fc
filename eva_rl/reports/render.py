"""A report's README: provenance, scale, legends and sections around the tables
(`eva_rl.reports.tables`). Pure text from aggregated numbers."""

from __future__ import annotations

from pathlib import Path

from eva_rl.reports.aggregate import row_label
from eva_rl.reports.plots import SCORE_LABEL
from eva_rl.reports.tables import (
    comparison_table,
    configuration_table,
    hypothesis_table,
    task_difference_table,
    task_table,
    timeline_table,
)
from eva_rl.reports.timeline import timelines
from eva_rl.results import STEP_UNITS
from eva_rl.sweeps import SWEEP_FILE, sweep_status


def describe_references(references) -> str:
    """`--reference` entries in words."""
    words = []
    for entry in [references] if isinstance(references, str) else references:
        if "=" in entry:
            words.append(
                f"each configuration against the same one with {entry}, and those of each other "
                "value pooled over their (configuration, task, seed) pairs, tested with each "
                "(task, seed) block's mean flipped whole, as its configurations share batches "
                "and evaluation episodes"
            )
        elif ":" in entry:
            method, reference = entry.split(":")
            words.append(f"{method} against {reference} at the same rank")
        else:
            words.append(f"every method against {entry} at the same rank")
    return "; ".join(words)


def partial_note(left_out, runs_dir: Path | None) -> str:
    """What an interim report of a running sweep holds: each configuration's seeds finished on
    every task; the finished runs it leaves out, and the sweep's progress where its index is
    (one sweep's: `runs_dir`)."""
    seeds: dict[str, set[int]] = {}
    for r in left_out:
        seeds.setdefault(row_label(r), set()).add(r.seed)
    listed = "; ".join(f"{label}: seeds {sorted(s)}" for label, s in seeds.items())
    text = "**Interim report** (`--partial`): the tables hold whole seeds only"
    if runs_dir is not None and (status := sweep_status(runs_dir)):
        text += f"; the sweep has finished {len(status.done)} of its {status.total} runs"
    if left_out:
        text += (f"; {len(left_out)} finished runs are left out because their seed is not yet "
                 f"finished on every task ({listed})")  # fmt: skip
    return text + "."


def readme(
    name: str, command: str, runs_dirs: list[Path], rows, stats, comparisons, reference: str,
    baselines, plots, notes, left_out=None, hypotheses=None,
) -> str:  # fmt: skip
    score = rows[0].score_name
    parts = [f"# {name}", "", *_provenance(command, runs_dirs, rows)]
    if left_out is not None:
        parts += ["", partial_note(left_out, runs_dirs[0] if len(runs_dirs) == 1 else None)]
    parts += [
        "",
        _scale(rows),
        "",
        _score_legend(score, STEP_UNITS[rows[0].step_unit], rows),
        "",
        configuration_table(stats, score),
        "",
        "Final score per task (mean over seeds [95% bootstrap CI over seeds]"
        + ("; the base agent on the same evaluation episodes):" if baselines else "):"),
        "",
        task_table(stats, baselines, score),
    ]
    if comparisons:
        steps = timelines(stats, comparisons)
        parts += _comparison_section(comparisons, reference, score, steps, rows[0].step_unit)
    if hypotheses is not None:
        parts += _hypothesis_section(*hypotheses, score)
    parts += ["", *[f"![{title}]({file})" for file, title in plots]]
    parts += ["", "Per-run numbers: `runs.csv`; the learning curves' points (per configuration, "
              "task and evaluation: mean over seeds with a 95% t-interval): `curves.csv`. "
              "Method-level TensorBoard runs (means over tasks x seeds, and per task): "
              "`tensorboard --logdir tensorboard`."]  # fmt: skip
    if notes:
        parts += ["", notes.strip()]
    return "\n".join(parts) + "\n"


def _provenance(command: str, runs_dirs: list[Path], rows) -> list[str]:
    """The command, the runs it read and the sweep files that produced them."""
    made = f"Made by `{command}` from {len(rows)} finished runs under "
    sweeps = [(d, d / SWEEP_FILE) for d in runs_dirs if (d / SWEEP_FILE).is_file()]
    if len(runs_dirs) == 1:
        parts = [made + f"`{runs_dirs[0]}`" + (
            f", produced by `eva-rl sweep` with this sweep file (`{sweeps[0][1]}`):"
            if sweeps else "."
        )]  # fmt: skip
    else:
        parts = [made + " and ".join(f"`{d}`" for d in runs_dirs) + "."]
    for runs_dir, sweep in sweeps:
        if len(runs_dirs) > 1:
            n = sum(1 for r in rows if r.path.is_relative_to(runs_dir))
            parts += ["", f"The {n} under `{runs_dir}` were produced by `eva-rl sweep` with "
                      f"this sweep file (`{sweep}`):"]  # fmt: skip
        parts += ["", "```yaml", sweep.read_text().strip(), "```"]
    return parts


def _scale(rows) -> str:
    """Tasks, seeds, budget and evaluation schedule of the runs (the first run's config; the
    budget and learning rate each run's, where the configurations differ in them)."""
    first = rows[0].summary.config

    def each(get) -> str:  # the runs' distinct values, in their order
        return " / ".join(dict.fromkeys(str(get(r.summary.config)) for r in rows))

    optim, evaluation = first["optim"], first["eval"]
    tasks = sorted({r.task for r in rows})
    seeds = sorted({r.seed for r in rows})
    final_eps = evaluation.get("final_episodes") or evaluation["episodes"]
    precisions = ", ".join(sorted({r.precision for r in rows}))
    if rows[0].step_unit == "env_steps":  # an online run: its budget is interactions
        when = [f"every {first['eval_every']} env steps"]
        env_steps = each(lambda c: c["env_steps"])
        budget = (
            f"{env_steps} env steps per run ({first['rollouts']} episode(s) per env, "
            f"then {first['updates']} updates of batch {optim['batch_size']}, per iteration; "
            f"exploration target {first['rtg_scale']:g} x the best offline return; "
            f"policy loss: {_online_losses(rows, with_td3=True)}; "
        )
    else:
        loop = first["loop"]
        when = [f"every {loop['eval_every']} updates"] if loop["eval_every"] else []
        if loop.get("eval_at"):
            when.append("after " + ", ".join(str(s) for s in loop["eval_at"]) + " updates")
        steps = each(lambda c: c["loop"]["steps"])
        budget = f"{steps} updates of batch {optim['batch_size']} per run ("
    return (
        f"Scale: {len(tasks)} task(s) ({', '.join(tasks)}), seeds {seeds}, {budget}"
        f"lr {each(lambda c: format(c['optim']['lr'], 'g'))}, {precisions}), "
        f"evaluations {' and '.join(when) or 'only'} on {evaluation['episodes']} episodes "
        f"and at the end on {final_eps} (seeds {evaluation['seed']}+i, the same episodes for "
        f"every run of a task), checkpoint `{first['checkpoint']}`."
    )


def _online_losses(rows, with_td3: bool = False) -> str:
    """The supervised loss the online runs trained (logged as train/loss), with TD3's term
    where it was on; the distinct ones, in the runs' order, joined by ' / '."""
    seen: dict[str, None] = {}
    for row in rows:
        config = row.summary.config
        if config.get("policy", "stochastic") == "deterministic":
            loss = f"action MSE (deterministic policy, exploration noise {config['expl_noise']:g})"
        else:
            loss = "ODT loss (negative log-likelihood - temperature x entropy)"
        td3 = config.get("td3", {})
        if with_td3 and td3.get("enabled"):
            loss += f" plus TD3's {td3['coef']:g} x -Q"
        seen[loss] = None
    return " / ".join(seen)


def _late_auc(rows, one: str) -> str:
    """Where some runs' AUC cannot start at 0 (no evaluation there, no base-agent baseline),
    and where runs with a single score have none."""
    late = [r.auc_from for r in rows if r.auc is not None and r.auc_from]
    text = ""
    if late:
        start = f"{one} {min(late):,}" + ("" if len(set(late)) == 1 else f"-{max(late):,}")
        text = (f"; here {len(late)} of {len(rows)} runs have no score at 0 (no evaluation "
                "there, no baseline), so theirs spans from their first evaluation "
                f"({start})")  # fmt: skip
    if single := sum(r.auc is None for r in rows):
        text += (f"; {single} of {len(rows)} runs have a single score (one evaluation, no "
                 "baseline) and no AUC")  # fmt: skip
    return text


def _score_legend(score: str, unit: str, rows) -> str:
    paper_metric = " (the paper's metric; success at any step of the episode beside it)."
    one = unit.removesuffix("s")
    return (
        f"**Score** = {SCORE_LABEL[score]} at the end of fine-tuning"
        + (paper_metric if score == "success_final" else ".")
        + f" AUC = area under the score curve from {one} 0 (the base agent's score where a "
        f"run did not evaluate there) divided by the {unit}{_late_auc(rows, one)}: higher = "
        "faster adaptation"
        + (" (online: sample efficiency). " if unit == "env steps" else ". ")
        + "Held-out loss = action MSE on the episodes held out of training; train loss = the last "
        + (f"logged {_online_losses(rows)}" if unit == "env steps" else "logged training MSE")
        + "; grad signal = gradient norm at initialisation (mean over runs). "
        "Intervals: 95% stratified bootstrap (rliable, 2000 resamples), seeds resampled within "
        "tasks; IQM = interquartile mean over tasks x seeds."
    )


def _comparison_section(comparisons, reference, score: str, steps, step_unit) -> list[str]:
    pending = comparisons[0].family - len(comparisons)
    family = "the comparisons below" + (
        f" and the {pending} more the sweep plans, with fewer than 2 finished pairs (counted "
        "as p = 1, so these adjusted p-values hold for the whole family)"
        if pending else ""
    )  # fmt: skip
    parts = [
        "",
        f"**Paired comparisons** ({describe_references(reference)}), on the (task, seed) "
        "pairs both ran (same training batches, same "
        "evaluation episodes): mean difference with the 95% interval that inverts the "
        "two-sided sign-flip permutation test (exact up to 16 pairs, else 100,000 random "
        "sign patterns: MC), so an interval excludes 0 exactly when p < 0.05 (unbounded "
        f"with 5 pairs or fewer), Holm's correction over {family}, "
        "rliable's probability of improvement, and the smallest true "
        "difference a paired t-test at 5% / the family size (the level Holm's first step "
        "asks of a comparison) would detect with 80% power given the observed spread of "
        "the differences ('-': none is detectable, n pairs cannot give a sign-flip p below "
        "2 / 2^n, or the differences have no spread to scale by). A verdict other than "
        "'no difference detected' needs Holm p < 0.05.",
        "",
        comparison_table(comparisons, score),
    ]
    if per_task := task_difference_table(comparisons, score):
        units = "pairs (blocks, where a comparison flips blocks)"
        units = units if any(c.blocks for c in comparisons) else "pairs"
        parts += [
            "",
            "Per task (exploratory: no per-task test was fixed before the data, so these "
            "suggest hypotheses for a next study, they do not confirm any): mean difference "
            f"({units}; two-sided sign-flip p, Holm over the comparison's tasks). n pairs "
            "cannot give a p below 2 / 2^n (0.25 with 3).",
            "",
            per_task,
        ]
    if steps:
        parts += [
            "",
            "When the differences appear (descriptive: one row per evaluation, no correction "
            "over evaluations; the tables above test the last one): mean paired difference in "
            "the score at each evaluation [inverted sign-flip 95% interval] (pairs; p).",
            "",
            timeline_table(steps, score, STEP_UNITS[step_unit]),
        ]
    return parts


def _hypothesis_section(path, tests, registration, score: str) -> list[str]:
    return [
        "",
        f"**Pre-registered hypotheses** (`{path}`): each is tested once, when all its planned "
        "(task, seed, rank) pairs have finished, with the sign-flip permutation test of the "
        "mean paired difference in the direction it names (exact up to 20 pairs) at its own "
        "level; until then it waits, untested. Its interval inverts the two-sided test at the "
        "level that agrees with the verdict (1 - alpha; 1 - 2 alpha for a one-sided test, "
        "which rejects exactly when that interval excludes 0 on its side). Where a seed has "
        "several pairs (tasks, ranks), those share the seed's batches and evaluation episodes "
        "and need not be independent as the test assumes: the last column repeats the test "
        "with each seed's pairs as one block (their mean flipped whole), a check of that "
        "assumption, not the registered test. The file:",
        "",
        "```yaml",
        Path(path).read_text().strip(),
        "```",
        "",
        registration.sentence(),
        "",
        hypothesis_table(tests, score),
    ]
