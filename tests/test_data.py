import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from eva_rl.cli import main
from eva_rl.data import catalog
from eva_rl.data.build import DataBuildConfig, build
from eva_rl.data.catalog import dataset_id

TASKS = ["push-v3", "hammer-v3"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two tiny real datasets, built once for the module with two worker processes."""
    root = tmp_path_factory.mktemp("built")
    cfg = DataBuildConfig(tasks=TASKS, episodes=4, chunk_episodes=3, workers=2, root=str(root))
    return root, build(cfg)


def _hash_tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_round_trip_through_plain_minari(built, monkeypatch):
    root, summaries = built
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert set(minari.list_local_datasets()) == {dataset_id(t) for t in TASKS}
    by_task = {s["task"]: s for s in summaries}
    for task in TASKS:
        summary = by_task[task]
        ds = minari.load_dataset(dataset_id(task))
        assert ds.total_episodes == 4 and ds.total_steps == 800
        returns = []
        for ep in ds.iterate_episodes():
            assert ep.observations.shape == (201, 39) and ep.actions.shape == (200, 4)
            assert np.all(np.abs(ep.actions) <= 1.0)
            assert not ep.terminations.any()
            assert ep.truncations[-1] and not ep.truncations[:-1].any()
            assert set(ep.infos) >= {"success"} and ep.infos["success"].shape == (201,)
            returns.append(ep.rewards.sum())
        assert summary["episodes"] == 4
        assert summary["return_mean"] == pytest.approx(np.mean(returns))
        assert summary["return_max"] == pytest.approx(np.max(returns))
        assert (root / dataset_id(task) / "eva_rl_build.yaml").is_file()


def test_recovered_env_steps_and_replays_the_episode(built, monkeypatch):
    root, _ = built
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    ds = minari.load_dataset(dataset_id("push-v3"))
    env = ds.recover_environment()
    episode = next(iter(ds.iterate_episodes([0])))
    obs, _ = env.reset(seed=int(_episode_seed(ds, 0)))
    np.testing.assert_allclose(obs, episode.observations[0])
    for t in range(10):  # the stored seed and actions reproduce the stored trajectory
        obs, reward, *_ = env.step(episode.actions[t])
        np.testing.assert_allclose(obs, episode.observations[t + 1], atol=1e-8)
        assert reward == pytest.approx(episode.rewards[t])


def _episode_seed(ds, index):
    import h5py

    with h5py.File(Path(ds.storage.data_path) / "main_data.hdf5") as f:
        return f[f"episode_{index}"].attrs["seed"]


def test_same_seed_same_data_whatever_the_chunking(tmp_path):
    for name, chunk, workers in (("a", 1, 1), ("b", 3, 2)):
        build(
            DataBuildConfig(
                tasks=["reach-v3"],
                suite="mt50",
                episodes=3,
                chunk_episodes=chunk,
                workers=workers,
                root=str(tmp_path / name),
            )
        )
    ea = catalog.load(dataset_id("reach-v3"), tmp_path / "a").iterate_episodes()
    eb = catalog.load(dataset_id("reach-v3"), tmp_path / "b").iterate_episodes()
    for x, y in zip(ea, eb, strict=True):
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)


def test_existing_dataset_is_refused_and_untouched(built, capsys):
    root, _ = built
    before = _hash_tree(root)
    code = main(["data", "build", "--tasks", "push-v3", "--episodes", "2", "--root", str(root)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "metaworld/push-v3/scripted-v0 already exists" in err and "--overwrite" in err
    assert _hash_tree(root) == before


def test_skip_existing_and_overwrite(tmp_path, capsys):
    root = str(tmp_path)
    args = ["data", "build", "--suite", "mt50", "--tasks", "reach-v3", "--root", root]
    assert main(args + ["--episodes", "2"]) == 0
    assert main(args + ["--episodes", "2", "--skip-existing"]) == 0  # what it would make: kept
    capsys.readouterr()
    assert main(args + ["--episodes", "3", "--skip-existing"]) == 2  # not what was asked for
    err = capsys.readouterr().err
    assert "metaworld/reach-v3/scripted-v0 exists with episodes 2; this build asks for " in err
    assert catalog.load(dataset_id("reach-v3"), tmp_path).total_episodes == 2
    assert main(args + ["--episodes", "3", "--overwrite"]) == 0
    assert catalog.load(dataset_id("reach-v3"), tmp_path).total_episodes == 3
    assert not (tmp_path / catalog.STAGING_DIR).exists()
    out = capsys.readouterr().out
    assert "metaworld/reach-v3/scripted-v0: 3 episodes, 600 steps" in out


def test_an_overwrite_that_fails_to_install_keeps_the_old_dataset(tmp_path, monkeypatch):
    """The old dataset moves aside before the new one moves in; if that second rename fails
    (here made to), the old one is put back instead of deleted with the staging folder."""
    root = str(tmp_path)
    args = ["data", "build", "--suite", "mt50", "--tasks", "reach-v3", "--root", root]
    assert main(args + ["--episodes", "2"]) == 0
    rename, final = os.rename, catalog.dataset_dir(tmp_path, dataset_id("reach-v3"))

    def failing(src, dst):  # the new dataset's move into place fails, the old one's move back not
        if Path(dst) == final and catalog.REPLACED_DIR not in Path(src).parts:
            raise error
        rename(src, dst)

    monkeypatch.setattr(catalog.os, "rename", failing)
    error = OSError("disk went away")
    with pytest.raises(OSError, match="disk went away"):
        main(args + ["--episodes", "3", "--overwrite"])
    assert catalog.load(dataset_id("reach-v3"), tmp_path).total_episodes == 2
    error = KeyboardInterrupt()  # an interrupt there too: the CLI exits 130, the old one back
    assert main(args + ["--episodes", "3", "--overwrite"]) == 130
    assert catalog.load(dataset_id("reach-v3"), tmp_path).total_episodes == 2


def test_an_overwrite_killed_between_its_renames_gets_the_old_dataset_back(tmp_path):
    """A kill after the old dataset moved aside into the build's staging folder, before the new
    one moved in, leaves no dataset at its place: the next build, clearing the dead build's
    staging folder, puts the old one back instead of deleting it."""
    root = str(tmp_path)
    args = ["data", "build", "--suite", "mt50", "--tasks", "reach-v3", "--root", root]
    assert main(args + ["--episodes", "2"]) == 0
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id no live process holds: the killed build's
    final = catalog.dataset_dir(tmp_path, dataset_id("reach-v3"))
    staged = tmp_path / catalog.STAGING_DIR / f"{dead.pid}-0badc0de"
    aside = catalog.dataset_dir(staged / catalog.REPLACED_DIR, dataset_id("reach-v3"))
    aside.parent.mkdir(parents=True)
    os.rename(final, aside)  # where the kill left it
    assert main(args + ["--episodes", "1", "--skip-existing"]) == 2  # it sees the old one again
    assert catalog.load(dataset_id("reach-v3"), tmp_path).total_episodes == 2
    assert not staged.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "cw11"], "unknown suite 'cw11'; valid: gymnasium/halfcheetah, metaworld/cw10"),
        (["--tasks", "reach-v3"], "task for suite metaworld/cw10 'reach-v3'; valid: hammer"),
        (["--episodes", "0"], "episodes must be >= 1"),
        (["--overwrite", "--skip-existing"], "contradict each other"),
        (["episods=3"], "unknown config key 'episods' (did you mean episodes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "eva_rl.cli", "data", "build", "--root", str(tmp_path), *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eva-rl: error: ")
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_build_leaves_no_dataset(sig, tmp_path):
    root = tmp_path / "root"
    reach = ["data", "build", "--suite", "mt50", "--tasks", "reach-v3", "--root", str(root)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "eva_rl.cli", *reach, "--episodes", "400", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # a shell's background job inherits SIGINT ignored; the build under test must not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    while not (root / catalog.STAGING_DIR).exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # well into the rollouts
    os.killpg(proc.pid, sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not catalog.exists(root, dataset_id("reach-v3"))
    with catalog.minari_root(root):
        assert minari.list_local_datasets() == {}
    if sig == signal.SIGINT:  # a clean interrupt also removes its staging area
        assert not (root / catalog.STAGING_DIR).exists()
    else:  # a killed build's staging area is hidden, and the next build clears it
        assert main([*reach, "--episodes", "1"]) == 0
        assert not (root / catalog.STAGING_DIR).exists()


def test_list_reads_any_minari_dataset(tmp_path, monkeypatch, capsys):
    """A dataset we did not build (no success info, no summary file) is still listed."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    buffers = []
    for i in range(3):
        obs = [env.reset(seed=i)[0]]
        actions, rewards = [], []
        for _ in range(5):
            a = rng.uniform(-2, 2, (1,)).astype(np.float32)
            o, r, *_ = env.step(a)
            obs.append(o), actions.append(a), rewards.append(r)
        buffers.append(
            EpisodeBuffer(
                observations=np.asarray(obs),
                actions=np.asarray(actions),
                rewards=rewards,
                terminations=[False] * 5,
                truncations=[False] * 4 + [True],
                infos={},
            )
        )
    minari.create_dataset_from_buffers("other/pendulum/random-v0", buffers, env=env)
    assert main(["data", "list"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("other/pendulum/random-v0: 3 episodes, 15 steps, return")
    assert "success" not in line


def test_success_among_the_best_return_tenth():
    """The final-step success of the best-return tenth (at least one episode), ties by order."""
    returns = np.array([5.0, 9.0, 1.0, 9.0, 3.0, 2.0, 8.0, 7.0, 6.0, 4.0, 0.0, 10.0,
                        11.0, 0.5, 0.2, 0.1, 0.3, 0.4, 0.6, 0.7])  # fmt: skip
    success = [1.0] * 11 + [0.0, 0.0] + [1.0] * 7  # the two best (11, 10) fail
    assert catalog.top_return_success(returns, success) == 0.0
    assert catalog.top_return_success(returns[:9], success[:9]) == 1.0  # one episode: 9.0
    assert catalog.top_return_success(returns, []) is None
    assert catalog.top_return_success(returns, success[:-1]) is None  # not every episode


def test_list_recomputes_a_summary_written_before_the_best_return_tenth(mw_root, tmp_path,
                                                                       capsys):  # fmt: skip
    import json
    import shutil

    root = tmp_path / "root"
    shutil.copytree(mw_root, root)
    dataset = catalog.load("metaworld/hammer-v3/scripted-v0", root)
    returns, success = [], []
    for episode in dataset.iterate_episodes():
        returns.append(float(np.sum(episode.rewards)))
        success.append(float(np.asarray(episode.infos["success"])[-1]))
    expected = success[int(np.argmax(returns))]  # 4 episodes: the tenth is the best one
    path = catalog.dataset_dir(root, "metaworld/hammer-v3/scripted-v0") / catalog.SUMMARY_FILE
    assert json.loads(path.read_text())["success_final_top"] == expected
    older = json.loads(path.read_text())
    del older["success_final_top"]  # as an eva_rl before it wrote the key
    path.write_text(json.dumps(older))
    assert catalog.read_summary("metaworld/hammer-v3/scripted-v0", root)["success_final_top"] == (
        expected
    )
    assert main(["data", "list", "--root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"(best-return tenth {expected:.2f})" in next(x for x in lines if "hammer" in x)


def test_data_recorded_with_env_settings_the_id_does_not_give_warn_when_loaded(tmp_path):
    """An evaluator makes the env from its id alone: a dataset whose env had other settings
    (not rendering ones) says so once when loaded; one made with the defaults is silent."""
    import warnings

    from conftest import write_minari
    from eva_rl.data.segments import load_trajectories

    episode = ([[0.0, 0.0, 0.0, 0.0]] * 4, [[0.1]] * 3, [1.0] * 3)
    settings = {
        "plain": {"render_mode": "rgb_array", "width": 64, "height": 64},
        "noisy": {"reset_noise_scale": 0.5},
    }
    for name, kwargs in settings.items():
        env = gym.make("InvertedPendulum-v5", **kwargs)
        write_minari(f"test/pendulum/{name}-v0", env, [episode], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trajectories(["test/pendulum/plain-v0"], tmp_path)
    with pytest.warns(UserWarning) as caught:
        load_trajectories(["test/pendulum/noisy-v0"], tmp_path)
    (said,) = [str(w.message) for w in caught if "recorded on" in str(w.message)]
    assert said.startswith(
        "dataset test/pendulum/noisy-v0 was recorded on InvertedPendulum-v5 with "
        "reset_noise_scale=0.5; evaluations make InvertedPendulum-v5 from its id alone"
    )
