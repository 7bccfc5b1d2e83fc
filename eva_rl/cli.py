"""The `eva-rl` command line: parse arguments, call one stage, map bad input to exit code 2.

Each command that has a config reads an optional `--config FILE`, then `key=value` overrides
(dotted keys, anywhere on the line), then its flags (later wins), into the stage's config
dataclass. Flags, their types, defaults and help come from the config dataclasses themselves
(`eva_rl.config.add_flags`), so a default lives in one place. A command's flags are built only
when that command runs (its config imports torch; `eva-rl suites` should not).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from eva_rl.errors import RunError, UserError
from eva_rl.runtime import cpu_count, quiet_waits, set_threads

# --- commands: parse, call the stage, print ------------------------------------------------


def cmd_data_build(args) -> None:
    from eva_rl.data import catalog
    from eva_rl.data.build import DataBuildConfig, build

    cfg = _config(DataBuildConfig, args)
    summaries = build(cfg)
    print(f"\n{len(summaries)} dataset(s) under {catalog.datasets_root(cfg.root)}:")
    for s in summaries:
        print("  " + catalog.format_summary(s))


def cmd_data_record(args) -> None:
    from eva_rl.data import catalog
    from eva_rl.data.record import RecordConfig, record

    cfg = _config(RecordConfig, args)
    set_threads()
    print(catalog.format_summary(record(cfg)))


def cmd_data_list(args) -> None:
    import json

    from eva_rl.data import catalog

    rows = catalog.list_summaries(args.root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no Minari datasets under {catalog.datasets_root(args.root)}")
    for s in rows:
        print(catalog.format_summary(s))


def cmd_pretrain(args) -> None:
    from eva_rl.distributed import is_main
    from eva_rl.training.pretrain import PretrainConfig, pretrain

    cfg = _config(PretrainConfig, args)
    result = pretrain(cfg)
    if is_main():
        print(
            f"agent saved to {result['agent']} (effective batch {result['effective_batch_size']});"
            f" TensorBoard: tensorboard --logdir {cfg.out}/tb"
        )


def cmd_evaluate(args) -> None:
    from eva_rl.evaluation import EvaluateConfig, run_evaluation

    cfg = _config(EvaluateConfig, args)
    if args.target_return:
        cfg.eval.target_returns.update(_target_returns(args.target_return))
    set_threads()
    result = run_evaluation(cfg)
    print(result.to_markdown())
    print(f"report: {cfg.out}" + (f"; videos: {cfg.video_dir}" if cfg.eval.video else ""))


def cmd_collect(args) -> None:
    from eva_rl.distributed import is_main
    from eva_rl.eva.state import META_FILE, CollectConfig, run_collection

    cfg = _config(CollectConfig, args)
    set_threads()
    result = run_collection(cfg)
    if is_main():
        ranks = {n.removeprefix("encoder."): layer.rank for n, layer in result.layers.items()}
        print(
            f"{result.batches} batches, {result.seconds:.1f} s on {result.device}, "
            f"converged: {result.converged}; ranks: {ranks}"
        )
        print(f"wrote {Path(cfg.out) / 'eva_state.safetensors'} and {Path(cfg.out) / META_FILE}")


def cmd_finetune(args) -> None:
    from eva_rl.distributed import is_main
    from eva_rl.training.finetune import FinetuneConfig, finetune

    cfg = _config(FinetuneConfig, args)
    s = finetune(cfg)
    if not is_main():
        return
    final, initial, best = s.final, s.initial or {}, s.best()
    print(
        f"{s.method} on {s.label}: {s.score_name} {_fmt(final.get('score'))} "
        f"(best {_fmt(best)}, start {_fmt(initial.get('score'))}), "
        f"return {_fmt(final.get('return'), '.1f')}; {s.trainable_parameters:,} trainable "
        f"parameters, gradient signal {s.gradient_signal:.4g}, {s.wall_seconds:.0f} s, "
        f"{s.precision}, {s.processes} process(es), effective batch {s.effective_batch_size}"
    )
    print(f"run: {cfg.out}; TensorBoard: tensorboard --logdir {Path(cfg.out).parent}")


def cmd_methods(args) -> None:
    from eva_rl.adapters.methods import METHODS

    for name, method in METHODS.items():
        print(f"{name:14s} {method.summary}")


def cmd_sweep(args) -> None:
    from eva_rl.sweeps import load_sweep, sweep

    flags = [f"{key}={value}" for key in ("executor", "address") if (value := getattr(args, key))]
    cfg = load_sweep(args.sweep, [*flags, *args.overrides])
    if args.status:
        from eva_rl.sweeps import planned_status
        from eva_rl.sweeps.config import INDEX_FILE
        from eva_rl.sweeps.executors import shares

        status = planned_status(cfg)
        left = status.total - len(status.done) - len(status.reused)
        # as many at once as the local executor would run for what is left
        print(status.describe(shares(cfg, [cpu_count()], left)[0]))
        if not (Path(cfg.out) / INDEX_FILE).is_file():
            print(f"not started; eva-rl sweep {args.sweep} starts it")
        return
    result = sweep(cfg)
    print(
        f"{result['runs']} runs ({result['ran']} run now, {result['skipped']} already finished"
        + (f", {result['copied']} of them copied from reuse" if result["copied"] else "")
        + ")"
        f" and {result['baselines']} baseline evaluation(s) under {result['out']}; "
        f"TensorBoard: tensorboard --logdir {result['out']}"
    )
    print(f"report: eva-rl report {result['out']} --out results/<name>")


def cmd_report(args) -> None:
    from eva_rl.reports import write_report

    command = " ".join(["eva-rl", "report", *args.runs, "--out", args.out])
    command += " --tasks " + " ".join(args.tasks) if args.tasks else ""
    command += " --by " + " ".join(args.by) if args.by else ""
    command += " --reference " + " ".join(args.reference) if args.reference != ["lora"] else ""
    command += " --partial" if args.partial else ""
    command += f" --hypotheses {args.hypotheses}" if args.hypotheses else ""
    result = write_report(args.runs, args.out, command, args.overwrite, args.tasks,
                          args.reference, args.partial, args.hypotheses, args.by or [])  # fmt: skip
    left = f" ({result['left_out']} runs of unfinished seeds left out)" if args.partial else ""
    print(
        f"{result['runs']} runs{left}, {result['configs']} configurations -> "
        f"{result['out']}/README.md"
    )
    for test in result["hypotheses"]:
        print(f"{test.hypothesis.name}: {test.verdict}")


def cmd_export(args) -> None:
    from eva_rl.sweeps import export_runs

    result = export_runs(args.runs, args.out, args.overwrite)
    pending = f"; {result['pending']} runs of the sweep not finished" if result["pending"] else ""
    print(f"{result['runs']} finished runs -> {result['out']} (no checkpoints or weights){pending}")
    print(f"report: eva-rl report {result['out']} --out <report dir>")


def cmd_quickstart(args) -> None:
    from eva_rl.quickstart import QuickstartConfig, quickstart

    cfg = _config(QuickstartConfig, args)
    set_threads()
    result = quickstart(cfg)
    print(f"\n{result['table']}\n")
    print(f"report: {result['report']}/README.md (plots beside it)")
    if result["video"]:
        print(f"the agents side by side on one episode: {result['video']}")
    print(f"TensorBoard: tensorboard --logdir {result['runs']}")


def cmd_video(args) -> None:
    from eva_rl.video import CompareConfig, compare_agents

    cfg = _config(CompareConfig, args)
    cfg.eval.target_returns.update(_target_returns(args.target_return))
    set_threads()
    for path, captions in compare_agents(cfg):
        print(path)
        for caption in captions:
            print(f"  {caption}")


def cmd_curve(args) -> None:
    from eva_rl.io import check_writable
    from eva_rl.reports import plot_curve

    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; pass --overwrite or choose another --out")
    check_writable(args.out)
    plot_curve(args.run, args.out, title=args.title or str(args.run))
    print(f"wrote {args.out}")


def cmd_suites(args) -> None:
    from eva_rl.envs import available_suites, load_suite

    for name in sorted(n for n in available_suites() if "/" in n):
        suite = load_suite(name)
        tasks = f"{len(suite.tasks):3d} tasks"
        print(f"{name:22s} {tasks}  horizon {suite.horizon:4d}  {suite.description}")


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _target_returns(items: list[str]) -> dict[str, float]:
    targets = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            targets[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"--target-return {item!r} must look like ENV=NUMBER")
    return targets


def _config(cls, args):
    from eva_rl.config import from_args

    return from_args(cls, args, args.config_keys)


# --- arguments: each command's flags, derived from its config -----------------------------

COMMON = {"--device": "device", "--precision": "precision", "--seed": "seed"}


def _finetune_flags(p) -> None:
    from eva_rl.config import add_flags
    from eva_rl.training.finetune import FinetuneConfig

    add_flags(p, FinetuneConfig, {
        "--checkpoint": "checkpoint", "--stats": "stats", "--datasets": "datasets",
        "--task": "task", "--env": "env", "--data-root": "data_root", "--method": "method.name",
        "--rank": "method.rank", "--rho": "method.rho", "--steps": "loop.steps",
        "--eval-every": "loop.eval_every", "--out": "out", "--resume": "resume", **COMMON,
    })  # fmt: skip


def _evaluate_flags(p) -> None:
    from eva_rl.config import add_flags
    from eva_rl.evaluation import EvaluateConfig

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
    from eva_rl.config import add_flags
    from eva_rl.video import CompareConfig

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
    from eva_rl.config import add_flags
    from eva_rl.eva.state import CollectConfig

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

        from eva_rl.config import add_flags

        add_flags(p, getattr(importlib.import_module(module), cls), flags)

    return add


def _names(*keys: str) -> dict[str, str]:
    return {f"--{k.replace('_', '-')}": k for k in keys}


def _report_flags(p) -> None:
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
        default=["lora"],
        help="what configurations are compared with, one or more of: a method (every other "
        "method against it at the same rank), METHOD:REF (that method against REF too, e.g. "
        "eva-dora:dora), a value of a sweep grid or --by key (precision=fp32: each "
        "configuration against itself with that value, and all of them pooled)",
    )
    p.add_argument(
        "--hypotheses",
        help="a YAML file of hypotheses registered before the runs (configs/hypotheses/): "
        "each is tested once all its planned pairs have finished",
    )


def _export_flags(p) -> None:
    p.add_argument("runs", help="a sweep's out directory (or any directory of runs)")
    p.add_argument("--out", required=True, help="destination, e.g. results/<name>/runs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")


def _curve_flags(p) -> None:
    p.add_argument("run", help="run directory (holds tb/)")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--title", help="figure title")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")


def _sweep_flags(p) -> None:
    p.add_argument("sweep", help="sweep YAML (base, out, grid, set, workers, threads, ...)")
    p.add_argument("--executor", choices=["local", "ray"], help="local processes or Ray tasks")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--status", action="store_true",
                   help="print how far the sweep is and the time left; run nothing")  # fmt: skip


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
    "curve": ("a training run's loss and evaluation curves (PNG)", _curve_flags, False,
              cmd_curve),
    "suites": ("the environment suites in envs/", None, False, cmd_suites),
}  # fmt: skip


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the flags of `command` only (the others list their help line)."""
    root = argparse.ArgumentParser(prog="eva-rl", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (help_text, add_flags, has_config, handler) in COMMANDS.items():
        if " " in name:
            group, leaf = name.split(" ")
            if group not in groups:
                g = sub.add_parser(group, help=f"{group}: " + ", ".join(
                    n.split(" ")[1] for n in COMMANDS if n.startswith(group + " ")))  # fmt: skip
                groups[group] = g.add_subparsers(dest=f"{group}_command", required=True)
            p = groups[group].add_parser(leaf, help=help_text)
        else:
            p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=handler, config_keys=[], overrides=[])
        if name == command and add_flags is not None:
            before = {a.dest for a in p._actions}
            add_flags(p)
            if has_config and name != "sweep":  # the sweep file is its config
                keys = {a.dest for a in p._actions} - before - NOT_CONFIG
                p.set_defaults(config_keys=sorted(keys))
                p.add_argument("--config", help="YAML config file (fields of the command's config)")
    return root


