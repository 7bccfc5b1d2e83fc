"""`policy: deterministic`: the DT's own action trained by the action MSE and explored with
Gaussian noise (the TD3 reference's `--stoc 0`), alone and with TD3."""

import numpy as np
import pytest
import torch
from test_online import config, kill_and_resume, overrides, read_scalars

from eva_rl.cli import main
from eva_rl.config import load_config
from eva_rl.online import trainer as trainer_module
from eva_rl.online.collect import SAMPLE_TAG, SampledAction
from eva_rl.online.config import OnlineConfig, TD3Config
from eva_rl.online.critic import TD3, shift, smoothed, td_target, transitions
from eva_rl.online.policy import ACTION_BOUND, GaussianHead
from eva_rl.online.run import online

pytestmark = pytest.mark.usefixtures("one_thread")
DET = ("policy=deterministic",)


class Captured:
    def __init__(self, value):
        self.value = value


def test_exploration_is_the_dt_action_plus_clamped_gaussian_noise():
    mu = torch.tensor([[0.3, -2.0, 4.0], [0.0, 1.0, -0.5], [9.0, 9.0, 9.0]])  # 3rd: padding
    head = GaussianHead(3)
    sampler = SampledAction(head, Captured(mu), expl_noise=0.5)
    for slot, seed in ((4, 11), (7, 12)):
        sampler.start(slot, seed)
    actions = sampler.choose(np.array([4, 7]), mean=None, obs=None)
    eps = np.stack([np.random.default_rng([s, SAMPLE_TAG]).standard_normal(3) for s in (11, 12)])
    by_hand = np.clip(np.tanh(mu[:2].double().numpy()) + 0.5 * eps, -ACTION_BOUND, ACTION_BOUND)
    np.testing.assert_allclose(actions, by_hand.astype(np.float32), rtol=0, atol=1e-7)
    # the head's std plays no part: the same draws with another log-std give the same actions
    with torch.no_grad():
        head.raw_log_std.fill_(1.0)
    again = SampledAction(head, Captured(mu), expl_noise=0.5)
    for slot, seed in ((4, 11), (7, 12)):
        again.start(slot, seed)
    np.testing.assert_array_equal(again.choose(np.array([4, 7]), None, None), actions)


def test_the_target_policy_is_the_dt_with_its_polyak_copies(mw_root):
    """`target_mu` runs the real adapted DT with the trainable weights replaced by their
    Polyak copies: after the live adapter moves, it still gives what a copy holding the old
    weights gives (not the live model's action), in eval mode, and restores the mode."""
    import copy

    from test_online_policy import action_mean

    from conftest import HAMMER
    from eva_rl.adapters.methods import BuildContext, MethodConfig, build_method
    from eva_rl.agent import ModelConfig, build_model
    from eva_rl.data.segments import SegmentSampler, load_trajectories

    traj = load_trajectories([HAMMER], mw_root)
    torch.manual_seed(0)
    base = build_model(ModelConfig(hidden_size=16, n_layer=1, n_head=1, context_length=5),
                       traj.state_dim, traj.act_dim)  # fmt: skip
    model = build_method(base, MethodConfig(name="lora", rank=2), BuildContext()).model
    head = GaussianHead(traj.act_dim)
    td3 = TD3(model, head, TD3Config(enabled=True, hidden=8), traj.state_dim, 1000.0,
              torch.device("cpu"))  # fmt: skip
    batch = SegmentSampler(traj, 5, 1000.0, *traj.state_stats(), seed=0).sample(4)
    inputs = {k: batch[k] for k in ("states", "actions", "returns_to_go", "timesteps",
                                    "attention_mask")}  # fmt: skip
    frozen = copy.deepcopy(model).eval()  # the weights the Polyak copies hold
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p))  # the live adapter moves on
    model.train()
    got = td3.target_mu(model, batch)
    assert model.training
    with torch.no_grad():
        want = action_mean(frozen, **inputs, return_dict=True)
        live = action_mean(model.eval(), **inputs, return_dict=True)
    torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=0)
    assert not torch.allclose(got, live.float(), atol=1e-3)


