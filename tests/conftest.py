"""Shared fixtures: every test gets its own Minari root, so no test touches a user's datasets."""

from eva_rl.runtime import cpu_count, quiet_waits

quiet_waits()  # before torch loads OpenMP: test workers share the cores as the CLI's runs do

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (make test): the cores this process may use (affinity, cgroup quota), not
    the machine's."""
    return cpu_count()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add sync cost (and stall badly on a shared CPU).
    Modules of such tests use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def checkpoint(mw_root, tmp_path_factory):
    """A tiny DT pretrained on push-v3 (horizon 30 keeps evaluations short)."""
    from eva_rl.config import load_config
    from eva_rl.training.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("pretrained") / "run"
    cfg = load_config(PretrainConfig, None, tiny_pretrain_overrides(mw_root, out))
    pretrain(cfg, progress=False)
    return out / "agent"


def tiny_pretrain_overrides(mw_root, out) -> list[str]:
    """Pretraining of a tiny DT on push-v3 in a few seconds, as key=value items."""
    return [
        f"out={out}",
        f"data_root={mw_root}",
        "datasets=[metaworld/push-v3/scripted-v0]",
        "model.hidden_size=32",
        "model.n_layer=2",
        "model.n_head=2",
        "model.context_length=5",
        "optim.batch_size=16",
        "optim.warmup_steps=5",
        "loop.steps=40",
        "loop.save_every=40",
        "loop.eval_every=0",
        "eval.episodes=1",
        "horizon=30",
    ]


HAMMER = "metaworld/hammer-v3/scripted-v0"


def tiny_finetune_overrides(checkpoint, mw_root, out, method, *extra) -> list[str]:
    """A few-second fine-tuning run of the tiny checkpoint on hammer-v3, as key=value items."""
    return [
        f"checkpoint={checkpoint}",
        f"data_root={mw_root}",
        f"datasets=[{HAMMER}]",  # a task the checkpoint has not seen
        f"out={out}",
        f"method.name={method}",
        "method.rank=2",
        "method.calibration_batches=2",
        "collector.batch_size=16",
        "optim.lr=3e-3",
        "optim.batch_size=16",
        "optim.warmup_steps=2",
        "loop.steps=30",
        "loop.log_every=5",
        "loop.eval_every=0",
        "loop.save_every=10",
        "eval.episodes=1",
        *extra,
    ]
