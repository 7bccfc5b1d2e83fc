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
    # what the docs promise: plain transformers loads it as is and acts the same
    plain = DecisionTransformerModel.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(plain(**x, return_dict=True).action_preds[:, -1], agent.predict(**x))


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


def test_a_checkpoint_with_the_old_constant_feature_floor_scales_it_by_1(tmp_path):
    """Checkpoints written before `feature_scale` hold std 1e-6 (float32) where a feature never
    varied; loaded, that feature is centred and not scaled, and it saves back as 1."""
    agent = tiny_agent(state_dim=3)
    agent.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "eva_rl.json").read_text())
    meta["state_std"] = [2.0, float(np.float32(1e-6)), 0.0]
    (tmp_path / "old" / "eva_rl.json").write_text(json.dumps(meta))
    loaded = Agent.load(tmp_path / "old")
    assert loaded.meta.state_std == [2.0, 1.0, 1.0]
    out = loaded.normalize(torch.tensor([[2.1, 0.6, 0.1]]))
    np.testing.assert_allclose(out.numpy(), [[1.0, 0.5, 0.0]], atol=1e-6)
    loaded.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "eva_rl.json").read_text())["state_std"] == [
        2.0,
        1.0,
        1.0,
    ]
    with pytest.raises(UserError, match="state_std must be finite and >= 0"):
        AgentMeta(**{**meta, "state_std": [2.0, -1.0, 1.0]})


def test_the_shipped_agent_tells_hammer_states_apart():
    """hammer-v3 reports a quaternion (dims 14-17) that every MT40 episode left at 0. With a
    1e-6 scale those dims reached 1e6 and every hammer state embedded to the same token (cosine
    1.0000000); scaled by 1, states 20 random steps apart embed apart like push-v3's (0.90)."""
    from eva_rl.assets import SHIPPED
    from eva_rl.envs import make_env

    agent = Agent.load(SHIPPED)
    model = agent.model.eval()
    env = make_env("hammer-v3", 50)
    first, _ = env.reset(seed=0)
    later, _ = env.reset(seed=1)
    env.action_space.seed(0)
    for _ in range(20):
        later, *_ = env.step(env.action_space.sample())
    env.close()
    assert np.all(np.asarray(agent.meta.state_mean)[14:18] == 0) and first[14] == 1.0
    with torch.no_grad():
        z = agent.normalize(torch.as_tensor(np.stack([first, later]), dtype=torch.float32))
        assert z.abs().max() < 10
        tokens = model.embed_ln(model.embed_state(z) + model.embed_timestep(torch.zeros(2).long()))
    assert torch.cosine_similarity(tokens[0], tokens[1], 0) < 0.99


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


def hub_model(monkeypatch, tmp_path):
    """Hub loads served offline by a tiny Hopper-sized DT (the stats' 11 states, 3 actions);
    returns the ids transformers was asked for."""
    cfg = ModelConfig(hidden_size=32, n_layer=1, n_head=2, context_length=20, max_ep_len=1000)
    build_model(cfg, 11, 3).save_pretrained(tmp_path / "hub")
    load, asked = DecisionTransformerModel.from_pretrained, []

    def from_pretrained(source, **kwargs):
        asked.append(source)
        return load(tmp_path / "hub", **kwargs)

    monkeypatch.setattr(DecisionTransformerModel, "from_pretrained", from_pretrained)
    return asked


def test_hub_stats_serve_only_the_model_they_record(monkeypatch, tmp_path):
    """envs/hub/ holds edbeeching's stats; a fork of the same name under another owner may be
    trained on other data, so it needs its own --stats instead of acting with those."""
    asked = hub_model(monkeypatch, tmp_path)
    hub_id = "edbeeching/decision-transformer-gym-hopper-medium"
    agent = Agent.load(hub_id)
    assert agent.meta.provenance["model"] == hub_id and agent.meta.return_scale == 1000.0
    fork = "someone/decision-transformer-gym-hopper-medium"
    refusal = f"^the stats in .*hopper-medium.json are those of {hub_id}, not of {fork}, "
    with pytest.raises(UserError, match=refusal + ".*; pass --stats FILE with state_mean"):
        Agent.load(fork)
    assert asked == [hub_id]  # the fork was refused before any download
    (tmp_path / "fork.json").write_text(json.dumps({**agent.meta.__dict__, "return_scale": 10.0}))
    assert Agent.load(fork, stats=tmp_path / "fork.json").meta.return_scale == 10.0


def test_an_adapter_refuses_stats_other_than_those_it_was_trained_with(tmp_path):
    """The adapter's eva_rl.json holds its base's stats; a --stats file that agrees (as the
    fine-tuning run was given) loads, one that differs is refused, not silently ignored."""
    from eva_rl.adapters.export import export_adapted
    from eva_rl.adapters.methods import BuildContext, MethodConfig, build_method
    from eva_rl.agent import load_agent

    agent = tiny_agent()
    agent.model.save_pretrained(tmp_path / "plain")
    stats = {k: getattr(agent.meta, k) for k in ("state_mean", "state_std", "return_scale",
                                                 "context_length", "horizon")}  # fmt: skip
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    adapted = build_method(tiny_agent().model, MethodConfig(name="lora", rank=2), BuildContext())
    export_adapted(adapted, tmp_path / "adapter", str(tmp_path / "plain"), None)
    (tmp_path / "adapter" / "eva_rl.json").write_text(json.dumps(agent.meta.__dict__))
    assert load_agent(tmp_path / "adapter", stats=tmp_path / "stats.json").meta == agent.meta
    other = {**stats, "state_mean": [0.0] * agent.state_dim, "return_scale": 10.0}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(UserError, match=r"^stats file .*other.json differs from the stats adapter "
                       r".*adapter was trained with \(in state_mean, return_scale; its "
                       r"eva_rl.json\); the adapter acts with its own: drop --stats$"):  # fmt: skip
        load_agent(tmp_path / "adapter", stats=tmp_path / "other.json")
