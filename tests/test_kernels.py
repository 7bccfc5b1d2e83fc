import math

import pytest
import torch
from transformers.models.decision_transformer.modeling_decision_transformer import (
    eager_attention_forward,
)

from eva_rl.agent import ModelConfig, build_model
from eva_rl.kernels import ATTENTION, MaskDropout, attention, keep_mask, mask_dropout, speed_up
from eva_rl.training.loop import OptimConfig, adamw


def test_masks_drop_with_probability_p_and_follow_torch_seed():
    n, p = 400_000, 0.1
    torch.manual_seed(0)
    a = keep_mask(torch.Size([n]), p)
    torch.manual_seed(0)
    b = keep_mask(torch.Size([n]), p)
    c = keep_mask(torch.Size([n]), p)  # the generator moved on: another mask
    assert torch.equal(a, b) and not torch.equal(b, c)
    dropped = (~a).sum().item()
    assert abs(dropped - n * p) < 4 * math.sqrt(n * p * (1 - p))  # binomial, 4 sigma
    # neighbouring elements are independent: P(both dropped) = p^2
    both = (~a[:-1] & ~a[1:]).float().mean().item()
    assert both == pytest.approx(p * p, abs=4 * math.sqrt(p * p / n))


def test_mask_dropout_is_unbiased_and_matches_its_mask():
    x = torch.randn(64, 60, 128)
    torch.manual_seed(3)
    y = mask_dropout(x, 0.2, True)
    torch.manual_seed(3)
    keep = keep_mask(x.shape, 0.2)
    assert torch.allclose(y, torch.where(keep, x / 0.8, torch.zeros(())), rtol=1e-6, atol=0)
    assert torch.equal(y == 0, ~keep | (x == 0))
    ones = mask_dropout(torch.ones(1_000_000), 0.2, True)
    assert ones.mean().item() == pytest.approx(1.0, abs=4 * math.sqrt(0.25 / 1e6))
    assert torch.equal(mask_dropout(x, 0.2, False), x)
    assert torch.equal(mask_dropout(x, 0.0, True), x)
    module = MaskDropout(0.2).eval()
    assert torch.equal(module(x), x)


def test_training_attention_equals_explicit_attention_with_the_same_masks():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4) for _ in range(3))
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool).tril()
    mask[0, :, :, :2] = False  # left padding: rows 0-1 of batch 0 see nothing at all
    module = torch.nn.Module()
    torch.manual_seed(5)
    out, _ = attention(module, q, k, v, mask, dropout=0.25, scaling=0.5)
    torch.manual_seed(5)
    keep = keep_mask(torch.Size([3, 2, 7, 7]), 0.25)
    additive = torch.zeros(3, 1, 7, 7).masked_fill(~mask, torch.finfo(torch.float32).min)
    weights = torch.softmax(q @ k.transpose(-1, -2) * 0.5 + additive, -1) * keep / 0.75
    assert torch.allclose(out, (weights @ v).transpose(1, 2), atol=1e-6)
    assert torch.isfinite(out).all()
    # without dropout it is transformers' eager attention on the valid rows
    module.training = False
    plain, _ = attention(module, q, k, v, mask, dropout=0.0, scaling=0.5)
    ref, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.5)
    assert torch.allclose(plain[1:], ref[1:], atol=1e-6)
    assert torch.allclose(plain[0, 2:], ref[0, 2:], atol=1e-6)


def test_speed_up_keeps_eval_outputs_and_saved_config():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, n_layer=2, n_head=2, context_length=5), 6, 3)
    model.eval()
    batch = dict(
        states=torch.randn(4, 5, 6),
        actions=torch.randn(4, 5, 3),
        returns_to_go=torch.randn(4, 5, 1),
        timesteps=torch.arange(5).repeat(4, 1),
        attention_mask=torch.tensor([[0, 0, 1, 1, 1]] + [[1] * 5] * 3),
    )
    before = model(**batch).action_preds
    speed_up(model)
    assert model.config._attn_implementation == ATTENTION
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert all(not m.training for m in model.modules())
    assert torch.equal(model(**batch).action_preds, before)
    model.train()
    torch.manual_seed(1)
    a = model(**batch).action_preds
    torch.manual_seed(1)
    assert torch.equal(model(**batch).action_preds, a) and not torch.equal(a, before)


