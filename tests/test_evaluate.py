"""Batched evaluation: fixed episode counts, seeding, success metrics, refusals, batch == alone,
slots reused == one per episode, worker processes == in process, precision."""

import contextlib
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model
from eva_rl.envs import make_env, make_task_env
from eva_rl.errors import UserError
from eva_rl.evaluation import EvalConfig, Evaluator, evaluate, scaled_target
from eva_rl.results import EvalResult
from eva_rl.rollout import MeanAction

PUSH = "metaworld/push-v3/scripted-v0"
SHORT_ID = "eva_rl_test/ShortInvertedPendulum-v5"  # same spaces as InvertedPendulum-v5, 3 steps


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_agent(state_dim, act_dim, horizon=20, targets=None, seed=0, context=5):
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_size=32, n_layer=1, n_head=1, context_length=context)
    meta = AgentMeta(
        state_mean=[0.0] * state_dim,
        state_std=[1.0] * state_dim,
        return_scale=100.0,
        context_length=context,
        horizon=horizon,
        target_returns=dict(targets or {}),
    )
    return Agent(build_model(cfg, state_dim, act_dim), meta)


def episodes_of(result, name):
    return [e.to_dict() for e in result.envs[name].episodes]


def test_exactly_n_episodes_per_env_with_early_termination():
    if SHORT_ID not in gym.registry:
        gym.register(
            SHORT_ID,
            "gymnasium.envs.mujoco.inverted_pendulum_v5:InvertedPendulumEnv",
            max_episode_steps=3,
        )
    names = ["InvertedPendulum-v5", SHORT_ID]
    agent = tiny_agent(4, 1, horizon=100, targets=dict.fromkeys(names, 100.0))
    # workers=1: the short env is registered in this process only, not in worker processes
    result = evaluate(agent, names, EvalConfig(episodes=6, workers=1), progress=False)
    long_eps, short_eps = episodes_of(result, names[0]), episodes_of(result, names[1])
    assert len(long_eps) == len(short_eps) == 6
    assert [e["seed"] for e in long_eps] == list(range(1000, 1006))  # the default seed 1000
    lengths = [e["length"] for e in long_eps]
    assert len(set(lengths)) > 1 and max(lengths) < 100  # terminated early, at varying steps
    assert all(e["length"] == 3 for e in short_eps)
    assert result.envs[names[0]].mean("length") == pytest.approx(np.mean(lengths))
    assert result.mean("success_any") is None and result.mean("success_final") is None
    assert result.score_name == "return"  # no success info, no reference returns


def test_generic_env_cut_at_horizon_and_same_seed_reproducible():
    agent = tiny_agent(3, 1, horizon=15, targets={"Pendulum-v1": -100.0})
    cfg = EvalConfig(episodes=3, seed=5)
    a = evaluate(agent, ["Pendulum-v1"], cfg, progress=False)
    b = evaluate(agent, ["Pendulum-v1"], cfg, progress=False)
    c = evaluate(agent, ["Pendulum-v1"], EvalConfig(episodes=3, seed=6), progress=False)
    assert episodes_of(a, "Pendulum-v1") == episodes_of(b, "Pendulum-v1")
    assert [e["length"] for e in episodes_of(a, "Pendulum-v1")] == [15, 15, 15]
    assert a.mean("return") != c.mean("return")


def test_metaworld_seeded_reproducible_and_model_mode_restored():
    agent = tiny_agent(39, 4, targets={"reach-v3": 200.0})
    agent.model.train()
    cfg = EvalConfig(episodes=2, seed=3)
    a = evaluate(agent, ["reach-v3"], cfg, progress=False)
    b = evaluate(agent, ["reach-v3"], cfg, progress=False)
    c = evaluate(agent, ["reach-v3"], EvalConfig(episodes=2, seed=4), progress=False)
    assert agent.model.training
    assert episodes_of(a, "reach-v3") == episodes_of(b, "reach-v3")
    assert a.mean("return") != c.mean("return")
    assert a.envs["reach-v3"].mean("success_any") is not None  # Meta-World reports success
    assert a.score_name == "success_final"