@pytest.mark.parametrize("stochastic", [False, True])
def test_the_td3_target_action_is_the_target_dts_own_plus_smoothing(stochastic):
    """The target policy's action at s_{t+1}: the target DT's mean action (deterministic), or
    a draw of the target head around it (ODT's stochastic policy), then TD3's smoothing."""
    torch.manual_seed(0)
    model, head = torch.nn.Linear(3, 2), GaussianHead(2)
    cfg = TD3Config(enabled=True, hidden=8, gamma=0.9)
    td3 = TD3(model, head, cfg, state_dim=3, return_scale=2.0, device=torch.device("cpu"),
              stochastic=stochastic)  # fmt: skip
    k = 4
    batch = {
        "states": torch.randn(5, k, 3),
        "actions": torch.rand(5, k, 2) * 2 - 1,
        "returns_to_go": torch.rand(5, k, 1),
        "attention_mask": torch.ones(5, k, dtype=torch.long),
    }
    mu = torch.randn(5, k, 2)
    with torch.no_grad():  # the targets as after Polyak steps: no longer the live critic's copy
        for p in td3.critic_target.parameters():
            p.add_(torch.randn_like(p))
    critic = TD3(model, head, cfg, 3, 2.0, torch.device("cpu"), stochastic=False).critic
    critic.load_state_dict(td3.critic.state_dict())
    rng = torch.get_rng_state()
    stats = td3.critic_step(batch, mu)
    torch.set_rng_state(rng)
    tr = transitions(batch, 2.0)
    policy_action = torch.tanh(shift(mu))
    if stochastic:  # the head's draw, its noise from the CPU generator before the smoothing's
        scale = head.log_std.exp().detach()
        policy_action = torch.tanh(shift(mu) + scale * torch.randn(shift(mu).shape))
    next_actions = smoothed(policy_action, cfg.policy_noise, cfg.noise_clip)
    q1n, q2n = td3.critic_target(shift(batch["states"]), next_actions)
    y = td_target(tr.rewards, tr.dones, q1n, q2n, cfg.gamma)
    q1, q2 = critic(batch["states"], batch["actions"])
    by_hand = (((q1 - y) ** 2 + (q2 - y) ** 2) * tr.mask).mean()
    torch.testing.assert_close(stats["critic_loss"], by_hand.detach())


def test_trains_the_action_mse_leaves_the_head_and_has_no_temperature(
    checkpoint, mw_root, tmp_path, monkeypatch
):
    values = []
    real = trainer_module.action_mse
    monkeypatch.setattr(trainer_module, "action_mse",
                        lambda *a: values.append(real(*a).item()) or real(*a))  # fmt: skip
    out = tmp_path / "det"
    summary = online(config(checkpoint, mw_root, out, *DET, "log_every=4"), progress=False)
    assert summary["updates"] == 12 and len(values) == 12
    scalars = read_scalars(out / "tb")
    logged = [v for _, v in scalars["train/loss"]]
    assert logged == pytest.approx([np.mean(values[i : i + 4]) for i in (0, 4, 8)], rel=1e-6)
    assert not {"train/entropy", "train/temperature", "train/log_std"} & set(scalars)
    state = torch.load(out / "checkpoints/latest/state.pt", weights_only=True)
    fresh = GaussianHead(state["head"]["raw_log_std"].numel())
    assert torch.equal(state["head"]["raw_log_std"], fresh.raw_log_std.detach())
    assert "temperature" not in state and "temperature_optimizer" not in state
    assert not (out / "agent" / "gaussian_head.json").exists()
    actions = np.load(out / "episodes" / "0000000.npz")["actions"]
    assert np.all(np.abs(actions) < 1) and actions.std(axis=0).min() > 0


def test_with_td3_killed_then_resumed_equals_uninterrupted(checkpoint, mw_root, tmp_path):
    out = kill_and_resume(checkpoint, mw_root, tmp_path, *DET, "td3.enabled=true",
                          "td3.hidden=16")  # fmt: skip
    a, b = (torch.load(r / "checkpoints/latest/state.pt", weights_only=True)
            for r in (tmp_path / "a", out))  # fmt: skip
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["td3"]["critic"]:
        assert torch.equal(a["td3"]["critic"][k], b["td3"]["critic"][k]), k


def test_cli_flags_choose_the_policy_and_td3(checkpoint, mw_root, tmp_path):
    out = tmp_path / "cli"
    items = overrides(checkpoint, mw_root, out, "env_steps=30", "updates=2", "td3.hidden=8")
    assert main(["online", "--policy", "deterministic", "--td3", *items]) == 0
    cfg = load_config(OnlineConfig, out / "config.yaml")
    assert cfg.policy == "deterministic" and cfg.td3.enabled
    assert "train/critic_loss" in read_scalars(out / "tb")
