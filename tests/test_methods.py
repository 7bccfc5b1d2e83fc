"""The method registry: what each method declares holds when it is built (zero output at
initialisation, what it needs, what it trains), and a missing need is refused."""

import pytest
import torch

from conftest import HAMMER
from eva_rl.adapters.methods import METHODS, BuildContext, MethodConfig, build_method
from eva_rl.agent import Agent
from eva_rl.data.segments import load_trajectories
from eva_rl.training.losses import action_loss, action_preds


@pytest.fixture(scope="module")
def setup(checkpoint, mw_root):
    agent = Agent.load(checkpoint)
    batches = [agent.segment_sampler(load_trajectories([HAMMER], mw_root), 5).sample(8)]
    return agent.model, batches


def test_every_declared_need_is_refused_when_missing(setup):
    model, _ = setup
    for name, spec in METHODS.items():
        if spec.needs_eva_state:
            with pytest.raises(ValueError, match="EVA's components"):
                build_method(model, MethodConfig(name=name, rank=2), BuildContext())
        if spec.needs_calibration:
            with pytest.raises(ValueError, match="calibration batches"):
                build_method(model, MethodConfig(name=name, rank=2), BuildContext())


@pytest.mark.parametrize("name", [n for n, s in METHODS.items() if not s.needs_eva_state])
def test_declarations_hold_once_built(name, setup):
    model, batches = setup
    context = BuildContext(calibration=batches, loss=action_loss, steps=50)
    adapted = build_method(model, MethodConfig(name=name, rank=2, calibration_batches=1), context)
    spec = METHODS[name]
    model.eval(), adapted.model.eval()
    with torch.no_grad():
        base, tuned = action_preds(model, batches[0]), action_preds(adapted.model, batches[0])
    assert torch.equal(base, tuned) == spec.zero_output_at_init
    if spec.rewrites_base:  # W = W_res + B A: the same function up to rounding, B not zero
        torch.testing.assert_close(tuned, base, atol=1e-4, rtol=0)
        assert any(p.abs().sum() > 0 for n, p in adapted.model.named_parameters() if "lora_B" in n)
    trainable = sum(p.numel() for p in adapted.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert (trainable == total) == spec.trains_full_model
    if not spec.trains_full_model:  # only the adapter trains, and exactly its parameters
        from eva_rl.layers import widths

        parts = ("lora_", "magnitude", "modules_to_save")
        assert not [n for n, p in adapted.model.named_parameters()
                    if p.requires_grad and not any(k in n for k in parts)]  # fmt: skip
        layers = {n: widths(m) for n, m in model.named_modules() if n in adapted.ranks}
        expected = sum(r * sum(layers[n]) for n, r in adapted.ranks.items())
        expected += sum(adapted.ranks.values()) if name == "adalora" else 0  # lora_E
        expected += sum(out for _, out in layers.values()) if name == "dora" else 0
        assert trainable == expected
    assert bool(adapted.ranks) != spec.trains_full_model  # adapters have ranks, fft none
    assert spec.final_ranks(adapted).keys() == adapted.ranks.keys()
    assert bool(adapted.hooks) == (name == "adalora")  # the only method with a step hook


@pytest.mark.parametrize("name", [n for n, s in METHODS.items() if s.needs_calibration])
def test_calibrated_initialisations_do_not_depend_on_dropout_noise(name, setup, monkeypatch):
    """Calibration runs without dropout: from the same batches a method computes the same
    statistics whatever torch's RNG holds (PEFT's LoRA-GA gradient estimate puts the model in
    train mode itself). PEFT's randomised low-rank SVD, which does depend on the RNG, is made
    exact here so that only the statistics are compared."""

    def exact_svd(matrix, q=6, niter=2, M=None):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :q], s[:q], vh[:q].mT

    monkeypatch.setattr(torch, "svd_lowrank", exact_svd)
    model, batches = setup
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    built = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        context = BuildContext(calibration=batches, loss=action_loss, steps=50)
        cfg = MethodConfig(name=name, rank=2, calibration_batches=1)
        adapted = build_method(model, cfg, context)
        built.append({n: p.detach().clone() for n, p in adapted.model.named_parameters()})
    for key, value in built[0].items():
        torch.testing.assert_close(value, built[1][key], atol=1e-5, rtol=0, msg=key)


def test_configs_refuse_unknown_methods_and_bad_values():
    from eva_rl.errors import UserError

    with pytest.raises(UserError, match="unknown method 'lorra'; choose one of: fft, lora"):
        MethodConfig(name="lorra")
    with pytest.raises(UserError, match="train_head=true is not supported with pissa"):
        MethodConfig(name="pissa", train_head=True)
