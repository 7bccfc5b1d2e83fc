"""`td3.enabled`: the TD3 critic and actor term (Yan et al. 2024) added to ODT's fine-tuning."""

import numpy as np
import pytest
import torch
from test_online import config, kill_and_resume, overrides, read_scalars

from eva_rl.cli import main
from eva_rl.online.config import TD3Config
from eva_rl.online.critic import (
    TD3,
    TwinQ,
    actor_term,
    critic_loss,
    polyak_,
    smoothed,
    td_target,
    transitions,
)
from eva_rl.online.policy import GaussianHead
from eva_rl.online.run import online

pytestmark = pytest.mark.usefixtures("one_thread")
ON = ("td3.enabled=true", "td3.hidden=16")


def test_td_target_is_reward_plus_discounted_min_of_target_qs_at_the_smoothed_action():
    torch.manual_seed(0)
    critic = TwinQ(state_dim=2, act_dim=1, hidden=8)
    next_states = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    next_actions = torch.tensor([[0.9], [-0.3]])
    state = torch.get_rng_state()
    a = smoothed(next_actions, noise_std=0.2, noise_clip=0.5)
    torch.set_rng_state(state)
    noise = (torch.randn(2, 1) * 0.2).clamp(-0.5, 0.5)
    torch.testing.assert_close(a, (next_actions + noise).clamp(-1 + 1e-6, 1 - 1e-6))
    q1, q2 = critic(next_states, a)
    rewards, dones, gamma = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), 0.9
    y = td_target(rewards, dones, q1, q2, gamma)
    by_hand = [1.0 + 0.9 * min(q1[0].item(), q2[0].item()), -2.0]
    torch.testing.assert_close(y, torch.tensor(by_hand))
    # the loss: both heads' squared errors on valid transitions, averaged over all of them
    mask = torch.tensor([1.0, 0.0])
    loss = critic_loss(q1, q2, y, mask)
    torch.testing.assert_close(loss, ((q1[0] - y[0]) ** 2 + (q2[0] - y[0]) ** 2) / 2)


def test_noise_is_clipped_and_actions_stay_in_range():
    torch.manual_seed(1)
    a = smoothed(torch.full((1000, 2), 0.99), noise_std=10.0, noise_clip=0.5)
    assert a.max() <= 1 - 1e-6 and a.min() >= 0.49 - 1e-6


def test_transitions_pair_consecutive_real_steps_and_end_at_a_termination():
    scale = 10.0
    rtg = torch.tensor([[0.0, 6.0, 5.0, 2.0], [9.0, 7.0, 4.0, 0.5]]) / scale
    batch = {
        "states": torch.arange(8.0).reshape(2, 4, 1),
        "actions": torch.zeros(2, 4, 1),
        "returns_to_go": rtg[..., None],
        "attention_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]),
    }
    tr = transitions(batch, scale)  # no terminal flags: a segment's last step is no transition
    torch.testing.assert_close(tr.mask, torch.tensor([[0.0, 1, 1, 0], [1, 1, 1, 0]]))
    torch.testing.assert_close(tr.rewards, torch.tensor([[0.0, 1, 3, 0], [2, 3, 3.5, 0]]))
    assert torch.equal(tr.dones, torch.zeros(2, 4))
    batch["terminal_end"] = torch.tensor([1.0, 0.0])  # the first segment ends a termination
    tr = transitions(batch, scale)
    torch.testing.assert_close(tr.mask, torch.tensor([[0.0, 1, 1, 1], [1, 1, 1, 0]]))
    torch.testing.assert_close(tr.rewards, torch.tensor([[0.0, 1, 3, 2], [2, 3, 3.5, 0]]))
    torch.testing.assert_close(tr.dones, torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]]))


