"""ODT's replay buffer (eva_rl/online/buffer.py) on real Minari datasets of Pendulum-shaped
episodes whose first state feature names the episode, so every sampled segment can be traced to
the trajectory it came from."""

import io
from dataclasses import dataclass

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from conftest import write_minari
from eva_rl.cli import main
from eva_rl.data.catalog import minari_root as pointing_at
from eva_rl.data.segments import SegmentSampler, load_trajectories
from eva_rl.errors import UserError
from eva_rl.online.buffer import TrajectoryBuffer, returns_to_go, write_online_dataset
from eva_rl.results import Episode

RETURNS = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]  # episode i has length 3 + i and this return
ZERO, ONE = np.zeros(3, np.float32), np.ones(3, np.float32)


def ranked_episode(i: int):
    """Offline episode i: states [100 i + t, 0, 0], its return all in the first reward."""
    n = 3 + i
    obs = np.zeros((n + 1, 3))
    obs[:, 0] = 100 * i + np.arange(n + 1)
    rewards = np.zeros(n)
    rewards[0] = RETURNS[i]
    return obs, np.full((n, 1), 0.1 * i), rewards


def collected(tag: int, rewards) -> dict:
    """An online episode in the rollout engine's recorded layout; states [1000 tag + t, 0, 0]."""
    n = len(rewards)
    obs = np.zeros((n + 1, 3), np.float32)
    obs[:, 0] = 1000 * tag + np.arange(n + 1)
    return {
        "observations": obs,
        "actions": np.full((n, 1), -0.5, np.float32),
        "rewards": np.asarray(rewards, np.float64),
        "terminations": np.zeros(n, bool),
        "truncations": np.r_[np.zeros(n - 1, bool), True],
        "infos": {},
    }


def source(first_state: float) -> str:
    """Which trajectory a state came from: 'offline i' or 'online tag'."""
    value = int(round(first_state))
    return f"online {value // 1000}" if value >= 1000 else f"offline {value // 100}"


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranked")
    eps = [ranked_episode(i) for i in range(len(RETURNS))]
    write_minari("test/pendulum/ranked-v0", gym.make("Pendulum-v1"), eps, root)
    return load_trajectories(["test/pendulum/ranked-v0"], root)


def buffer(traj, capacity: int, seed: int = 0, return_scale: float = 10.0) -> TrajectoryBuffer:
    """Identity state statistics, so a sampled state reads as the raw one."""
    return TrajectoryBuffer(traj, capacity, 4, return_scale, ZERO, ONE, seed=seed)


def entries(buf: TrajectoryBuffer) -> list[str]:
    """The buffer's trajectories, oldest first, by their source."""
    return [source(e.states[0, 0]) for e in buf.entries]


def test_seeding_keeps_exactly_the_top_returns_lowest_first(ranked):
    buf = buffer(ranked, capacity=3)
    assert buf.returns().tolist() == [5.0, 7.0, 9.0]
    assert entries(buf) == ["offline 0", "offline 4", "offline 2"]
    assert not buf.online().any() and buf.added == 0
    i = 4  # an entry is its whole episode, unchanged
    np.testing.assert_array_equal(buf.entries[1].states, ranked_episode(i)[0][:-1])
    assert buffer(ranked, capacity=10).returns().tolist() == sorted(RETURNS)  # room for all


def test_several_envs_each_keep_their_share_of_the_buffer(ranked):
    """Episodes 0-2 of one env (returns 5, 1, 9), 3-5 of another whose returns are 100 times
    larger (300, 700, 200): ranked together, the top 4 held one of the first env's; by shares
    (2 and 2) each keeps its best, interleaved by rank within its env."""
    import dataclasses

    g = ranked.returns_to_go.copy()
    for i in (3, 4, 5):
        start = ranked.episode_start[i]
        g[start : start + ranked.episode_length[i]] *= 100
    two = dataclasses.replace(ranked, returns_to_go=g, episode_env=np.array([0, 0, 0, 1, 1, 1]),
                              envs=["Pendulum-v1", "Other-v1"])  # fmt: skip
    assert entries(buffer(two, capacity=4)) == ["offline 0", "offline 3", "offline 2", "offline 4"]
    assert entries(buffer(two, capacity=3)) == ["offline 0", "offline 2", "offline 4"]  # 2 + 1
    assert entries(buffer(two, capacity=10)) == [
        "offline 1", "offline 5", "offline 0", "offline 3", "offline 2", "offline 4"
    ]  # fmt: skip


