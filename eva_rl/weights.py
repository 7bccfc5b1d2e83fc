"""A checkpoint's weights: checked against its config before use, and fingerprinted so that an
adapter can recognise its base by content."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from transformers import DecisionTransformerModel
from transformers.utils import SAFE_WEIGHTS_NAME

from eva_rl.errors import UserError

# attention masks older GPT-2 code saved with the weights (hub DTs): buffers, not weights
OLD_BUFFERS = re.compile(r"\.attn\.(masked_)?bias$")


def check_weights(model: DecisionTransformerModel, info: dict, source: Path | str) -> None:
    """Refuse a checkpoint whose tensors do not match its config.json (missing, unexpected or
    mis-shaped: transformers would fill or drop them silently) or hold NaN or inf."""
    order = {name: i for i, name in enumerate(model.state_dict())}
    problems = [f"{k} missing" for k in sorted(info["missing_keys"], key=order.get)]
    unexpected = [k for k in info["unexpected_keys"] if not OLD_BUFFERS.search(k)]
    problems += [f"{k} unexpected" for k in sorted(unexpected)]
    problems += [f"{k} is {tuple(saved)}, config says {tuple(want)}"
                 for k, saved, want in sorted(info["mismatched_keys"])]  # fmt: skip
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(
            f"checkpoint {source} does not match its config.json ({'; '.join(problems[:3])}"
            f"{more}); restore the config.json saved with these weights, or retrain"
        )
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(
                f"checkpoint {source} holds non-finite weights ({name}: {bad} of "
                f"{tensor.numel()} values NaN or inf); restore or retrain it"
            )


def weights_digest(source: Path | str) -> str | None:
    """sha256 of a checkpoint directory's weights file (None for a hub id, `str`): how an
    adapter knows its base again after the base moved (`eva_rl.agent.resolve_base`)."""
    weights = source / SAFE_WEIGHTS_NAME if isinstance(source, Path) else None
    if weights is None or not weights.is_file():
        return None
    return hashlib.sha256(weights.read_bytes()).hexdigest()
