"""Cheaper equivalents of the DT's dropout and training attention on CPU.

Profiled on 2 cores (shipped agent, LoRA, batch 64), a quarter to a third of a training step went
to `aten::bernoulli_`: torch draws every CPU dropout mask element by element from one MT19937
stream. `MaskDropout` draws the same Bernoulli masks from NumPy's PCG64 instead (32 random bits
per element, compared with round(p * 2^32), so an element is dropped with probability p to
within 2^-33, finer than torch's float draw), seeded from torch's own generator: the masks follow
`torch.manual_seed`, and a checkpoint's torch RNG state still resumes them exactly. On CUDA the
native dropout is already cheap and is used as is.

Inside attention, `scaled_dot_product_attention` with dropout falls back to its math path on CPU
(its own bernoulli masks plus checks for fully masked rows), so training attention with dropout
runs here as explicit products with `MaskDropout`'s masks; without dropout (evaluation,
held-out losses, collection) it is transformers' SDPA path, unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.nn import functional as F  # noqa: N812
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "eva_rl_sdpa"  # transformers' SDPA, with cheap dropout masks while training on CPU


def _draws(shape: torch.Size, p: float) -> tuple[torch.Tensor, int]:
    """32 random bits per element (as int32) and the threshold below which an element is
    dropped: exactly round(p * 2^32) of the 2^32 values are."""
    n = int(np.prod(shape))
    seed = int(torch.randint(0, 2**63 - 1, (1,)))  # from torch's generator: seeded, resumable
    bits = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw((n + 1) // 2)
    draws = torch.from_numpy(bits.view(np.int32)[:n]).view(shape)
    return draws, -(2**31) + min(round(p * 2**32), 2**32 - 1)


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask of `shape`, each element False with probability p (see module doc)."""
    draws, threshold = _draws(shape, p)
    return draws >= threshold


def mask_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)` with `keep_mask`'s masks on CPU."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    return x * (keep_mask(x.shape, p).to(x.dtype) * (1.0 / (1.0 - p)))


class MaskDropout(torch.nn.Dropout):
    """`nn.Dropout` drawing its CPU masks with `keep_mask`; same `p`, same state (none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mask_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
              **kwargs):  # fmt: skip
    """transformers' attention-interface signature; see the module doc."""
    if dropout == 0.0 or query.device.type != "cpu":
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is None:  # no padding in the batch: SDPA's is_causal
        q, k = scores.shape[-2:]
        attention_mask = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
    # the most negative finite value, as transformers' eager attention: a fully masked (padded)
    # query row becomes uniform instead of NaN, and no valid row ever attends to padding
    scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    weights = mask_dropout(weights, dropout, True)
    return torch.matmul(weights, value).transpose(1, 2), None


def _needs_fp32_input(layer: BaseTunerLayer) -> bool:
    """Whether an adapter layer computes differently on a bf16 input (`speed_up`)."""
    dropouts = getattr(layer, "lora_dropout", {}).values()
    dropped = any(isinstance(d, torch.nn.Dropout) and d.p > 0 for d in dropouts)
    return dropped or any(getattr(layer, "use_dora", {}).values())


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def speed_up(model: torch.nn.Module) -> torch.nn.Module:
    """Swap every `nn.Dropout` of `model` for `MaskDropout`, route its attention through
    `attention`, and stop PEFT's adapter layers from casting their bf16 inputs to fp32 only for
    autocast to cast them back (two copies of every adapted layer's input and gradient, 15% of
    a bf16 LoRA step; the products see the same bf16 values either way). Two kinds of layer
    keep the cast: DoRA's (PEFT's DoRA casts the weight to the input's dtype before its column
    norm, so a bf16 input would round W and move the output off the base model's at
    initialisation) and those with adapter dropout (on a bf16 input its 1 / (1 - p) rounds,
    1.109375 for 1.1111 at p 0.1). In place; weights, config values and outputs in eval mode are
    unchanged."""
    for name, child in list(model.named_modules()):
        if type(child) is torch.nn.Dropout:
            parent, _, attr = name.rpartition(".")
            swapped = MaskDropout(child.p, child.inplace).train(child.training)
            setattr(model.get_submodule(parent), attr, swapped)
    for sub in model.modules():
        if isinstance(sub, BaseTunerLayer) and not _needs_fp32_input(sub):
            sub.cast_input_dtype_enabled = False
        config = getattr(sub, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa":
            config._attn_implementation = ATTENTION
    return model
