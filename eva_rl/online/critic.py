"""TD3 gradients for ODT's fine-tuning: a twin Q critic and the actor term (`td3.enabled`).

Yan, Schwing, Wang (NeurIPS 2024, arXiv 2410.24108) show that ODT stalls when the offline data
is low-return, since a return-to-go far above anything seen gives the policy no useful gradient,
and that adding TD3's actor gradient (-Q of the policy's action) fixes it. The recipe, as their
reference code runs it (KaiYan289/RL_as_Vitamin_for_Online_Decision_Transformers, `trainer.py`
`SequenceTrainer` with `rl_algo TD3`, `critic.py` `Q_Critic`, defaults from `get_args.py`):

- critic: twin MLPs Q1, Q2 on concat(normalised state, action), two hidden layers of 256 with
  ReLU (optional non-affine layer norm), on every step of a DT segment; AdamW, lr 1e-3.
- TD target y = r + gamma (1 - done) min(Q1', Q2')(s', a'), with Q' the Polyak-averaged target
  critic and a' the target policy's action at s' (a Polyak copy of the DT, `model_target`),
  sampled when the policy is stochastic, plus N(0, 0.2) noise clipped to +-0.5, clamped to the
  action range. Critic loss: mean over the batch of ((Q1 - y)^2 + (Q2 - y)^2) on valid steps.
- one critic step per batch; every `actor_interval` (2) batches the policy also steps on
  sup_loss + coef * mean(-Q1(s, mean action)) (coef 0.1, optionally divided by mean |Q1|),
  and after that step both targets move by tau = 0.005.

Where the transitions come from: the reference's loader gives each segment step its own
next_state, reward and done. eva_rl's buffer keeps whole trajectories as (state, action,
return-to-go) plus whether each ended by termination, so `transitions` takes them from the
sampled segment itself: step t and step t+1 of the same segment form (s_t, a_t, r_t = R_t -
R_{t+1}, s_{t+1}, done 0), and the target policy's action at s_{t+1} is its prediction at
position t+1 of that segment (context up to t+1; the reference shifts the segment by one, so
it sees the same steps less the first). A segment's last step has no successor in it: it is a
transition only when it is the last step of a terminated episode (done 1, y = r, from the
batch's `terminal_end`, `TrajectoryBuffer.sample_with_ends`). So the one step left out is the
last one of an episode cut by a time limit, whose next state the buffer does not keep (the
reference bootstraps there).

The policy: the README's TD3 commands make the DT deterministic (`--stoc 0 --use_entropy_reg
0`, an MSE supervised loss: `policy: deterministic`), where the target action is the target DT's
own; with ODT's stochastic policy (the default `policy`, which the reference's TD3 path also
supports through its `stochastic_policy` branches) the target action is a sample. The actor term
takes the mean action either way.
The reference trains its critic during offline pretraining too (`td3.warmup` stands in), and
rescales rewards per env family (Adroit / 100, MuJoCo / 1); rewards here are the env's own.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from eva_rl.online.config import TD3Config
from eva_rl.online.policy import ACTION_BOUND, ActionMean, DiagNormal


class TwinQ(nn.Module):
    """Two independent Q MLPs on concat(state, action), as the reference's `Q_Critic`."""

    def __init__(self, state_dim: int, act_dim: int, hidden: int = 256, layernorm: bool = False):
        super().__init__()
        self.hidden, self.layernorm = hidden, layernorm
        self.q1 = nn.ModuleList(self._mlp(state_dim + act_dim, hidden))
        self.q2 = nn.ModuleList(self._mlp(state_dim + act_dim, hidden))

    @staticmethod
    def _mlp(inputs: int, hidden: int) -> list[nn.Linear]:
        return [nn.Linear(inputs, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)]

    def _q(self, layers: nn.ModuleList, sa: torch.Tensor) -> torch.Tensor:
        x = sa
        for layer in layers[:-1]:
            x = layer(x)
            if self.layernorm:  # the reference's default `critic_normalization layernorm`
                x = F.layer_norm(x, (self.hidden,))
            x = F.relu(x)
        return layers[-1](x).squeeze(-1)

    def forward(self, states: torch.Tensor, actions: torch.Tensor):
        """(Q1, Q2), each of the batch shape (states less its last dimension)."""
        sa = torch.cat([states.float(), actions.float()], -1)
        return self._q(self.q1, sa), self._q(self.q2, sa)

    def q1_only(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q1 alone: the actor's term uses Q1, as TD3 and the reference do."""
        return self._q(self.q1, torch.cat([states.float(), actions.float()], -1))


class Transitions(NamedTuple):
    states: torch.Tensor  # (B, K, S): s_t
    actions: torch.Tensor  # (B, K, A): a_t
    rewards: torch.Tensor  # (B, K): r_t, in the env's units
    dones: torch.Tensor  # (B, K): 1 only at a terminated episode's last step
    mask: torch.Tensor  # (B, K) float: 1 where t is a transition (see the module docstring)


def transitions(batch: dict[str, torch.Tensor], return_scale: float) -> Transitions:
    """Consecutive real steps of each segment as transitions, and the last step where
    `terminal_end` says the episode terminated there; the reward is the difference of the
    (hindsight) returns-to-go (the last one alone at an episode's end), scaled back to the env's
    units as the reference's rewards (ODT's data.py scales the return-to-go only)."""
    m = batch["attention_mask"].float()
    end = batch.get("terminal_end", torch.zeros_like(m[:, 0])).float()[:, None]
    mask = torch.cat([m[:, :-1] * m[:, 1:], end * m[:, -1:]], 1)
    rtg = batch["returns_to_go"][..., 0].float() * return_scale
    rewards = (rtg - torch.cat([rtg[:, 1:], torch.zeros_like(end)], 1)) * mask
    dones = torch.cat([torch.zeros_like(m[:, 1:]), end], 1) * mask
    return Transitions(batch["states"], batch["actions"], rewards, dones, mask)


def td_target(rewards, dones, q1_next, q2_next, gamma: float) -> torch.Tensor:
    """r + gamma (1 - done) min(Q1', Q2'): TD3's clipped double-Q target."""
    return rewards + gamma * (1.0 - dones) * torch.minimum(q1_next, q2_next)


def smoothed(actions: torch.Tensor, noise_std: float, noise_clip: float,
             bound: float = ACTION_BOUND) -> torch.Tensor:  # fmt: skip
    """TD3's target policy smoothing: a' + clip(N(0, std), -clip, clip), clamped to the action
    range. The noise is drawn on the CPU from torch's global generator (saved in checkpoints),
    so a resumed run draws what an uninterrupted one would on any device."""
    noise = torch.randn(actions.shape, dtype=torch.float32) * noise_std
    noise = noise.clamp(-noise_clip, noise_clip).to(actions.device)
    return (actions.float() + noise).clamp(-bound, bound)


def sample_on_cpu(dist: DiagNormal) -> torch.Tensor:
    """A draw of `dist` whose Gaussian noise comes from the CPU's global generator (as
    `smoothed`'s), so resumed runs match on any device."""
    eps = torch.randn(dist.loc.shape, dtype=torch.float32).to(dist.loc.device)
    return dist.squash(dist.loc + dist.scale * eps)


def critic_loss(q1, q2, target, mask) -> torch.Tensor:
    """((Q1 - y)^2 + (Q2 - y)^2) on valid transitions, averaged over all of them (the
    reference's masked `.mean()`, which counts the padded ones in the denominator too)."""
    return (((q1 - target) ** 2 + (q2 - target) ** 2) * mask).mean()


def actor_term(q1: torch.Tensor, mask: torch.Tensor, coef: float, normalize: bool):
    """coef * mean(-Q1) over valid steps; with `normalize` coef is first divided by the mean
    |Q1| over all steps, padded included (the reference's `normalized_rl_coeff`)."""
    if normalize:
        coef = coef / q1.abs().mean().detach().clamp_min(1e-8)
    return coef * -(q1[mask > 0].mean())


def shift(x: torch.Tensor) -> torch.Tensor:
    """x at step t+1 for each t of a (B, K, ...) segment, the last step repeated at the end."""
    return torch.cat([x[:, 1:], x[:, -1:]], 1)


@torch.no_grad()
def polyak_(targets, sources, tau: float) -> None:
    """target <- tau * source + (1 - tau) * target, in place, pairwise."""
    for target, source in zip(targets, sources, strict=True):
        target.mul_(1.0 - tau).add_(source.detach(), alpha=tau)


class TD3:
    """The critic, its target, its optimiser, and the policy's target (a Polyak copy of the
    trainable DT parameters and the Gaussian head); `state_dict` holds all of it."""

    def __init__(self, model: nn.Module, head: nn.Module, cfg: TD3Config, state_dim: int,
                 return_scale: float, device: torch.device, stochastic: bool = True):  # fmt: skip
        self.cfg, self.return_scale, self.stochastic = cfg, float(return_scale), stochastic
        act_dim = head.raw_log_std.numel()
        self.critic = TwinQ(state_dim, act_dim, cfg.hidden, cfg.layernorm).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=cfg.lr)
        self.policy_target = {n: p.detach().clone() for n, p in model.named_parameters()
                              if p.requires_grad}  # fmt: skip
        self.head_target = copy.deepcopy(head).requires_grad_(False)

    @torch.no_grad()
    def target_mu(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The target policy's pre-tanh action mean at every step of `batch`: the DT's forward
        with the trainable parameters replaced by their Polyak copies, in eval mode (the
        reference's `model_target` is a separate copy kept in eval mode)."""
        inputs = {k: batch[k] for k in ("states", "actions", "returns_to_go", "timesteps",
                                        "attention_mask")}  # fmt: skip
        was_training = model.training
        model.eval()
        try:
            kwargs = {**inputs, "return_dict": True}
            with ActionMean(model) as mu:
                torch.func.functional_call(model, self.policy_target, (), kwargs, strict=False)
        finally:
            model.train(was_training)
        return mu.value.float()

    def critic_step(self, batch, target_mu) -> dict[str, torch.Tensor]:
        """One critic step on a segment batch; `target_mu` is the target policy's pre-tanh
        action mean at every step of it (B, K, A). Returns detached loss and mean Q1."""
        cfg, tr = self.cfg, transitions(batch, self.return_scale)
        with torch.no_grad():
            # s_{t+1} and the target's action there; the last column is a stand-in (its
            # transition, if any, is terminal, so its target is r alone)
            dist = self.head_target(shift(target_mu))
            policy_action = sample_on_cpu(dist) if self.stochastic else dist.mean
            next_actions = smoothed(policy_action, cfg.policy_noise, cfg.noise_clip)
            q1_next, q2_next = self.critic_target(shift(batch["states"]), next_actions)
            target = td_target(tr.rewards, tr.dones, q1_next, q2_next, cfg.gamma)
        q1, q2 = self.critic(tr.states, tr.actions)
        loss = critic_loss(q1, q2, target, tr.mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        q = (q1.detach() * tr.mask).sum() / tr.mask.sum().clamp_min(1)
        return {"critic_loss": loss.detach(), "q": q}

    def actor_loss(self, states, mean_actions, mask) -> torch.Tensor:
        """The term added to ODT's policy loss (gradients reach the policy, not the critic)."""
        self.critic.requires_grad_(False)
        try:
            q1 = self.critic.q1_only(states, mean_actions)
        finally:
            self.critic.requires_grad_(True)
        return actor_term(q1, mask.float(), self.cfg.coef, self.cfg.normalize)

    def update_targets(self, model: nn.Module, head: nn.Module) -> None:
        """Both targets move by tau after each policy step (the reference's order)."""
        tau = self.cfg.tau
        self.update_critic_target()
        params = dict(model.named_parameters())
        polyak_(self.policy_target.values(), [params[n] for n in self.policy_target], tau)
        polyak_(self.head_target.parameters(), head.parameters(), tau)

    def update_critic_target(self) -> None:
        polyak_(self.critic_target.parameters(), self.critic.parameters(), self.cfg.tau)

    def state_dict(self) -> dict:
        return {
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "policy_target": dict(self.policy_target),
            "head_target": self.head_target.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, value in state["policy_target"].items():
            self.policy_target[name].copy_(value)
        self.head_target.load_state_dict(state["head_target"])
