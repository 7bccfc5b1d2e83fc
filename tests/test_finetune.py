"""Fine-tuning with every method: builds, trains, exports for plain PEFT, resumes, refuses."""

import json
import warnings

import pytest
import torch
from peft import PeftModel
from transformers import DecisionTransformerModel

from conftest import HAMMER, tiny_finetune_overrides
from eva_rl.adapters.export import export_adapted, save_initial_adapter
from eva_rl.adapters.methods import METHODS, BuildContext, MethodConfig, build_method
from eva_rl.agent import Agent, load_agent
from eva_rl.cli import main
from eva_rl.config import load_config
from eva_rl.data.segments import load_trajectories
from eva_rl.errors import UserError
from eva_rl.reports.tensorboard import read_scalars
from eva_rl.training.finetune import FinetuneConfig, finetune
from eva_rl.training.loop import lr_lambda
from eva_rl.training.losses import action_loss, action_preds
from eva_rl.weights import weights_digest


def tiny_finetune(checkpoint, mw_root, out, method, *extra):
    return load_config(
        FinetuneConfig, None, tiny_finetune_overrides(checkpoint, mw_root, out, method, *extra)
    )


@pytest.fixture(scope="module")
def batches(checkpoint, mw_root):
    agent = Agent.load(checkpoint)
    sampler = agent.segment_sampler(load_trajectories([HAMMER], mw_root), seed=7)
    return [sampler.sample(16) for _ in range(3)]


def actions(model, batch):
    model.eval()
    with torch.no_grad():
        return action_preds(model, batch)


def mean_loss(model, batches):
    model.eval()
    with torch.no_grad():
        return sum(action_loss(model, b).item() for b in batches) / len(batches)


def eva_state(method, model, batches):
    """EVA components from the test batches (None for other methods)."""
    from eva_rl.eva.collector import CollectorConfig, collect

    if not method.startswith("eva"):
        return None
    cfg = CollectorConfig(rank=2, rho=2.0, tau=0.9, max_batches=30, batch_size=16)
    result = collect(model, iter(batches * 10), cfg, progress=False)
    return {n: layer.components for n, layer in result.layers.items()}


@pytest.mark.slow  # eleven fine-tuning runs
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_starts_at_the_base_model_trains_and_reloads(
    method, checkpoint, mw_root, batches, tmp_path
):
    """Identity at init (exact where B = 0), loss down after finetune, and the exported agent
    (adapter for plain PEFT, or full checkpoint) reloads to the trained weights."""
    base = Agent.load(checkpoint)
    cfg = MethodConfig(name=method, rank=2, calibration_batches=2)
    adapted = build_method(
        base.model,
        cfg,
        BuildContext(
            calibration=batches[:2],
            loss=action_loss,
            eva_state=eva_state(method, base.model, batches),
            steps=30,
        ),
    )
    ref = actions(base.model, batches[0])
    tol = 0.0 if METHODS[method].zero_output_at_init else 1e-5
    torch.testing.assert_close(actions(adapted.model, batches[0]), ref, atol=tol, rtol=0)

    out = tmp_path / "run"
    # AdaLoRA's E starts at 0 and its orthogonality penalty takes most of the clipped gradient
    # at first: on this tiny model its loss moves < 1% in 30 updates (measured), so give it more
    extra = ["optim.lr=3e-2", "loop.steps=90"] if method == "adalora" else []
    summary = finetune(tiny_finetune(checkpoint, mw_root, out, method, *extra), progress=False)
    tuned = load_agent(out / "agent")
    assert mean_loss(tuned.model, batches) < 0.9 * mean_loss(base.model, batches)
    assert summary.trainable_parameters > 0 and summary.gradient_signal > 0
    assert "hammer-v3" in tuned.meta.target_returns and tuned.meta.provenance["method"] == method
    assert tuned.meta.provenance["base_weights_sha256"] == weights_digest(checkpoint)