def adapted_batch(k=5, batch=4, state_dim=6, act_dim=3):
    torch.manual_seed(1)
    mask = torch.ones(batch, k, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    return dict(
        states=torch.randn(batch, k, state_dim),
        actions=torch.rand(batch, k, act_dim) * 2 - 1,
        returns_to_go=torch.randn(batch, k, 1),
        timesteps=torch.arange(k).repeat(batch, 1),
        attention_mask=mask,
    )


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_speed_up_keeps_adapted_bf16_outputs(method):
    """Under bf16 autocast an adapter at initialisation (B = 0) acts as its base model, before
    and after `speed_up`. DoRA failed this (max difference 0.002) when its input cast was
    switched off: PEFT's DoRA then took the column norm of a bf16-rounded weight."""
    from eva_rl.adapters.methods import BuildContext, MethodConfig, build_method

    torch.manual_seed(0)
    base = build_model(ModelConfig(hidden_size=64, n_layer=2, n_head=2, context_length=5), 6, 3)
    base.eval()
    adapted = build_method(base, MethodConfig(name=method, rank=4), BuildContext()).model.eval()
    batch = adapted_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = base(**batch).action_preds
        before = adapted(**batch).action_preds
        speed_up(adapted)
        after = adapted(**batch).action_preds
    assert torch.equal(before, reference)
    assert torch.equal(after, reference)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_speed_up_trains_adapters_as_with_peft_cast_under_bf16(dropout):
    """Training in bf16 autocast, a LoRA (B nonzero) after `speed_up` computes what it does
    with PEFT's input cast on every layer, adapter dropout or not: at p 0.1 a bf16 input
    rounded the dropout's 1 / (1 - p) (outputs off by 6e-3) before such layers kept the cast."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    from eva_rl.adapters.methods import BuildContext, MethodConfig, build_method

    torch.manual_seed(0)
    base = build_model(ModelConfig(hidden_size=64, n_layer=2, n_head=2, context_length=5), 6, 3)
    cfg = MethodConfig(name="lora", rank=4, dropout=dropout)
    patched = speed_up(build_method(base, cfg, BuildContext()).model)
    with torch.no_grad():
        for name, param in patched.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    cast = copy.deepcopy(patched)
    for layer in cast.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.cast_input_dtype_enabled = True
    batch = adapted_batch()
    valid = batch["attention_mask"].bool()
    outputs = []
    for model in (patched, cast):
        model.train()
        torch.manual_seed(5)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch).action_preds.float()[valid]
        out.square().sum().backward()
        outputs.append((out, [p.grad for p in model.parameters() if p.grad is not None]))
    (a, grads_a), (b, grads_b) = outputs
    assert torch.equal(a, b)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.equal(ga, gb)


@pytest.mark.parametrize("padded", [True, False])
def test_speed_up_trains_like_sdpa_attention(padded):
    """In train mode (the patched attention's own path) the patched model's outputs and
    gradients equal transformers' SDPA model's, with and without padding, with layer scales
    other than the head size's default (as scale_attn_by_inverse_layer_idx sets them).
    Dropout 1e-9 keeps the patched path and drops nothing in practice."""
    import copy

    cfg = ModelConfig(hidden_size=48, n_layer=2, n_head=2, context_length=5, dropout=1e-9)
    torch.manual_seed(0)
    plain = build_model(cfg, 6, 3)
    for i, block in enumerate(plain.encoder.h):  # as scale_attn_by_inverse_layer_idx sets it
        block.attn.scaling /= i + 1
    patched = speed_up(copy.deepcopy(plain))
    batch = adapted_batch()
    if not padded:
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    valid = batch["attention_mask"].bool()  # padded rows differ (uniform vs zero) and are unused
    outputs = []
    for model in (plain, patched):
        model.train()
        out = model(**batch).action_preds[valid]
        out.square().sum().backward()
        outputs.append((out, [p.grad for p in model.parameters() if p.grad is not None]))
    (a, grads_a), (b, grads_b) = outputs
    assert torch.allclose(a, b, atol=1e-6)
    assert len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-5)


def test_fused_adamw_makes_the_plain_update():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(50, 20)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    cfg = OptimConfig(lr=1e-2, weight_decay=0.01)
    fused = adamw(params, cfg)
    plain = torch.optim.AdamW(twins, lr=1e-2, weight_decay=0.01, foreach=False)
    assert fused.defaults["fused"]
    for step in range(5):
        for group in (params, twins):
            for i, p in enumerate(group):
                p.grad = torch.sin(torch.arange(p.numel()).view_as(p) * (step + i + 1.0))
        fused.step()
        plain.step()
    for p, q in zip(params, twins, strict=True):
        assert torch.allclose(p, q, atol=1e-6)