def test_batched_forward_equals_each_episode_alone():
    """Same seeds played together and one at a time give identical episodes (here the context is
    shorter than the horizon, so both padded and full windows are exercised)."""
    agent = tiny_agent(39, 4, horizon=12, targets={"reach-v3": 300.0, "push-v3": 50.0})
    cfg = EvalConfig(episodes=3, seed=0)
    batched = evaluate(agent, ["reach-v3", "push-v3"], cfg, progress=False)
    for name in ("reach-v3", "push-v3"):
        alone = [
            episodes_of(
                evaluate(agent, [name], EvalConfig(episodes=1, seed=i), progress=False), name
            )[0]
            for i in range(3)
        ]
        assert alone == episodes_of(batched, name)


def test_batched_equals_alone_while_the_batch_shrinks():
    agent = tiny_agent(4, 1, horizon=60, targets={"InvertedPendulum-v5": 60.0}, seed=1)
    name = "InvertedPendulum-v5"
    cfg = EvalConfig(episodes=4, seed=0)
    batched = episodes_of(evaluate(agent, [name], cfg, progress=False), name)
    alone = [
        episodes_of(evaluate(agent, [name], EvalConfig(episodes=1, seed=i), progress=False), name)[
            0
        ]
        for i in range(4)
    ]
    assert len({e["length"] for e in batched}) > 1
    assert alone == batched


def test_success_metrics_match_a_hand_rolled_scripted_expert(monkeypatch):
    from metaworld.policies import ENV_POLICY_MAP

    task, horizon, seed = "reach-v3", 200, 7
    policy = ENV_POLICY_MAP[task]()
    agent = tiny_agent(39, 4, horizon=horizon, targets={task: 1.0})

    def expert(self, slots, mean, obs):  # the action choice, given each slot's observation
        return np.stack([policy.get_action(s) for s in obs]).astype(np.float32)

    monkeypatch.setattr(MeanAction, "choose", expert)
    result = evaluate(agent, [task], EvalConfig(episodes=3, seed=seed), progress=False)

    env = make_task_env(task, horizon)
    expected = []
    for i in range(3):
        obs, _ = env.reset(seed=seed + i)
        successes, total = [], 0.0
        for _ in range(horizon):
            action = policy.get_action(obs.astype(np.float32)).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(np.clip(action, -1, 1))
            successes.append(info["success"])
            total += reward
            if terminated or truncated:
                break
        expected.append((max(successes), successes[-1], len(successes), total))
    env.close()
    got = [
        (e["success_any"], e["success_final"], e["length"], e["return"])
        for e in episodes_of(result, task)
    ]
    assert [g[:3] for g in got] == [e[:3] for e in expected]  # success any/final, length
    assert [g[3] for g in got] == pytest.approx([e[3] for e in expected])  # return
    assert result.envs[task].mean("success_any") == 1.0
    assert result.mean("success_any") == 1.0
    assert result.mean("success_final") == pytest.approx(np.mean([x[1] for x in expected]))
    assert result.mean("score") == result.mean("success_final")


def test_dimension_mismatch_refused_naming_both_shapes():
    agent = tiny_agent(39, 4, targets={"Pendulum-v1": 0.0})
    with pytest.raises(UserError, match="state_dim=39, act_dim=4.*state_dim=3, act_dim=1"):
        evaluate(agent, ["Pendulum-v1"], EvalConfig(episodes=1), progress=False)


def test_missing_target_return_is_a_clear_error_and_override_and_scale_apply():
    agent = tiny_agent(39, 4, horizon=2, targets={"push-v3": 100.0})
    with pytest.raises(UserError, match=r"reach-v3.*--target-return"):
        evaluate(agent, ["reach-v3"], EvalConfig(episodes=1), progress=False)
    cfg = EvalConfig(episodes=1, target_returns={"reach-v3": 40.0}, target_scale=1.5)
    result = evaluate(agent, ["reach-v3", "push-v3"], cfg, progress=False)
    assert result.envs["reach-v3"].target_return == 60.0
    assert result.envs["push-v3"].target_return == 150.0
    # a negative target scaled up asks for a better return, not a multiple of a bad one
    cfg = EvalConfig(episodes=1, target_returns={"reach-v3": -40.0}, target_scale=1.5)
    result = evaluate(agent, ["reach-v3"], cfg, progress=False)
    assert result.envs["reach-v3"].target_return == -20.0
    assert scaled_target(-40.0, 2.0) == 0.0 and scaled_target(3600.0, 2.0) == 7200.0
    assert scaled_target(-40.0, 1.0) == -40.0 and scaled_target(-40.0, 0.5) == -60.0


