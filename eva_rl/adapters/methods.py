"""The initialisation methods compared when fine-tuning: PEFT's recipes, EVA and full fine-tuning.

Every method is built with PEFT's own implementation from a fresh copy of the pretrained DT
(PiSSA, OLoRA, CorDA and LoRA-GA rewrite base weights). GPT-2's block matrices are `Conv1D`
(weight stored in x out); PEFT's OLoRA ignores `fan_in_fan_out`, so before any adapter is built
the copy's Conv1D layers become equivalent `nn.Linear` layers, one code path for every method.
Saved adapters are written for the plain DT (`fan_in_fan_out: true`), and base-rewriting methods
are converted to plain LoRA with PEFT's `path_initial_model_for_weight_conversion`, so any saved
adapter loads with `PeftModel.from_pretrained` onto `DecisionTransformerModel.from_pretrained`
(`eva_rl.adapters.export`).

Each registry entry declares what its method needs (calibration batches, EVA's components) and
what it is (zero output at init, rewrites base weights, uses rho, trains the full model, how its
final ranks are read), so nothing outside this file matches a method by name: adding a method
is one builder and one entry here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from eva_rl.errors import UserError
from eva_rl.layers import check_rank, target_layers


@dataclass
class MethodConfig:
    name: str = "eva"  # the initialisation method (`eva-rl methods`)
    rank: int = 8  # nominal rank r (AdaLoRA: the average rank it prunes down to)
    rho: float = 2.0  # EVA: components per layer before redistribution; AdaLoRA: initial rank / r
    alpha: float = 0.0  # LoRA alpha; 0 means alpha = rank (scale 1)
    dropout: float = 0.0  # on the adapter's input (PEFT's lora_dropout)
    # GPT-2 block matrices adapted: c_attn (q, k, v), c_proj (attention and MLP out), c_fc
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    # The action head maps the last hidden state to the 4-D Meta-World action, which means the
    # same in every task; the adapted blocks already change what it sees, and training it fully
    # would add a method-independent part that blurs the comparison of initialisations.
    train_head: bool = False
    calibration_batches: int = 8  # batches for LoRA-GA gradients, CorDA covariances, grad signal
    adalora_orth_reg: float = 0.5  # AdaLoRA's orthogonality penalty weight (PEFT's default)

    def __post_init__(self):
        if self.name not in METHODS:
            raise UserError(unknown_method(self.name))
        if self.rank < 1:
            raise UserError(f"method.rank must be >= 1, got {self.rank}")
        if not self.target_modules and not METHODS[self.name].trains_full_model:
            raise UserError(
                "method.target_modules is empty; name the layers to adapt, e.g. "
                "[c_attn, c_proj, c_fc] (GPT-2's block matrices)"
            )
        if not 1.0 <= self.rho < math.inf:
            raise UserError(f"method.rho must be >= 1 (1 = no redistribution), got {self.rho}")
        if not 0 <= self.alpha < math.inf or not 0.0 <= self.dropout < 1.0:
            raise UserError("method: alpha must be finite and >= 0, dropout in [0, 1)")
        if self.calibration_batches < 1 or not 0 <= self.adalora_orth_reg < math.inf:
            raise UserError("method: calibration_batches must be >= 1, adalora_orth_reg >= 0")
        if self.train_head and METHODS[self.name].rewrites_base:
            raise UserError(
                f"method.train_head=true is not supported with {self.name}: PEFT's conversion of "
                "its adapter to plain LoRA drops fully trained modules; use train_head=false"
            )

    @property
    def lora_alpha(self) -> float:
        return self.alpha or float(self.rank)

    @property
    def modules_to_save(self) -> list[str] | None:
        """PEFT's fully trained modules: the action head when `train_head`."""
        return ["predict_action"] if self.train_head else None


@dataclass
class Adapted:
    """A model ready to train, plus what the training loop and the report need to know."""

    model: torch.nn.Module
    ranks: dict[str, int]  # adapted layer -> rank at initialisation (empty for fft)
    hooks: list = field(default_factory=list)  # train-loop step hooks (AdaLoRA's allocator)
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None  # added to the loss
    method: str = ""  # the registry name it was built with


@dataclass(frozen=True)
class BuildContext:
    """What some methods need to be built, gathered by the caller from the task data."""

    calibration: list[dict[str, torch.Tensor]] = field(default_factory=list)  # segment batches
    loss: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None  # loss(model, batch)
    eva_state: dict[str, torch.Tensor] | None = None  # EVA's components per layer
    steps: int = 0  # training updates (AdaLoRA's budget schedule)


def built_ranks(adapted: Adapted) -> dict[str, int]:
    return adapted.ranks


