"""Report statistics against hand-computed values, and the report files from run summaries."""

import csv
import json

import pytest

from eva_rl.cli import main
from eva_rl.errors import UserError
from eva_rl.reports.aggregate import aggregate
from eva_rl.reports.paired import compare
from eva_rl.reports.runs import collect_runs, planned_configs
from eva_rl.reports.tensorboard import read_scalars
from eva_rl.stats import holm, minimum_detectable_difference


def write_run(
    root, task, method, rank, seed, scores, trainable=1000, heldout=True, precision="fp32",
    configured=None,
):  # fmt: skip
    """A finetune summary.json with evaluations at 50 and 100 (scores = final-step success);
    `precision` as the run ran, `configured` as its config says (default the same)."""
    run = root / f"{task}/{method}-r{rank}-s{seed}-{precision}"
    run.mkdir(parents=True)
    evals = []
    for step, v in zip((50, 100), scores, strict=True):
        point = {"step": step, "score": v, "success_final": v, "success_any": min(1, v + 0.2)}
        point |= {"return": 10.0 * v, "length": 200.0}
        if heldout:
            point["heldout_loss"] = 0.2 - 0.1 * v
        point["episodes"] = {task: [{"seed": 1000, "return": 10.0 * v, "length": 200,
                                     "success_any": 1.0, "success_final": v}]}  # fmt: skip
        evals.append(point)
    summary = {
        "method": method, "task": task, "datasets": [f"metaworld/{task}/scripted-v0"],
        "rank": rank, "rho": 2.0, "seed": seed, "steps": 100, "precision": precision,
        "score_name": "success_final", "final_loss": 0.1,
        "trainable_parameters": trainable, "total_parameters": 10_000,
        "gradient_signal": 0.5 + seed, "collector_seconds": 1.0 if method == "eva" else None,
        "ranks": {"encoder.h.0.attn.c_attn": rank, "encoder.h.0.mlp.c_fc": rank + seed},
        "processes": 1, "effective_batch_size": 64, "train_seconds": 9.0,
        "wall_seconds": 10.0 + seed, "eval": evals,
        "config": {"checkpoint": "ckpt", "loop": {"steps": 100, "eval_every": 50},
                   "precision": configured or precision,
                   "optim": {"batch_size": 64, "lr": 3e-4},
                   "eval": {"episodes": 10, "final_episodes": 100, "seed": 1000}},
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))


def write_baseline(root, task, score):
    episodes = [{"seed": 1000 + i, "return": 1.0, "length": 200, "success_any": 1.0,
                 "success_final": float(i < score * 4)} for i in range(4)]  # fmt: skip
    result = {"config": {"task": task, "baseline": True},
              "envs": {task: {"target_return": 1.0, "episodes": episodes}}}  # fmt: skip
    (root / "_baseline").mkdir(parents=True, exist_ok=True)
    (root / "_baseline" / f"{task}.json").write_text(json.dumps(result))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    eva_lora = [(0.2, 0.6, 0.1, 0.5), (0.4, 0.8, 0.3, 0.7), (0.3, 0.7, 0.2, 0.6)]
    for seed, (a, b, c, d) in enumerate(eva_lora):
        write_run(root, "hammer-v3", "eva", 8, seed, (0.1, a), trainable=500)
        write_run(root, "push-v3", "eva", 8, seed, (0.5, b), trainable=500)
        write_run(root, "hammer-v3", "lora", 8, seed, (0.1, c), trainable=600)
        write_run(root, "push-v3", "lora", 8, seed, (0.5, d), trainable=600)
        write_run(root, "hammer-v3", "fft", 8, seed, (0.0, 0.0), trainable=9000)
        write_run(root, "push-v3", "fft", 8, seed, (1.0, 1.0), trainable=9000)
    write_baseline(root, "hammer-v3", 0.25)
    write_baseline(root, "push-v3", 0.5)
    return root


def test_aggregate_per_task_over_tasks_and_auc_from_the_baseline(runs):
    stats = {s.label: s for s in aggregate(collect_runs(runs))}
    assert list(stats) == ["fft", "lora r8", "eva r8 rho2"]  # registry order
    eva = stats["eva r8 rho2"]
    assert eva.seeds == 3 and eva.tasks == ["hammer-v3", "push-v3"]
    assert eva.per_task["hammer-v3"][0] == pytest.approx(0.3)
    assert eva.per_task["push-v3"][0] == pytest.approx(0.7)
    assert eva.mean[0] == pytest.approx(0.5)
    assert eva.iqm[0] == pytest.approx(0.5)  # middle of 0.2 .. 0.8
    # fft on hammer: base 0.25 at step 0 (no step-0 evaluation), then 0, 0: area 0.25*50/2
    fft_hammer = [r.auc for r in stats["fft"].rows if r.task == "hammer-v3"]
    assert fft_hammer == pytest.approx([0.25 * 50 / 2 / 100] * 3)
    assert eva.means["heldout_loss"] == pytest.approx(0.2 - 0.1 * 0.5)
    mean, low, high = eva.intervals["heldout_loss"]  # the budget plot's error bars
    assert mean == pytest.approx(0.15) and low < mean < high
    assert set(eva.intervals) == {"auc", "heldout_loss", "final_loss"}


def test_curve_points_are_seed_means_with_t_intervals_from_the_base_agent(runs):
    """curves.csv and the learning-curve plot: step 0 is the base agent (no width, no runs),
    then each evaluation's mean over seeds with a 95% t-interval (t_0.975, 2 df, x sd / sqrt 3)."""
    from eva_rl.reports.aggregate import curves

    stats = aggregate(collect_runs(runs))
    points = curves(stats, {"hammer-v3": 0.25, "push-v3": 0.5})
    eva = [p for p in points if p.config == "eva r8 rho2" and p.task == "hammer-v3"]
    assert [(p.step, p.runs) for p in eva] == [(0, 0), (50, 3), (100, 3)]
    assert (eva[0].mean, eva[0].low, eva[0].high) == (0.25, 0.25, 0.25)
    assert (eva[1].mean, eva[1].low, eva[1].high) == pytest.approx((0.1, 0.1, 0.1))
    half = 4.302653 * 0.1 / 3**0.5  # seeds at 0.2, 0.4, 0.3
    assert (eva[2].mean, eva[2].low, eva[2].high) == pytest.approx((0.3, 0.3 - half, 0.3 + half))
    assert len(points) == 3 * 2 * 3  # configs x tasks x steps
    assert [p.step for p in curves(stats, {})][:2] == [50, 100]  # no baseline: no step 0