def test_fifo_evicts_the_oldest_entry_seeded_or_online(ranked):
    buf = buffer(ranked, capacity=3)
    buf.add(collected(1, [0.5]))  # a low return still evicts the lowest-ranked seeded entry
    assert entries(buf) == ["offline 4", "offline 2", "online 1"]
    buf.extend([collected(2, [0.5]), collected(3, [0.5])])  # the best seeded one goes too
    assert entries(buf) == ["online 1", "online 2", "online 3"]
    buf.add(collected(4, [0.5]))
    assert entries(buf) == ["online 2", "online 3", "online 4"]
    assert buf.online().all() and buf.added == 4 and len(buf) == 3


def test_collected_returns_to_go_are_relabelled_from_their_own_rewards(ranked):
    buf = buffer(ranked, capacity=10, return_scale=10.0)
    buf.sample(8)  # a sampler of the contents before the episode came
    buf.add(collected(7, [1.0, 2.0, 3.0, 4.0]))
    expected = np.array([10.0, 9.0, 7.0, 4.0]) / 10.0  # suffix sums over the return scale
    batch = buf.sample(2000)
    mask = batch["attention_mask"].bool()
    seen = 0
    for i in range(len(mask)):
        n = int(mask[i].sum())
        if source(batch["states"][i, -n, 0].item()) != "online 7":
            continue
        ts = batch["timesteps"][i, -n:].numpy()
        np.testing.assert_allclose(batch["returns_to_go"][i, -n:, 0].numpy(), expected[ts])
        seen += 1
    assert seen > 50  # 4 of the 37 steps: about 216 segments


def test_batches_are_segment_sampler_batches_of_the_contents(ranked):
    """Same layout and normalisation as offline training: the loop may take either."""
    mean, std = ranked.state_stats()
    buf = TrajectoryBuffer(ranked, 4, 5, 7.0, mean, std, seed=11)
    buf.add(collected(1, [1.0, 2.0, 3.0]))
    plain = SegmentSampler(buf.trajectories(), 5, 7.0, mean, std, seed=11)
    ours, theirs = buf.sample(64), plain.sample(64)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_for_agent_samples_as_the_checkpoint_does(ranked):
    """The checkpoint's context, return scale and state statistics, as `Agent.segment_sampler`
    applies them; data of another shape refused."""
    from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model

    model = build_model(ModelConfig(hidden_size=8, n_layer=1, context_length=3), 3, 1)
    meta = AgentMeta([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], return_scale=5.0, context_length=3,
                     horizon=30)  # fmt: skip
    agent = Agent(model, meta)
    buf = TrajectoryBuffer.for_agent(agent, ranked, capacity=4, seed=2)
    buf.add(collected(1, [1.0, 1.0]))
    ours, theirs = buf.sample(16), agent.segment_sampler(buf.trajectories(), seed=2).sample(16)
    assert ours["states"].shape == (16, 3, 3)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    wide = Agent(build_model(ModelConfig(hidden_size=8, n_layer=1), 4, 1), AgentMeta(
        [0.0] * 4, [1.0] * 4, return_scale=1.0, context_length=20, horizon=30))  # fmt: skip
    with pytest.raises(UserError, match="state_dim=4"):
        TrajectoryBuffer.for_agent(wide, ranked)


def test_trajectories_are_drawn_in_proportion_to_their_length(ranked):
    """A chi-square goodness-of-fit test with a fixed seed. Under the length law the statistic
    is chi-square with 6 degrees of freedom across seeds; 22.46 is its 99.9% quantile, so this
    bound holds for all but one seed in a thousand (and holds for this one). Drawing trajectories
    uniformly instead (ODT's law confused with a plain replay buffer's) gives a statistic in the
    thousands for these counts, as the second assertion checks."""
    buf = buffer(ranked, capacity=10)
    buf.add(collected(1, np.ones(20)))
    lengths = {f"offline {i}": 3 + i for i in range(6)} | {"online 1": 20}
    draws = 20000
    batch = buf.sample(draws)
    counts = dict.fromkeys(lengths, 0)
    for state in batch["states"][:, -1, 0].tolist():  # the last step is always real
        counts[source(state)] += 1
    observed = np.array([counts[k] for k in lengths], dtype=np.float64)
    by_length = draws * np.array(list(lengths.values())) / sum(lengths.values())
    uniform = np.full(len(lengths), draws / len(lengths))
    assert ((observed - by_length) ** 2 / by_length).sum() < 22.46
    assert ((observed - uniform) ** 2 / uniform).sum() > 1000