def test_the_buffer_flags_segments_that_end_a_terminated_episode(tmp_path):
    import gymnasium as gym
    from test_online_buffer import ONE, ZERO, collected, ranked_episode

    from conftest import write_minari
    from eva_rl.data.segments import load_trajectories
    from eva_rl.online.buffer import TrajectoryBuffer

    write_minari("test/pendulum/ends-v0", gym.make("Pendulum-v1"),
                 [ranked_episode(i) for i in range(2)], tmp_path)  # fmt: skip
    traj = load_trajectories(["test/pendulum/ends-v0"], tmp_path)
    assert traj.episode_terminated.tolist() == [False, False]
    buf = TrajectoryBuffer(traj, 10, 4, 1.0, ZERO, ONE, seed=0)
    ended = collected(1, [1.0, 2.0, 3.0])
    ended["terminations"] = np.array([False, False, True])
    ended["truncations"] = np.zeros(3, bool)
    buf.add(ended)
    buf.add(collected(2, [1.0, 1.0]))
    assert buf.terminated().tolist() == [False, False, True, False]
    same = TrajectoryBuffer(traj, 10, 4, 1.0, ZERO, ONE, seed=0)
    same.load_state_dict(buf.state_dict())
    assert same.terminated().tolist() == [False, False, True, False]
    batch = buf.sample_with_ends(256)
    plain = same.sample(256)
    for k in plain:  # the same draws as `sample`
        assert torch.equal(batch[k], plain[k]), k
    last = batch["states"][:, -1, 0]  # the segment's last real step (left padding)
    expected = (last == 1002).float()  # online episode 1's last step: state 1000 + 2
    assert torch.equal(batch["terminal_end"], expected) and expected.sum() > 0


def test_targets_move_by_exactly_tau():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    head = GaussianHead(2)
    cfg = TD3Config(enabled=True, hidden=8, tau=0.25)
    td3 = TD3(model, head, cfg, state_dim=3, return_scale=1.0, device=torch.device("cpu"))
    old_critic = [p.clone() for p in td3.critic_target.parameters()]
    old_policy = {k: v.clone() for k, v in td3.policy_target.items()}
    old_head = td3.head_target.raw_log_std.detach().clone()
    with torch.no_grad():
        for p in [*td3.critic.parameters(), *model.parameters(), *head.parameters()]:
            p.add_(torch.randn_like(p))
    td3.update_targets(model, head)
    for new, old, src in zip(td3.critic_target.parameters(), old_critic, td3.critic.parameters(),
                             strict=True):  # fmt: skip
        torch.testing.assert_close(new, 0.75 * old + 0.25 * src)
    for name, p in model.named_parameters():
        torch.testing.assert_close(td3.policy_target[name], 0.75 * old_policy[name] + 0.25 * p)
    torch.testing.assert_close(
        td3.head_target.raw_log_std, 0.75 * old_head + 0.25 * head.raw_log_std.detach()
    )
    x = torch.zeros(3)
    polyak_([x], [torch.ones(3)], 0.25)
    torch.testing.assert_close(x, torch.full((3,), 0.25))