def test_config_and_env_name_validation():
    with pytest.raises(UserError, match="eval episodes must be >= 1, got 0"):
        EvalConfig(episodes=0)
    with pytest.raises(UserError, match="NoSuchEnv-v0"):
        make_env("NoSuchEnv-v0", 10)
    with pytest.raises(UserError, match="unknown precision 'fp8'; use auto, bf16 or fp32"):
        EvalConfig(precision="fp8")
    with pytest.raises(UserError, match="eval workers must be >= 0"):
        EvalConfig(workers=-1)


def test_json_round_trip_and_tensorboard_scalars(tmp_path):
    agent = tiny_agent(39, 4, horizon=3, targets={"reach-v3": 1.0, "push-v3": 1.0})
    result = evaluate(agent, ["reach-v3", "push-v3"], EvalConfig(episodes=2), progress=False)
    data = json.loads(json.dumps(result.to_dict(intervals=True)))
    assert EvalResult.from_dict(data).to_dict() == result.to_dict()
    assert data["success_final_ci95"][0] <= data["success_final"] <= data["success_final_ci95"][1]

    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = (value, step)

    writer = Writer()
    result.log(writer, step=7)
    metrics = ("score", "success_final", "success_any", "return", "length")
    expected_tags = {f"eval/{env}/{m}" for env in ("reach-v3", "push-v3") for m in metrics}
    expected_tags |= {f"eval/{m}" for m in metrics}
    assert set(writer.scalars) == expected_tags
    assert writer.scalars["eval/return"] == (result.mean("return"), 7)

    pendulum = tiny_agent(3, 1, horizon=3, targets={"Pendulum-v1": 0.0})
    no_success = evaluate(pendulum, ["Pendulum-v1"], EvalConfig(episodes=1), progress=False)
    writer = Writer()
    no_success.log(writer, step=0, prefix="val")
    assert set(writer.scalars) == {
        f"val{env}/{m}" for env in ("", "/Pendulum-v1") for m in ("score", "return", "length")
    }


def test_reference_returns_make_the_score_a_normalised_return():
    agent = tiny_agent(3, 1, horizon=5, targets={"Pendulum-v1": 0.0})
    agent.meta.reference_returns = {"Pendulum-v1": [-1000.0, 0.0]}
    result = evaluate(agent, ["Pendulum-v1"], EvalConfig(episodes=2), progress=False)
    ret = result.mean("return")
    assert result.score_name == "normalized_return"
    assert result.mean("score") == pytest.approx(100 * (ret + 1000) / 1000)


def test_an_evaluator_serves_again_after_a_run_that_failed():
    """A run stopped by an error (here a NaN action) leaves envs mid-episode; the next run on
    the same Evaluator plays the episodes a fresh one does (it raised on stale env state)."""
    agent = tiny_agent(3, 1, horizon=15, targets={"Pendulum-v1": -100.0})
    cfg = EvalConfig(episodes=3, max_envs=2, workers=2)  # worker processes: steps in flight
    fresh = evaluate(agent, ["Pendulum-v1"], cfg, progress=False)
    head = agent.model.predict_action[0]
    saved = head.bias.detach().clone()
    with Evaluator(agent, ["Pendulum-v1"], cfg, False) as ev:
        with torch.no_grad():
            head.bias.fill_(float("nan"))
        with pytest.raises(UserError, match="non-finite action"):
            ev.run()
        with torch.no_grad():
            head.bias.copy_(saved)
        again = ev.run()
    assert episodes_of(again, "Pendulum-v1") == episodes_of(fresh, "Pendulum-v1")


