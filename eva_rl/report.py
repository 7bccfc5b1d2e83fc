"""Reports from runs' own outputs: a run's TensorBoard curves, and for many finetune runs a CSV,
tables with bootstrap intervals beside the paper's figures, plots and a README."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eva_rl.errors import UserError
from eva_rl.stats import interval, success_auc


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a TensorBoard log directory -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        raise UserError(f"no TensorBoard log directory at {log_dir}")
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def plot_training_curve(
    run_dir: str | os.PathLike, out: str | os.PathLike, title: str = ""
) -> None:
    """Training loss and evaluation success of a pretrain/finetune run, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = read_scalars(Path(run_dir) / "tb")
    if "train/loss" not in scalars:
        raise UserError(f"{run_dir} has no train/loss scalars; is it a training run?")
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    steps, losses = zip(*scalars["train/loss"], strict=True)
    ax_loss.plot(steps, losses, lw=1)
    ax_loss.set(xlabel="update", ylabel="action MSE (train)", yscale="log", title="loss")
    for tag, label in (("eval/success_any", "any-step"), ("eval/success_final", "final-step")):
        if tag in scalars:
            s, v = zip(*scalars[tag], strict=True)
            ax_eval.plot(s, v, marker="o", label=label)
    ax_eval.set(xlabel="update", ylabel="success rate", ylim=(0, 1), title="evaluation")
    ax_eval.set_xlim(ax_loss.get_xlim())
    ax_eval.legend()
    fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)


# --- experiments: many finetune runs -> CSV, tables with intervals, plots -----------------------

PAPER = {  # the paper's CW10 average success rates (REFERENCE section 2), for comparison only
    "methods": {
        "fft": 0.92,
        "lora": 0.86,
        "adalora": 0.80,
        "pissa": 0.85,
        "olora": 0.88,
        "eva": 0.90,
        "dora": 0.93,
        "eva-dora": 0.94,
    },  # fmt: skip
    "ranks": {  # method -> {rank: success}
        "lora": {2: 0.84, 4: 0.83, 8: 0.79, 16: 0.82},
        "eva": {2: 0.88, 4: 0.81, 8: 0.85, 16: 0.83},
        "eva-dora": {2: 0.92, 4: 0.94, 8: 0.91, 16: 0.92},
    },
}
RHO_METHODS = ("eva", "eva-dora", "adalora")
ROW_KEYS = (
    "task", "method", "rank", "rho", "seed", "steps", "success", "success_final", "return",
    "best_success", "initial_success", "auc", "final_loss", "trainable_parameters", "total_rank",
    "gradient_signal", "collector_seconds", "train_seconds", "wall_seconds", "run",
)  # fmt: skip


def collect_runs(runs_dir: str | os.PathLike) -> list[dict]:
    """One row per finished finetune run (a `summary.json`) anywhere under `runs_dir`."""
    runs_dir = Path(runs_dir)
    paths = sorted(runs_dir.rglob("summary.json"))
    if not paths:
        raise UserError(f"no finished runs (summary.json) under {runs_dir}; check the path")
    rows = []
    for path in paths:
        s = json.loads(path.read_text())
        final = s["final"]
        rows.append(
            {
                "task": s["task"] or ",".join(s["datasets"]),
                "method": s["method"],
                "rank": s["rank"],
                "rho": s["rho"],
                "seed": s["seed"],
                "steps": s["steps"],
                "success": final.get("success_any"),
                "success_final": final.get("success_final"),
                "return": final.get("return"),
                "best_success": s["best_success_any"],
                "initial_success": s["initial_success_any"],
                "auc": success_auc(s["eval"], s["steps"]),
                "trainable_parameters": s["trainable_parameters"],
                "total_rank": s["total_rank"],
                "gradient_signal": s["gradient_signal"],
                "final_loss": s["final_loss"],
                "collector_seconds": s["collector_seconds"],
                "train_seconds": s["train_seconds"],
                "wall_seconds": s["wall_seconds"],
                "run": str(path.parent.relative_to(runs_dir)),
                "_eval": s["eval"],
                "_ranks": s["ranks"],
            }
        )
    return rows


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    import csv
    import io

    from eva_rl.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_KEYS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _groups(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: [str(v) for v in kv[0]]))


