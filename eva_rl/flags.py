"""Config dataclasses as command-line flags: each flag's type, default and help come from its
field (the help from the field's comment), and a command's `--help` ends with every setting
that has no flag, so a default and its explanation live in one place."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from typing import Any, Literal, Union

import yaml


@functools.cache  # one parse of the class's module per process, not one per flag
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class source (the trailing `# ...` of its line, else the
    comment lines just above it): the help text of the field's command-line flag. Fields a
    dataclass inherits take their base's comment unless the subclass comments them again."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    """`field_docs` of the fields written in `cls`'s own source."""
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs, above = {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = re.match(r"^\s+(\w+)\s*:[^=]*(?:=.*?)?(?:#\s*(.*))?$", line)
        if match and not stripped.startswith(("def ", "@", "return ", "if ", "raise ")):
            docs.setdefault(match.group(1), match.group(2) or " ".join(above))
        above = []
    return docs


def describe(cls: type, key: str) -> tuple[Any, Any, str]:
    """(type, default, help) of dotted config key `key` of `cls`; the default is the one this
    config gives the field (a nested section's defaults may differ from its class's)."""
    *parents, leaf = key.split(".")
    owner, instance = cls, None
    for part in parents:
        f = {f.name: f for f in dataclasses.fields(owner)}[part]
        instance = (
            f.default_factory()
            if f.default_factory is not dataclasses.MISSING
            else getattr(instance, part)
        )
        owner = type(instance)
    f = {f.name: f for f in dataclasses.fields(owner)}[leaf]
    if instance is not None:
        default = getattr(instance, leaf)
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = f.default
    return typing.get_type_hints(owner)[leaf], default, field_docs(owner).get(leaf, "")


def add_flags(parser, cls: type, flags: dict[str, str]) -> None:
    """One argparse flag per entry (`--flag` -> dotted key of `cls`), typed, with the field's
    comment and default as help; unset flags leave the config (file, overrides) alone."""
    for flag, key in flags.items():
        tp, default, doc = describe(cls, key)
        base = _strip_optional(tp)
        kwargs: dict[str, Any] = {"dest": key, "default": None}
        if base is not bool:
            kwargs["metavar"] = key.rsplit(".", 1)[-1].upper()
        if base is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(base) in (list, tuple):  # an optional list may be given empty
            kwargs["nargs"] = "*" if base is not tp else "+"
        elif typing.get_origin(base) is Literal:
            kwargs["choices"] = list(typing.get_args(base))
        elif base in (int, float):
            kwargs["type"] = base
        hidden = default is None or default is False or default in ("", [])  # 0 is shown
        shown = "" if hidden else f" (default: {default})"
        kwargs["help"] = ((doc or key) + shown).replace("%", "%%")  # argparse formats it with %
        parser.add_argument(flag, **kwargs)
    # the help's end, made when help is printed (eva_rl.cli), not at every command's start
    parser.make_epilog = functools.partial(settings_help, cls, set(flags.values()))


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of config `cls` that holds a value (nested sections expanded)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        tp = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            keys += leaf_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


SETTINGS = ("settings without a flag (as key=value anywhere on the line, or in --config FILE;"
            " every flag's key too):")  # fmt: skip


def settings_help(cls: type, flagged: set[str], width: int = 100, title: str = SETTINGS) -> str:
    """The end of a command's --help: the settings that have no flag, each with its default
    and comment, so that `--help` shows every knob a run has (ODT's and TD3's included)."""
    import textwrap

    lines = [title]
    for key in leaf_keys(cls):
        if key in flagged:
            continue
        _, default, doc = describe(cls, key)
        shown = yaml.safe_dump(list(default) if isinstance(default, tuple) else default,
                               default_flow_style=True, width=width)  # fmt: skip
        lines.append(f"  {key}={shown.removesuffix('...' + chr(10)).strip()}")  # a scalar's end
        if doc:
            lines += textwrap.wrap(doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


class Recorder:
    """A parser's `add_argument` that keeps the actions it returns: argparse lists a parser's
    actions only in its private `_actions`."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser, self.actions = parser, []

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = self.parser.add_argument(*args, **kwargs)
        self.actions.append(action)
        return action

    # add_flags leaves here how to make the help's end (the settings that have no flag)
    make_epilog = property(lambda self: self.parser.make_epilog,
                           lambda self, f: setattr(self.parser, "make_epilog", f))  # fmt: skip


class CommandParser(argparse.ArgumentParser):
    """A command's parser, whose help ends with every setting without a flag: made only when
    help is printed (it reads every config field's comment), not at each command's start."""

    make_epilog = None

    def format_help(self) -> str:
        if self.make_epilog is not None:
            self.epilog = self.make_epilog()
        return super().format_help()


def added_flags(add_flags, parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Add a command's flags to `parser`; returns the actions they added."""
    recorder = Recorder(parser)
    add_flags(recorder)
    return recorder.actions