def test_a_mixed_suites_score_interval_is_around_its_score():
    """Success on one env, none on the other: the score is the return (the one both have),
    and its interval is the return's, not one mixing success and return."""
    from eva_rl.results import EnvResult, Episode
    from eva_rl.stats import stratified_bootstrap_ci

    mw = EnvResult("reach-v3", 1.0, [Episode(i, 100.0 + 10 * i, 10, 1.0, float(i % 2))
                                     for i in range(4)])  # fmt: skip
    pendulum = EnvResult("Pendulum-v1", 1.0, [Episode(i, -50.0 - i, 10) for i in range(4)])
    result = EvalResult({"reach-v3": mw, "Pendulum-v1": pendulum})
    assert result.score_name == "return"
    low, high = result.intervals()["score"]
    assert (low, high) == stratified_bootstrap_ci([mw.values("return"), pendulum.values("return")])
    assert low <= result.mean("score") <= high


def test_slots_reused_and_worker_processes_give_the_same_episodes():
    """Two slots for five episodes per env (each slot plays several), several evaluations on
    one Evaluator, and env stepping in two worker processes: every episode as when each
    episode has its own env in this process."""
    agent = tiny_agent(39, 4, horizon=15, targets={"push-v3": 1500.0, "reach-v3": 1800.0})
    envs = ["push-v3", "reach-v3"]
    whole = evaluate(agent, envs, EvalConfig(episodes=5, max_envs=10, workers=1), progress=False)
    with Evaluator(agent, envs, EvalConfig(episodes=5, max_envs=2, workers=1), False) as ev:
        first, again = ev.run(), ev.run(3)
    assert [episodes_of(first, n) for n in envs] == [episodes_of(whole, n) for n in envs]
    assert [episodes_of(again, n) for n in envs] == [episodes_of(whole, n)[:3] for n in envs]
    workers = evaluate(agent, envs, EvalConfig(episodes=5, max_envs=4, workers=2), False)
    assert [episodes_of(workers, n) for n in envs] == [episodes_of(whole, n) for n in envs]
    with pytest.raises(UserError, match="max_envs must be >= 0"):
        EvalConfig(max_envs=-1)


def test_bf16_actions_close_to_fp32_and_forced_bf16_without_hardware_warns(checkpoint, mw_root):
    """On a (tiny) trained DT and real segments, bf16 autocast moves actions by < 0.05."""
    from eva_rl.data.segments import load_trajectories
    from eva_rl.runtime import autocast, native_bf16, resolve_precision

    agent = Agent.load(checkpoint)
    batch = agent.segment_sampler(load_trajectories([PUSH], mw_root), seed=0).sample(16)
    inputs = [batch[k] for k in ("states", "actions", "returns_to_go", "timesteps")]
    mask = batch["attention_mask"]
    cpu = torch.device("cpu")
    full = agent.predict(*inputs, mask)
    with autocast(cpu, "bf16"):
        half = agent.predict(*inputs, mask)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0)
    assert not torch.equal(half.float(), full)  # it did run in bf16
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    if not native_bf16(cpu):
        with pytest.warns(UserWarning, match="no native bfloat16.*slower than fp32"):
            resolve_precision("bf16", cpu)
    with pytest.warns(UserWarning) if not native_bf16(cpu) else contextlib.nullcontext():
        result = evaluate(agent, ["push-v3"], EvalConfig(episodes=2, precision="bf16"), False)
    assert result.config["precision"] == "bf16"


