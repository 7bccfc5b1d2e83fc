"""Saving adapted models in the form a plain Decision Transformer loads: a full checkpoint for
methods that train the whole model, else PEFT adapter files of the plain DT. Methods that
rewrite base weights (PiSSA, OLoRA, CorDA, LoRA-GA) are converted to plain LoRA with PEFT's
`path_initial_model_for_weight_conversion` against their initial adapter, and every adapter says
`fan_in_fan_out: true` (the plain DT's block matrices are Conv1D), so
`PeftModel.from_pretrained(DecisionTransformerModel.from_pretrained(base), DIR)` loads any of
them. The live model's PEFT config is never modified: saving works on a copy.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from eva_rl.adapters.methods import METHODS, Adapted
from eva_rl.io import atomic_write_json

INITIAL_ADAPTER = "initial_adapter"  # PEFT uses the folder name as a temporary adapter name


@contextlib.contextmanager
def _config_for_saving(peft_model, **changes) -> Iterator[None]:
    """The adapter config with `changes` while saving, the original back afterwards."""
    original = peft_model.peft_config["default"]
    changed = copy.copy(original)
    for key, value in changes.items():
        setattr(changed, key, value)
    peft_model.peft_config["default"] = changed
    try:
        yield
    finally:
        peft_model.peft_config["default"] = original


def save_initial_adapter(adapted: Adapted, run_dir: Path) -> Path | None:
    """Before training, keep the initial adapter of a base-rewriting method; saving converts
    against it later. Returns its path (None when the method needs none)."""
    if not METHODS[adapted.method].rewrites_base:
        return None
    path = run_dir / INITIAL_ADAPTER
    if not (path / "adapter_config.json").is_file():
        with _config_for_saving(adapted.model, init_lora_weights=True):  # PEFT's recipe
            adapted.model.save_pretrained(path)
    return path


def export_adapted(adapted: Adapted, directory: Path, base_checkpoint: str, initial: Path | None):
    """Write the trained weights: a full checkpoint, or PEFT adapter files whose base is
    `base_checkpoint` (a directory or a hub id). A training run exports at every checkpoint,
    so the model leaves in the mode it came in and the random generators as they were: PEFT's
    conversion against `initial` loads it beside the trained adapter (drawing its throwaway
    initialisation from the generator) and then puts the whole model in eval mode."""
    model = adapted.model
    training = model.training
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        _export(adapted, directory, base_checkpoint, initial)
    model.train(training)


def _export(adapted: Adapted, directory: Path, base_checkpoint: str, initial: Path | None):
    from eva_rl.agent import checkpoint_ref, quiet_transformers

    model = adapted.model
    if METHODS[adapted.method].trains_full_model:
        with quiet_transformers():
            model.save_pretrained(directory)
        return
    kwargs = {} if initial is None else {"path_initial_model_for_weight_conversion": str(initial)}
    with (
        _config_for_saving(model, base_model_name_or_path=checkpoint_ref(base_checkpoint)),
        warnings.catch_warnings(),
    ):
        # PEFT's conversion rewrites the initial adapter's config from the trained one (CorDA's
        # settings kept, then "ignored"), loads it beside the trained one and then advises
        # converting the adapter "into a normal LoRA adapter", which is what it is doing
        warnings.filterwarnings("ignore", ".*changes the base weights of the model", UserWarning)
        warnings.filterwarnings("ignore", "`corda_config` specified but will be ignored")
        # a 0-sized factor is a layer AdaLoRA pruned to rank 0, not the unsharded ZeRO-3/FSDP
        # parameter PEFT takes it for: eva_rl never shards parameters (DDP keeps whole copies)
        warnings.filterwarnings("ignore", ".*LoRA tensor\\(s\\) have invalid shape")
        model.save_pretrained(directory, **kwargs)
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["fan_in_fan_out"] = True  # the plain DT's block matrices are Conv1D
    atomic_write_json(config_path, config)
