"""ODT's stochastic policy (eva_rl.online.policy) on real Decision Transformers, plain and under
PEFT: its densities and entropies against torch.distributions, its mean action against the DT's
own, seeded sampling, the losses by hand and where their gradients go."""

import copy
import math

import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution
from transformers import DecisionTransformerConfig, DecisionTransformerModel

from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model
from eva_rl.online.policy import (
    ActionMean,
    DiagNormal,
    GaussianHead,
    SquashedNormal,
    Temperature,
    odt_losses,
)

pytestmark = pytest.mark.usefixtures("one_thread")

STATE_DIM, ACT_DIM, B, K = 6, 3, 4, 5


def action_mean(model, **dt_inputs) -> torch.Tensor:
    """mu at every step of a DT forward (B, K, act_dim), as the online trainer captures it."""
    with ActionMean(model) as captured:
        model(**dt_inputs)
    assert captured.value is not None, "the forward did not run the action head"
    return captured.value


def tiny_dt(action_tanh: bool = True) -> DecisionTransformerModel:
    torch.manual_seed(0)
    if action_tanh:  # the project's own builder (it always sets action_tanh)
        cfg = ModelConfig(hidden_size=32, n_layer=2, n_head=2, context_length=K, max_ep_len=50)
        return build_model(cfg, STATE_DIM, ACT_DIM).eval()
    config = DecisionTransformerConfig(
        state_dim=STATE_DIM, act_dim=ACT_DIM, hidden_size=32, n_layer=2, n_head=2,
        n_inner=128, n_positions=3 * K, max_ep_len=50, action_tanh=False,
    )  # fmt: skip
    return DecisionTransformerModel(config).eval()


def peft_dt(train_head: bool = False) -> torch.nn.Module:
    """The tiny DT as fine-tuning adapts it: Conv1D as Linear, unmerged LoRA with B != 0, and
    with `train_head` PEFT's trained copy of the action head (perturbed, so it differs)."""
    from peft import LoraConfig, get_peft_model

    from eva_rl.adapters.methods import as_linear

    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["c_attn", "c_proj", "c_fc"], init_lora_weights=False,
        modules_to_save=["predict_action"] if train_head else None,
    )  # fmt: skip
    model = get_peft_model(as_linear(tiny_dt()), config).eval()
    if train_head:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(0.3 * torch.randn_like(p))
    return model