@dataclass(frozen=True)
class Method:
    summary: str
    build: Callable[[torch.nn.Module, MethodConfig, BuildContext], Adapted]
    zero_output_at_init: bool = True  # B = 0: the model acts exactly like the base
    rewrites_base: bool = False  # needs weight conversion to load onto a plain DT
    uses_rho: bool = False  # rho changes what it builds (EVA's redistribution, AdaLoRA's budget)
    trains_full_model: bool = False  # no adapter: rank means nothing
    needs_calibration: bool = False  # builds from the loss on `BuildContext.calibration`
    needs_eva_state: bool = False  # builds from the collector's components
    final_ranks: Callable[[Adapted], dict[str, int]] = built_ranks  # ranks after training


def unknown_method(name: str) -> str:
    return f"unknown method {name!r}; choose one of: {', '.join(METHODS)} (`eva-rl methods`)"


def as_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every Conv1D by the equivalent nn.Linear (same function, weight transposed)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            d_in, d_out = module.weight.shape
            linear = torch.nn.Linear(d_in, d_out, device=module.weight.device)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


def _lora_config(cfg: MethodConfig, **kwargs):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save,
        **kwargs,
    )


def _peft(model, config) -> Adapted:
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    return Adapted(peft_model, adapter_ranks(peft_model))


def adapter_ranks(peft_model) -> dict[str, int]:
    """Adapted layer (plain DT module name) -> current rank."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    ranks = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.r:
            ranks[name.removeprefix(prefix)] = int(module.r["default"])
    return ranks


def _loss_over(batches, loss_fn) -> Callable[[torch.nn.Module], None]:
    def run(model):
        for batch in batches:
            loss_fn(model, batch).backward()

    return run


def _build_fft(model, cfg, ctx: BuildContext) -> Adapted:
    for p in model.parameters():
        p.requires_grad_(True)
    return Adapted(model, {})


def _build_lora_variant(init: Any = True, use_dora: bool = False):
    def build(model, cfg, ctx: BuildContext) -> Adapted:
        return _peft(as_linear(model), _lora_config(cfg, init_lora_weights=init, use_dora=use_dora))

    return build


def _build_lora_ga(model, cfg, ctx: BuildContext) -> Adapted:
    from peft import LoraGAConfig
    from peft.tuners.lora.loraga import preprocess_loraga

    model = as_linear(model)
    config = _lora_config(cfg, init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig())
    was_training = model.training

    def gradients():  # PEFT's estimate puts the model in train mode: deterministic gradients
        model.eval()  # (no dropout), like the gradient signal
        _loss_over(ctx.calibration, ctx.loss)(model)

    preprocess_loraga(model, config, gradients)
    model.train(was_training)
    return _peft(model, config)


def _build_corda(model, cfg, ctx: BuildContext) -> Adapted:
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    model = as_linear(model)
    config = _lora_config(cfg, init_lora_weights="corda", corda_config=CordaConfig())

    @torch.no_grad()
    def run_model():  # PEFT's CorDA hook takes one sequence per forward: unpadded segments
        for batch in ctx.calibration:
            for i, valid in enumerate(batch["attention_mask"].bool()):
                ctx.loss(model, {k: v[i : i + 1, valid] for k, v in batch.items()})

    was_training = model.training
    model.eval()
    preprocess_corda(model, config, run_model=run_model)
    model.train(was_training)
    return _peft(model, config)


class AdaLoraSchedule:
    """Calls PEFT's budget allocator after every optimizer step; its importance statistics are
    part of the training state, so a resumed run allocates like an uninterrupted one."""

    def __init__(self, peft_model):
        self.tuner = peft_model.base_model

    def after_step(self, step: int) -> None:
        self.tuner.update_and_allocate(step)

    def state_dict(self) -> dict:
        alloc = self.tuner.rankallocator
        config = self.tuner.peft_config["default"]
        keys = ("ipt", "exp_avg_ipt", "exp_avg_unc")
        return {**{k: getattr(alloc, k) for k in keys}, "rank_pattern": config.rank_pattern}

    def load_state_dict(self, state: dict) -> None:
        alloc = self.tuner.rankallocator
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(alloc, key, state[key])
        self.tuner.peft_config["default"].rank_pattern = state["rank_pattern"]


def adalora_ranks(adapted: Adapted) -> dict[str, int]:
    """AdaLoRA's ranks after training: the singular values its allocator kept per layer."""
    pattern = adapted.model.peft_config["default"].rank_pattern or {}
    ranks = dict(adapted.ranks)
    for key, mask in pattern.items():
        name = key.removeprefix("base_model.model.").rsplit(".lora_E", 1)[0]
        ranks[name] = int(sum(bool(v) for v in mask))
    return ranks


def adalora_orthogonality(model: torch.nn.Module) -> torch.Tensor:
    """AdaLoRA's penalty ||P P^T - I||_F averaged over its P (A) and Q (B) factors. PEFT adds it
    only when the wrapped model returns a `.loss`, which a DT does not, so it is added here with
    PEFT's formula (`AdaLoraModel.forward`)."""
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(len(cov), device=p.device)))
    return torch.stack(terms).mean()


