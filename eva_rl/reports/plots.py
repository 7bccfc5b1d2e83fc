"""Report figures (matplotlib, Agg): learning curves with seed bands per task, a forest plot of
paired differences, per-task bars with per-seed dots, score/held-out loss/AUC against
trainable parameters, EVA's rank allocation, the gradient signal at initialisation, and one
training run's curves. One hue per method, lighter for smaller ranks; legends in the report's
(registry, then numeric) order. Every figure is written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from eva_rl.adapters.methods import METHODS
from eva_rl.errors import UserError
from eva_rl.reports.runs import variant_text
from eva_rl.results import EvalResult

SCORE_LABEL = {
    "success_final": "success rate (final step)",
    "normalized_return": "normalised return",
    "return": "return",
}


def figure(rows: int = 1, cols: int = 1, **kwargs):
    """A figure and its axes, without pyplot (no backend, no global state to close)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", (7.5, 4.5)))
    return fig, fig.subplots(rows, cols, **kwargs)


def save(fig, path: Path) -> None:
    """Write the figure beside `path`, in the format its extension names (`curve --out c.pdf`),
    and rename it into place."""
    kind = path.suffix.lower().removeprefix(".")
    formats = set(fig.canvas.get_supported_filetypes()) - {"pgf"}  # pgf needs a TeX install
    if kind not in formats:
        endings = ", ".join("." + f for f in sorted(formats))
        raise UserError(f"cannot write a figure as {path}: its extension names the format; end "
                        f"it with one of {endings} (e.g. .png)")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.{kind}")
    try:
        fig.savefig(tmp, dpi=120, format=kind)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def colours(stats) -> dict[str, tuple]:
    """Configuration label -> colour: a hue per method, lighter for its smaller ranks."""
    import matplotlib

    palette = [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["Dark2"].colors]
    order = list(METHODS)
    out = {}
    for method in dict.fromkeys(s.method for s in stats):
        index = order.index(method) if method in order else len(order)
        base = np.array(palette[index % len(palette)])
        mine = [s for s in stats if s.method == method]
        for i, s in enumerate(mine):
            light = 0.55 * (len(mine) - 1 - i) / max(len(mine) - 1, 1)  # largest rank: full hue
            out[s.label] = tuple(base + (1 - base) * light)
    return out