def config_label(method: str, rank: int, rho: float) -> str:
    """`eva r8 rho2`: rank only where it exists, rho only where it matters."""
    if method == "fft":
        return "fft"
    return f"{method} r{rank}" + (f" rho{rho:g}" if method in RHO_METHODS else "")


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per (method, rank, rho): per-task mean success over seeds with a 95% bootstrap
    interval, and over tasks x seeds the IQM and mean with stratified-bootstrap intervals, mean
    AUC, trainable parameters, gradient signal and wall time. Seeds must match across tasks."""
    import numpy as np

    out = []
    for (method, rank, rho), group in _groups(rows, ("method", "rank", "rho")).items():
        by_task = _groups(group, ("task",))
        seeds = {t: sorted(r["seed"] for r in rs) for (t,), rs in by_task.items()}
        if len({tuple(s) for s in seeds.values()}) != 1:
            raise UserError(
                f"{config_label(method, rank, rho)} has different seeds per task ({seeds}); "
                "finish or remove the missing runs"
            )
        matrix = np.array(
            [[r["success"] for r in sorted(rs, key=lambda r: r["seed"])] for rs in by_task.values()]
        ).T  # (seeds, tasks)
        per_task = {t: interval(matrix[:, [i]]) for i, (t,) in enumerate(by_task)}
        out.append(
            {
                "method": method,
                "rank": rank,
                "rho": rho,
                "label": config_label(method, rank, rho),
                "seeds": matrix.shape[0],
                "tasks": matrix.shape[1],
                "per_task": per_task,
                "iqm": interval(matrix, "iqm"),
                "mean": interval(matrix, "mean"),
                "auc": float(np.mean([r["auc"] for r in group])),
                "trainable_parameters": float(np.mean([r["trainable_parameters"] for r in group])),
                "gradient_signal": [r["gradient_signal"] for r in group],
                "wall_seconds": float(np.mean([r["wall_seconds"] for r in group])),
                "final_loss": float(np.mean([r["final_loss"] for r in group])),
                "rows": group,
            }
        )
    return out


def _ci(est: tuple[float, float, float]) -> str:
    return f"{est[0]:.2f} [{est[1]:.2f}, {est[2]:.2f}]"


def markdown_tables(stats: list[dict]) -> str:
    """Average over tasks (with the paper's figure where it has one), then one table per task."""
    import numpy as np

    lines = [
        "| method | IQM success [95% CI] | mean success [95% CI] | AUC | train loss "
        "| grad signal | trainable params | wall s/run | paper: method | paper: this rank "
        "| tasks x seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value):
        return "-" if value is None else f"{value:.2f}"

    for s in stats:
        by_rank = PAPER["ranks"].get(s["method"], {}).get(s["rank"])
        lines.append(
            f"| {s['label']} | {_ci(s['iqm'])} | {_ci(s['mean'])} | {s['auc']:.2f} | "
            f"{s['final_loss']:.4f} | {np.mean(s['gradient_signal']):.3g} | "
            f"{s['trainable_parameters']:,.0f} | {s['wall_seconds']:.0f} | "
            f"{fmt(PAPER['methods'].get(s['method']))} | {fmt(by_rank)} | "
            f"{s['tasks']} x {s['seeds']} |"
        )
    tasks = sorted({t for s in stats for t in s["per_task"]})
    lines += ["", "Final success per task (mean over seeds [95% bootstrap CI over seeds]):", ""]
    lines.append("| method | " + " | ".join(tasks) + " |")
    lines.append("|---|" + "---|" * len(tasks))
    for s in stats:
        cells = [_ci(s["per_task"][t]) if t in s["per_task"] else "-" for t in tasks]
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 configurations, distinct colours
    draw(ax)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def plot_success_vs_steps(stats: list[dict], path: Path) -> None:
    import numpy as np

    def draw(ax):
        for s in stats:
            curves: dict[int, list[float]] = {}
            for row in s["rows"]:
                for e in row["_eval"]:
                    if e.get("success_any") is not None:
                        curves.setdefault(e["step"], []).append(e["success_any"])
            steps = sorted(curves)
            ax.plot(steps, [np.mean(curves[x]) for x in steps], marker="o", ms=3, label=s["label"])
        ax.set(xlabel="fine-tuning updates", ylabel="success rate (mean over tasks x seeds)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2)

    _figure(path, draw)


def plot_success_vs_parameters(stats: list[dict], path: Path) -> None:
    _plot_vs_parameters(stats, path, lambda s: s["mean"], "final success (mean, 95% CI)", (0, 1.05))


def plot_loss_vs_parameters(stats: list[dict], path: Path) -> None:
    """The training loss moves before success does: it separates budgets on short runs."""

    def spread(s):
        losses = [r["final_loss"] for r in s["rows"]]
        return s["final_loss"], min(losses), max(losses)

    _plot_vs_parameters(stats, path, spread, "final training loss (mean, min-max over runs)")


def _plot_vs_parameters(stats, path, interval, ylabel, ylim=None) -> None:
    """One line per method (and rho) through its rank budgets; `interval(s)` -> (y, low, high)."""

    def draw(ax):
        series = _groups([{**s, "series": s["label"].split(" r")[0] + (
            f" rho{s['rho']:g}" if s["method"] in RHO_METHODS else "")} for s in stats],
            ("series",))  # fmt: skip
        for (name,), items in series.items():
            items = sorted(items, key=lambda s: s["trainable_parameters"])
            xs = [s["trainable_parameters"] for s in items]
            ys, lows, highs = zip(*(interval(s) for s in items), strict=True)
            err = [[y - low for y, low in zip(ys, lows, strict=True)],
                   [high - y for y, high in zip(ys, highs, strict=True)]]  # fmt: skip
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
            for s, x, y in zip(items, xs, ys, strict=True):
                if s["method"] != "fft":
                    ax.annotate(f"r{s['rank']}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
        ax.set(xscale="log", xlabel="trainable parameters", ylabel=ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=7)

    _figure(path, draw)


def plot_rank_allocation(stats: list[dict], path: Path) -> bool:
    """Mean rank per layer of EVA runs, one bar group per layer; False if there are none."""
    import numpy as np

    eva = [s for s in stats if s["method"] in ("eva", "eva-dora") and s["rows"][0]["_ranks"]]
    if not eva:
        return False
    layers = list(eva[0]["rows"][0]["_ranks"])

    def draw(ax):
        width = 0.8 / len(eva)
        for i, s in enumerate(eva):
            means = [np.mean([r["_ranks"].get(n, 0) for r in s["rows"]]) for n in layers]
            ax.bar(np.arange(len(layers)) + i * width, means, width, label=s["label"])
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
        ax.set_xticklabels([n.removeprefix("encoder.") for n in layers], rotation=70, fontsize=7)
        ax.set(ylabel="allocated rank (mean over tasks x seeds)")
        ax.legend(fontsize=7)

    _figure(path, draw)
    return True


def plot_gradient_signal(stats: list[dict], path: Path) -> None:
    def draw(ax):
        for i, s in enumerate(stats):
            values = s["gradient_signal"]
            ax.scatter([i] * len(values), values, s=12, alpha=0.7)
            ax.hlines(sum(values) / len(values), i - 0.3, i + 0.3, color="k")
        ax.set_xticks(range(len(stats)))
        ax.set_xticklabels([s["label"] for s in stats], rotation=60, fontsize=7)
        ax.set(yscale="log", ylabel="||grad of loss wrt trainable params|| at init")

    _figure(path, draw)


REPORT_FILES = ("README.md", "runs.csv", "success_vs_steps.png", "success_vs_parameters.png",
                "loss_vs_parameters.png", "rank_allocation.png", "gradient_signal.png")  # fmt: skip


def write_report(
    runs_dir: str | os.PathLike,
    out: str | os.PathLike,
    command: str,
    overwrite: bool = False,
    tasks: list[str] | None = None,
) -> dict:
    """CSV, plots and README.md for every finished run under `runs_dir` (only `tasks`, if
    given). A hand-written `notes.md` in `out` (the discussion) is kept and included."""
    runs_dir, out = Path(runs_dir), Path(out)
    rows = collect_runs(runs_dir)
    if tasks:
        missing = sorted(set(tasks) - {r["task"] for r in rows})
        if missing:
            raise UserError(f"no finished runs of {', '.join(missing)} under {runs_dir}")
        rows = [r for r in rows if r["task"] in tasks]
    if any((out / f).exists() for f in REPORT_FILES) and not overwrite:
        raise UserError(f"{out} already holds a report; pass --overwrite or choose another --out")
    stats = aggregate(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "runs.csv")
    plot_success_vs_steps(stats, out / "success_vs_steps.png")
    plot_success_vs_parameters(stats, out / "success_vs_parameters.png")
    plot_loss_vs_parameters(stats, out / "loss_vs_parameters.png")
    has_ranks = plot_rank_allocation(stats, out / "rank_allocation.png")
    plot_gradient_signal(stats, out / "gradient_signal.png")
    from eva_rl.io import atomic_write_text

    atomic_write_text(out / "README.md", _readme(runs_dir, out, command, rows, stats, has_ranks))
    return {"runs": len(rows), "configs": len(stats), "out": out, "table": markdown_tables(stats)}


def _readme(runs_dir, out, command, rows, stats, has_ranks) -> str:
    first = json.loads((runs_dir / rows[0]["run"] / "summary.json").read_text())["config"]
    tasks = sorted({r["task"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    sweep = runs_dir / "sweep.yaml"
    parts = [
        f"# {out.name}",
        "",
        f"Made by `{command}` from {len(rows)} finished runs under `{runs_dir}`"
        + (
            f", produced by `eva-rl sweep` with this sweep file (`{sweep}`):"
            if sweep.is_file()
            else "."
        ),  # fmt: skip
    ]
    if sweep.is_file():
        parts += ["", "```yaml", sweep.read_text().strip(), "```"]
    parts += [
        "",
        f"Scale: {len(tasks)} task(s) ({', '.join(tasks)}), seeds {seeds}, "
        f"{first['loop']['steps']} updates of batch {first['optim']['batch_size']} per run "
        f"(lr {first['optim']['lr']:g}), evaluation every {first['loop']['eval_every']} updates "
        f"on {first['eval']['episodes']} episodes (seeds {first['eval']['seed']}+i), checkpoint "
        f"`{first['checkpoint']}`. Success = success at any step of a 200-step episode, at the "
        "end of fine-tuning. AUC = area under success vs updates / updates (speed of "
        "adaptation). Train loss = the last logged training action MSE; grad signal = the "
        "gradient norm at initialisation (mean over runs). Intervals: 95% stratified "
        "bootstrap (rliable, 2000 resamples), seeds resampled within tasks; IQM = "
        "interquartile mean over tasks x seeds.",
        "",
        markdown_tables(stats),
        "",
        "Paper columns: its CW10 average success per method (main table) and per rank where it "
        "reports one (LoRA, EVA, EVA+DoRA at r 2/4/8/16; REFERENCE section 2: 3 seeds, 100K "
        "updates, a 4x512 DT): context, not a like-for-like comparison.",
        "",
        "![success vs updates](success_vs_steps.png)",
        "![success vs trainable parameters](success_vs_parameters.png)",
        "![training loss vs trainable parameters](loss_vs_parameters.png)",
        "![gradient signal at initialisation](gradient_signal.png)",
    ]
    if has_ranks:
        parts.append("![EVA rank allocation](rank_allocation.png)")
    parts += ["", "Per-run numbers: `runs.csv`."]
    notes = out / "notes.md"
    if notes.is_file():
        parts += ["", notes.read_text().strip()]
    return "\n".join(parts) + "\n"