def _build_adalora(model, cfg, ctx: BuildContext) -> Adapted:
    from peft import AdaLoraConfig

    steps = ctx.steps
    tinit, tfinal = steps // 10, steps // 5
    if steps - tinit - tfinal < 1:
        raise UserError(f"adalora needs more training steps than {steps} to allocate its budget")
    config = AdaLoraConfig(
        init_r=round(cfg.rho * cfg.rank),
        target_r=cfg.rank,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=max(1, steps // 100),
        total_step=steps,
        lora_alpha=cfg.lora_alpha,  # PEFT divides by init_r: at alpha = r the scale is 1/rho
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save,
        orth_reg_weight=cfg.adalora_orth_reg,
    )
    adapted = _peft(as_linear(model), config)
    adapted.hooks = [AdaLoraSchedule(adapted.model)]
    adapted.penalty = lambda m: cfg.adalora_orth_reg * adalora_orthogonality(m)
    return adapted


def _build_eva(use_dora: bool):
    def build(model, cfg, ctx: BuildContext) -> Adapted:
        from eva_rl.eva.state import apply_eva

        peft_model = apply_eva(
            as_linear(model),
            ctx.eva_state,
            cfg.rank,
            cfg.lora_alpha,
            cfg.dropout,
            use_dora=use_dora,
            modules_to_save=cfg.modules_to_save,
        )
        return Adapted(peft_model, adapter_ranks(peft_model))

    return build


# what every other method is compared with by default (reports, hypotheses): plain LoRA, the
# initialisation the paper's gains are measured against
REFERENCE = "lora"

METHODS: dict[str, Method] = {
    "fft": Method(
        "full fine-tuning of every weight (no adapter)", _build_fft, trains_full_model=True
    ),
    "lora": Method("LoRA, PEFT default init (A Kaiming-uniform, B = 0)", _build_lora_variant()),
    "lora-gaussian": Method(
        "LoRA with A ~ N(0, 1/r^2) (std 1/r), B = 0", _build_lora_variant("gaussian")
    ),
    "pissa": Method(
        "PiSSA: A, B from the top-r singular vectors of W (residual kept in the base)",
        _build_lora_variant("pissa"),
        zero_output_at_init=False,
        rewrites_base=True,
    ),
    "olora": Method(
        "OLoRA: A, B from the QR decomposition of W (residual kept in the base)",
        _build_lora_variant("olora"),
        zero_output_at_init=False,
        rewrites_base=True,
    ),
    "lora-ga": Method(
        "LoRA-GA: A, B from the SVD of the loss gradient on calibration batches",
        _build_lora_ga,
        zero_output_at_init=False,
        rewrites_base=True,
        needs_calibration=True,
    ),
    "corda": Method(
        "CorDA (IPM): A, B from W's SVD weighted by the input covariance of the task data",
        _build_corda,
        zero_output_at_init=False,
        rewrites_base=True,
        needs_calibration=True,
    ),
    "dora": Method(
        "DoRA: LoRA plus a trained magnitude per output", _build_lora_variant(use_dora=True)
    ),
    "adalora": Method(
        "AdaLoRA: SVD-form adapters, ranks pruned from rho*r to r by importance during training",
        _build_adalora,
        uses_rho=True,
        final_ranks=adalora_ranks,
    ),
    "eva": Method(
        "EVA: A = top principal directions of each layer's inputs on the task data, ranks "
        "redistributed by explained variance (rho), B = 0",
        _build_eva(use_dora=False),
        uses_rho=True,
        needs_eva_state=True,
    ),
    "eva-dora": Method(
        "EVA's initialisation with DoRA's magnitude",
        _build_eva(use_dora=True),
        uses_rho=True,
        needs_eva_state=True,
    ),
}


def build_method(base: torch.nn.Module, cfg: MethodConfig, ctx: BuildContext) -> Adapted:
    """Adapt a deep copy of `base` with `cfg.name`; `base` is left untouched."""
    spec = METHODS[cfg.name]
    if not spec.trains_full_model:  # PEFT refuses unmatched targets with a traceback
        target_layers(base, cfg.target_modules)
        check_rank(base, cfg.rank, cfg.target_modules)
    if spec.needs_eva_state and ctx.eva_state is None:
        raise ValueError(f"{cfg.name} is built from EVA's components: pass eva_state")
    if spec.needs_calibration and (not ctx.calibration or ctx.loss is None):
        raise ValueError(f"{cfg.name} is built from calibration batches: pass them and a loss")
    adapted = spec.build(copy.deepcopy(base), cfg, ctx)
    adapted.method = cfg.name
    return adapted


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