def dt_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    """A segment batch as eva_rl's sampler lays it out: real steps at the right end."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, dtype=torch.long)
    mask[1, :2] = 0
    mask[3, :4] = 0
    return {
        "states": torch.randn(B, K, STATE_DIM, generator=g),
        "actions": torch.rand(B, K, ACT_DIM, generator=g) * 2 - 1,
        "returns_to_go": torch.randn(B, K, 1, generator=g),
        "timesteps": torch.arange(K).repeat(B, 1),
        "attention_mask": mask,
    }


def torch_squashed(loc, scale) -> TransformedDistribution:
    return TransformedDistribution(Normal(loc, scale), [TanhTransform(cache_size=1)])


def test_squashed_log_prob_matches_torch_distributions_and_is_finite_on_the_bounds():
    mu = action_mean(tiny_dt(), **dt_inputs())
    dist = GaussianHead(ACT_DIM, init_log_std=0.0)(mu)  # sigma 1: the tanh matters
    g = torch.Generator().manual_seed(0)
    actions = (torch.rand(B, K, ACT_DIM, generator=g) * 2 - 1) * 0.999
    expected = torch_squashed(dist.loc, dist.scale).log_prob(actions).sum(-1)
    assert dist.log_prob(actions).shape == (B, K)
    torch.testing.assert_close(dist.log_prob(actions), expected, atol=1e-5, rtol=1e-5)

    edge = torch.ones(B, K, ACT_DIM)  # data actions on the bound: clamped 1e-6 inside
    for sign in (1.0, -1.0):
        inside = torch_squashed(dist.loc, dist.scale).log_prob(sign * (1 - 1e-6) * edge)
        assert torch.isfinite(dist.log_prob(sign * edge)).all()
        torch.testing.assert_close(dist.log_prob(sign * edge), inside.sum(-1))


def test_unbounded_log_prob_and_entropy_are_the_normal_ones():
    mu = torch.randn(B, K, ACT_DIM, generator=torch.Generator().manual_seed(2))
    dist = GaussianHead(ACT_DIM, squash=False, init_log_std=-0.5)(mu)
    assert type(dist) is DiagNormal
    reference = Normal(mu, math.exp(-0.5))
    actions = 3 * torch.randn(B, K, ACT_DIM, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(dist.log_prob(actions), reference.log_prob(actions).sum(-1))
    torch.testing.assert_close(dist.entropy(), reference.entropy().sum(-1))
    assert torch.equal(dist.mean, mu)


def test_entropy_estimate_agrees_with_a_monte_carlo_of_torch_distributions():
    mu = action_mean(tiny_dt(), **dt_inputs())
    dist = GaussianHead(ACT_DIM, init_log_std=0.0)(mu.detach())
    n = 40_000
    ours = dist.entropy(n=n, generator=torch.Generator().manual_seed(0))
    reference = torch_squashed(dist.loc, dist.scale)
    torch.manual_seed(1)
    y = reference.rsample((n,))
    theirs = -reference.log_prob(y).sum(-1).mean(0)
    gaussian = Normal(dist.loc, dist.scale).entropy().sum(-1)
    assert ours.shape == (B, K)
    assert (ours - theirs).abs().max() < 0.05  # about 6 standard errors of the difference
    assert (gaussian - theirs).min() > 0.5  # the tanh's Jacobian is what the test sees


def test_default_entropy_is_one_sample_of_minus_log_prob_as_in_odt():
    mu = action_mean(tiny_dt(), **dt_inputs())
    dist = GaussianHead.for_model(tiny_dt())(mu.detach())
    one = dist.entropy(generator=torch.Generator().manual_seed(5))
    sample = dist.rsample((1,), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(one, -dist.log_prob(sample).mean(0), atol=1e-4, rtol=1e-4)
    assert not torch.equal(one, dist.entropy(generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("kind", ["plain", "lora", "lora+head", "no tanh"])
def test_mean_action_is_the_dts_deterministic_action(kind):
    model = {
        "plain": tiny_dt,
        "lora": peft_dt,
        "lora+head": lambda: peft_dt(train_head=True),
        "no tanh": lambda: tiny_dt(action_tanh=False),
    }[kind]()
    inputs = dt_inputs()
    with torch.no_grad():
        deterministic = model(**inputs, return_dict=True).action_preds
        dist = GaussianHead.for_model(model)(action_mean(model, **inputs))
    assert isinstance(dist, SquashedNormal) == (kind != "no tanh")
    assert torch.equal(dist.mean, deterministic)
    if kind == "lora+head":  # the trained copy of the head ran, not the original
        original = peft_dt()
        with torch.no_grad():
            assert not torch.allclose(original(**inputs, return_dict=True).action_preds, dist.mean)


def test_action_mean_sees_the_rollout_windows_fast_path():
    """eva_rl.windows calls `predict_action` itself; the hook still sees its Linear."""
    from eva_rl.windows import ContextWindows

    model = peft_dt()
    meta = AgentMeta([0.0] * STATE_DIM, [1.0] * STATE_DIM, 1.0, K, 40)
    windows = ContextWindows(Agent(model, meta), slots=3, device=torch.device("cpu"))
    slots = torch.arange(3)
    windows.start(slots, torch.randn(3, STATE_DIM), [1.0, 2.0, 3.0])
    with torch.no_grad(), ActionMean(model) as captured:
        actions = windows.actions(slots)
    assert torch.equal(torch.tanh(captured.value[:3]), actions)


def test_same_seed_same_samples_other_seed_other_samples():
    mu = torch.randn(B, K, ACT_DIM, generator=torch.Generator().manual_seed(0))
    for squash in (True, False):
        dist = GaussianHead(ACT_DIM, squash=squash)(mu)
        a = dist.sample((2,), generator=torch.Generator().manual_seed(7))
        assert a.shape == (2, B, K, ACT_DIM)
        assert torch.equal(a, dist.sample((2,), generator=torch.Generator().manual_seed(7)))
        assert not torch.equal(a, dist.sample((2,), generator=torch.Generator().manual_seed(8)))
        torch.manual_seed(3)  # torch's global RNG when no generator is given
        b = dist.sample()
        torch.manual_seed(3)
        assert torch.equal(b, dist.sample())
        if squash:
            assert a.abs().max() < 1


def test_losses_equal_a_hand_computation():
    loc = torch.tensor([[[0.2, -0.5], [1.0, 0.0], [-0.3, 0.7]]])  # (B=1, K=3, A=2)
    scale = torch.tensor([0.3, 0.6]).expand(1, 3, 2)
    actions = torch.tensor([[[0.0, 0.0], [0.5, -0.9], [-0.2, 0.95]]])
    mask = torch.tensor([[0, 1, 1]])
    temperature = Temperature()
    losses = odt_losses(
        SquashedNormal(loc, scale), actions, mask, temperature,
        generator=torch.Generator().manual_seed(11),
    )  # fmt: skip

    def log_p(x):  # density of tanh(x), from the pre-tanh x
        gauss = -0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
        return (gauss - torch.log(1 - torch.tanh(x) ** 2)).sum(-1)

    log_likelihood = log_p(torch.atanh(actions))[0, 1:].mean()  # the two valid tokens
    eps = torch.randn((1, 1, 3, 2), generator=torch.Generator().manual_seed(11))
    entropy = -log_p(loc + scale * eps).mean()  # one sample, every token (padded one too)
    lam, target = 0.1, -2.0  # ODT's initial temperature; target entropy -act_dim
    torch.testing.assert_close(temperature.value, torch.tensor(lam))
    torch.testing.assert_close(losses.entropy, entropy)
    torch.testing.assert_close(losses.policy, -(log_likelihood + lam * entropy))
    torch.testing.assert_close(losses.temperature, lam * (entropy - target))
    losses.temperature.backward()  # d/d log(lambda) of lambda * (H - target) is the loss itself
    torch.testing.assert_close(temperature.log_temperature.grad, lam * (entropy - target))


def test_gradients_reach_the_head_the_temperature_and_the_adapter_only():
    model, inputs = peft_dt(train_head=True), dt_inputs()
    model.train()
    head, temperature = GaussianHead.for_model(model), Temperature()
    dist = head(action_mean(model, **inputs))
    losses = odt_losses(dist, inputs["actions"], inputs["attention_mask"], temperature)

    losses.policy.backward(retain_graph=True)
    assert temperature.log_temperature.grad is None  # lambda is detached in the policy loss
    assert head.raw_log_std.grad.abs().min() > 0
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    names = " ".join(n for n, _ in trainable)
    assert "lora_" in names and "modules_to_save" in names
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)
    assert frozen and all(p.grad is None for _, p in frozen)

    before = {n: p.grad.clone() for n, p in trainable}
    head_grad = head.raw_log_std.grad.clone()
    losses.temperature.backward()  # reaches lambda only: the entropy is detached in it
    assert temperature.log_temperature.grad.abs() > 0
    assert torch.equal(head.raw_log_std.grad, head_grad)
    assert all(torch.equal(p.grad, before[n]) for n, p in trainable)


def test_head_log_std_starts_at_odts_and_stays_in_its_bounds():
    head = GaussianHead(ACT_DIM)
    torch.testing.assert_close(head.log_std, torch.full((ACT_DIM,), -1.5))  # middle of [-5, 2]
    custom = GaussianHead(ACT_DIM, init_log_std=math.log(0.1))
    torch.testing.assert_close(custom.log_std, torch.full((ACT_DIM,), math.log(0.1)))
    with torch.no_grad():
        head.raw_log_std.copy_(torch.tensor([-50.0, 0.0, 50.0]))
    assert head.log_std.min() >= -5.0 and head.log_std.max() <= 2.0
    with pytest.raises(ValueError, match="inside log_std_bounds"):
        GaussianHead(ACT_DIM, init_log_std=3.0)
    with pytest.raises(ValueError, match="predict_action"):
        GaussianHead.for_model(torch.nn.Linear(2, 2))
    assert copy.deepcopy(head).squash is True
