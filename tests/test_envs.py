import gymnasium as gym
import numpy as np
import pytest

from eva_rl.envs import ENV_ID, INFO_KEYS, MetaWorldTaskEnv, make_task_env
from eva_rl.errors import UserError


@pytest.fixture(scope="module")
def env():
    e = make_task_env("push-v3", horizon=200)
    yield e
    e.close()


def test_same_seed_same_first_observation_different_seeds_differ(env):
    a, _ = env.reset(seed=11)
    b, _ = env.reset(seed=11)
    c, _ = env.reset(seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_fresh_object_and_goal_every_unseeded_reset(env):
    env.reset(seed=0)
    layouts = [env.reset()[0][-3:] for _ in range(3)]  # last 3 entries: the goal position
    assert len({tuple(g) for g in layouts}) == 3


def test_spaces_are_the_true_ones(env):
    obs, _ = env.reset(seed=1)
    assert env.observation_space.shape == (39,) and obs.dtype == np.float64
    assert env.observation_space.contains(obs)
    # the goal bounds are real (Meta-World's default space reports [0, 0] there)
    assert np.all(env.observation_space.high[-3:] > env.observation_space.low[-3:])
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


def test_info_keys_identical_at_reset_and_every_step(env):
    _, info = env.reset(seed=2)
    assert tuple(info) == INFO_KEYS and all(v == 0.0 for v in info.values())
    for _ in range(5):
        _, reward, terminated, truncated, step_info = env.step(env.action_space.sample())
        assert tuple(step_info) == INFO_KEYS
        assert all(isinstance(v, float) for v in step_info.values())
        assert isinstance(reward, float) and not terminated and not truncated


def test_truncates_at_horizon():
    env = make_task_env("reach-v3", horizon=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(4, np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]


def test_spec_is_serialisable_string_entry_point(env):
    assert env.spec.id == ENV_ID
    assert env.spec.entry_point == "eva_rl.envs:MetaWorldTaskEnv"
    assert env.spec.kwargs == {"task": "push-v3", "horizon": 200}
    rebuilt = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    np.testing.assert_array_equal(rebuilt.reset(seed=5)[0], env.reset(seed=5)[0])


def test_unknown_task_lists_valid_names():
    with pytest.raises(UserError, match="unknown Meta-World task 'push-v9'; valid: .*push-v3"):
        MetaWorldTaskEnv("push-v9")
