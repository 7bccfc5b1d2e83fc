"""Configs are dataclasses; YAML files and `key=value` overrides are checked against them.

Why not a config framework: the whole contract fits here — every key is typed, an unknown key is
an error naming the nearest valid ones, and every run saves the resolved config it ran with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from eva_rl.assets import locate
from eva_rl.errors import UserError
from eva_rl.io import atomic_write_text

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build `cls` from an optional YAML file, then apply `key=value` overrides (dotted keys)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(locate(str(path)))
    for item in overrides:
        apply_override(data, item)
    return from_dict(cls, data)


# Seeds reach numpy, gymnasium and torch, which refuse negative ones (torch also 2**64 and up);
# below 2**63 a seed is a signed 64-bit integer wherever it is stored (arrays, HDF5, JSON).
SEED_LIMIT = 2**63


def check_seed(value: int, key: str) -> None:
    """A config's `key` is a usable seed: an integer in [0, 2**63)."""
    if not 0 <= value < SEED_LIMIT:
        fix = "a seed >= 0" if value < 0 else "a smaller seed"
        raise UserError(f"{key} must be an integer in [0, 2**63), got {value}; give {fix}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; name a YAML file (e.g. {path}/NAME.yaml)")
    if not path.is_file():
        raise UserError(f"config file not found: {path} (check the path)")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not valid YAML/UTF-8 text (byte {e.start} cannot be decoded); "
            "save it as UTF-8"
        ) from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


# A config is a few hundred YAML nodes; aliases (`*name`) can make a few hundred bytes stand
# for billions of them, expanded by everything that walks the config afterwards.
MAX_YAML_NODES = 1_000_000


def safe_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand beyond `MAX_YAML_NODES` nodes,
    that refer to themselves or that nest too deeply: checked on the composed node graph (each
    alias is one shared node there), before anything is built from it."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise UserError(f"{where} nests too deeply to be a config; flatten it") from None
        if node is None:
            return None
        if _expanded_size(node, {}, set(), where) > MAX_YAML_NODES:
            raise UserError(
                f"{where} expands to more than {MAX_YAML_NODES:,} YAML nodes through its aliases "
                "(*name), far more than any config holds; write the values out instead"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], path: set[int], where: str) -> int:
    """How many nodes `node` stands for once every alias is copied out (memoised per node, so
    the cost follows the text, not the expansion); a node inside itself is refused."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        line = node.start_mark.line + 1
        raise UserError(f"{where}: the anchor on line {line} holds an alias of itself; remove it")
    children: list = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    path.add(key)
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, path, where)
        if total > MAX_YAML_NODES:  # enough to refuse: stop counting
            break
    path.discard(key)
    sizes[key] = total
    return total


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`3`, `1e-4`, `[a, b]`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r} must look like key=value (dotted keys for nesting)")
    try:
        value = safe_yaml(raw, f"the value of override {key.strip()}=") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    set_path(data, key.strip(), value)


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """`data["a"]["b"]["c"] = value` for key `a.b.c`, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{key}: {part!r} is not a nested section")
        node = child
    node[leaf] = value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Construct dataclass `cls` from a plain dict, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise UserError(_unknown_key_message(prefix + str(key), key, list(fields)))
    missing = [
        prefix + name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"missing config key(s): {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory
        if isinstance(value, dict) and default is not dataclasses.MISSING:
            # a nested section keeps the defaults this config gives it, not its class's own
            instance = default()
            if dataclasses.is_dataclass(instance):
                value = _merge(dataclasses.asdict(instance), value)
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: a config as dotted keys."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any], ignore=()) -> list[tuple]:
    """(dotted key, old value, new value) for every key whose value differs, except `ignore`d
    keys and those below them."""
    a, b = flatten(old), flatten(new)
    skip = tuple(ignore)
    return [
        (key, a.get(key), b.get(key))
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and not any(key == k or key.startswith(k + ".") for k in skip)
    ]


def as_current(cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """A config an earlier eva_rl saved, read as this version writes it: keys added since take
    their defaults, which are what earlier versions did (a new key never changes old runs)."""
    return to_dict(from_dict(cls, saved))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _unknown_key_message(full_key: str, key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(near)}?" if near else f"valid keys: {', '.join(valid)}"
    return f"unknown config key '{full_key}' ({hint})"


def _list_hint(value: Any) -> str:
    """`seed=0,1` on the command line is one string, not two numbers: say how a list is written."""
    if isinstance(value, str) and "," in value:
        return f" (several values are a list: [{value.replace(',', ', ')}])"
    return ""


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors, shaped = [], []  # shaped: the errors of the member the value's shape is of
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except UserError as e:
                errors.append(str(e))
                container = {list: list, tuple: list, dict: dict}.get(typing.get_origin(arg))
                if container is not None and isinstance(value, container):
                    shaped.append(str(e))
        raise UserError((shaped or errors)[0])
    if origin is Literal:
        if value not in args:
            raise UserError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `tasks=push-v3` means a one-element list
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(
                f"config key '{key}' must be an integer, got {value!r}{_list_hint(value)}"
            )
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-3` (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f"config key '{key}' must be a number, got {value!r}{_list_hint(value)}"
            )
        if not math.isfinite(value):  # YAML's .nan, .inf; JSON's NaN, Infinity
            raise UserError(f"config key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"config type {tp!r} of '{key}' is not supported")  # a bug, not user input


def from_args(cls: type[T], args, keys) -> T:
    """`--config FILE`, then `key=value` overrides, then the flags that were given."""
    config = getattr(args, "config", None)
    data: dict[str, Any] = read_yaml(locate(config)) if config else {}
    for item in getattr(args, "overrides", []):
        apply_override(data, item)
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            set_path(data, key, value)
    return from_dict(cls, data)