@pytest.mark.parametrize(
    "method", ["lora", "pissa", "olora", "corda", "lora-ga", "adalora", "eva-dora"]
)
def test_saved_adapter_loads_with_plain_peft_and_gives_identical_actions(
    method, checkpoint, batches, tmp_path
):
    torch.manual_seed(0)  # the dropout masks of the updates below, whatever ran before
    base = Agent.load(checkpoint)
    adapted = build_method(
        base.model,
        MethodConfig(name=method, rank=2, calibration_batches=2),
        BuildContext(
            calibration=batches[:2],
            loss=action_loss,
            eva_state=eva_state(method, base.model, batches),
            steps=30,
        ),
    )

    initial = save_initial_adapter(adapted, tmp_path)
    model = adapted.model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    model.train()
    for batch in batches:  # move every adapter weight away from its initial value
        opt.zero_grad()
        action_loss(model, batch).backward()
        opt.step()
    with warnings.catch_warnings():  # PEFT's advice to convert, while converting: not shown
        warnings.simplefilter("error")
        export_adapted(adapted, tmp_path / "adapter", str(checkpoint), initial)

    plain = DecisionTransformerModel.from_pretrained(checkpoint, local_files_only=True)
    loaded = PeftModel.from_pretrained(plain, str(tmp_path / "adapter"))
    got, want = actions(loaded, batches[1]), actions(model, batches[1])
    moved = (want - actions(base.model, batches[1])).abs().max()
    assert moved > 1e-4  # it did train (AdaLoRA's E starts at 0 and moves least), 5x atol below
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", ["eva", "adalora", "pissa"])
def test_resume_equals_uninterrupted(method, checkpoint, mw_root, tmp_path, monkeypatch):
    """EVA reuses its saved collector result; AdaLoRA restores its importance statistics;
    PiSSA's checkpoints export through PEFT's conversion, which must leave every update in
    train mode (the DT's dropout on) and the random generators untouched."""
    import eva_rl.training.loop as train_mod

    real, modes = train_mod.action_loss, []

    def spy(model, batch):
        modes.append(model.training)
        return real(model, batch)

    monkeypatch.setattr(train_mod, "action_loss", spy)
    # one thread in every segment: a share of the free cores would depend on the tests beside it
    cfg = tiny_finetune(checkpoint, mw_root, tmp_path / "a", method, "threads=1")
    finetune(cfg, progress=False)
    assert modes.count(True) == cfg.loop.steps  # held-out losses are the eval-mode calls
    calls = {"n": 0}

    def crash_at_update_15(model, batch):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 15:
                raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(train_mod, "action_loss", crash_at_update_15)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_finetune(checkpoint, mw_root, tmp_path / "b", method, "threads=1"),
                 progress=False)  # fmt: skip
    resumed = []

    def count(model, batch):
        resumed.append(model.training)
        return real(model, batch)

    def collect_again(*args, **kwargs):
        raise AssertionError("the resumed run collected EVA's components again")

    import eva_rl.runtime
    import eva_rl.training.adapted as adapted_mod

    here = eva_rl.runtime.machine(torch.device("cpu")) | {"threads": 1}
    elsewhere = here | {"cpu": "another CPU", "isa": "AVX2"}  # resumed on another machine
    monkeypatch.setattr(eva_rl.runtime, "machine", lambda device: elsewhere)
    monkeypatch.setattr(train_mod, "action_loss", count)
    monkeypatch.setattr(adapted_mod, "collect_on_trajectories", collect_again)
    torch.manual_seed(123)  # resume must not depend on the process's RNG state
    cfg = tiny_finetune(checkpoint, mw_root, tmp_path / "b", method, "threads=1", "resume=true")
    finetune(cfg, progress=False)
    # from the step-10 checkpoint, not from 0 (a restart would give the same weights here)
    assert resumed.count(True) == cfg.loop.steps - cfg.loop.save_every

    def state(run):
        return torch.load(run / "checkpoints/latest/state.pt", weights_only=False)["model"]

    a, b = state(tmp_path / "a"), state(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert sa["final"] == sb["final"] and sa["ranks"] == sb["ranks"]
    assert sb["wall_seconds"] >= sb["train_seconds"] > 0  # both segments counted
    assert sa["machines"] == [here] and sb["machines"] == [here, elsewhere]  # each, in order
    assert here["isa"] == torch.backends.cpu.get_cpu_capability() and here["cores"] >= 1


def test_cli_run_logs_summary_hparams_and_evaluates_the_adapter(checkpoint, mw_root, tmp_path):
    out = tmp_path / "runs" / "eva"
    code = main(
        [
            "finetune",
            "--checkpoint",
            str(checkpoint),
            "--data-root",
            str(mw_root),
            "--task",
            "hammer-v3",
            "--method",
            "eva",
            "--rank",
            "2",
            "--rho",
            "1.5",
            "--seed",
            "3",
            "--steps",
            "20",
            "--eval-every",
            "10",
            "--out",
            str(out),
            "collector.batch_size=16",
            "optim.batch_size=16",
            "optim.warmup_steps=2",
            "eval.episodes=1",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "eva" and summary["rho"] == 1.5 and summary["seed"] == 3
    assert [e["step"] for e in summary["eval"]] == [0, 10, 20]
    assert summary["initial"] == {
        k: v for k, v in summary["eval"][0].items() if k not in ("step", "episodes", "score_name")
    }
    assert summary["eval"][0]["score_name"] == summary["score_name"] == "success_final"
    assert len(summary["eval"][0]["episodes"]["hammer-v3"]) == 1  # every episode kept
    assert summary["collector_seconds"] > 0 and summary["total_rank"] == 2 * 8
    assert set(summary["ranks"]) == set(json.loads((out / "eva/eva.json").read_text())["layers"])
    config = load_config(FinetuneConfig, out / "config.yaml")
    assert config.method.rho == 1.5 and config.collector_config().rho == 1.5
    assert config.loop.steps == 20
    scalars = read_scalars(out / "tb")
    for tag in (
        "train/loss",
        "train/lr",
        "eval/success_any",
        "eval/success_final",
        "eval/return",
        "init/trainable_parameters",
        "init/gradient_signal",
        "init/collector_seconds",
        "eval/score",
        "hparam/final_score",
    ):
        assert tag in scalars, tag
    assert scalars["init/trainable_parameters"][0][1] == summary["trainable_parameters"]
    lr = lr_lambda(2, 20, config.optim.final_lr_ratio)  # each point: the update just made's rate
    assert [v for _, v in scalars["train/lr"]] == pytest.approx(
        [config.optim.lr * lr(step - 1) for step, _ in scalars["train/lr"]]
    )
    assert any(t.startswith("rank_init/encoder.h.0") for t in scalars)
    adapter = json.loads((out / "agent/adapter_config.json").read_text())
    assert adapter["fan_in_fan_out"] is True and adapter["rank_pattern"]

    report = tmp_path / "eval.json"
    code = main(
        ["evaluate", "--checkpoint", str(out / "agent"), "--episodes", "1"]
        + [
            "--out",
            str(report),
        ]
    )
    assert code == 0  # by default on the task it was tuned on, not the base's envs too
    assert list(json.loads(report.read_text())["envs"]) == ["hammer-v3"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "lorra"], "unknown method 'lorra'; choose one of: fft, lora,"),
        (["--method", "lora", "--rank", "0"], "method.rank must be >= 1"),
        (["--method", "eva", "--rho", "0.5"], "method.rho must be >= 1"),
        (["--method", "pissa", "method.train_head=true"], "train_head=true is not supported"),
        (["--method", "lora", "method.rnak=4"], "key 'method.rnak' (did you mean rank"),
        (["--method", "lora", "--task", "no-such-task-v3"], "no-such-task-v3"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, checkpoint, mw_root, tmp_path, capsys):
    base = ["finetune", "--checkpoint", str(checkpoint), "--data-root", str(mw_root)]
    task = [] if "--task" in args else ["--task", "hammer-v3"]
    code = main([*base, *task, "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_existing_run_is_refused_untouched(checkpoint, mw_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(
        ["finetune", "--checkpoint", str(checkpoint), "--data-root", str(mw_root)]
        + ["--task", "hammer-v3", "--method", "lora", "--out", str(out)]
    )
    assert code == 2 and "exists and was not made by eva-rl" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_dimension_mismatch_between_checkpoint_and_data(checkpoint, tmp_path):
    import gymnasium as gym
    import numpy as np

    from conftest import write_minari

    root = tmp_path / "other"
    eps = [(np.zeros((4, 3)), np.zeros((3, 1)), [0.0, 1.0, 2.0])]
    write_minari("test/pendulum/tiny-v0", gym.make("Pendulum-v1"), eps, root)
    cfg = load_config(
        FinetuneConfig,
        None,
        [f"checkpoint={checkpoint}", f"data_root={root}", "datasets=[test/pendulum/tiny-v0]"]
        + [f"out={tmp_path / 'run'}"],
    )
    with pytest.raises(UserError, match="checkpoint has state_dim=39, act_dim=4 but dataset"):
        finetune(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_run_resumes_only_in_its_own_precision_and_a_pin_of_auto_is_no_change(
    checkpoint, mw_root, tmp_path, monkeypatch
):
    """A run started at `precision: auto` resumes with the precision `auto` resolved to pinned
    (as a sweep pinned after its start passes it), and refuses the other one in one line."""
    import eva_rl.training.loop as train_mod
    from eva_rl.runtime import resolve_precision

    here = resolve_precision("auto", torch.device("cpu"))
    other = {"fp32": "bf16", "bf16": "fp32"}[here]
    real, calls = train_mod.action_loss, {"n": 0}

    def crash_at_update_15(model, batch):
        calls["n"] += model.training
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(train_mod, "action_loss", crash_at_update_15)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_finetune(checkpoint, mw_root, out, "lora", "precision=auto"), progress=False)
    monkeypatch.setattr(train_mod, "action_loss", real)
    again = ("resume=true", f"precision={other}")
    with pytest.raises(UserError, match=f"was trained in {here}; resume it with precision={here}"):
        finetune(tiny_finetune(checkpoint, mw_root, out, "lora", *again), progress=False)
    pinned = tiny_finetune(checkpoint, mw_root, out, "lora", "resume=true", f"precision={here}")
    assert finetune(pinned, progress=False).precision == here


def test_summary_json_is_written_last_so_a_run_failing_before_it_resumes(
    checkpoint, mw_root, tmp_path, monkeypatch
):
    """summary.json marks a run finished (a sweep never runs it again): a failure in anything
    written after the agent leaves no summary, and the run resumes and finishes."""
    import eva_rl.training.finetune as finetune_mod

    real = finetune_mod.log_hparams

    def fail(*args, **kwargs):
        raise OSError("disk hiccup while writing the HParams session")

    monkeypatch.setattr(finetune_mod, "log_hparams", fail)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="disk hiccup"):
        finetune(tiny_finetune(checkpoint, mw_root, out, "lora"), progress=False)
    assert not (out / "summary.json").exists() and (out / "checkpoints/latest/state.pt").exists()
    monkeypatch.setattr(finetune_mod, "log_hparams", real)
    summary = finetune(tiny_finetune(checkpoint, mw_root, out, "lora", "resume=true"),
                       progress=False)  # fmt: skip
    assert (out / "summary.json").is_file() and summary.steps == 30
