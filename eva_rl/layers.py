"""The layers adapters act on, and whether an adapter fits a model, checked before PEFT touches
either (a leaf: the agent, the collector and the adapters all need it): a saved adapter against
the base it is loaded onto (PEFT drops tensors of layers the base lacks without a word, and
stops at a shape mismatch with a traceback), a rank against the layers it adapts, and which
layers a list of target names adapts (PEFT's rule)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers.pytorch_utils import Conv1D

from eva_rl.errors import UserError

PREFIX = "base_model.model."
LORA_PART = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[A-Za-z_]+)(?:\.weight)?$")


def widths(module: torch.nn.Module) -> tuple[int, int] | None:
    """(inputs, outputs) of a Linear or GPT-2 Conv1D (weight stored in x out), else None."""
    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    return None


def is_target(name: str, target_modules) -> bool:
    """PEFT's rule for a list of target names: the module's full name, or its ending after a
    dot (`c_proj` matches every block's; `attn.c_proj` only the attention's)."""
    return any(name == key or name.endswith(f".{key}") for key in target_modules)


def target_layers(model: torch.nn.Module, target_modules: list[str]) -> dict[str, torch.nn.Module]:
    """The Linear/Conv1D modules `target_modules` names (PEFT's rule, `is_target`)."""
    found = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D)) and is_target(name, target_modules)
    }
    if not found:
        raise UserError(f"no Linear/Conv1D module matches target_modules={target_modules}")
    return found


def check_rank(model: torch.nn.Module, rank: int, target_modules, rho: float | None = None):
    """Refuse a rank above the narrowest layer it adapts (past min(inputs, outputs) a rank adds
    parameters, not reach); with `rho` (EVA's collector), also `round(rho * rank)` components
    beyond a layer's inputs (they are directions among its inputs: there are no more)."""
    layers = {name: widths(m) for name, m in model.named_modules()
              if is_target(name, target_modules) and widths(m)}  # fmt: skip
    if not layers:
        return  # no such layer: the method's builder or the collector names the target modules
    name, (d_in, d_out) = min(layers.items(), key=lambda item: sorted(item[1]))
    if rank > min(d_in, d_out):
        raise UserError(
            f"rank {rank} exceeds the width of the layers it adapts ({name} maps {d_in} -> "
            f"{d_out}): a rank above {min(d_in, d_out)} only adds parameters; use a rank <= "
            f"{min(d_in, d_out)}"
        )
    components = round(rho * rank) if rho is not None else 0
    name, (d_in, _) = min(layers.items(), key=lambda item: item[1][0])
    if components > d_in:
        raise UserError(
            f"rank {rank} x rho {rho:g} = {components} components per layer exceed the inputs "
            f"of the layers it adapts ({name} takes {d_in}); lower rank or rho so that "
            f"round(rank x rho) <= {d_in}"
        )


def adapter_shapes(directory: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape of a saved PEFT adapter (its safetensors header); None without one."""
    from safetensors import safe_open

    path = directory / "adapter_model.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # a damaged header: one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(
            f"adapter {path} cannot be read ({type(e).__name__}: {first}); restore or retrain it"
        ) from None


def check_adapter(directory: Path, base: torch.nn.Module, base_name: str) -> None:
    """Refuse an adapter whose tensors do not fit `base`: a layer the base lacks, a layer of
    other widths, a fully trained module of another shape; names the first few."""
    shapes = adapter_shapes(directory)
    if shapes is None:
        return  # PEFT reports a missing adapter file itself
    modules = dict(base.named_modules())
    params = {name: list(p.shape) for name, p in base.named_parameters()}
    problems = []
    for key, shape in shapes.items():
        name = key.removeprefix(PREFIX)
        match = LORA_PART.match(name)
        if match is None:  # a fully trained module's tensor (modules_to_save)
            if params.get(name) != shape:
                problems.append(_mismatch(name, shape, params.get(name)))
            continue
        layer, part = match["module"], match["part"]
        dims = widths(modules[layer]) if layer in modules else None
        if dims is None:
            problems.append(f"{layer} is not a layer of the base")
        elif part == "lora_A" and shape[-1] != dims[0]:
            problems.append(f"{layer} has {shape[-1]} inputs in the adapter, {dims[0]} in the base")
        elif part in ("lora_B", "lora_magnitude_vector") and shape[0] != dims[1]:
            problems.append(f"{layer} has {shape[0]} outputs in the adapter, {dims[1]} in the base")
    problems = list(dict.fromkeys(problems))  # one entry per layer and kind
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        n_layer = getattr(getattr(base, "config", None), "n_layer", None)
        if n_layer and any("not a layer" in p for p in problems):
            more += f"; the base has n_layer={n_layer}"
        raise UserError(
            f"adapter {directory} does not fit the base {base_name} ({'; '.join(problems[:3])}"
            f"{more}); load it onto the checkpoint it was trained on"
        )


def _mismatch(name: str, shape: list[int], base: list[int] | None) -> str:
    if base is None:
        return f"{name} is not in the base"
    return f"{name} is {tuple(shape)} in the adapter, {tuple(base)} in the base"