def test_paired_comparison_of_a_constant_improvement(runs):
    comparisons = {c.label: c for c in compare(aggregate(collect_runs(runs)), "lora")}
    eva = comparisons["eva r8 rho2"]
    assert eva.reference == "lora r8" and eva.n == 6 and eva.tasks == 2
    assert eva.mean_diff == pytest.approx(0.1)
    assert eva.ci == pytest.approx((0.1, 0.1))
    assert eva.p == pytest.approx(2 / 2**6) and eva.exact  # all +: only the two extremes
    assert eva.p_holm == pytest.approx(min(1, 2 * eva.p))  # two comparisons
    # per task: U counts eva > lora over the 3 x 3 run pairs, ties half: 7 of 9
    assert eva.poi == pytest.approx(7 / 9)
    assert eva.mde is None  # 6 pairs, but no spread: nothing to scale a detectable size by
    assert set(comparisons) == {"fft", "eva r8 rho2"}
    # per task (exploratory): 3 pairs of +0.1 each, two-sided p 2/8, Holm over the 2 tasks
    assert [(t.task, t.n) for t in eva.per_task] == [("hammer-v3", 3), ("push-v3", 3)]
    assert [v for t in eva.per_task for v in (t.p, t.p_holm)] == pytest.approx([0.25, 0.5] * 2)
    fft = comparisons["fft"]  # hammer: 0 - (0.1, 0.3, 0.2); push: 1 - (0.5, 0.7, 0.6)
    assert [t.mean_diff for t in fft.per_task] == pytest.approx([-0.2, 0.4])


def test_holm_counts_the_comparisons_the_sweep_plans_before_their_runs_finish(runs, tmp_path):
    """An interim report of a sweep that also plans DoRA and EVA+DoRA (no run finished yet)
    adjusts over every comparison of the design, the three without runs at p = 1, so its Holm
    p-values hold for the whole family; a reference only the plan has is not a typo."""
    (runs / "sweep.yaml").write_text(
        "grid:\n  task: [hammer-v3, push-v3]\n  seed: [0, 1, 2]\n"
        "  method.name: [lora, eva, fft, dora, eva-dora]\n"
    )
    stats = aggregate(collect_runs(runs))
    planned = planned_configs(runs, stats[0].rows)
    assert len(planned) == 5
    comparisons = {c.label: c for c in compare(stats, ["lora", "eva-dora:dora"], planned)}
    ps = [comparisons["fft"].p, comparisons["eva r8 rho2"].p]
    assert [comparisons[k].p_holm for k in ("fft", "eva r8 rho2")] == pytest.approx(
        holm([*ps, 1.0, 1.0, 1.0])[:2]  # dora, eva-dora - lora and eva-dora - dora: no runs
    )
    assert {c.family for c in comparisons.values()} == {5}
    out = tmp_path / "report"
    assert (
        main(["report", str(runs), "--out", str(out), "--reference", "lora", "eva-dora:dora"]) == 0
    )
    readme = (out / "README.md").read_text()
    assert "and the 3 more the sweep plans, with fewer than 2 finished pairs" in readme
    with pytest.raises(UserError, match="these runs have no pissa configuration"):
        compare(stats, ["lora", "pissa:dora"], planned)
    write_run(runs, "hammer-v3", "dora", 8, 0, (0.1, 0.2))  # one pair: not testable yet
    stats = aggregate(collect_runs(runs))
    comparisons = compare(stats, ["lora", "eva-dora:dora"], planned_configs(runs, stats[0].rows))
    assert [c.label for c in comparisons] == ["fft", "eva r8 rho2"]
    assert {c.family for c in comparisons} == {5}  # dora - lora still counted, at p = 1
    # --by a key the grid lacks (precision as each run ran): the same family, not each
    # comparison counted again under a planned label without the key
    stats = aggregate(collect_runs(runs, by=["precision"]))
    comparisons = compare(stats, ["lora", "eva-dora:dora"], planned_configs(runs, stats[0].rows))
    assert {c.family for c in comparisons} == {5}


def test_planned_grid_values_match_the_runs_however_yaml_reads_them(runs):
    """YAML reads `3e-4` as text (and `0` as an int where the config's field is a float): a
    planned configuration is still the finished one its runs record as 0.0003, not a second
    comparison that doubles Holm's family."""
    (runs / "sweep.yaml").write_text(
        "grid:\n  task: [hammer-v3, push-v3]\n  seed: [0, 1, 2]\n"
        "  method.name: [lora, eva, fft]\n  optim.lr: [3e-4]\n"
    )
    stats = aggregate(collect_runs(runs))
    planned = planned_configs(runs, stats[0].rows)
    assert [variant for *_, variant in planned] == [(("optim.lr", "0.0003"),)] * 3
    assert {c.family for c in compare(stats, ["lora"], planned)} == {2}


def test_an_interim_family_counts_the_pooled_comparison_the_design_fixes(tmp_path):
    """Under `--reference precision=fp32` the design fixes LoRA and EVA each against fp32, and
    both pooled: while only LoRA has bf16 pairs, the pooled comparison is pending at p = 1, so
    the interim family is the final one (3), and the detectable size is stated for it."""
    root = tmp_path / "runs"
    for seed in range(8):
        for method in ("lora", "eva"):
            write_run(root, "hammer-v3", method, 8, seed, (0.3, 0.4), precision="fp32")
            if method == "lora" or seed == 0:
                bf16 = (0.3, 0.4 + 0.01 * (seed % 4 + 1))
                write_run(root, "hammer-v3", method, 8, seed, bf16, precision="bf16")
    planned = [(m, 8, 2.0, (("precision", p),)) for m in ("lora", "eva") for p in ("fp32", "bf16")]
    stats = aggregate(collect_runs(root, by=("precision",)))
    (lora,) = compare(stats, "precision=fp32", planned)  # EVA bf16: one pair, not testable yet
    assert lora.family == 3 and lora.p_holm == pytest.approx(holm([lora.p, 1.0, 1.0])[0])
    # the detectable size at the level a verdict needs at Holm's first step, 5% / 3
    assert lora.mde == pytest.approx(minimum_detectable_difference(lora.sd, 8, alpha=0.05 / 3))
    assert lora.mde > minimum_detectable_difference(lora.sd, 8)