def test_videos_decode_to_the_expected_frames_and_change_no_episode(tmp_path):
    """Recorded episodes (in a worker process, with OSMesa or EGL) are MP4s of 1 + steps/every
    frames at the asked size, logged to TensorBoard, and every episode is the same as without."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eva_rl.video import log_videos, read_frames

    agent = tiny_agent(39, 4, horizon=10, targets={"reach-v3": 300.0})
    plain = evaluate(agent, ["reach-v3"], EvalConfig(episodes=3, workers=1), progress=False)
    cfg = EvalConfig(episodes=3, video=2, video_size=64, video_every=2)
    with Evaluator(agent, ["reach-v3"], cfg, progress=False) as ev:
        filmed = ev.run(video_dir=str(tmp_path / "videos"))
    assert episodes_of(filmed, "reach-v3") == [
        {**e, **({"video": str(tmp_path / "videos" / f"reach-v3-seed{e['seed']}.mp4")}
                 if i < 2 else {})} for i, e in enumerate(episodes_of(plain, "reach-v3"))
    ]  # fmt: skip
    frames = read_frames(tmp_path / "videos" / "reach-v3-seed1000.mp4")
    assert frames.shape == (1 + 10 // 2, 64, 64, 3) and frames.std() > 0  # not a blank image
    assert not (tmp_path / "videos" / "reach-v3-seed1002.mp4").exists()
    log_videos(filmed, tmp_path / "tb", step=5)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Tags()["images"] == ["video/reach-v3/seed1000", "video/reach-v3/seed1001"]


def test_no_renderer_is_one_line_naming_what_to_install(monkeypatch):
    import ctypes.util

    from eva_rl.video import setup_rendering

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)  # a bare machine
    with pytest.raises(UserError, match=r"apt-get install libosmesa6.*MUJOCO_GL=egl"):
        setup_rendering()


UPRIGHT_CHECK = """
import json, mujoco, numpy as np
from eva_rl.envs import MetaWorldTaskEnv
out = {}
for camera in ("corner", "behindGripper"):
    env = MetaWorldTaskEnv("stick-pull-v3", render_mode="rgb_array", camera_name=camera,
                           width=120, height=120)
    env.reset(seed=1002)
    frame, raw = env.render(), env._env.render()
    model, data = env._env.model, env._env.data
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    rot, pos = data.cam_xmat[cam].reshape(3, 3), data.cam_xpos[cam]
    focal = 60 / np.tan(np.deg2rad(model.cam_fovy[cam] / 2))
    def pixel(body):  # where the camera's own image shows a body: (row, col)
        v = rot.T @ (data.body(body).xpos - pos)
        return [int(60 - focal * v[1] / -v[2]), int(60 + focal * v[0] / -v[2])]
    out[camera] = {"hand": pixel("right_hand"), "stick": pixel("stick"),
                   "frame": frame.tolist(), "raw": raw.tolist()}
