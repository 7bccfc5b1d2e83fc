import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import write_minari
from eva_rl.agent import ModelConfig, build_model
from eva_rl.data.segments import SegmentSampler, load_trajectories
from eva_rl.errors import UserError
from eva_rl.training.losses import action_loss


@pytest.fixture
def hand_made(tmp_path):
    """Pendulum-shaped episodes (obs 3, act 1) of lengths 3 and 2 with known rewards."""
    root = tmp_path / "hand"
    eps = [
        (np.arange(12).reshape(4, 3), [[0.1], [0.2], [0.3]], [1.0, 2.0, 3.0]),
        (100 + np.arange(9).reshape(3, 3), [[-0.1], [-0.2]], [4.0, 5.0]),
    ]
    write_minari("test/pendulum/hand-v0", gym.make("Pendulum-v1"), eps, root)
    return load_trajectories(["test/pendulum/hand-v0"], root)


def test_flattening_and_returns_to_go(hand_made):
    t = hand_made
    assert t.envs == ["Pendulum-v1"] and (t.state_dim, t.act_dim) == (3, 1)
    np.testing.assert_array_equal(t.returns_to_go, [6, 5, 3, 9, 5])
    np.testing.assert_array_equal(t.timesteps, [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(t.episode_start, [0, 3])
    np.testing.assert_array_equal(t.states[3], [100, 101, 102])  # final observations dropped
    assert t.max_returns() == {"Pendulum-v1": 9.0}


def test_segments_match_the_data_with_left_padding(hand_made):
    t = hand_made
    mean, std = t.state_stats()
    sampler = SegmentSampler(t, context=4, return_scale=2.0, state_mean=mean, state_std=std, seed=0)
    b = sampler.sample(256)
    assert b["states"].shape == (256, 4, 3) and b["actions"].shape == (256, 4, 1)
    assert b["returns_to_go"].shape == (256, 4, 1) and b["timesteps"].shape == (256, 4)
    for i in range(256):
        m = b["attention_mask"][i].bool()
        n = int(m.sum())
        assert 1 <= n <= 3 and m[-n:].all() and not m[:-n].any()  # real steps at the right
        ts = b["timesteps"][i, -n:].numpy()
        assert (np.diff(ts) == 1).all()
        # locate the episode by its first state, then compare every real step to the source
        raw = b["states"][i, -n:].numpy() * std + mean
        ep = 0 if raw[0, 0] < 50 else 1
        idx = t.episode_start[ep] + ts
        np.testing.assert_allclose(raw, t.states[idx], atol=1e-4)
        np.testing.assert_allclose(b["actions"][i, -n:, 0].numpy(), t.actions[idx, 0])
        np.testing.assert_allclose(b["returns_to_go"][i, -n:, 0].numpy(), t.returns_to_go[idx] / 2)
        for key in ("states", "actions", "returns_to_go", "timesteps"):  # padding is zero
            assert not b[key][i, :-n].any()


def test_episodes_drawn_in_proportion_to_length(hand_made):
    t = hand_made
    sampler = SegmentSampler(t, 4, 1.0, *t.state_stats(), seed=1)
    b = sampler.sample(20000)
    from_first = (b["states"][:, -1, 0] * float(t.state_stats()[1][0]) + t.state_stats()[0][0]) < 50
    assert from_first.float().mean().item() == pytest.approx(3 / 5, abs=0.02)


def test_seeded_and_resumable(hand_made):
    t = hand_made
    a = SegmentSampler(t, 4, 1.0, *t.state_stats(), seed=3)
    b = SegmentSampler(t, 4, 1.0, *t.state_stats(), seed=3)
    a.sample(8)
    b.load_state_dict(a.state_dict())
    sa, sb = a.sample(8), b.sample(8)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_padding_never_leaks_into_the_loss(mw_root):
    t = load_trajectories(["metaworld/push-v3/scripted-v0"], mw_root)
    sampler = SegmentSampler(t, 10, 1000.0, *t.state_stats(), seed=0)
    batch = sampler.sample(400)  # ~5% of 200-step segments start in the last 10 steps
    pad = batch["attention_mask"] == 0
    assert pad.any(), "the batch should contain padded segments"
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, n_layer=2, n_head=2, context_length=10), 39, 4)
    model.eval()
    clean = action_loss(model, batch)
    dirty = {k: v.clone() for k, v in batch.items()}
    g = torch.Generator().manual_seed(0)
    for key in ("states", "actions", "returns_to_go"):
        noise = torch.randn(dirty[key].shape, generator=g) * 100
        dirty[key][pad] = noise[pad]
    dirty["timesteps"][pad] = 999
    torch.testing.assert_close(action_loss(model, dirty), clean, rtol=1e-5, atol=1e-6)