def test_a_swept_setting_splits_configurations_and_can_be_the_reference(tmp_path):
    """A precision grid gives one configuration per value, each method compared with itself."""
    root = tmp_path / "runs"
    root.mkdir()
    (root / "sweep.yaml").write_text(
        "grid:\n  precision: [fp32, bf16]\n  method.name: [eva, lora]\n  seed: [0, 1, 2]\n"
    )
    for seed in range(3):
        for method, fp32, bf16 in (("eva", 0.5, 0.4), ("lora", 0.3, 0.3 + 0.1 * seed)):
            write_run(root, "hammer-v3", method, 8, seed, (0.1, fp32))
            write_run(root, "hammer-v3", method, 8, seed, (0.1, bf16), precision="bf16")
    stats = aggregate(collect_runs(root))
    assert [s.label for s in stats] == [
        "lora r8 precision=bf16", "lora r8 precision=fp32",
        "eva r8 rho2 precision=bf16", "eva r8 rho2 precision=fp32",
    ]  # fmt: skip
    by_precision = {c.label: c for c in compare(stats, "precision=fp32")}
    assert set(by_precision) == {
        "lora r8 precision=bf16", "eva r8 rho2 precision=bf16",
        "all 2 configurations precision=bf16",  # the two pooled: -0.1 x 3 and 0, .1, .2
    }  # fmt: skip
    assert by_precision["all 2 configurations precision=bf16"].mean_diff == pytest.approx(0.0)
    assert by_precision["eva r8 rho2 precision=bf16"].reference == "eva r8 rho2 precision=fp32"
    assert by_precision["eva r8 rho2 precision=bf16"].mean_diff == pytest.approx(-0.1)
    assert by_precision["lora r8 precision=bf16"].mean_diff == pytest.approx(0.1)  # 0, .1, .2
    with pytest.raises(
        UserError,
        match=r"precision=fp16 matches no configuration \(variants: "
        r"precision=bf16, precision=fp32\)",
    ):
        compare(stats, "precision=fp16")
    with pytest.raises(UserError, match="'lorra' is not a method"):
        compare(stats, "lorra")
    by_method = {c.label: c.reference for c in compare(stats, "lora")}
    assert by_method == {
        "eva r8 rho2 precision=bf16": "lora r8 precision=bf16",
        "eva r8 rho2 precision=fp32": "lora r8 precision=fp32",
    }


