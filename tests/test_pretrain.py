"""`pretrain` end to end on tiny real data, and the same code on a non-Meta-World env (Hopper)."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import write_minari
from eva_rl.agent import Agent
from eva_rl.cli import main
from eva_rl.config import load_config
from eva_rl.data.segments import SegmentSampler, load_trajectories
from eva_rl.errors import UserError
from eva_rl.evaluation import EvalConfig, evaluate
from eva_rl.training.loop import LoopConfig, OptimConfig, Trainer
from eva_rl.training.pretrain import PretrainConfig, pretrain

TINY = [
    "model.hidden_size=32",
    "model.n_layer=1",
    "model.n_head=2",
    "model.context_length=5",
    "optim.batch_size=8",
    "optim.warmup_steps=2",
    "loop.steps=6",
    "loop.save_every=3",
    "loop.eval_every=3",
    "loop.log_every=2",
    "eval.episodes=1",
    "horizon=30",
]
DATASETS = ["metaworld/push-v3/scripted-v0", "metaworld/hammer-v3/scripted-v0"]


def tiny_cfg(mw_root, out, *extra):
    return load_config(
        PretrainConfig,
        None,
        [
            f"out={out}",
            f"data_root={mw_root}",
            f"datasets=[{', '.join(DATASETS)}]",
            *TINY,
            *extra,
        ],
    )


def test_pretrain_writes_a_loadable_agent_and_logs(mw_root, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_cfg(mw_root, out), progress=False)
    agent = Agent.load(out / "agent")
    meta = agent.meta
    assert meta.context_length == 5 and meta.horizon == 30 and meta.return_scale == 1000.0
    assert set(meta.target_returns) == {"push-v3", "hammer-v3"}
    prov = meta.provenance
    assert prov["steps"] == 6 and prov["seed"] == 0 and len(prov["datasets"]) == 2
    assert prov["config"]["model"]["hidden_size"] == 32
    assert load_config(PretrainConfig, out / "config.yaml") == tiny_cfg(mw_root, out)
    # the agent is a checkpoint and nothing else: its config travels in the provenance
    assert sorted(p.name for p in (out / "agent").iterdir()) == [
        "config.json",
        "eva_rl.json",
        "model.safetensors",
    ]
    # it acts with the stats of all the data it was trained on; constant features scaled by 1
    states = load_trajectories(DATASETS, mw_root).states.astype(np.float64)
    std = states.std(0)
    assert (std == 0).any() and (std > 0).any()
    np.testing.assert_allclose(meta.state_mean, states.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(meta.state_std, np.where(std == 0, 1.0, std), rtol=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/success_any", "eval/score", "eval/return"} <= tags
    assert [e.step for e in acc.Scalars("eval/success_any")] == [3, 6]
    from eva_rl.reports import plot_curve

    plot_curve(out, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_run_refused_and_resume_needs_a_checkpoint(mw_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and was not made by eva-rl"):
        pretrain(tiny_cfg(mw_root, out), progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(UserError, match="nothing to resume"):
        pretrain(tiny_cfg(mw_root, tmp_path / "new", "resume=true"), progress=False)
    code = main(
        [
            "pretrain",
            "--out",
            str(tmp_path / "x"),
            f"data_root={mw_root}",
            "datasets=[metaworld/nope-v3/scripted-v0]",
        ]
    )
    assert code == 2 and "'metaworld/nope-v3/scripted-v0' not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_same_code_on_hopper_with_a_plain_transformers_checkpoint(tmp_path):
    """Sampler, training, a plain `save_pretrained` dir + stats, and evaluation on Hopper-v5."""
    env = gym.make("Hopper-v5")
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(3):
        obs, acts, rews = [env.reset(seed=i)[0]], [], []
        for _ in range(15):
            a = rng.uniform(-1, 1, 3)
            o, r, terminated, truncated, _ = env.step(a)
            obs.append(o), acts.append(a), rews.append(r)
            if terminated:
                break
        episodes.append((obs, acts, rews))
    root = tmp_path / "minari"
    write_minari("test/hopper/random-v0", env, episodes, root)
    traj = load_trajectories(["test/hopper/random-v0"], root)
    assert traj.envs == ["Hopper-v5"] and (traj.state_dim, traj.act_dim) == (11, 3)
    cfg = tiny_cfg(root, tmp_path / "unused")
    torch.manual_seed(0)
    from eva_rl.agent import build_model

    model = build_model(cfg.model, 11, 3)
    mean, std = traj.state_stats()
    sampler = SegmentSampler(traj, 5, 10.0, mean, std, seed=0)
    Trainer(
        model,
        sampler,
        OptimConfig(batch_size=4, warmup_steps=1),
        LoopConfig(steps=3),
        tmp_path / "run",
        lambda d, s: None,
        progress=False,
    ).run()
    model.save_pretrained(tmp_path / "plain")
    stats = {
        "state_mean": mean.tolist(),
        "state_std": std.tolist(),
        "return_scale": 10.0,
        "context_length": 5,
        "horizon": 20,
        "target_returns": traj.max_returns(),
    }
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    agent = Agent.load(tmp_path / "plain", stats=tmp_path / "stats.json")
    result = evaluate(agent, ["Hopper-v5"], EvalConfig(episodes=2, device="cpu"), progress=False)
    assert result.mean("success_any") is None and result.mean("success_final") is None
    assert len(result.envs["Hopper-v5"].episodes) == 2
    assert np.isfinite(result.mean("return")) and result.score_name == "return"