def test_a_datasets_held_out_episodes_do_not_depend_on_the_others(mw_root):
    """Held out alone or after another env's dataset (in either order), hammer holds out the
    same episodes: one generator for all envs made a later env's split depend on the envs
    before it. One env's split is what it always was."""
    from conftest import HAMMER

    push = "metaworld/push-v3/scripted-v0"

    def held_first_states(ids, env):
        traj = load_trajectories(ids, mw_root)
        _, held = traj.split(0.5, seed=3)
        mine = held.episode_start[held.episode_env == held.envs.index(env)]
        return sorted(map(tuple, held.states[mine].round(6)))

    alone = load_trajectories([HAMMER], mw_root)
    env = alone.envs[0]
    expected = np.random.default_rng(3).choice(len(alone.episode_length), 2, replace=False)
    assert sorted(map(tuple, alone.states[alone.episode_start[expected]].round(6))) == (
        held_first_states([HAMMER], env)
    )
    assert held_first_states([push, HAMMER], env) == held_first_states([HAMMER], env)
    assert held_first_states([HAMMER, push], env) == held_first_states([HAMMER], env)


def test_datasets_listed_twice_or_not_box_are_refused(tmp_path, mw_root):
    from conftest import HAMMER
    from eva_rl.errors import UserError

    with pytest.raises(UserError, match=f"dataset {HAMMER} is listed twice"):
        load_trajectories([HAMMER, HAMMER], mw_root)
    root = tmp_path / "discrete"
    eps = [(np.zeros((3, 4)), [0, 1], [1.0, 1.0])]
    write_minari("test/cartpole/discrete-v0", gym.make("CartPole-v1"), eps, root)
    with pytest.raises(UserError, match="needs Box observations and actions"):
        load_trajectories(["test/cartpole/discrete-v0"], root)


def test_a_constant_feature_is_centred_not_scaled(tmp_path):
    """A feature that never varies in the stats' data gets scale 1: its data still normalises to
    0 there, and a later deviation of 0.5 stays 0.5 (the old 1e-6 floor made it 5e5)."""
    states = np.stack([np.arange(4.0), np.full(4, 0.25), np.arange(4.0) ** 2], 1)
    write_minari("test/pendulum/const-v0", gym.make("Pendulum-v1"),
                 [(states, [[0.1], [0.2], [0.3]], [1.0, 2.0, 3.0])], tmp_path)  # fmt: skip
    t = load_trajectories(["test/pendulum/const-v0"], tmp_path)
    mean, std = t.state_stats()
    kept = states[:3]  # the final observation is dropped
    np.testing.assert_allclose(mean, kept.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, [kept[:, 0].std(), 1.0, kept[:, 2].std()], rtol=1e-6)
    batch = SegmentSampler(t, 4, 1.0, mean, std, seed=0).sample(8)
    assert torch.all(batch["states"][..., 1] == 0)
    assert (0.75 - mean[1]) / std[1] == pytest.approx(0.5)


def test_datasets_of_one_env_with_different_time_limits_are_refused(tmp_path):
    """One env is evaluated at one horizon: which one must not depend on the datasets' order."""
    eps = [(np.zeros((3, 3)), [[0.0], [0.0]], [1.0, 2.0])]
    write_minari("test/pendulum/long-v0", gym.make("Pendulum-v1"), eps, tmp_path)
    write_minari("test/pendulum/short-v0", gym.make("Pendulum-v1", max_episode_steps=50), eps,
                 tmp_path)  # fmt: skip
    for ids in (["test/pendulum/long-v0", "test/pendulum/short-v0"],
                ["test/pendulum/short-v0", "test/pendulum/long-v0"]):  # fmt: skip
        with pytest.raises(UserError) as info:
            load_trajectories(ids, tmp_path)
        limits = "(200 and 50 steps)" if ids[0].endswith("long-v0") else "(50 and 200 steps)"
        assert str(info.value).startswith(
            f"datasets {ids[0]} and {ids[1]} record Pendulum-v1 with different time limits {limits}"
        )
    assert load_trajectories(["test/pendulum/long-v0"], tmp_path).horizon() == 200
