"""ODT's stochastic policy on a Decision Transformer that stays deterministic underneath.

The Online Decision Transformer (reference code facebookresearch/online-dt) replaces the DT's
action head by a Gaussian actor and trains it by maximum likelihood plus an entropy bonus whose
weight (the temperature) is learned toward a target entropy. Here the DT keeps its own action
head: the pre-tanh output of its Linear is the Gaussian's mean mu, and the only new parameters
are a state-independent log-std per action dimension (`GaussianHead`) and the log temperature
(`Temperature`). With `action_tanh` (transformers' default) the policy is tanh(N(mu, sigma)),
whose mean action tanh(mu) is exactly the DT's deterministic action, so an online run starts
from the offline agent's behaviour and evaluation (ODT: `use_mean=True`) acts as the DT does.

Defaults and where they come from (online-dt at commit 8c4127d):
- log-std bounds [-5, 2]: `DiagGaussianActor(log_std_bounds=[-5.0, 2.0])` in
  decision_transformer/models/decision_transformer.py, with its tanh rescaling into them.
- initial log-std -1.5, the middle of the bounds: ODT's log-std layer starts with a zero bias
  (`weight_init` fills biases with 0, weights orthogonal), so its log-std, a function of the
  state there, starts centred near the middle (and is trained offline before going online).
- initial temperature 0.1: main.py `--init_temperature`; target entropy -act_dim: main.py
  `self.target_entropy = -self.act_dim`.
- one sample for the entropy estimate: `SquashedNormal.entropy(N=1)`, which main.py's `loss_fn`
  calls without N.
- data actions clamped 1e-6 inside (-1, 1): main.py `action_range = [low + 1e-6, high - 1e-6]`,
  to which data.py's `TransformSamplingSubTraj` clamps actions (an atanh of +-1 is infinite).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

LOG_STD_BOUNDS = (-5.0, 2.0)
INIT_TEMPERATURE = 0.1
ENTROPY_SAMPLES = 1
ACTION_EPS = 1e-6
ACTION_BOUND = 1.0 - ACTION_EPS  # ODT main.py: action_range = [low + 1e-6, high - 1e-6]


def action_heads(model: nn.Module) -> list[nn.Sequential]:
    """Every copy of the DT's `predict_action` Sequential (Linear, then Tanh if `action_tanh`)
    in `model`, found by name so a PEFT wrapper works too: one for a plain or adapted DT, two
    (original and trained copy, only one of which runs) when PEFT's `modules_to_save` holds
    the head."""
    heads = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.Sequential) and "predict_action" in name.split(".")
    ]
    if not heads:
        raise ValueError("the model has no `predict_action` head: not a Decision Transformer")
    if len({isinstance(h[-1], nn.Tanh) for h in heads}) > 1:
        raise ValueError("the copies of `predict_action` disagree on the final tanh")
    return heads


class ActionMean:
    """While open, records the pre-tanh output of the DT's action head (mu) on each forward.

    A forward hook on the head's Linear sees the action head however it is reached: the full
    forward, a PEFT model's, or a forward that calls `predict_action` itself (eva_rl.windows;
    that one pads its rows to a minimum, so slice `value` to the rows asked for). `value` holds
    the last call's output, with its graph.
    """

    def __init__(self, model: nn.Module):
        self.linears = [head[0] for head in action_heads(model)]
        self.value: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> ActionMean:
        self._handles = [lin.register_forward_hook(self._record) for lin in self.linears]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, module, inputs, output) -> None:
        self.value = output


class DiagNormal:
    """Independent N(mu, sigma) per action dimension, for a DT without `action_tanh`.

    `log_prob` and `entropy` sum over the action dimensions (ODT's `log_likelihood`), so they
    have the batch shape (B, K). Sampling draws from `generator` (else torch's global RNG), so
    a seed fixes the actions.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """An action from a pre-squash draw x: x itself here, tanh x for `SquashedNormal`."""
        return x

    def _pre_squash(self, sample_shape=(), generator=None) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = torch.randn(shape, generator=generator, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def rsample(self, sample_shape=(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised actions, shape `sample_shape + loc.shape`; gradients reach mu, sigma."""
        return self.squash(self._pre_squash(sample_shape, generator))

    @torch.no_grad()
    def sample(self, sample_shape=(), generator: torch.Generator | None = None) -> torch.Tensor:
        return self.rsample(sample_shape, generator)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return Normal(self.loc, self.scale).log_prob(actions).sum(-1)

    def entropy(self, n: int = ENTROPY_SAMPLES, generator=None) -> torch.Tensor:
        """Closed form (exact; `n` and `generator` are unused, kept for one signature)."""
        return Normal(self.loc, self.scale).entropy().sum(-1)


class SquashedNormal(DiagNormal):
    """tanh(N(mu, sigma)) per action dimension: ODT's `SquashedNormal`, with the same numbers
    as torch's TransformedDistribution(Normal(mu, sigma), TanhTransform(cache_size=1))."""

    @property
    def mean(self) -> torch.Tensor:
        """tanh(mu), ODT's mean action: the DT's deterministic action."""
        return torch.tanh(self.loc)

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def _log_prob_pre_tanh(self, x: torch.Tensor) -> torch.Tensor:
        """log p(tanh x) from the pre-tanh x: the Normal's density less log|d tanh/dx|, written
        2 (log 2 - x - softplus(-2x)) as in ODT's and torch's TanhTransform (finite at any x)."""
        log_det = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
        return (Normal(self.loc, self.scale).log_prob(x) - log_det).sum(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log density of data actions; clamped ACTION_EPS inside (-1, 1) first, as ODT's loader
        clips them, so an action on the bound has a finite atanh."""
        clamped = actions.clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
        return self._log_prob_pre_tanh(torch.atanh(clamped))

    def entropy(
        self, n: int = ENTROPY_SAMPLES, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """ODT's estimate: -log p of n reparameterised samples, averaged (shape (B, K)). The
        density is taken at the pre-tanh samples, as ODT's cached TanhTransform does, so it
        needs no atanh."""
        x = self._pre_squash((n,), generator)
        return -self._log_prob_pre_tanh(x).mean(0)


class GaussianHead(nn.Module):
    """The policy's only new module: a learned log-std per action dimension, independent of
    the state (the DT's frozen weights give the mean; an adapter changes it).

    The log-std is `lo + (hi - lo) (tanh(raw) + 1) / 2`, ODT's rescaling, so it stays within
    `log_std_bounds` with smooth gradients; `init_log_std` defaults to ODT's start, the middle
    of the bounds.
    """

    def __init__(
        self,
        act_dim: int,
        squash: bool = True,
        init_log_std: float | None = None,
        log_std_bounds: tuple[float, float] = LOG_STD_BOUNDS,
    ):
        super().__init__()
        lo, hi = log_std_bounds
        init = (lo + hi) / 2 if init_log_std is None else init_log_std
        if not lo < init < hi:
            raise ValueError(f"init_log_std {init} must lie inside log_std_bounds {lo, hi}")
        self.squash, self.log_std_bounds = squash, (lo, hi)
        raw = math.atanh(2.0 * (init - lo) / (hi - lo) - 1.0)
        self.raw_log_std = nn.Parameter(torch.full((act_dim,), raw))

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> GaussianHead:
        """The head for a DT (plain or PEFT-wrapped): its act_dim, and squashed if the DT's
        action head ends in tanh."""
        head = action_heads(model)[0]
        return cls(head[0].out_features, squash=isinstance(head[-1], nn.Tanh), **kwargs)

    @property
    def log_std(self) -> torch.Tensor:
        lo, hi = self.log_std_bounds
        return lo + 0.5 * (hi - lo) * (torch.tanh(self.raw_log_std) + 1.0)

    def forward(self, mu: torch.Tensor) -> DiagNormal:
        """The action distribution at mu (..., act_dim), in fp32 whatever precision the DT's
        forward ran in (as eva_rl's losses are)."""
        mu = mu.float()
        std = self.log_std.exp().expand_as(mu)
        return SquashedNormal(mu, std) if self.squash else DiagNormal(mu, std)


class Temperature(nn.Module):
    """ODT's entropy weight lambda = exp(log temperature), learned by dual gradient descent.
    Keep it out of the policy's optimiser: ODT steps it alone (Adam, lr 1e-4, betas 0.9/0.999)."""

    def __init__(self, init: float = INIT_TEMPERATURE):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init)))

    @property
    def value(self) -> torch.Tensor:
        return self.log_temperature.exp()


class OdtLosses(NamedTuple):
    policy: torch.Tensor  # backward into the adapter and the head
    temperature: torch.Tensor  # backward into the log temperature only
    entropy: torch.Tensor  # the estimate both used, detached (for logs)


def odt_losses(
    dist: DiagNormal,
    actions: torch.Tensor,
    mask: torch.Tensor,
    temperature: Temperature | torch.Tensor,
    target_entropy: float | None = None,
    generator: torch.Generator | None = None,
) -> OdtLosses:
    """ODT's two losses for a segment batch: dist over (B, K), data actions (B, K, act_dim),
    mask (B, K) > 0 on real steps.

    As online-dt's main.py `loss_fn` and trainer.py `train_step_stochastic`:
      policy = -(mean log-likelihood on valid tokens + lambda.detach() * entropy),
      temperature = lambda * (entropy - target_entropy).detach(),
    with lambda = exp(log temperature) and target_entropy -act_dim by default. The entropy is
    the one-sample estimate averaged over ALL tokens, padded ones included, exactly as the
    reference does (its `entropy().mean()` takes no mask). The reference then clips the policy
    gradient norm to 0.25 before its step and steps the temperature after it.
    """
    lam = temperature.value if isinstance(temperature, Temperature) else temperature
    if target_entropy is None:
        target_entropy = -float(dist.loc.shape[-1])
    log_likelihood = dist.log_prob(actions)[mask > 0].mean()
    entropy = dist.entropy(generator=generator).mean()
    policy = -(log_likelihood + lam.detach() * entropy)
    temperature_loss = lam * (entropy - target_entropy).detach()
    return OdtLosses(policy, temperature_loss, entropy.detach())