print(json.dumps(out))
"""


def test_meta_world_frames_are_upright_where_the_camera_is_mounted_upside_down():
    """Meta-World's corner camera looks at the scene upside down (the hand is drawn below the
    stick on the table): its frames come turned 180 degrees, the hand (red) where the camera's
    geometry puts it, turned, and above the stick; an upright camera's frames are unchanged."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa")}
    done = subprocess.run([sys.executable, "-c", UPRIGHT_CHECK], env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    views = json.loads(done.stdout)
    corner = views["corner"]
    frame, raw = np.array(corner["frame"]), np.array(corner["raw"])
    (hand_row, hand_col), (stick_row, _) = corner["hand"], corner["stick"]
    assert hand_row > stick_row  # the camera's own image: the hand below the table
    assert np.array_equal(frame, raw[::-1, ::-1])
    red, green, _ = frame[119 - hand_row, 119 - hand_col]
    assert red > 2 * green  # the robot's red hand, where the turned image puts it
    assert 119 - hand_row < 119 - stick_row  # now above the stick
    gripper = views["behindGripper"]
    assert gripper["frame"] == gripper["raw"]


def test_video_command_films_the_agents_side_by_side_on_the_same_episodes(tmp_path, capsys):
    """One MP4 per episode seed with a column per agent under a caption strip; each caption is
    that agent's own outcome on that episode (the same as a plain evaluation of it); existing
    videos are kept unless --overwrite; a label count that does not match is one line."""
    from eva_rl.cli import main
    from eva_rl.video import read_frames

    agents, outcomes = [], []
    for seed in (0, 1):
        agent = tiny_agent(39, 4, horizon=10, targets={"reach-v3": 300.0}, seed=seed)
        agent.save(tmp_path / f"agent{seed}")
        agents.append(str(tmp_path / f"agent{seed}"))
        plain = evaluate(agent, ["reach-v3"], EvalConfig(episodes=2, seed=5), progress=False)
        outcomes.append([(e["success_final"], e["return"]) for e in episodes_of(plain, "reach-v3")])
    out = tmp_path / "videos"
    args = ["video", *agents, "--env", "reach-v3", "--episodes", "2", "--seed", "5",
            "--video-size", "64", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    paths = [out / "reach-v3-seed5.mp4", out / "reach-v3-seed6.mp4"]
    assert sorted(out.iterdir()) == paths  # the single films are gone
    assert capsys.readouterr().out.splitlines() == [
        line
        for k, path in enumerate(paths)
        for line in [str(path)]
        + [
            f"  agent{i}: success {o[k][0]:.0f}, return {o[k][1]:.0f}"
            for i, o in enumerate(outcomes)
        ]
    ]
    assert outcomes[0] != outcomes[1]  # two different agents, told apart by their captions
    frames = read_frames(paths[1])
    assert frames.shape[0] == 1 + 10 // 2 and frames.shape[2] == 128 and frames.shape[1] > 64
    assert frames[:, -64:, :64].std() > 0 and frames[:, -64:, 64:].std() > 0  # two films
    written = paths[0].read_bytes()
    assert main(args) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert paths[0].read_bytes() == written
    assert main([*args, "--labels", "one"]) == 2
    assert "1 labels for 2 checkpoints" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    for wrong, message in [
        ([*args[:-1], str(elsewhere), "--env", "reach-v4"], "cannot make env 'reach-v4'"),
        (["video", str(tmp_path / "missing"), *args[1:-1], str(elsewhere)], "missing"),
    ]:
        assert main(wrong) == 2  # nothing filmed, nothing made
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and not elsewhere.exists()


def test_each_episode_keeps_its_last_info_numbers_as_a_replay_of_its_actions_gives_them():
    """`final_info` is the env's info at the episode's last step (Meta-World: the distance of
    the object to the goal, ...), for every episode of every slot, across reused slots and
    repeated runs of one evaluator, in process and in worker processes."""
    agent = tiny_agent(39, 4, horizon=12, targets={"reach-v3": 300.0, "push-v3": 300.0})
    for workers in (1, 2):
        cfg = EvalConfig(episodes=3, seed=7, max_envs=2, workers=workers)  # slots reused
        with Evaluator(agent, ["reach-v3", "push-v3"], cfg, progress=False, record=True) as ev:
            first, again = ev.run(), ev.run()
        for name in ("reach-v3", "push-v3"):
            assert episodes_of(first, name) == episodes_of(again, name)
            for episode in first.envs[name].episodes:
                env = make_env(name, horizon=12)
                env.reset(seed=episode.seed)
                for action in episode.trajectory["actions"]:
                    *_, info = env.step(action)
                env.close()
                assert episode.final_info == pytest.approx(info, rel=1e-5)  # 6 digits
                assert set(info) >= {"obj_to_target", "success", "grasp_success"}
    push = first.envs["push-v3"]
    mean = np.mean([e.final_info["obj_to_target"] for e in push.episodes])
    assert push.to_dict()["final_info"]["obj_to_target"] == pytest.approx(mean)
    assert "push-v3 at the last step (mean over episodes): " in first.to_markdown()
    result = EvalResult.from_dict(json.loads(json.dumps(first.to_dict())))
    assert (
        result.envs["push-v3"].episodes[2].final_info
        == first.envs["push-v3"].episodes[2].final_info
    )


def test_a_suites_reference_returns_normalise_an_agent_that_has_none(tmp_path):
    """An agent pretrained on datasets (or a hub DT) carries no reference returns: evaluated on
    a suite, its score is the suite's normalised return, not a raw one on another scale."""
    import shutil
    from pathlib import Path

    from eva_rl.evaluation import EvaluateConfig, run_evaluation

    agent, shipped = tmp_path / "agent", Path(__file__).resolve().parents[1] / "results"
    shutil.copytree(shipped / "pretrained/halfcheetah-cpu/agent", agent)
    meta = json.loads((agent / "eva_rl.json").read_text())
    meta["reference_returns"], meta["horizon"] = {}, 20  # 20 steps: a short episode
    (agent / "eva_rl.json").write_text(json.dumps(meta))
    cfg = EvaluateConfig(checkpoint=str(agent), suite="gymnasium/halfcheetah",
                         out=str(tmp_path / "eval.json"), eval=EvalConfig(episodes=1))  # fmt: skip
    env = run_evaluation(cfg, progress=False).envs["HalfCheetah-v5"]
    random, expert = -280.178953, 12135.0  # envs/gymnasium/halfcheetah.yaml (D4RL's)
    assert env.score_name == "normalized_return"
    ret = env.mean("return")
    assert env.mean("score") == pytest.approx(100 * (ret - random) / (expert - random))
