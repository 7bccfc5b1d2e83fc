import json

import numpy as np
import pytest
import torch
from transformers import DecisionTransformerModel

from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model
from eva_rl.errors import UserError
from eva_rl.runtime import resolve_device

TINY = ModelConfig(hidden_size=32, n_layer=1, n_head=2, context_length=5)


def tiny_agent(state_dim=39, act_dim=4, seed=0) -> Agent:
    torch.manual_seed(seed)
    meta = AgentMeta(
        state_mean=[0.1] * state_dim,
        state_std=[2.0] * state_dim,
        return_scale=100.0,
        context_length=5,
        horizon=200,
        target_returns={"push-v3": 1500.0},
        suite="metaworld/x",
    )
    return Agent(build_model(TINY, state_dim, act_dim).eval(), meta)


def some_inputs(agent, batch=3, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, k, dtype=torch.long)
    mask[0, :2] = 0
    return dict(
        states=agent.normalize(torch.randn(batch, k, agent.state_dim, generator=g)),
        actions=torch.rand(batch, k, agent.act_dim, generator=g) * 2 - 1,
        returns_to_go=torch.rand(batch, k, 1, generator=g),
        timesteps=torch.arange(k).repeat(batch, 1),
        attention_mask=mask,
    )


def test_checkpoint_round_trip_gives_identical_actions(tmp_path):
    agent = tiny_agent()
    agent.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "eva_rl.json",
        "model.safetensors",
    ]
    loaded = Agent.load(tmp_path / "ckpt")
    assert loaded.meta == agent.meta
    x = some_inputs(agent)
    assert torch.equal(loaded.predict(**x), agent.predict(**x))


def test_saving_again_replaces_atomically(tmp_path):
    tiny_agent(seed=0).save(tmp_path / "ckpt")
    second = tiny_agent(seed=1)
    second.save(tmp_path / "ckpt")
    x = some_inputs(second)
    assert torch.equal(Agent.load(tmp_path / "ckpt").predict(**x), second.predict(**x))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or old folders left


def test_plain_transformers_checkpoint_with_separate_stats(tmp_path):
    agent = tiny_agent()
    agent.model.save_pretrained(tmp_path / "plain")  # what any transformers user has
    with pytest.raises(UserError, match="has no eva_rl.json .* pass --stats FILE"):
        Agent.load(tmp_path / "plain")
    stats = tmp_path / "stats.json"
    stats.write_text(
        json.dumps(
            {
                "state_mean": agent.meta.state_mean,
                "state_std": agent.meta.state_std,
                "return_scale": 100.0,
                "context_length": 5,
                "horizon": 200,
            }
        )
    )
    loaded = Agent.load(tmp_path / "plain", stats=stats)
    x = some_inputs(agent)
    assert torch.equal(loaded.predict(**x), agent.predict(**x))
    assert isinstance(
        DecisionTransformerModel.from_pretrained(tmp_path / "plain"), DecisionTransformerModel
    )


def test_dimension_mismatch_names_both_shapes(tmp_path):
    agent = tiny_agent()
    with pytest.raises(
        UserError,
        match=r"checkpoint has state_dim=39, act_dim=4 but dataset "
        r"x has state_dim=17, act_dim=6",
    ):
        agent.check_dims(17, 6, "dataset x")
    agent.check_dims(39, 4, "fine")
    bad_meta = AgentMeta(
        **{**agent.meta.__dict__, "state_mean": [0.0] * 11, "state_std": [1.0] * 11}
    )
    with pytest.raises(UserError, match="state_dim=39 but its normalisation stats have 11"):
        Agent(agent.model, bad_meta)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="is not a checkpoint directory"):
        Agent.load(tmp_path / "nope")


def test_bad_model_configs_and_devices():
    with pytest.raises(UserError, match="must divide by n_head"):
        ModelConfig(hidden_size=30, n_head=4)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


def test_normalize_uses_checkpoint_stats():
    agent = tiny_agent(state_dim=3)
    out = agent.normalize(torch.tensor([[0.1, 2.1, -1.9]]))
    np.testing.assert_allclose(out.numpy(), [[0.0, 1.0, -1.0]], atol=1e-6)


def test_data_longer_than_the_timestep_embedding_is_refused(mw_root):
    """An episode step the model has no timestep embedding for fails in one line naming both
    lengths, before any forward (an index error there; a device-side assert on CUDA)."""
    from conftest import HAMMER
    from eva_rl.data.segments import load_trajectories

    traj = load_trajectories([HAMMER], mw_root)
    steps = int(traj.timesteps.max()) + 1
    agent = tiny_agent()
    agent.model.config.max_ep_len = steps  # every timestep embedded: fine
    agent.segment_sampler(traj, seed=0)
    agent.model.config.max_ep_len = steps - 1
    with pytest.raises(UserError, match=f"has episodes of {steps} steps, but the model embeds "
                       f"timesteps 0..{steps - 2}"):  # fmt: skip
        agent.segment_sampler(traj, seed=0)