def test_two_directories_split_by_precision_as_run_and_pool_the_setting_over_methods(
    tmp_path, capsys
):
    """A study in fp32 and its twins from a machine where `precision: auto` meant bf16, reported
    together with --by precision: each configuration against its fp32 self, and the two pooled
    (6 pairs; exact sign-flip p by enumeration of the 3 seeds' blocks, as the two methods of a
    seed share batches and episodes); run names keep their directory."""
    import itertools

    study, twins = tmp_path / "study", tmp_path / "twins"
    for seed in range(3):
        for method, fp32, bf16 in (("eva", 0.5, 0.4), ("lora", 0.3, 0.4 + 0.1 * seed)):
            write_run(study, "hammer-v3", method, 8, seed, (0.1, fp32))
            write_run(twins, "hammer-v3", method, 8, seed, (0.1, bf16), precision="bf16",
                      configured="auto")  # fmt: skip
    (study / "sweep.yaml").write_text("grid:\n  method.name: [eva, lora]\n  seed: [0, 1, 2]\n")
    out = tmp_path / "report"
    dirs = [str(study), str(twins)]
    assert main(["report", *dirs, "--out", str(out), "--reference", "lora"]) == 2
    assert "are both lora r8 on hammer-v3, seed 0; remove one, or tell them apart with --by" in (
        capsys.readouterr().err
    )
    argv = ["report", *dirs, "--out", str(out), "--by", "precision", "--reference",
            "precision=fp32"]  # fmt: skip
    assert main(argv) == 0
    stats = aggregate(collect_runs(dirs, by=["precision"]))
    comparisons = {c.label: c for c in compare(stats, "precision=fp32")}
    assert set(comparisons) == {
        "lora r8 precision=bf16", "eva r8 rho2 precision=bf16",
        "all 2 configurations precision=bf16",
    }  # fmt: skip
    both = comparisons["all 2 configurations precision=bf16"]
    lora, eva = [0.1, 0.2, 0.3], [-0.1, -0.1, -0.1]  # seeds 0-2
    blocks = [(a + b) / 2 for a, b in zip(lora, eva, strict=True)]  # each seed flipped whole
    patterns = list(itertools.product((1, -1), repeat=3))
    extreme = [abs(sum(s * d for s, d in zip(p, blocks, strict=True))) >= abs(sum(blocks)) - 1e-12
               for p in patterns]  # fmt: skip
    assert sum(extreme) / len(patterns) == 0.5  # (the 6 pairs as independent: 0.66)
    assert (both.reference, both.n, both.blocks) == ("precision=fp32", 6, 3)
    assert both.mean_diff == pytest.approx(0.05)
    assert both.p == pytest.approx(sum(extreme) / len(patterns)) and both.exact
    assert both.p_holm == pytest.approx(holm([c.p for c in comparisons.values()])[-1])
    readme = (out / "README.md").read_text()
    assert f"from 12 finished runs under `{study}` and `{twins}`." in readme
    assert f"The 6 under `{study}` were produced by `eva-rl sweep`" in readme
    pooled = "| all 2 configurations precision=bf16 | precision=fp32 | 6 (1) in 3 blocks | +0.050"
    assert pooled in readme
    with open(out / "runs.csv") as f:
        runs = {r["run"]: r for r in csv.DictReader(f)}
    assert runs[f"{twins}/hammer-v3/eva-r8-s0-bf16"]["variant"] == "precision=bf16"


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        (None, ["--by", "task"], "--by task: tasks, seeds and methods are always apart"),
        (None, ["--by", "optim.lrr"], "--by optim.lrr: no run has that config key"),
        ("baseline", [], "the base agent's evaluations of hammer-v3 differ between"),
    ],
)
def test_report_of_two_directories_errors_name_the_fix_and_write_nothing(
    tmp_path, capsys, setup, argv, message
):
    study, twins = tmp_path / "study", tmp_path / "twins"
    write_run(study, "hammer-v3", "lora", 8, 0, (0.1, 0.2))
    write_run(twins, "hammer-v3", "lora", 8, 1, (0.1, 0.3))
    if setup == "baseline":
        write_baseline(study, "hammer-v3", 0.5)
        write_baseline(twins, "hammer-v3", 0.25)
    out = tmp_path / "report"
    assert main(["report", str(study), str(twins), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_several_references_add_comparisons_under_one_holm_correction(runs):
    """`lora eva:fft`: everything against LoRA, and EVA against full fine-tuning as well."""
    stats = aggregate(collect_runs(runs))
    alone = {(c.label, c.reference): c for c in compare(stats, "lora")}
    both = {(c.label, c.reference): c for c in compare(stats, ["lora", "eva:fft"])}
    assert set(both) == set(alone) | {("eva r8 rho2", "fft")}
    eva_fft = both[("eva r8 rho2", "fft")]
    # eva - fft per pair: hammer +0.2 +0.4 +0.3 (fft 0), push -0.4 -0.2 -0.3 (fft 1)
    assert eva_fft.n == 6 and eva_fft.mean_diff == pytest.approx(0.0)
    adjusted = dict(zip(both, holm([c.p for c in both.values()]), strict=True))
    for key, c in alone.items():  # same tests, Holm over three comparisons instead of two
        assert both[key].p == c.p and both[key].p_holm == pytest.approx(adjusted[key])
        assert both[key].family == 3 and c.family == 2
    assert compare(stats, ["lora", "lora"]) == compare(stats, "lora")  # no comparison twice
    with pytest.raises(UserError, match="these runs have no dora configuration"):
        compare(stats, ["lora", "dora:lora"])
    with pytest.raises(UserError, match="'evva' is not a method"):
        compare(stats, ["evva:lora"])


def test_report_command_writes_csv_plots_tensorboard_and_readme(runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.md").write_text("## Discussion\n\nEVA ties with fft here.")
    assert main(["report", str(runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 18 and {r["method"] for r in rows} == {"eva", "fft", "lora"}
    points = list(csv.DictReader((out / "curves.csv").open()))  # base agent, then steps 50, 100
    assert [(p["task"], p["step"], float(p["mean"])) for p in points[:3]] == [
        ("hammer-v3", "0", 0.25),
        ("hammer-v3", "50", 0.0),
        ("hammer-v3", "100", 0.0),
    ] and points[0]["config"] == "fft"
    for name in ("learning_curves", "per_task", "budget", "forest", "rank_allocation",
                 "gradient_signal"):  # fmt: skip
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    readme = (out / "README.md").read_text()
    assert f"eva-rl report {runs} --out {out}" in readme
    eva_row = next(r for r in readme.splitlines() if r.startswith("| eva r8 rho2 | 0.50 ["))
    assert "| 0.90 | 0.85 | 2 x 3 |" in eva_row  # the paper's EVA average and its rank-8 figure
    assert "| base agent (no fine-tuning) | 0.25 | 0.50 |" in readme
    assert "| eva r8 rho2 | lora r8 | 6 (2) | +0.100 [+0.100, +0.100] |" in readme
    assert "| eva r8 rho2 | lora r8 | +0.100 (3; p 0.25, Holm 0.5) | +0.100 (3; p 0.25, " in readme
    assert readme.rstrip().endswith("EVA ties with fft here.")
    # method-level TensorBoard: the mean of the per-run scalars, per configuration and task
    mean = read_scalars(out / "tensorboard/mean/eva_r08_rho2")
    assert dict(mean["eval/score"]) == pytest.approx({50: 0.3, 100: 0.5})
    hammer = read_scalars(out / "tensorboard/hammer-v3/lora_r08")
    assert dict(hammer["eval/success_final"]) == pytest.approx({50: 0.1, 100: 0.2})
    assert main(["report", str(runs), "--out", str(out)]) == 2  # no silent overwrite
    assert "already holds a report" in capsys.readouterr().err
    written = {f: f.read_bytes() for f in sorted((out / "tensorboard").rglob("*")) if f.is_file()}
    assert main(["report", str(runs), "--out", str(out), "--overwrite"]) == 0
    again = {f: f.read_bytes() for f in sorted((out / "tensorboard").rglob("*")) if f.is_file()}
    assert again == written and len(written) == 9  # regenerated byte for byte: no git churn


def test_report_on_a_subset_of_tasks(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--tasks", "push-v3"]) == 0
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert {r["task"] for r in rows} == {"push-v3"} and len(rows) == 9
    assert "--tasks push-v3" in (out / "README.md").read_text()
    assert main(["report", str(runs), "--out", str(out), "--tasks", "nope-v3"]) == 2


def test_report_errors(tmp_path, capsys, runs):
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "no finished runs" in capsys.readouterr().err
    (runs / "push-v3/eva-r8-s1-fp32/summary.json").unlink()
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 2
    assert "different seeds per task" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_partial_report_of_a_running_sweep_keeps_whole_seeds(tmp_path, capsys, runs):
    """A seed not finished on every task is left out of its configuration (and said so); the
    other configurations keep all their seeds, and pairs are the seeds both have."""
    (runs / "push-v3/eva-r8-s1-fp32/summary.json").unlink()
    write_run(runs / ".copying", "push-v3", "eva", 8, 1, (0.5, 0.8))  # a half-copied run
    out = tmp_path / "r"
    assert main(["report", str(runs), "--out", str(out)]) == 2
    assert "report the seeds finished on every task with --partial" in capsys.readouterr().err
    assert main(["report", str(runs), "--out", str(out), "--partial"]) == 0
    assert "1 runs of unfinished seeds left out" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "runs.csv").open()))
    eva = {(r["task"], r["seed"]) for r in rows if r["method"] == "eva"}
    assert eva == {(t, s) for t in ("hammer-v3", "push-v3") for s in ("0", "2")}
    assert len([r for r in rows if r["method"] == "lora"]) == 6
    readme = (out / "README.md").read_text()
    assert "**Interim report** (`--partial`)" in readme and "1 finished runs are left out" in readme
    assert "(eva r8 rho2: seeds [1])" in readme
    assert "| eva r8 rho2 | lora r8 | 4 (2) |" in readme  # seeds 0 and 2 on both tasks


def test_partial_keeps_a_configuration_the_sweep_plans_on_fewer_tasks(runs, tmp_path):
    """A grid that runs FFT on hammer-v3 only: --partial keeps its finished seeds there (the
    tasks the sweep plans for it), not drops it for lacking push-v3 runs no one planned."""
    for seed in range(3):
        (runs / f"push-v3/fft-r8-s{seed}-fp32/summary.json").unlink()
    (runs / "hammer-v3/fft-r8-s2-fp32/summary.json").unlink()  # still running
    (runs / "sweep.yaml").write_text(
        "grid:\n  - task: [hammer-v3, push-v3]\n    seed: [0, 1, 2]\n"
        "    method.name: [lora, eva]\n  - task: [hammer-v3]\n    seed: [0, 1, 2]\n"
        "    method.name: [fft]\n"
    )
    out = tmp_path / "r"
    assert main(["report", str(runs), "--out", str(out), "--partial"]) == 0
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert {(r["task"], r["seed"]) for r in rows if r["method"] == "fft"} == {
        ("hammer-v3", "0"),
        ("hammer-v3", "1"),
    }
    assert len(rows) == 14  # lora and eva whole: 12, fft: 2


def test_partial_of_a_sweep_whose_runs_name_their_datasets_keeps_whole_seeds(runs, tmp_path):
    """Runs named by datasets have task "" in their config: it was taken for a planned task no
    run has, so --partial found no seed finished on every task (locomotion-halfcheetah-cpu)."""
    for path in runs.rglob("summary.json"):
        summary = json.loads(path.read_text())
        summary["config"]["task"] = ""
        path.write_text(json.dumps(summary))
    (runs / "sweep.yaml").write_text("grid:\n  seed: [0, 1, 2]\n  method.name: [lora, eva, fft]\n")
    (runs / "push-v3/fft-r8-s2-fp32/summary.json").unlink()
    out = tmp_path / "r"
    assert main(["report", str(runs), "--out", str(out), "--partial"]) == 0
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 16  # lora and eva whole: 12; fft seeds 0 and 1 on both tasks: 4


def test_runs_named_twice_or_inside_each_other_are_refused(runs, tmp_path, capsys):
    """Each run would count twice (a report said 1 x 2 tasks x seeds with one seed)."""
    for second in (runs, runs / "hammer-v3", tmp_path / "." / "runs"):
        assert main(["report", str(runs), str(second), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "overlap (the same folder, or one inside the" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("path", "content", "says"),
    [
        ("hammer-v3/eva-r8-s0-fp32/summary.json", {"eval": [1]}, "is not a run summary"),
        ("_baseline/hammer-v3.json", {"foo": 1}, "is not an evaluation of the base agent"),
        ("sweep.yaml", {"grid": 3}, "grid is not a map of keys to lists of values"),
    ],
)
def test_damaged_inputs_of_a_report_are_named_in_one_line(
    runs, tmp_path, capsys, path, content, says
):
    (runs / path).write_text(json.dumps(content))  # JSON is YAML too
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{runs / path}" in err and says in err, err


def test_a_score_that_is_not_a_number_is_named(runs, tmp_path, capsys):
    path = runs / "hammer-v3/eva-r8-s0-fp32/summary.json"
    summary = json.loads(path.read_text())
    summary["eval"][-1]["score"] = "high"
    path.write_text(json.dumps(summary))
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 2
    assert "step 100's score is not a number" in capsys.readouterr().err


HYPOTHESES = """\
hypotheses:
  - name: H1
    claim: EVA beats LoRA
    method: eva
    reference: lora
    tasks: [hammer-v3, push-v3]
    seeds: [0, 1, 2]
    ranks: [8]
    alternative: greater
  - name: H2
    claim: EVA loses to LoRA on hammer
    method: eva
    reference: lora
    tasks: [hammer-v3]
    seeds: [0, 1, 2]
    ranks: [8]
    alternative: less
    alpha: 0.025
  - name: H3
    claim: EVA beats LoRA with a fourth seed
    method: eva
    reference: lora
    tasks: [hammer-v3]
    seeds: [0, 1, 2, 3]
    ranks: [8]
    alternative: greater
"""


def test_preregistered_hypotheses_are_tested_once_their_pairs_are_complete(runs, tmp_path, capsys):
    """One-sided exact tests on the planned pairs; a hypothesis with a pair still missing waits
    untested (no p, no verdict) instead of being looked at while its data come in."""
    path = tmp_path / "hypotheses.yaml"
    path.write_text(HYPOTHESES)
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--hypotheses", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "H1: supported (p < 0.05)\nH2: not supported\nH3: waiting: 3 of 4 pairs" in printed
    readme = (out / "README.md").read_text()
    assert f"--hypotheses {path}" in readme and "claim: EVA loses to LoRA on hammer" in readme
    # not in a repository: the report says its pre-registration cannot be checked, never claims it
    unchecked = "cannot be checked here: the file is not in a git repository."
    assert f"Pre-registration of `{path}` {unchecked}" in readme and unchecked in printed
    rows = {r.split(" | ")[0][2:]: r for r in readme.splitlines() if r.startswith("| H")}
    # six pairs all +0.1: only the all-plus pattern reaches the mean, p = 1/64 one-sided; the
    # interval at 1 - 2 alpha; two tasks per seed: the seeds' 3 blocks alone give 1/8
    assert ("| 6 of 6 | +0.100 [+0.100, +0.100] 90% | 0.0156 (greater) | 0.05 | supported "
            "(p < 0.05) | 0.125 |") in rows["H1"]  # fmt: skip
    # 3 pairs: no p can fall below 2 / 8, so the inverted interval is unbounded
    assert (
        "| 3 of 3 | +0.100 [-inf, +inf] 95% | 1 (less) | 0.025 | not supported | - |"
        in (rows["H2"])
    )
    assert (
        "| 3 of 4 | - | - (greater) | 0.05 | waiting: 3 of 4 pairs finished | - |" in (rows["H3"])
    )


def test_a_hypothesis_on_a_planned_task_without_runs_waits(runs, tmp_path, capsys):
    """Early in a sweep a planned task may have no finished run: its hypothesis waits (0 of N
    pairs) instead of failing the report as a typo would."""
    (runs / "sweep.yaml").write_text(
        "grid:\n  task: [hammer-v3, push-v3, reach-v3]\n  seed: [0, 1, 2]\n"
        "  method.name: [lora, eva, fft]\n"
    )
    path = tmp_path / "hypotheses.yaml"
    path.write_text(HYPOTHESES.replace("tasks: [hammer-v3]", "tasks: [reach-v3]", 1))
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--hypotheses", str(path)]) == 0
    assert "H2: waiting: 0 of 3 pairs finished" in capsys.readouterr().out


@pytest.mark.parametrize(
    "edit, message",
    [
        (("alpha: 0.025", "alfa: 0.025"), "unknown config key 'hypotheses[1].alfa'"),
        (("method: eva\n", "method: evo\n", 1), "hypothesis H1: unknown method 'evo'"),
        (("tasks: [hammer-v3]", "tasks: [hamer-v3]", 1), "no sweep plans: hamer-v3"),
        (("alternative: less", "alternative: lower"), "must be one of ['less', 'greater', 'two"),
        (("name: H2", "name: H1"), "hypothesis names repeat (H1, H1, H3)"),
    ],
)
def test_hypotheses_file_errors_name_the_entry_and_write_nothing(
    runs, tmp_path, capsys, edit, message
):
    path = tmp_path / "hypotheses.yaml"
    path.write_text(HYPOTHESES.replace(*edit))
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--hypotheses", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "cw10-pilot-cpu",
        "cw10-study-cpu",
        "cw10-methods-cpu",
        "precision-parity-cpu",
        "cw10-study-bf16-cpu",  # two runs directories, --by precision
        "rank-budget-study-cpu",
        "online-halfcheetah-cpu",  # online runs, --by policy, a two-key --reference
        "rank-budget-cpu",
        "locomotion-halfcheetah-cpu",  # normalised returns
        "finetune-hammer-v3-cpu",
    ],
)
def test_committed_reports_are_reproduced_from_their_runs(name, tmp_path, monkeypatch):
    """A fresh `eva-rl report` on a committed result's runs, with the options its README names,
    gives its committed CSVs, tables and method-level TensorBoard files."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the README names files (--hypotheses) from the repository root
    result = root / "results" / name
    command = re.search(r"Made by `eva-rl report ([^`]*)`", (result / "README.md").read_text())
    words = command.group(1).split()  # RUNS... --out OUT, then --partial, --reference ...
    runs, options = words[: words.index("--out")], words[words.index("--out") + 2 :]
    out = tmp_path / "again"
    if (result / "notes.md").is_file():  # the hand-written part of the README (may hold tables)
        out.mkdir()
        (out / "notes.md").write_text((result / "notes.md").read_text())
    assert main(["report", *runs, "--out", str(out), *options]) == 0
    for table in ("runs.csv", "curves.csv"):
        assert (out / table).read_text() == (result / table).read_text()

    def tables(path):  # every table row: intervals, tests and verdicts (seeded bootstraps)
        return [line for line in path.read_text().splitlines() if line.startswith("|")]

    assert tables(out / "README.md") == tables(result / "README.md")
    events = sorted((result / "tensorboard").rglob("events.*"))
    assert events and all(
        (out / "tensorboard" / e.relative_to(result / "tensorboard")).read_bytes() == e.read_bytes()
        for e in events
    )


def test_gain_is_tested_against_zero_and_needs_a_step_0_evaluation(tmp_path):
    """`gain` = the score at the end less the run's own at step 0 (an online run's start); a
    hypothesis without a reference tests it against 0, and only it."""
    from eva_rl.config import from_dict
    from eva_rl.reports.hypotheses import HypothesesFile, Hypothesis, evaluate_hypotheses

    root = tmp_path / "runs"
    for seed, (start, end) in enumerate([(0.3, 0.5), (0.2, 0.3), (0.4, 0.45), (0.1, 0.2)]):
        write_run(root, "hammer-v3", "lora", 8, seed, (start, end))
        path = root / f"hammer-v3/lora-r8-s{seed}-fp32/summary.json"
        summary = json.loads(path.read_text())
        summary["eval"][0]["step"] = 0
        path.write_text(json.dumps(summary))
    write_run(root, "hammer-v3", "eva", 8, 0, (0.1, 0.2))  # no step 0: no gain
    rows = collect_runs(root)
    gains = sorted(r.gain for r in rows if r.method == "lora")
    assert gains == pytest.approx([0.05, 0.1, 0.1, 0.2])
    assert [r.gain for r in rows if r.method == "eva"] == [None]
    h = Hypothesis(name="G", claim="online lifts LoRA", method="lora", tasks=["hammer-v3"],
                   seeds=[0, 1, 2, 3], ranks=[8], alternative="greater", metric="gain")  # fmt: skip
    (test,) = evaluate_hypotheses(rows, [h])
    assert test.mean_diff == pytest.approx(0.1125)
    assert test.p == pytest.approx(1 / 16)  # 4 positive gains: only all-plus reaches the mean
    with pytest.raises(UserError, match="hypothesis G: name a reference method"):
        from_dict(HypothesesFile, {"hypotheses": [{**h.__dict__, "metric": "score"}]})


def test_the_legend_says_where_an_auc_cannot_start_at_0(runs, tmp_path):
    """A run with neither an evaluation at 0 nor a base-agent baseline has its AUC from its
    first evaluation, and the README says so instead of claiming "from update 0"."""
    for method in ("lora", "eva", "fft"):  # on a task without a baseline
        for seed in range(3):
            write_run(runs, "reach-v3", method, 8, seed, (0.2, 0.4))
    rows = collect_runs(runs)
    assert {r.auc_from for r in rows if r.task == "reach-v3"} == {50}
    assert {r.auc_from for r in rows if r.task != "reach-v3"} == {0}  # from the baselines
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    legend = "here 9 of 27 runs have no score at 0 (no evaluation there, no baseline), so theirs "
    readme = (out / "README.md").read_text()
    assert "CI over seeds]; the base agent on the same evaluation episodes):" in readme
    assert legend + "spans from their first evaluation (update 50)" in readme
    assert "a single score" not in readme
    for summary in (runs / "reach-v3").glob("*/summary.json"):  # one evaluation, at 100
        run = json.loads(summary.read_text())
        summary.write_text(json.dumps(run | {"eval": run["eval"][1:]}))
    assert main(["report", str(runs), "--out", str(out), "--overwrite"]) == 0
    readme = (out / "README.md").read_text()
    assert "no score at 0" not in readme  # not counted as runs with a late AUC: they have none
    assert "; 9 of 27 runs have a single score (one evaluation, no baseline) and no AUC" in readme
    (runs / "reach-v3").rename(tmp_path / "aside")
    assert main(["report", str(runs), "--out", str(out), "--overwrite"]) == 0
    assert "no score at 0" not in (out / "README.md").read_text()


def test_gain_subtracts_the_start_in_the_measure_of_the_end(tmp_path):
    """`gain` is `score` at the end less `score` at step 0, even where an evaluation's score is
    not the run's `score_name` metric (envs of a task that disagree on success: the score falls
    back to the return while `success_final` is still averaged over those that have it)."""
    root = tmp_path / "runs"
    write_run(root, "hammer-v3", "lora", 8, 0, (0.3, 0.5))
    path = root / "hammer-v3/lora-r8-s0-fp32/summary.json"
    summary = json.loads(path.read_text())
    summary["eval"][0] |= {"step": 0, "score": 0.1}  # success_final stays 0.3
    path.write_text(json.dumps(summary))
    (row,) = collect_runs(root)
    assert row.score_name == "success_final" and row.gain == pytest.approx(0.5 - 0.1)


def test_a_registered_test_of_20_pairs_is_exact(tmp_path):
    """A hypothesis pooling 2 tasks x 10 seeds (the budget study's H4, registered as an exact
    test) enumerates all 2^20 sign patterns: its p is a count of the patterns whose sum
    reaches the observed one, made here by a recursion over integer sums, not by the code's
    enumeration (the tables' Monte Carlo beyond 16 pairs gives 0.00340 for 0.00336)."""
    from collections import Counter

    from eva_rl.reports.hypotheses import Hypothesis, evaluate_hypotheses

    cents = [12, -3, 7, 0, 5, 9, -6, 4, 11, 2, -1, 8, 3, 6, -4, 10, 1, 5, -2, 7]
    root = tmp_path / "runs"
    for i, c in enumerate(cents):
        task, seed = ("hammer-v3", "push-v3")[i // 10], i % 10
        write_run(root, task, "lora", 8, seed, (0.3, 0.4))
        write_run(root, task, "eva", 8, seed, (0.3, 0.4 + c / 100))
    h = Hypothesis(name="H", claim="EVA above LoRA", method="eva", reference="lora",
                   tasks=["hammer-v3", "push-v3"], seeds=list(range(10)), ranks=[8],
                   alternative="greater")  # fmt: skip
    (test,) = evaluate_hypotheses(collect_runs(root), [h])
    sums = Counter({0: 1})  # flipping a subset S lowers the sum by 2 sum(S): as extreme iff <= 0
    for c in cents:
        sums = sums + Counter({t + c: n for t, n in sums.items()})
    expected = sum(n for t, n in sums.items() if t <= 0) / 2**20
    assert test.exact and test.finished == 20
    assert test.p == pytest.approx(expected, rel=1e-12)
    assert test.ci[0] > 0  # this p (0.0034) rejects, so the inverted interval excludes 0


def test_a_summary_names_its_score_from_its_evaluations():
    """`score_name` follows from what the evaluations measured, whatever the file says: an
    online summary once wrote `return` for a D4RL-normalised score (HalfCheetah)."""
    from eva_rl.results import RunSummary

    def summary(point: dict, written: str) -> dict:
        return {"method": "lora", "task": None, "datasets": ["d"], "rank": 4, "rho": 2.0,
                "seed": 0, "steps": 10, "final_loss": 0.1, "trainable_parameters": 1,
                "gradient_signal": 0.1, "score_name": written,
                "eval": [{"step": 0, **point}, {"step": 10, **point}]}  # fmt: skip

    normalised = {"score": 1.8, "normalized_return": 1.8, "return": -59.9, "length": 1000.0}
    success = {"score": 0.5, "success_final": 0.5, "success_any": 0.6, "return": 9.0}
    plain = {"score": -59.9, "return": -59.9, "length": 1000.0}
    for point, name in ((normalised, "normalized_return"), (success, "success_final"),
                        (plain, "return")):  # fmt: skip
        read = RunSummary.from_dict(summary(point, written="return"))
        assert read.score_name == name and read.to_dict()["score_name"] == name
        assert RunSummary.from_dict(read.to_dict()).to_dict() == read.to_dict()


def test_a_summary_of_envs_that_disagree_on_success_names_the_return():
    """Two envs, one reporting success and one not: the evaluation's score is the return (the
    one every env has), and the summary calls it so, though its metrics hold a success mean
    too (it once named that)."""
    from eva_rl.results import EnvResult, Episode, EvalPoint, EvalResult, RunSummary

    result = EvalResult({
        "reach-v3": EnvResult("reach-v3", 1.0, [Episode(0, 9.0, 10, 1.0, 1.0)]),
        "Pendulum-v1": EnvResult("Pendulum-v1", 1.0, [Episode(0, -3.0, 10)]),
    })  # fmt: skip
    point = EvalPoint.of(10, result)
    assert point.metrics["score"] == pytest.approx(3.0) and "success_final" in point.metrics
    summary = RunSummary.from_dict({
        "method": "lora", "task": None, "datasets": ["d"], "rank": 4, "rho": 2.0, "seed": 0,
        "steps": 10, "final_loss": 0.1, "trainable_parameters": 1, "gradient_signal": 0.1,
        "eval": [point.to_dict()],
    })  # fmt: skip
    assert summary.score_name == "return" and summary.eval[0].score_name == "return"
    assert RunSummary.from_dict(summary.to_dict()).to_dict() == summary.to_dict()


def test_forest_plot_of_large_differences_with_unbounded_intervals(tmp_path):
    """3 pairs: the sign-flip interval is unbounded; a difference of 7 (a normalised return)
    lies beyond the success scale's 1 and must still be drawn (its error bar once went
    negative and matplotlib refused the plot)."""
    from eva_rl.reports.paired import Comparison
    from eva_rl.reports.plots import forest

    inf = float("inf")
    wide = Comparison("deterministic", "stochastic", n=3, tasks=1, mean_diff=7.0,
                      ci=(-inf, inf), sd=1.0, p=0.25, exact=True)  # fmt: skip
    bounded = Comparison("eva", "lora", n=10, tasks=1, mean_diff=-0.2, ci=(-0.5, 0.1), sd=0.3,
                         p=0.2, exact=True)  # fmt: skip
    forest([wide, bounded], tmp_path / "forest.png", "normalized_return")
    assert (tmp_path / "forest.png").stat().st_size > 0


def test_a_reference_of_keys_a_sweep_varies_together(tmp_path):
    """Two sub-grids that set two keys together (online: policy and td3.enabled): the
    reference names both values, each method is compared with itself there, and the methods
    are pooled; a value of either key that no configuration has is refused."""
    root = tmp_path / "runs"
    root.mkdir()
    (root / "sweep.yaml").write_text(
        "grid:\n"
        "  - {policy: [stochastic], td3.enabled: [false], method.name: [eva, lora]}\n"
        "  - {policy: [deterministic], td3.enabled: [true], method.name: [eva, lora]}\n"
    )
    for seed in range(2):
        for method in ("eva", "lora"):
            for policy, td3, final in (("stochastic", False, 0.2), ("deterministic", True, 0.6)):
                write_run(root / policy, "hammer-v3", method, 8, seed, (0.1, final + 0.1 * seed))
                path = next((root / policy).rglob(f"{method}-r8-s{seed}-fp32/summary.json"))
                summary = json.loads(path.read_text())
                summary["config"] |= {"policy": policy, "td3": {"enabled": td3}}
                path.write_text(json.dumps(summary))
    stats = aggregate(collect_runs(root))
    reference = "policy=stochastic,td3.enabled=False"
    got = {c.label: c for c in compare(stats, reference)}
    assert set(got) == {
        "eva r8 rho2 policy=deterministic,td3.enabled=True",
        "lora r8 policy=deterministic,td3.enabled=True",
        "all 2 configurations policy=deterministic,td3.enabled=True",
    }
    lora = got["lora r8 policy=deterministic,td3.enabled=True"]
    assert lora.reference == "lora r8 policy=stochastic,td3.enabled=False"
    assert lora.n == 2 and lora.mean_diff == pytest.approx(0.4)
    both = got["all 2 configurations policy=deterministic,td3.enabled=True"]
    assert both.n == 4 and both.reference == reference and both.mean_diff == pytest.approx(0.4)
    with pytest.raises(UserError, match="td3.enabled=maybe matches no configuration"):
        compare(stats, "policy=stochastic,td3.enabled=maybe")


def test_the_budget_plot_draws_one_line_per_variant(tmp_path, monkeypatch):
    """Configurations that differ only in a variant (here precision) are separate lines, each
    labelled with it, not one line zig-zagging between them."""
    from eva_rl.reports import plots

    root = tmp_path / "runs"
    for precision in ("fp32", "bf16"):
        for rank in (4, 8):
            for seed in range(2):
                write_run(root, "push-v3", "lora", rank, seed, (0.2, 0.4 + 0.1 * seed),
                          trainable=100 * rank, precision=precision)  # fmt: skip
    stats = aggregate(collect_runs(root, by=["precision"]))
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    plots.budget(stats, tmp_path / "budget.png", "success_final")
    lines = drawn[0].axes[0].get_legend_handles_labels()
    assert sorted(lines[1]) == ["lora precision=bf16", "lora precision=fp32"]
    assert all(len(line.lines[0].get_xdata()) == 2 for line in lines[0])  # r4 and r8 each


def test_runs_of_one_configuration_at_different_budgets_are_refused(tmp_path):
    """A configuration's scores must measure one thing: a run trained 300 updates among runs of
    100 is refused, naming both, unless --by tells them apart; the Scale line then names both
    budgets and learning rates instead of the first run's."""
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root, "push-v3", "lora", 8, seed, (0.2, 0.4 + 0.1 * seed))
    longer = root / "push-v3/lora-r8-s2-fp32/summary.json"
    run = json.loads(longer.read_text())
    run["config"]["loop"]["steps"], run["config"]["optim"]["lr"] = 300, 1e-4
    longer.write_text(json.dumps(run))
    with pytest.raises(UserError) as info:
        aggregate(collect_runs(root))
    assert str(info.value) == (
        "lora r8's runs end at different budgets: push-v3/lora-r8-s0-fp32 after 100 updates "
        "(final evaluation on 100 episodes), push-v3/lora-r8-s2-fp32 after 300 updates (100); "
        "report them apart with --by KEY (loop.steps, env_steps, eval.final_episodes) or "
        "remove one"
    )
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out), "--by", "loop.steps"]) == 0
    readme = (out / "README.md").read_text()
    assert "100 / 300 updates of batch 64 per run (lr 0.0003 / 0.0001, fp32)" in readme
    # no base-agent baseline here: the per-task table's caption does not promise one
    assert "Final score per task (mean over seeds [95% bootstrap CI over seeds]):" in readme


def test_per_task_differences_of_a_pooled_comparison_count_blocks_and_say_so(runs, tmp_path):
    """A comparison pooled over methods flips each task and seed's pairs as one block: its
    per-task n counts blocks, and the text says so instead of calling them pairs."""
    for task in ("hammer-v3", "push-v3"):
        for method in ("lora", "eva", "fft"):
            for seed in range(3):
                write_run(runs, task, method, 8, seed, (0.2, 0.3 + 0.1 * seed), precision="bf16")
    out = tmp_path / "report"
    argv = ["report", str(runs), "--out", str(out), "--by", "precision"]
    assert main([*argv, "--reference", "precision=fp32"]) == 0
    readme = (out / "README.md").read_text()
    assert "mean difference (pairs (blocks, where a comparison flips blocks); two-sided" in readme
    assert main([*argv, "--overwrite"]) == 0  # paired within each precision: no blocks
    assert "mean difference (pairs; two-sided" in (out / "README.md").read_text()