def test_state_round_trip_resumes_the_same_samples(ranked):
    run = buffer(ranked, capacity=4, seed=5)
    run.extend([collected(1, [1.0, 2.0]), collected(2, [3.0, 1.0, 1.0])])
    run.sample(32)
    saved = io.BytesIO()
    torch.save(run.state_dict(), saved)  # as the training loop checkpoints it
    saved.seek(0)
    resumed = buffer(ranked, capacity=4, seed=99)  # another seed, no online entries
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    assert entries(resumed) == entries(run) and resumed.added == run.added == 2
    for step in range(3):
        a, b = run.sample(32), resumed.sample(32)
        assert all(torch.equal(a[k], b[k]) for k in a), step
        run.add(collected(3 + step, [1.0] * (step + 1)))
        resumed.add(collected(3 + step, [1.0] * (step + 1)))
    with pytest.raises(UserError, match="capacity, context, return scale"):
        buffer(ranked, capacity=5).load_state_dict(run.state_dict())


def pendulum_episodes(count: int, steps: int) -> list[dict]:
    """Real Pendulum-v1 episodes of seeded random actions, cut after `steps`."""
    env = gym.make("Pendulum-v1")
    rng, out = np.random.default_rng(0), []
    for seed in range(count):
        obs = [env.reset(seed=seed)[0]]
        actions, rewards = [], []
        for _ in range(steps):
            action = rng.uniform(-2, 2, (1,)).astype(np.float32)
            o, r, *_ = env.step(action)
            obs.append(o), actions.append(action), rewards.append(r)
        episode = collected(0, rewards)
        episode.update(observations=np.asarray(obs, np.float32), actions=np.asarray(actions))
        out.append(episode)
    return out


@dataclass
class OnlineRun:  # stands in for the online run's config, saved beside the data
    checkpoint: str = "agent"
    seed: int = 0


def test_written_dataset_loads_everywhere_with_identical_arrays(minari_root, capsys):
    episodes = pendulum_episodes(3, 6)
    # the third as Evaluator(record=True) returns it
    recorded = Episode(seed=2, ret=float(np.sum(episodes[2]["rewards"])), length=6,
                       trajectory=episodes[2])  # fmt: skip
    ds_id = "online/pendulum/odt-v0"
    summary = write_online_dataset([*episodes[:2], recorded], ds_id, "Pendulum-v1", 6, OnlineRun(),
                                   root=minari_root)  # fmt: skip
    assert summary["episodes"] == 3 and summary["transitions"] == 18
    with pointing_at(minari_root):
        dataset = minari.load_dataset(ds_id)
        assert dataset.spec.env_spec.max_episode_steps == 6
        for ep, ours in zip(dataset.iterate_episodes(), episodes, strict=True):
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                np.testing.assert_array_equal(getattr(ep, key), ours[key])
    traj = load_trajectories([ds_id], minari_root)
    states = np.concatenate([e["observations"][:-1] for e in episodes])  # final ones dropped
    np.testing.assert_array_equal(traj.states, states)
    np.testing.assert_array_equal(traj.actions, np.concatenate([e["actions"] for e in episodes]))
    buf = buffer(traj, capacity=10)  # the buffer relabels as loading the dataset does
    buf.extend(episodes)
    online = buf.trajectories().select(np.flatnonzero(buf.online()))
    for key in ("states", "actions", "returns_to_go", "timesteps", "episode_length"):
        np.testing.assert_array_equal(getattr(online, key), getattr(traj, key))
    np.testing.assert_array_equal(
        traj.returns_to_go, np.concatenate([returns_to_go(e["rewards"]) for e in episodes])
    )
    assert main(["data", "list"]) == 0
    assert capsys.readouterr().out.startswith(f"{ds_id}: 3 episodes, 18 steps, return")
    with pytest.raises(UserError, match="already exists"):
        write_online_dataset(episodes, ds_id, "Pendulum-v1", 6, OnlineRun(), root=minari_root)


def test_episodes_without_steps_or_of_other_shapes_are_refused(ranked):
    buf = buffer(ranked, capacity=3)
    with pytest.raises(ValueError, match="record=True"):
        buf.add(Episode(seed=0, ret=0.0, length=1))
    bad = collected(1, [1.0, 2.0])
    bad["actions"] = bad["actions"][:1]
    with pytest.raises(ValueError, match="T actions"):
        buf.add(bad)
    wide = collected(1, [1.0])
    wide["observations"] = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="state_dim"):
        buf.add(wide)
    assert entries(buf) == ["offline 0", "offline 4", "offline 2"]  # nothing was added
