"""Beyond Meta-World, end to end (issue 15): a Hopper-v5 Minari dataset recorded by
`eva-rl data record`, a plain transformers Decision Transformer with a `--stats` file, and every
command with its default settings: finetune (eva, lora, dora, pissa), a sweep, report, curve,
evaluate of an adapter without `--stats`. The score is the return."""

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch
import yaml
from transformers import DecisionTransformerConfig, DecisionTransformerModel

from eva_rl.cli import main
from eva_rl.data.catalog import minari_root

DATA = "locomotion/hopper/random-v0"
FAST = ["loop.steps=12", "loop.eval_every=6", "loop.save_every=6", "loop.log_every=3",
        "optim.batch_size=8", "collector.batch_size=8", "method.calibration_batches=1",
        "eval.episodes=2", "method.rank=2"]  # fmt: skip


@pytest.fixture(scope="module")
def hopper(tmp_path_factory):
    """Random-action Hopper data (recorded by the CLI) and a plain HF DT with its stats."""
    root = tmp_path_factory.mktemp("hopper")
    args = ["data", "record", "--env", "Hopper-v5", "--id", DATA, "--episodes", "12"]
    assert main([*args, "--root", str(root / "minari"), "--horizon", "60"]) == 0
    config = DecisionTransformerConfig(
        state_dim=11, act_dim=3, hidden_size=32, n_layer=1, n_head=1, max_ep_len=1000,
        action_tanh=True, n_positions=60,
    )  # fmt: skip
    torch.manual_seed(0)
    DecisionTransformerModel(config).save_pretrained(root / "plain")
    with minari_root(root / "minari"):
        dataset = minari.load_dataset(DATA)
    observations = np.concatenate([e.observations[:-1] for e in dataset.iterate_episodes()])
    best = max(float(np.sum(e.rewards)) for e in dataset.iterate_episodes())
    stats = {
        "state_mean": observations.mean(0).tolist(),
        "state_std": (observations.std(0) + 1e-3).tolist(),
        "return_scale": 100.0,
        "context_length": 5,
        "horizon": 60,
        "target_returns": {"Hopper-v5": best},
        "reference_returns": {"Hopper-v5": [-20.272305, 3234.3]},  # D4RL's
    }
    (root / "stats.json").write_text(json.dumps(stats))
    return root


def common(hopper):
    return ["--checkpoint", str(hopper / "plain"), "--stats", str(hopper / "stats.json"),
            "--data-root", str(hopper / "minari")]  # fmt: skip


def test_recorded_data_round_trips_through_plain_minari(hopper):
    with minari_root(hopper / "minari"):
        dataset = minari.load_dataset(DATA)
    assert dataset.total_episodes == 12
    episode = dataset[3]
    n = len(episode.actions)
    assert episode.observations.shape == (n + 1, 11) and episode.actions.shape == (n, 3)
    assert episode.terminations[-1] or episode.truncations[-1]
    env = dataset.recover_environment()
    assert env.spec.id == "Hopper-v5" and env.spec.max_episode_steps == 60  # as recorded
    obs, _ = env.reset(seed=3)  # episode i was reset with seed + i (seed 0)
    np.testing.assert_allclose(obs, episode.observations[0], rtol=1e-6)
    for t, action in enumerate(episode.actions):  # replaying the actions replays the episode
        obs, reward, *_ = env.step(action)
        np.testing.assert_allclose(obs, episode.observations[t + 1], rtol=1e-5, atol=1e-6)
        assert reward == pytest.approx(episode.rewards[t])


@pytest.mark.parametrize(("env", "steps"), [("hammer-v3", 500), ("Pendulum-v1", 200)])
def test_random_recording_runs_to_the_envs_own_limit(env, steps, tmp_path):
    """Without --horizon: Meta-World's episode length (its max_path_length), or the time limit
    gymnasium registered."""
    args = ["data", "record", "--env", env, "--id", "test/own-limit-v0", "--episodes", "1"]
    assert main([*args, "--root", str(tmp_path)]) == 0
    with minari_root(tmp_path):
        dataset = minari.load_dataset("test/own-limit-v0")
    episode = dataset[0]
    assert len(episode.actions) == steps and episode.truncations[-1]
    spec = dataset.recover_environment().spec  # the recorded env ends where the data does
    assert (spec.kwargs.get("horizon") or spec.max_episode_steps) == steps
    success = (episode.infos or {}).get("success")  # kept where the env reports it, as an
    if env == "hammer-v3":  # agent's recording keeps it: T+1 entries, 0 at reset
        assert success.shape == (steps + 1,) and success[0] == 0
        assert set(np.unique(success)) <= {0.0, 1.0}
    else:
        assert success is None


