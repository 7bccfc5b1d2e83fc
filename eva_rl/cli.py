"""The `eva-rl` command line: parse arguments, call one stage, map bad input to exit code 2.

Each command that has a config reads an optional `--config FILE`, then `key=value` overrides
(dotted keys, anywhere on the line), then its flags (later wins), into the stage's config
dataclass. Flags, their types, defaults and help come from the config dataclasses themselves
(`eva_rl.flags.add_flags`), so a default lives in one place. A command's flags are built only
when that command runs (its config imports torch; `eva-rl suites` should not).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys

from eva_rl.commands import (
    cmd_collect,
    cmd_curve,
    cmd_data_build,
    cmd_data_list,
    cmd_data_record,
    cmd_evaluate,
    cmd_export,
    cmd_finetune,
    cmd_methods,
    cmd_online,
    cmd_pretrain,
    cmd_quickstart,
    cmd_report,
    cmd_suites,
    cmd_sweep,
    cmd_video,
)  # fmt: skip
from eva_rl.errors import RunError, UserError, out_of_room
from eva_rl.flags import CommandParser, added_flags
from eva_rl.runtime import quiet_waits
from eva_rl.signals import raise_interrupt

# --- arguments: each command's flags, derived from its config -----------------------------

COMMON = {"--device": "device", "--precision": "precision", "--seed": "seed"}


def _finetune_flags(p) -> None:
    from eva_rl.flags import add_flags
    from eva_rl.training.finetune import FinetuneConfig

    add_flags(p, FinetuneConfig, {
        "--checkpoint": "checkpoint", "--stats": "stats", "--datasets": "datasets",
        "--task": "task", "--env": "env", "--data-root": "data_root", "--method": "method.name",
        "--rank": "method.rank", "--rho": "method.rho", "--steps": "loop.steps",
        "--eval-every": "loop.eval_every", "--out": "out", "--resume": "resume", **COMMON,
    })  # fmt: skip


def _online_flags(p) -> None:
    from eva_rl.flags import add_flags
    from eva_rl.online.config import OnlineConfig

    add_flags(p, OnlineConfig, {
        "--checkpoint": "checkpoint", "--stats": "stats", "--datasets": "datasets",
        "--task": "task", "--env": "env", "--data-root": "data_root", "--method": "method.name",
        "--rank": "method.rank", "--rho": "method.rho", "--from": "from_run",
        "--env-steps": "env_steps", "--eval-every": "eval_every", "--policy": "policy",
        "--td3": "td3.enabled", "--out": "out", "--resume": "resume", **COMMON,
    })  # fmt: skip


def _evaluate_flags(p) -> None:
    from eva_rl.evaluation import EvaluateConfig
    from eva_rl.flags import add_flags

    add_flags(p, EvaluateConfig, {
        "--checkpoint": "checkpoint", "--stats": "stats", "--envs": "envs", "--suite": "suite",
        "--targets-from-datasets": "targets_from_datasets", "--out": "out", "--tb": "tb",
        "--overwrite": "overwrite", "--episodes": "eval.episodes", "--seed": "eval.seed",
        "--target-scale": "eval.target_scale", "--device": "eval.device",
        "--precision": "eval.precision", "--max-envs": "eval.max_envs",
        "--workers": "eval.workers", "--video": "eval.video", "--video-size": "eval.video_size",
        "--video-every": "eval.video_every",
    })  # fmt: skip
    p.add_argument("--tasks", dest="envs", nargs="+", help="the same as --envs")
    p.add_argument("--target-return", nargs="+", default=[], metavar="ENV=R",
                   help="override the agent's target return for an env")  # fmt: skip


def _video_flags(p) -> None:
    from eva_rl.compare import CompareConfig
    from eva_rl.flags import add_flags

    p.add_argument("checkpoints", nargs="+", help="agent directories (a finetune run's agent/), "
                   "checkpoints or hub ids, one film each")  # fmt: skip
    add_flags(p, CompareConfig, {
        **_names("labels", "env", "out", "overwrite"), "--episodes": "eval.episodes",
        "--seed": "eval.seed", "--target-scale": "eval.target_scale", "--device": "eval.device",
        "--precision": "eval.precision", "--video-size": "eval.video_size",
        "--video-every": "eval.video_every",
    })  # fmt: skip
    p.add_argument("--target-return", nargs="+", default=[], metavar="ENV=R",
                   help="override the agents' target return for an env")  # fmt: skip


def _collect_flags(p) -> None:
    from eva_rl.eva.state import CollectConfig
    from eva_rl.flags import add_flags

    add_flags(p, CollectConfig, {
        "--checkpoint": "checkpoint", "--stats": "stats", "--datasets": "datasets",
        "--data-root": "data_root", "--out": "out", "--overwrite": "overwrite",
        **{f"--{k.replace('_', '-')}": f"collector.{k}" for k in (
            "rank", "rho", "tau", "max_batches", "batch_size", "method", "seed", "device",
            "precision")},
    })  # fmt: skip
    p.add_argument("--dataset", dest="datasets", nargs="+", help="the same as --datasets")


def _simple_flags(module: str, cls: str, flags: dict[str, str]):
    def add(p) -> None:
        import importlib

        from eva_rl.flags import add_flags

        add_flags(p, getattr(importlib.import_module(module), cls), flags)

    return add


def _names(*keys: str) -> dict[str, str]:
    return {f"--{k.replace('_', '-')}": k for k in keys}


def _report_flags(p) -> None:
    from eva_rl.adapters.methods import REFERENCE

    p.add_argument(
        "runs", nargs="+", help="directories holding run folders (summary.json) below them"
    )
    p.add_argument("--out", required=True, help="report directory, e.g. results/<name>")
    p.add_argument("--tasks", nargs="+", help="report only these tasks (default: every task)")
    p.add_argument(
        "--by",
        nargs="+",
        metavar="KEY",
        help="config keys that split configurations besides the sweeps' grids, e.g. precision "
        "(as each run ran) or optim.lr; then --reference KEY=VALUE compares with that value",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument(
        "--partial",
        action="store_true",
        help="a sweep still running: report each configuration's seeds finished on every task",
    )
    p.add_argument(
        "--reference",
        nargs="+",
        default=[REFERENCE],
        help="what configurations are compared with, one or more of: a method (every other "
        "method against it at the same rank), METHOD:REF (that method against REF too, e.g. "
        "eva-dora:dora), a value of a sweep grid or --by key (precision=fp32: each "
        "configuration against itself with that value, and all of them pooled; keys varied "
        "together as k1=v1,k2=v2)",
    )
    p.add_argument("--hypotheses", help="a YAML file of hypotheses registered before the "
                   "runs (configs/hypotheses/), each tested once its pairs finish")  # fmt: skip


def _export_flags(p) -> None:
    p.add_argument("runs", help="a sweep's out directory (or any directory of runs)")
    p.add_argument("--out", required=True, help="destination, e.g. results/<name>/runs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.add_argument("--weights", action="store_true", help="keep final weights: runs that load")


def _curve_flags(p) -> None:
    p.add_argument("run", help="run directory (holds tb/)")
    p.add_argument(
        "--out",
        required=True,
        help="figure path; its extension names the format (.png, .pdf, .svg, ...)",
    )
    p.add_argument("--title", help="figure title")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")


def _sweep_flags(p) -> None:
    p.add_argument("sweep", help="sweep YAML (base, out, grid, set, workers, threads, ...)")
    p.add_argument("--executor", choices=["local", "ray"], help="local processes or Ray tasks")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--status", action="store_true",
                   help="print how far the sweep is and the time left; run nothing")  # fmt: skip
    p.add_argument("--blind", action="store_true", help="--status without the running runs' "
                   "scores, returns and losses (a pre-registered study)")  # fmt: skip
    import functools

    from eva_rl.flags import settings_help
    from eva_rl.sweeps.config import SweepConfig

    title = "the sweep file's keys (each also as key=value on the line, e.g. workers=2):"
    p.make_epilog = functools.partial(settings_help, SweepConfig, {"executor", "address"},
                                      title=title)  # fmt: skip


def _list_flags(p) -> None:
    p.add_argument("--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")


# name -> (help, flags builder or None, has a config, handler)
COMMANDS = {
    "data build": ("scripted-expert Minari datasets of a Meta-World suite", _simple_flags(
        "eva_rl.data.build", "DataBuildConfig", _names(
            "suite", "tasks", "episodes", "seed", "workers", "root", "overwrite",
            "skip_existing")), True, cmd_data_build),
    "data record": ("a Minari dataset of an agent's (or random) rollouts in any env",
                    _simple_flags("eva_rl.data.record", "RecordConfig", _names(
                        "env", "id", "episodes", "checkpoint", "stats", "noise",
                        "target_return", "horizon", "seed", "root", "overwrite", "device",
                        "precision")), True, cmd_data_record),
    "data list": ("local Minari datasets with their statistics", _list_flags, False,
                  cmd_data_list),
    "pretrain": ("pretrain a Decision Transformer (e.g. on MT40)", _simple_flags(
        "eva_rl.training.pretrain", "PretrainConfig", {
            **_names("out", "resume", "datasets", "suite", "data_root", "horizon"),
            "--steps": "loop.steps", **COMMON}), True, cmd_pretrain),
    "evaluate": ("roll out an agent in its environments", _evaluate_flags, True, cmd_evaluate),
    "collect": ("EVA: principal directions of layer inputs + ranks", _collect_flags, True,
                cmd_collect),
    "finetune": ("fine-tune a pretrained agent on downstream data with one method",
                 _finetune_flags, True, cmd_finetune),
    "online": ("offline-to-online fine-tuning (ODT) of an adapted agent in its env",
               _online_flags, True, cmd_online),
    "methods": ("the fine-tuning initialisation methods", None, False, cmd_methods),
    "sweep": ("a grid of fine-tuning runs in parallel (resumable)", _sweep_flags, True,
              cmd_sweep),
    "report": ("tables with intervals and paired tests, plots, method-level TensorBoard",
               _report_flags, False, cmd_report),
    "export": ("copy finished runs without checkpoints or weights (to commit or share)",
               _export_flags, False, cmd_export),
    "quickstart": ("fine-tune the shipped agent with EVA and LoRA, compare", _simple_flags(
        "eva_rl.quickstart", "QuickstartConfig", _names("task", "steps", "out", "methods")),
        True, cmd_quickstart),
    "video": ("agents side by side on the same episodes (MP4 per episode)", _video_flags, True,
              cmd_video),
    "curve": ("a training run's loss and evaluation curves (a figure)", _curve_flags, False,
              cmd_curve),
    "suites": ("the environment suites in envs/", None, False, cmd_suites),
}  # fmt: skip


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the flags of `command` only (the others list their help line)."""
    root = argparse.ArgumentParser(prog="eva-rl", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    groups = {}  # "data" -> the subparsers of `eva-rl data ...`
    for name, (help_text, add_flags, has_config, handler) in COMMANDS.items():
        if " " in name:
            group, leaf = name.split(" ")
            if group not in groups:
                g = sub.add_parser(group, help=f"{group}: " + ", ".join(
                    n.split(" ")[1] for n in COMMANDS if n.startswith(group + " ")))  # fmt: skip
                groups[group] = g.add_subparsers(dest=f"{group}_command", required=True)
            p = groups[group].add_parser(leaf, help=help_text, formatter_class=RAW)
        else:
            p = sub.add_parser(name, help=help_text, formatter_class=RAW)
        p.set_defaults(func=handler, config_keys=[], overrides=[])
        if name == command and add_flags is not None:
            added = added_flags(add_flags, p)
            if has_config and name != "sweep":  # the sweep file is its config
                keys = {a.dest for a in added} - NOT_CONFIG
                p.set_defaults(config_keys=sorted(keys))
                p.add_argument("--config", help="YAML config file (fields of the command's config)")
    return root


NOT_CONFIG = {"target_return"}  # flags a command handles itself
RAW = argparse.RawDescriptionHelpFormatter  # the epilog's lines as written; flags' help wrapped
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")  # key=value, dotted key


def _command_of(argv: list[str]) -> str | None:
    words = [a for a in argv if not a.startswith("-")][:2]
    if not words:
        return None
    joined = " ".join(words)
    return joined if joined in COMMANDS else words[0]


def _arguments(command: str) -> list[argparse.Action]:
    """The arguments `command`'s flags builder adds (none for a command without flags)."""
    add_flags = COMMANDS[command][1]
    if add_flags is None:
        return []
    return added_flags(add_flags, argparse.ArgumentParser(add_help=False))


def _single_value_options(added: list[argparse.Action]) -> set[str]:
    """The command's options that take exactly one value: a `key=value` right after one of
    them is that value (`--out runs/seed=0`), not an override."""
    return {o for a in added if a.nargs is None for o in a.option_strings} | {"--config"}


def _is_override(arg: str, paths: bool) -> bool:
    """`key=value`, unless the command takes paths as positional arguments (`paths`) and it
    names a file or folder: a sweep's run folders are named like overrides
    (`seed=0,task=hammer-v3,method=eva/agent` as `eva-rl video`'s checkpoint)."""
    return bool(OVERRIDE.match(arg)) and not (paths and os.path.exists(arg))


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse, with `key=value` overrides recognised wherever they stand (after a flag that
    takes several values too: `--tasks hammer-v3 episodes=5`)."""
    command = _command_of([a for a in argv if not OVERRIDE.match(a)])
    takes = command in COMMANDS and COMMANDS[command][2]
    if not takes:  # no config: a key=value is a value (`--reference lora precision=fp32`)
        return parser(command).parse_args(argv)
    added = _arguments(command)
    paths = any(not a.option_strings for a in added)  # positional: paths (video, sweep)
    single = _single_value_options(added)
    is_value = [i > 0 and argv[i - 1] in single for i in range(len(argv))]
    override = [_is_override(a, paths) and not v for a, v in zip(argv, is_value, strict=True)]
    overrides = [a for a, o in zip(argv, override, strict=True) if o]
    rest = [a for a, o in zip(argv, override, strict=True) if not o]
    args = parser(command).parse_args(rest)
    args.overrides = overrides
    return args


def main(argv: list[str] | None = None) -> int:
    quiet_waits()  # before anything imports torch: its OpenMP reads the wait policy once
    try:
        args = parse(sys.argv[1:] if argv is None else list(argv))
    except UserError as e:
        print(f"eva-rl: error: {e}", file=sys.stderr)
        return 2
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1  # checked here: torch loads slowly
    previous = _terminate_as_interrupt()
    try:
        if torchrun:
            from eva_rl import distributed

            distributed.init(args.command)
        args.func(args)
    except UserError as e:
        print(f"eva-rl: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"eva-rl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "eva-rl: interrupted; completed outputs are kept, partial ones discarded",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `eva-rl suites | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except Exception as e:
        reason = out_of_room(e)
        if reason is None:
            raise
        print(f"eva-rl: {reason}; partial outputs discarded (a run keeps its last checkpoint: "
              "resume=true); free space or shorten the name, then run the command again",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if torchrun:
            distributed.shutdown()
    return 0


def _terminate_as_interrupt():
    """SIGTERM (a scheduler, `kill`) means what Ctrl-C means: the command stops cleanly,
    removing partial outputs and stopping a sweep's runs. Returns the handler it replaced
    (None off the main thread, where signals are not ours to handle)."""
    try:
        return signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