def learning_curves(
    stats, points, base: dict[str, float], path: Path, score: str, unit: str = "updates"
) -> None:
    """One panel per task: score vs `unit` (updates, or env steps online), mean over seeds with
    its 95% band (`points`, from `aggregate.curves`); the base agent's score dashed."""
    tasks = sorted({t for s in stats for t in s.tasks})
    cols = min(len(tasks), 3)
    rows = -(-len(tasks) // cols)
    fig, axes = figure(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    colour = colours(stats)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for s in stats:
            mine = [p for p in points if p.config == s.label and p.task == task]
            if not mine:
                continue
            steps = [p.step for p in mine]
            ax.plot(steps, [p.mean for p in mine], marker="o", ms=3, color=colour[s.label],
                    label=s.label)  # fmt: skip
            ax.fill_between(steps, [p.low for p in mine], [p.high for p in mine],
                            color=colour[s.label], alpha=0.15, lw=0)  # fmt: skip
        if task in base:
            ax.axhline(base[task], color="k", ls="--", lw=1, label="base agent")
        ax.set(title=task, xlabel=f"fine-tuning {unit}", ylabel=SCORE_LABEL.get(score, score))
        if score == "success_final":
            ax.set_ylim(-0.02, 1.02)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    # as many columns as the longest label allows (an 8 pt character ~0.075 in, a marker and
    # gap ~0.6 in), the figure taller by the rows that makes
    width, height = fig.get_size_inches()
    entry = 0.6 + 0.075 * max(map(len, labels), default=0)
    ncol = max(1, min(len(labels), 6, int(width // entry)))
    below = 0.15 + 0.2 * -(-len(labels) // ncol)  # inches for the legend's rows
    fig.set_size_inches(width, height + below)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, below / (height + below), 1, 1))
    save(fig, path)


def forest(comparisons, path: Path, score: str) -> None:
    """Each configuration minus its reference: mean paired difference, 95% inverted sign-flip
    interval, Holm-adjusted p and the number of pairs."""
    fig, ax = figure(figsize=(7.5, 0.45 * len(comparisons) + 1.4))
    ys = np.arange(len(comparisons))[::-1]
    # the axis holds every finite end and every mean (a return's differences exceed 1 even
    # where no interval is finite), with room for an unbounded end
    finite = [abs(x) for c in comparisons for x in (*c.ci, c.mean_diff) if np.isfinite(x)]
    reach = 1.1 * max([1.0, *finite])
    for y, c in zip(ys, comparisons, strict=True):
        low, high = np.clip(c.ci, -reach, reach)  # unbounded (5 pairs or fewer): to the edge
        ax.errorbar(c.mean_diff, y, xerr=[[c.mean_diff - low], [high - c.mean_diff]],
                    fmt="o", color="k" if c.p_holm < 0.05 else "0.5", capsize=3)  # fmt: skip
        ax.annotate(f"p_holm {c.p_holm:.2g}, n {c.n}", (high, y), xytext=(4, -3),
                    textcoords="offset points", fontsize=7)  # fmt: skip
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ys, [f"{c.label} - {c.reference}" for c in comparisons], fontsize=8)
    ax.set_xlabel(f"paired difference in {SCORE_LABEL.get(score, score)} (95% CI)")
    fig.tight_layout()
    save(fig, path)


def per_task(stats, baselines: dict[str, EvalResult], path: Path, score: str) -> None:
    """Bars: mean final score per task and configuration; dots: the seeds; dashes: the base."""
    tasks = sorted({t for s in stats for t in s.tasks})
    fig, ax = figure(figsize=(max(7.5, 1.1 * len(tasks) * max(len(stats), 2) / 3), 4.5))
    width = 0.8 / len(stats)
    colour = colours(stats)
    rng = np.random.default_rng(0)
    for i, s in enumerate(stats):
        xs = np.arange(len(tasks)) + (i - (len(stats) - 1) / 2) * width
        for x, task in zip(xs, tasks, strict=True):
            values = [r.score for r in s.rows if r.task == task]
            if not values:
                continue
            ax.bar(x, np.mean(values), width, color=colour[s.label],
                   label=s.label if task == tasks[0] else None)  # fmt: skip
            jitter = rng.uniform(-width / 4, width / 4, len(values))
            ax.scatter(x + jitter, values, s=6, color="k", alpha=0.6, zorder=3)
    for j, task in enumerate(tasks):
        if task in baselines:
            ax.hlines(baselines[task].mean("score"), j - 0.45, j + 0.45, colors="k",
                      linestyles="--", lw=1, label="base agent" if j == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, fontsize=8)
    ax.set_ylabel(f"final {SCORE_LABEL.get(score, score)}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save(fig, path)


def budget(stats, path: Path, score: str, unit: str = "updates") -> None:
    """Final score, held-out loss (training loss where runs had no held-out split) and AUC
    against trainable parameters, each a mean over tasks x seeds with its 95% interval: one
    line per method (and variant: precision, policy, ...) through its ranks (labelled), a line
    style per rho."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    loss = "heldout_loss" if all(s.means["heldout_loss"] is not None for s in stats) else None
    panels = [
        ("score", f"final {SCORE_LABEL.get(score, score)}"),
        (loss or "final_loss", "held-out action loss" if loss else "training action loss"),
        ("auc", f"area under the score curve / {unit}"),
    ]
    fig, axes = figure(1, 3, figsize=(15, 4.2))
    colour = colours(stats)
    series: dict[str, list] = {}
    for s in stats:
        spec = METHODS.get(s.method)
        key = s.method + (f" rho{s.rho:g}" if spec and spec.uses_rho else "")
        key += f" {variant_text(s.variant)}" if s.variant else ""
        series.setdefault(key, []).append(s)
    rhos = sorted({s.rho for s in stats if METHODS.get(s.method) and METHODS[s.method].uses_rho})
    styles = dict(zip(rhos[::-1], ["-", "--", ":", "-."] * len(rhos), strict=False))
    for ax, (metric, ylabel) in zip(axes, panels, strict=True):
        for k, (name, items) in enumerate(series.items()):
            items = sorted(items, key=lambda s: s.means["trainable_parameters"])
            spans = [s.mean if metric == "score" else s.intervals.get(metric) for s in items]
            if any(span is None for span in spans):
                continue
            xs = [s.means["trainable_parameters"] for s in items]
            ys = [m for m, _, _ in spans]
            err = [[m - low for m, low, _ in spans], [high - m for m, _, high in spans]]
            spec = METHODS.get(items[0].method)
            style = styles.get(items[0].rho, "-") if spec and spec.uses_rho else "-"
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name, ls=style,
                        color=colour[items[-1].label])  # fmt: skip
            for s, x, y in zip(items, xs, ys, strict=True):
                if not spec or not spec.trains_full_model:
                    ax.annotate(f"r{s.rank}", (x, y), fontsize=7, xytext=(3, 3 + 7 * (k % 3)),
                                textcoords="offset points")  # fmt: skip
        ax.set(xscale="log", xlabel="trainable parameters", ylabel=ylabel)
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def _is_eva(method: str) -> bool:
    spec = METHODS.get(method)
    return spec is not None and spec.needs_eva_state


def rank_allocation(stats, path: Path) -> bool:
    """Mean rank per layer of the EVA-initialised runs; False (nothing drawn) if there are none."""
    eva = [s for s in stats if _is_eva(s.method) and s.rows[0].ranks]
    if not eva:
        return False
    layers = list(eva[0].rows[0].ranks)
    fig, ax = figure()
    width = 0.8 / len(eva)
    colour = colours(stats)
    for i, s in enumerate(eva):
        means = [np.mean([r.ranks.get(n, 0) for r in s.rows]) for n in layers]
        ax.bar(
            np.arange(len(layers)) + i * width, means, width, label=s.label, color=colour[s.label]
        )
    ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
    ax.set_xticklabels([n.removeprefix("encoder.") for n in layers], rotation=70, fontsize=7)
    ax.set(ylabel="allocated rank (mean over tasks x seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return True


def gradient_signal(stats, path: Path) -> None:
    fig, ax = figure()
    colour = colours(stats)
    for i, s in enumerate(stats):
        values = [r.gradient_signal for r in s.rows]
        ax.scatter([i] * len(values), values, s=12, alpha=0.7, color=colour[s.label])
        ax.hlines(np.mean(values), i - 0.3, i + 0.3, color="k")
    ax.set_xticks(range(len(stats)))
    ax.set_xticklabels([s.label for s in stats], rotation=60, fontsize=7)
    ax.set(yscale="log", ylabel="||grad of loss wrt trainable params|| at init")
    fig.tight_layout()
    save(fig, path)


def training_curve(scalars: dict[str, list[tuple[int, float]]], path: Path, title: str) -> None:
    """One run: training (and held-out) loss, and every evaluation score it logged."""
    fig, (ax_loss, ax_eval) = figure(1, 2, figsize=(11, 4))
    for tag, label in (("train/loss", "training"), ("eval/heldout_loss", "held-out")):
        if tag in scalars:
            steps, values = zip(*scalars[tag], strict=True)
            ax_loss.plot(steps, values, lw=1, marker="o" if tag.startswith("eval") else None,
                         label=label)  # fmt: skip
    ax_loss.set(xlabel="update", ylabel="action MSE", yscale="log", title="loss")
    ax_loss.legend()
    success = [t for t in ("eval/success_final", "eval/success_any") if t in scalars]
    tags = success or [t for t in ("eval/normalized_return", "eval/return") if t in scalars][:1]
    for tag in tags:
        s, v = zip(*scalars[tag], strict=True)
        ax_eval.plot(s, v, marker="o", label=tag.removeprefix("eval/"))
    ylabel = "success rate" if success else (tags[0].removeprefix("eval/") if tags else "")
    ax_eval.set(xlabel="update", ylabel=ylabel, title="evaluation")
    if success:
        ax_eval.set_ylim(0, 1)
    ax_eval.set_xlim(ax_loss.get_xlim())
    if tags:
        ax_eval.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