def test_recording_an_unknown_env_is_one_line(tmp_path, capsys):
    args = ["data", "record", "--env", "NoSuchEnv-v9", "--id", "test/none-v0"]
    assert main([*args, "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot make env 'NoSuchEnv-v9'" in err, err
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_agents_recording_names_the_envs_own_shorter_limit(tmp_path):
    """An agent of horizon 300 on Pendulum (its own limit 200): the episodes end at 200, and
    the dataset's spec says 200 (it said the agent's 300)."""
    from test_evaluate import tiny_agent

    tiny_agent(3, 1, horizon=300, targets={"Pendulum-v1": -100.0}).save(tmp_path / "agent")
    args = ["data", "record", "--env", "Pendulum-v1", "--id", "test/pendulum-agent-v0",
            "--episodes", "1", "--checkpoint", str(tmp_path / "agent"), "--precision", "fp32",
            "--root", str(tmp_path / "minari")]  # fmt: skip
    assert main(args) == 0
    with minari_root(tmp_path / "minari"):
        dataset = minari.load_dataset("test/pendulum-agent-v0")
    assert [len(e.rewards) for e in dataset.iterate_episodes()] == [200]
    assert dataset.spec.env_spec.max_episode_steps == 200


def test_recording_the_evaluations_seeds_warns():
    """Seeds 990..1009 hold the layouts an evaluation plays (1000 + i): training on them would
    score an agent on what it saw. Seeds 0..99 (the default) do not."""
    from eva_rl.data.record import RecordConfig

    with pytest.warns(UserWarning, match=r"seeds 990\.\.1009 include the evaluation's \(1000 on\)"):
        RecordConfig(env="Pendulum-v1", id="test/p-v0", episodes=20, seed=990)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RecordConfig(env="Pendulum-v1", id="test/p-v0", episodes=100)


@pytest.mark.slow  # four fine-tuning runs
@pytest.mark.parametrize("method", ["eva", "lora", "dora", "pissa"])
def test_finetune_with_default_settings_on_a_plain_dt(method, hopper, tmp_path):
    out = tmp_path / method
    args = ["finetune", *common(hopper), "--datasets", DATA, "--method", method]
    assert main([*args, "--out", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score_name"] == "normalized_return"
    steps = [e["step"] for e in summary["eval"]]
    assert steps == [0, 6, 12]  # evaluated before training (the default), no success anywhere
    assert "success_final" not in summary["final"] and summary["final"]["return"] is not None
    ret = summary["final"]["return"]
    assert summary["final"]["score"] == pytest.approx(100 * (ret + 20.272305) / 3254.572305)
    adapter = json.loads((out / "agent" / "eva_rl.json").read_text())
    assert adapter["state_mean"] == json.loads((hopper / "stats.json").read_text())["state_mean"]


@pytest.mark.slow  # spawns run processes
def test_sweep_report_curve_and_evaluate_without_stats(hopper, tmp_path, capsys):
    base = tmp_path / "base.yaml"
    config = {"checkpoint": str(hopper / "plain"), "stats": str(hopper / "stats.json"),
              "data_root": str(hopper / "minari"), "datasets": [DATA]}  # fmt: skip
    for item in FAST:
        key, value = item.split("=")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    base.write_text(yaml.safe_dump(config))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "out": str(tmp_path / "runs"),
                "grid": {"method.name": ["eva", "lora"]},
                "workers": 1,
            }
        )
    )
    assert main(["sweep", str(sweep)]) == 0
    assert (tmp_path / "runs" / "_baseline" / f"{DATA.replace('/', '_')}.json").is_file()
    report = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(report)]) == 0
    readme = (report / "README.md").read_text()
    assert "normalised return: mean [95% CI]" in readme and "| eva r2 rho2 |" in readme
    assert "| base agent (no fine-tuning) |" in readme
    run = tmp_path / "runs" / "method=eva"
    assert main(["curve", str(run), "--out", str(tmp_path / "curve.png")]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert (
        main(["evaluate", "--checkpoint", str(run / "agent"), "--episodes", "2", "--out", str(out)])
        == 0
    )  # no --stats: the adapter carries its base's
    result = json.loads(out.read_text())
    assert result["score_name"] == "normalized_return" and "Hopper-v5" in result["envs"]


def test_targets_from_any_dataset_and_a_hub_id_offline(hopper, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(hopper / "plain"), "--stats",
            str(hopper / "stats.json"), "--envs", "Hopper-v5", "--episodes", "1"]  # fmt: skip
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(hopper / "minari"))
    assert main([*args, "--out", str(out), "--targets-from-datasets", DATA]) == 0
    with minari_root(hopper / "minari"):
        best = max(float(np.sum(e.rewards)) for e in minari.load_dataset(DATA).iterate_episodes())
    assert json.loads(out.read_text())["envs"]["Hopper-v5"]["target_return"] == pytest.approx(best)
    # offline as a user sets it before starting; huggingface_hub read the variable at import,
    # so the test sets its constant too (else the load retries a network that is not there)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    capsys.readouterr()
    hub = ["evaluate", "--checkpoint", "edbeeching/decision-transformer-gym-hopper-medium"]
    assert main([*hub, "--episodes", "1", "--out", str(tmp_path / "hub.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot load 'edbeeching/decision-transformer-gym-hopper-medium' from the Hug" in err


def test_pretrain_horizon_follows_the_env_and_one_rule_for_horizons(hopper, tmp_path, capsys):
    out = tmp_path / "pretrain"
    args = ["pretrain", f"out={out}", f"datasets=[{DATA}]", f"data_root={hopper / 'minari'}",
            "model.hidden_size=16", "model.n_layer=1", "model.context_length=5",
            "optim.batch_size=8", "loop.steps=4", "loop.save_every=4", "loop.eval_every=0",
            "eval.episodes=1"]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((out / "agent" / "eva_rl.json").read_text())
    assert meta["horizon"] == 60  # the recorded env's time limit, not Meta-World's 200
    stats = json.loads((hopper / "stats.json").read_text())
    (tmp_path / "long.json").write_text(json.dumps({**stats, "horizon": 1001}))
    capsys.readouterr()
    ev = ["evaluate", "--checkpoint", str(hopper / "plain"), "--stats", str(tmp_path / "long.json"),
          "--episodes", "1", "--out", str(tmp_path / "e.json")]  # fmt: skip
    assert main(ev) == 2
    assert "horizon 1001 does not fit the model's max_ep_len 1000" in capsys.readouterr().err
    assert main([*args[:1], f"out={tmp_path / 'p2'}", *args[2:], "horizon=1001"]) == 2
    assert "horizon 1001 does not fit the model's max_ep_len 1000" in capsys.readouterr().err


def test_gymnasium_suites_name_their_envs_and_data(tmp_path, monkeypatch):
    from eva_rl.errors import UserError

    (tmp_path / "gymnasium").mkdir()
    (tmp_path / "gymnasium" / "hop.yaml").write_text(yaml.safe_dump({
        "family": "gymnasium", "tasks": ["Hopper-v5"], "horizon": 60, "datasets": [DATA],
        "reference_returns": {"Hopper-v5": [-20.272305, 3234.3]},
    }))  # fmt: skip
    monkeypatch.setenv("EVA_RL_ENVS_DIR", str(tmp_path))
    from eva_rl.data.catalog import suite_datasets
    from eva_rl.envs import load_suite

    suite = load_suite("hop")
    assert suite.family == "gymnasium" and suite_datasets(suite) == [DATA]
    with pytest.raises(UserError, match="no scripted experts.*eva-rl data record"):
        main_data_build = __import__("eva_rl.data.build", fromlist=["plan"])
        main_data_build.plan(main_data_build.DataBuildConfig(suite="hop"))
    (tmp_path / "gymnasium" / "bad.yaml").write_text(yaml.safe_dump(
        {"family": "gymnasium", "tasks": ["NoSuchEnv-v9"]}))  # fmt: skip
    with pytest.raises(UserError, match="'NoSuchEnv-v9' is no registered gymnasium env"):
        load_suite("bad")
    assert gym.spec("Hopper-v5").max_episode_steps == 1000