def test_actor_term_is_coef_times_mean_minus_q_and_normalised_by_mean_abs_q():
    q1 = torch.tensor([[2.0, -4.0], [6.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(actor_term(q1, mask, 0.1, False), torch.tensor(-0.1 * 4 / 3))
    torch.testing.assert_close(actor_term(q1, mask, 0.1, True), torch.tensor(-0.1 * 4 / 3 / 3))


@pytest.mark.parametrize("extra, message", [
    ("td3.coef=-1", "td3.coef must be finite and >= 0, got -1.0"),
    ("td3.gamma=1", "td3.gamma must be finite and in [0, 1), got 1.0"),
    ("td3.actor_interval=0", "td3.actor_interval must be finite and >= 1, got 0"),
])  # fmt: skip
def test_a_bad_setting_is_one_line(extra, message, checkpoint, mw_root, tmp_path, capsys):
    out = tmp_path / "bad"
    code = main(["online", *overrides(checkpoint, mw_root, out, extra)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_off_builds_no_critic_and_saves_no_critic_state(checkpoint, mw_root, tmp_path):
    from eva_rl.online import trainer as trainer_module

    built = []
    original = trainer_module.TD3
    trainer_module.TD3 = lambda *a, **k: built.append(1) or original(*a, **k)
    try:
        online(config(checkpoint, mw_root, tmp_path / "off", "env_steps=30", "updates=2"),
               progress=False)  # fmt: skip
    finally:
        trainer_module.TD3 = original
    assert built == []
    state = torch.load(tmp_path / "off/checkpoints/latest/state.pt", weights_only=True)
    assert "td3" not in state
    assert "train/critic_loss" not in read_scalars(tmp_path / "off" / "tb")


def test_on_trains_logs_critic_scalars_and_checkpoints(checkpoint, mw_root, tmp_path):
    out = tmp_path / "on"
    summary = online(config(checkpoint, mw_root, out, *ON), progress=False)
    assert summary["updates"] == 12
    scalars = read_scalars(out / "tb")
    for tag in ("train/critic_loss", "train/q", "train/rl_loss"):
        assert [s for s, _ in scalars[tag]] == [2, 4, 6, 8, 10, 12], tag
        assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars[tag])
    state = torch.load(out / "checkpoints/latest/state.pt", weights_only=True)["td3"]
    assert set(state) == {"critic", "critic_target", "optimizer", "policy_target", "head_target"}
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {12 * 2}  # actor_interval 2: two critic steps per policy step
    # 12 policy steps, 2 critic steps each: the critic moved from its target
    differs = [not torch.equal(state["critic"][k], state["critic_target"][k])
               for k in state["critic"]]  # fmt: skip
    assert all(differs)


def test_warmup_steps_the_critic_before_the_first_update(checkpoint, mw_root, tmp_path):
    out = tmp_path / "warm"
    extra = ("env_steps=30", "updates=2", "td3.warmup=3", "td3.actor_interval=1")
    online(config(checkpoint, mw_root, out, *ON, *extra), progress=False)
    state = torch.load(out / "checkpoints/latest/state.pt", weights_only=True)["td3"]
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {3 + 2 * 1}  # warm-up steps, then one critic step per policy step


def test_on_killed_then_resumed_equals_uninterrupted(checkpoint, mw_root, tmp_path):
    out = kill_and_resume(checkpoint, mw_root, tmp_path, *ON)
    a, b = (torch.load(r / "checkpoints/latest/state.pt", weights_only=True)
            for r in (tmp_path / "a", out))  # fmt: skip
    for part in ("critic", "critic_target", "policy_target", "head_target"):
        for k in a["td3"][part]:
            assert torch.equal(a["td3"][part][k], b["td3"][part][k]), (part, k)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_killed_inside_the_critic_warmup_then_resumed_equals_uninterrupted(
    checkpoint, mw_root, tmp_path
):
    """The warm-up saves every `updates * save_every` critic steps (10 here): a run killed
    after one of those resumes there, not from the start, and ends as the uninterrupted one."""
    out = kill_and_resume(checkpoint, mw_root, tmp_path, *ON, "td3.warmup=400",
                          saved_inside=lambda c: c["env_steps"] == 0
                          and 0 < c["critic_warmup"] < 400)  # fmt: skip
    a, b = (torch.load(r / "checkpoints/latest/state.pt", weights_only=True)
            for r in (tmp_path / "a", out))  # fmt: skip
    assert a["counts"] == b["counts"] and b["counts"]["critic_warmup"] == 400
    for k in a["td3"]["critic"]:
        assert torch.equal(a["td3"]["critic"][k], b["td3"]["critic"][k]), k


@pytest.mark.parametrize("method", ["fft", "adalora"])
def test_on_trains_with_other_methods(method, checkpoint, mw_root, tmp_path):
    """fft: every parameter has a Polyak copy; AdaLoRA: its hooks and penalty run beside."""
    out = tmp_path / method
    extra = ("env_steps=30", "updates=3", f"method.name={method}")
    summary = online(config(checkpoint, mw_root, out, *ON, *extra), progress=False)
    assert summary["updates"] == 3
    state = torch.load(out / "checkpoints/latest/state.pt", weights_only=True)
    targets = state["td3"]["policy_target"]
    assert targets and all(torch.isfinite(v).all() for v in targets.values())
    if method == "fft":
        assert len(targets) > 10


def test_the_critic_learns_the_fixed_point_of_a_constant_reward():
    """Reward 1 every step, gamma 0.5: Q -> 1 / (1 - 0.5) = 2 through the target network."""
    torch.manual_seed(0)
    model, head = torch.nn.Linear(3, 2), GaussianHead(2)
    cfg = TD3Config(enabled=True, hidden=32, gamma=0.5, tau=0.1, lr=1e-2)
    td3 = TD3(model, head, cfg, state_dim=3, return_scale=1.0, device=torch.device("cpu"))
    k = 5
    for _ in range(300):
        batch = {
            "states": torch.randn(16, k, 3),
            "actions": torch.rand(16, k, 2) * 2 - 1,
            "returns_to_go": torch.arange(k, 0, -1.0).expand(16, k)[..., None] + 10,
            "attention_mask": torch.ones(16, k, dtype=torch.long),
        }
        stats = td3.critic_step(batch, target_mu=torch.randn(16, k, 2))
        td3.update_critic_target()
    assert abs(stats["q"].item() - 2.0) < 0.2, stats