NOT_CONFIG = {"target_return"}  # flags a command handles itself
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")  # key=value, dotted key


def _command_of(argv: list[str]) -> str | None:
    words = [a for a in argv if not a.startswith("-")][:2]
    if not words:
        return None
    joined = " ".join(words)
    return joined if joined in COMMANDS else words[0]


def _single_value_options(command: str | None) -> set[str]:
    """The command's options that take exactly one value: a `key=value` right after one of
    them is that value (`--out runs/seed=0`), not an override."""
    add_flags = COMMANDS[command][1] if command in COMMANDS else None
    if add_flags is None:
        return set()
    p = argparse.ArgumentParser(add_help=False)
    add_flags(p)
    return {o for a in p._actions if a.nargs is None for o in a.option_strings} | {"--config"}


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse, with `key=value` overrides recognised wherever they stand (after a flag that
    takes several values too: `--tasks hammer-v3 episodes=5`)."""
    command = _command_of([a for a in argv if not OVERRIDE.match(a)])
    takes = command in COMMANDS and COMMANDS[command][2]
    if not takes:  # no config: a key=value is a value (`--reference lora precision=fp32`)
        return parser(command).parse_args(argv)
    single = _single_value_options(command)
    is_value = [i > 0 and argv[i - 1] in single for i in range(len(argv))]
    overrides = [a for a, v in zip(argv, is_value, strict=True) if OVERRIDE.match(a) and not v]
    rest = [a for a, v in zip(argv, is_value, strict=True) if not OVERRIDE.match(a) or v]
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
    finally:
        if torchrun:
            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
