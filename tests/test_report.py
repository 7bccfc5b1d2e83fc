"""Report statistics against hand-computed values, and the report files from run summaries."""

import csv
import json

import numpy as np
import pytest

from eva_rl.cli import main
from eva_rl.report import aggregate, collect_runs
from eva_rl.stats import interval, success_auc


def test_iqm_and_mean_of_a_known_matrix():
    scores = np.array([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 1.0]])  # 2 seeds x 4 tasks
    iqm, low, high = interval(scores, "iqm")
    assert iqm == pytest.approx(0.35)  # middle half of the 8 values: 0.2, 0.3, 0.4, 0.5
    assert low <= iqm <= high
    mean, low, high = interval(scores, "mean")
    assert mean == pytest.approx(0.3875) and low < mean < high
    assert interval(np.full((3, 2), 0.7)) == pytest.approx((0.7, 0.7, 0.7))  # no spread


def test_bootstrap_interval_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few = rng.random((3, 4))
    many = rng.random((300, 4))
    assert np.ptp(interval(many)[1:]) < np.ptp(interval(few)[1:]) / 4


def test_success_auc_is_the_trapezoid_area_over_the_span():
    evals = [{"step": 0, "success_any": 0.0}, {"step": 100, "success_any": 0.5}]
    evals.append({"step": 300, "success_any": 1.0})
    assert success_auc(evals, 300) == pytest.approx((100 * 0.25 + 200 * 0.75) / 300)
    assert success_auc(evals[:1], 300) is None


def write_run(root, task, method, rank, seed, finals, trainable=1000):
    """A finetune summary.json with evaluations at 0, 50, 100 ending in `finals`."""
    run = root / f"{task}/{method}-r{rank}-s{seed}"
    run.mkdir(parents=True)
    pairs = zip((0, 50, 100), finals, strict=True)
    evals = [{"step": s, "success_any": v, "return": 10.0 * v} for s, v in pairs]
    summary = {
        "method": method, "task": task, "datasets": [f"metaworld/{task}/scripted-v0"],
        "rank": rank, "rho": 2.0, "seed": seed, "steps": 100,
        "final": {k: v for k, v in evals[-1].items() if k != "step"},
        "best_success_any": max(finals), "initial_success_any": finals[0], "final_loss": 0.1,
        "trainable_parameters": trainable, "total_parameters": 10_000,
        "gradient_signal": 0.5 + seed, "collector_seconds": 1.0 if method == "eva" else None,
        "ranks": {"encoder.h.0.attn.c_attn": rank, "encoder.h.0.mlp.c_fc": rank + seed},
        "total_rank": 2 * rank + seed, "train_seconds": 9.0, "wall_seconds": 10.0 + seed,
        "eval": evals,
        "config": {"checkpoint": "ckpt", "loop": {"steps": 100, "eval_every": 50},
                   "optim": {"batch_size": 64, "lr": 3e-4}, "eval": {"episodes": 10, "seed": 1000}},
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, (a, b) in enumerate([(0.2, 0.6), (0.4, 0.8)]):
        write_run(root, "hammer-v3", "eva", 8, seed, (0.0, 0.1, a), trainable=500)
        write_run(root, "push-v3", "eva", 8, seed, (0.0, 0.5, b), trainable=500)
        write_run(root, "hammer-v3", "fft", 8, seed, (0.0, 0.0, 0.0), trainable=9000)
        write_run(root, "push-v3", "fft", 8, seed, (0.0, 1.0, 1.0), trainable=9000)
    return root


def test_aggregate_per_task_and_over_tasks(runs):
    stats = {s["label"]: s for s in aggregate(collect_runs(runs))}
    eva = stats["eva r8 rho2"]
    assert eva["seeds"] == 2 and eva["tasks"] == 2
    assert eva["per_task"]["hammer-v3"][0] == pytest.approx(0.3)
    assert eva["per_task"]["push-v3"][0] == pytest.approx(0.7)
    assert eva["mean"][0] == pytest.approx(0.5)
    assert eva["iqm"][0] == pytest.approx(0.5)  # middle of 0.2, 0.4, 0.6, 0.8
    assert stats["fft"]["mean"][0] == pytest.approx(0.5) and stats["fft"]["auc"] == 0.375


def test_report_command_writes_csv_plots_and_readme(runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.md").write_text("## Discussion\n\nEVA ties with fft here.")
    assert main(["report", str(runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"eva", "fft"}
    plots = ("success_vs_steps", "success_vs_parameters", "loss_vs_parameters", "rank_allocation")
    for name in (*plots, "gradient_signal"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    readme = (out / "README.md").read_text()
    assert f"eva-rl report {runs} --out {out}" in readme
    eva_row = next(
        line for line in readme.splitlines() if line.startswith("| eva r8 rho2 | 0.50 [")
    )
    assert "| 0.90 | 0.85 | 2 x 2 |" in eva_row  # the paper's EVA average and its rank-8 figure
    assert "| 0.1000 | 1 | 500 |" in eva_row  # train loss, mean gradient signal (0.5, 1.5)
    assert readme.rstrip().endswith("EVA ties with fft here.")
    assert main(["report", str(runs), "--out", str(out)]) == 2  # no silent overwrite
    assert "already holds a report" in capsys.readouterr().err
    assert main(["report", str(runs), "--out", str(out), "--overwrite"]) == 0


def test_report_on_a_subset_of_tasks(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--tasks", "push-v3"]) == 0
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert {r["task"] for r in rows} == {"push-v3"} and len(rows) == 4
    assert "--tasks push-v3" in (out / "README.md").read_text()
    assert main(["report", str(runs), "--out", str(out), "--tasks", "nope-v3"]) == 2


def test_report_errors(tmp_path, capsys, runs):
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "no finished runs" in capsys.readouterr().err
    (runs / "push-v3/eva-r8-s1/summary.json").unlink()
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 2
    assert "different seeds per task" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
