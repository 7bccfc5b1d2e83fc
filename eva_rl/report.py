"""Reports from a run's own outputs: TensorBoard scalars read back, plotted with matplotlib."""

from __future__ import annotations

import os
from pathlib import Path

from eva_rl.errors import UserError


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


def stratified_bootstrap_ci(
    groups: list, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of the mean of group means, resampling within each group (rliable's
    stratified bootstrap; groups = tasks, values = episodes or seeds)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    stats = np.zeros(resamples)
    for a in arrays:
        idx = rng.integers(0, len(a), size=(resamples, len(a)))
        stats += a[idx].mean(axis=1)
    stats /= len(arrays)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)
