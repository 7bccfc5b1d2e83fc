"""Shared fixtures: every test gets its own Minari root, so no test touches a user's datasets."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="session")
def mw_root(tmp_path_factory):
    """Real scripted-expert datasets of two Meta-World tasks (4 episodes each), built once."""
    from eva_rl.data.build import DataBuildConfig, build

    root = tmp_path_factory.mktemp("mw")
    build(DataBuildConfig(tasks=["push-v3", "hammer-v3"], episodes=4, root=str(root)))
    return root


def write_minari(dataset_id, env, episodes, root):
    """A Minari dataset from explicit (observations, actions, rewards) episodes."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from eva_rl.data.catalog import minari_root

    buffers = [
        EpisodeBuffer(
            observations=np.asarray(obs, np.float32),
            actions=np.asarray(act, np.float32),
            rewards=list(rew),
            terminations=[False] * len(rew),
            truncations=[False] * (len(rew) - 1) + [True],
            infos={},
        )
        for obs, act, rew in episodes
    ]
    with minari_root(root):
        minari.create_dataset_from_buffers(dataset_id, buffers, env=env)
