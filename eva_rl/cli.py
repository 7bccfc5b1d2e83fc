"""The `eva-rl` command line: parse arguments, call one stage, map bad input to exit code 2.

Each command reads an optional `--config FILE`, then `key=value` overrides, then its flags
(later wins), into the stage's config dataclass.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from eva_rl.config import apply_override, from_dict, read_yaml, set_path
from eva_rl.errors import RunError, UserError


def _config(cls: type, args: argparse.Namespace, flags: list[str] | dict[str, str]):
    """`--config` file, then `key=value` overrides, then the given flags (those set). `flags`
    names argparse destinations, or maps them to dotted config keys."""
    data: dict[str, Any] = read_yaml(args.config) if args.config else {}
    for item in args.overrides:
        apply_override(data, item)
    keys = flags if isinstance(flags, dict) else {name: name for name in flags}
    for name, key in keys.items():
        value = getattr(args, name)
        if value is not None and value is not False:
            set_path(data, key, value)
    return from_dict(cls, data)


def cmd_data_build(args: argparse.Namespace) -> None:
    from eva_rl.data import catalog
    from eva_rl.data.build import DataBuildConfig, build

    cfg = _config(
        DataBuildConfig,
        args,
        ["suite", "tasks", "episodes", "seed", "workers", "root", "overwrite", "skip_existing"],
    )
    summaries = build(cfg)
    print(f"\n{len(summaries)} dataset(s) under {catalog.datasets_root(cfg.root)}:")
    for s in summaries:
        print("  " + catalog.format_summary(s))


def cmd_data_record(args: argparse.Namespace) -> None:
    from eva_rl.data import catalog
    from eva_rl.data.record import RecordConfig, record

    flags = ["env", "id", "episodes", "checkpoint", "stats", "noise", "target_return",
             "horizon", "seed", "root", "overwrite", "device", "precision"]  # fmt: skip
    summary = record(_config(RecordConfig, args, flags))
    print(catalog.format_summary(summary))


def cmd_data_list(args: argparse.Namespace) -> None:
    from eva_rl.data import catalog

    rows = catalog.list_summaries(args.root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no Minari datasets under {catalog.datasets_root(args.root)}")
    for s in rows:
        print(catalog.format_summary(s))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from eva_rl.distributed import is_main
    from eva_rl.training.pretrain import PretrainConfig, pretrain

    cfg = _config(PretrainConfig, args, ["out", "resume", "precision"])
    result = pretrain(cfg)
    if is_main():
        print(
            f"agent saved to {result['agent']} (effective batch {result['effective_batch_size']});"
            f" TensorBoard: tensorboard --logdir {cfg.out}/tb"
        )


def _dataset_targets(ids: list[str], envs: list[str]) -> dict[str, float]:
    """Env -> the best return in the datasets recorded in it (`ids`; none given: each
    Meta-World env's scripted-expert dataset)."""
    from eva_rl.data.catalog import dataset_id
    from eva_rl.data.segments import load_trajectories
    from eva_rl.envs import metaworld_task_names

    if not ids:
        ids = [dataset_id(env) for env in envs if env in metaworld_task_names()]
        if not ids:
            raise UserError("--targets-from-datasets needs dataset ids for non-Meta-World envs")
    return load_trajectories(ids).max_returns()


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


def cmd_evaluate(args: argparse.Namespace) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from eva_rl.agent import load_agent
    from eva_rl.envs import load_suite
    from eva_rl.evaluation import EvalConfig, Evaluator
    from eva_rl.io import atomic_write_json, check_writable
    from eva_rl.runtime import resolve_device
    from eva_rl.video import log_videos

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite or choose another --out")
    check_writable(out)
    check_writable(args.tb or out.with_suffix("").as_posix() + "_tb", directory=True)
    cfg = EvalConfig(
        episodes=args.episodes,
        seed=args.seed,
        target_returns=_target_returns(args.target_return),
        target_scale=args.target_scale,
        device=args.device,
        precision=args.precision,
        max_envs=args.max_envs,
        workers=args.workers,
        video=args.video,
        video_size=args.video_size,
        video_every=args.video_every,
    )
    agent = load_agent(args.checkpoint, stats=args.stats, device=resolve_device(args.device))
    envs = args.envs or (load_suite(args.suite).tasks if args.suite else [])
    envs = envs or sorted(agent.meta.target_returns)
    if args.targets_from_datasets is not None:
        cfg.target_returns = {**_dataset_targets(args.targets_from_datasets, envs),
                              **cfg.target_returns}  # fmt: skip
    videos = out.with_suffix("").as_posix() + "_videos"
    with Evaluator(agent, envs, cfg) as evaluator:
        result = evaluator.run(video_dir=videos)
    result.config.update(checkpoint=str(args.checkpoint), envs=envs, stats=args.stats)
    atomic_write_json(out, result.to_dict(intervals=True))
    step = agent.meta.provenance.get("steps", 0)
    tb = args.tb or out.with_suffix("").as_posix() + "_tb"
    with SummaryWriter(tb) as writer:
        result.log(writer, step=step)
    log_videos(result, Path(tb), step)
    print(result.to_markdown())
    print(f"report: {out}" + (f"; videos: {videos}" if args.video else ""))


def cmd_collect(args: argparse.Namespace) -> None:
    from eva_rl.agent import Agent
    from eva_rl.config import save_config
    from eva_rl.distributed import is_main, world_size
    from eva_rl.eva.collector import CollectorConfig, collect_on_datasets
    from eva_rl.eva.state import META_FILE, log_to_tensorboard, save_result
    from eva_rl.io import check_writable
    from eva_rl.runtime import resolve_device

    out = Path(args.out)
    if (out / META_FILE).exists() and not args.overwrite:
        raise UserError(f"{out} already holds an EVA result; pass --overwrite or another --out")
    check_writable(out, directory=True)
    cfg = _config(
        CollectorConfig,
        args,
        [
            "rank",
            "rho",
            "tau",
            "max_batches",
            "batch_size",
            "method",
            "seed",
            "device",
            "precision",
        ],
    )
    agent = Agent.load(args.checkpoint, stats=args.stats, device=resolve_device(cfg.device))
    result = collect_on_datasets(agent, args.dataset, cfg, args.data_root)
    if not is_main():  # every rank holds the same result; rank 0 writes it
        return
    extra = dict(checkpoint=str(args.checkpoint), datasets=args.dataset)
    extra["processes"] = world_size()
    meta = save_result(result, cfg, out, **extra)
    save_config(cfg, out / "collector_config.yaml")
    log_to_tensorboard(meta, out / "tb")
    ranks = {n.removeprefix("encoder."): layer.rank for n, layer in result.layers.items()}
    print(
        f"{result.batches} batches, {result.seconds:.1f} s on {result.device}, "
        f"converged: {result.converged}; ranks: {ranks}"
    )
    print(f"wrote {out / 'eva_state.safetensors'} and {out / META_FILE}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from eva_rl.distributed import is_main
    from eva_rl.training.finetune import FinetuneConfig, finetune

    flags = {
        "checkpoint": "checkpoint",
        "stats": "stats",
        "datasets": "datasets",
        "task": "task",
        "env": "env",
        "data_root": "data_root",
        "method": "method.name",
        "rank": "method.rank",
        "rho": "method.rho",
        "seed": "seed",
        "steps": "loop.steps",
        "eval_every": "loop.eval_every",
        "device": "device",
        "precision": "precision",
        "out": "out",
        "resume": "resume",
    }
    cfg = _config(FinetuneConfig, args, flags)
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


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def cmd_methods(args: argparse.Namespace) -> None:
    from eva_rl.adapters.methods import METHODS

    for name, method in METHODS.items():
        print(f"{name:14s} {method.summary}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from eva_rl.sweeps import load_sweep, sweep

    flags = [f"{key}={value}" for key in ("executor", "address") if (value := getattr(args, key))]
    cfg = load_sweep(args.config, [*flags, *args.overrides])
    result = sweep(cfg)
    print(
        f"{result['runs']} runs ({result['ran']} run now, {result['skipped']} already finished)"
        f" and {result['baselines']} baseline evaluation(s) under {result['out']}; "
        f"TensorBoard: tensorboard --logdir {result['out']}"
    )
    print(f"report: eva-rl report {result['out']} --out results/<name>")


def cmd_report(args: argparse.Namespace) -> None:
    from eva_rl.reports import write_report

    command = " ".join(["eva-rl", "report", args.runs, "--out", args.out])
    command += " --tasks " + " ".join(args.tasks) if args.tasks else ""
    command += f" --reference {args.reference}" if args.reference != "lora" else ""
    result = write_report(
        args.runs, args.out, command, args.overwrite, args.tasks, reference=args.reference
    )
    print(f"{result['runs']} runs, {result['configs']} configurations -> {result['out']}/README.md")


def cmd_quickstart(args: argparse.Namespace) -> None:
    from eva_rl.quickstart import QuickstartConfig, quickstart

    cfg = _config(QuickstartConfig, args, ["task", "steps", "out"])
    result = quickstart(cfg)
    print(f"\n{result['table']}\n")
    print(f"report: {result['report']}/README.md (plots beside it)")
    if result["video"]:
        print(f"the agents side by side on one episode: {result['video']}")
    print(f"TensorBoard: tensorboard --logdir {result['runs']}")


def cmd_curve(args: argparse.Namespace) -> None:
    from eva_rl.io import check_writable
    from eva_rl.reports import plot_curve

    if Path(args.out).exists() and not args.overwrite:
        raise UserError(f"{args.out} exists; pass --overwrite or choose another --out")
    check_writable(args.out)
    plot_curve(args.run, args.out, title=args.title or str(args.run))
    print(f"wrote {args.out}")


def cmd_suites(args: argparse.Namespace) -> None:
    from eva_rl.envs import available_suites, load_suite

    for name in sorted(n for n in available_suites() if "/" in n):
        suite = load_suite(name)
        tasks = f"{len(suite.tasks):3d} tasks"
        print(f"{name:20s} {tasks}  horizon {suite.horizon}  {suite.description}")


def _add_precision(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--precision",
        default=default,
        help="auto (default: bf16 where the hardware has it natively, else fp32), bf16, fp32",
    )


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (fields of the command's config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="eva-rl", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build and inspect offline Minari datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    b = data_sub.add_parser("build", help="build scripted-expert datasets for a suite")
    b.add_argument("--suite", help="suite name (cw10, mt40, mt50) or a suite YAML file")
    b.add_argument("--tasks", nargs="+", help="subset of the suite's tasks")
    b.add_argument("--episodes", type=int, help="episodes per task (default: the suite's recipe)")
    b.add_argument("--seed", type=int, help="dataset seed (default: the suite's recipe)")
    b.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    b.add_argument("--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH)")
    b.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    b.add_argument("--skip-existing", action="store_true", help="keep existing datasets")
    _add_config_args(b)
    b.set_defaults(func=cmd_data_build)
    rec = data_sub.add_parser("record", help="a Minari dataset of an agent's (or random) rollouts")
    rec.add_argument("--env", help="gymnasium env id (or Meta-World task) to play in")
    rec.add_argument("--id", help="Minari dataset id to write, e.g. locomotion/hopper/agent-v0")
    rec.add_argument("--episodes", type=int, help="episodes (default 100)")
    rec.add_argument("--checkpoint", help="agent directory or hub id (default: random actions)")
    rec.add_argument("--stats", help="eva_rl.json-style stats for a plain transformers checkpoint")
    rec.add_argument("--noise", type=float, help="agent's action noise std / half-range (0)")
    rec.add_argument("--target-return", type=float, help="agent's target return (its own)")
    rec.add_argument("--horizon", type=int, help="cut episodes here (agent's or env's limit)")
    rec.add_argument("--seed", type=int, help="episode i is reset with seed+i (default 0)")
    rec.add_argument("--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH)")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    rec.add_argument("--device", help="auto (default), cpu, cuda")
    _add_precision(rec)
    _add_config_args(rec)
    rec.set_defaults(func=cmd_data_record)
    ls = data_sub.add_parser("list", help="local Minari datasets with their statistics")
    ls.add_argument("--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of lines")
    ls.set_defaults(func=cmd_data_list)

    pt = sub.add_parser("pretrain", help="pretrain a Decision Transformer (e.g. on MT40)")
    pt.add_argument("--out", help="run directory (default: the config's out)")
    pt.add_argument("--resume", action="store_true", help="continue from checkpoints/latest")
    _add_precision(pt)
    _add_config_args(pt)
    pt.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="roll out a checkpoint in its environments")
    ev.add_argument("--checkpoint", required=True, help="checkpoint directory")
    ev.add_argument("--stats", help="eva_rl.json-style stats for a plain transformers checkpoint")
    which = ev.add_mutually_exclusive_group()
    which.add_argument(
        "--tasks",
        "--envs",
        dest="envs",
        nargs="+",
        help="Meta-World tasks or gymnasium ids (default: the checkpoint's envs)",
    )
    which.add_argument("--suite", help="every task of a suite, e.g. cw10")
    ev.add_argument("--episodes", type=int, default=10, help="episodes per env (default 10)")
    ev.add_argument("--seed", type=int, default=0, help="episode i is reset with seed+i")
    ev.add_argument(
        "--target-return",
        nargs="+",
        default=[],
        metavar="ENV=R",
        help="override the checkpoint's target return for an env",
    )
    ev.add_argument(
        "--targets-from-datasets",
        nargs="*",
        metavar="ID",
        help="target = best return in these Minari datasets, per env they recorded (no ids: "
        "each Meta-World task's scripted-expert data); e.g. zero-shot on unseen envs",
    )
    ev.add_argument("--target-scale", type=float, default=1.0, help="multiply every target")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ev.add_argument(
        "--max-envs",
        type=int,
        default=0,
        help="env instances alive at once (~25 MB each); 0: auto (all on a GPU, 20 on a CPU)",
    )
    ev.add_argument(
        "--workers", type=int, default=0, help="env-stepping processes (0: auto; 1: in process)"
    )
    ev.add_argument(
        "--video",
        type=int,
        default=0,
        metavar="K",
        help="record the first K episodes per env (MP4 in <out>_videos/, TensorBoard)",
    )
    ev.add_argument("--video-size", type=int, default=240, help="frame width/height (240)")
    ev.add_argument("--video-every", type=int, default=2, help="keep every k-th frame (2)")
    _add_precision(ev, "auto")
    ev.add_argument("--out", required=True, help="JSON report path")
    ev.add_argument("--tb", help="TensorBoard dir (default: <out without .json>_tb)")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing report")
    ev.set_defaults(func=cmd_evaluate)

    co = sub.add_parser("collect", help="EVA: principal directions of layer inputs + ranks")
    co.add_argument("--checkpoint", required=True, help="pretrained checkpoint directory")
    co.add_argument("--stats", help="eva_rl.json-style stats for a plain transformers checkpoint")
    co.add_argument("--dataset", required=True, nargs="+", help="downstream Minari dataset id(s)")
    co.add_argument("--data-root", help="Minari root (default: $MINARI_DATASETS_PATH)")
    co.add_argument("--rank", type=int, help="nominal LoRA rank r (default 8)")
    co.add_argument("--rho", type=float, help="components per layer = round(rho * r) (default 2)")
    co.add_argument("--tau", type=float, help="cosine threshold for convergence (default 0.99)")
    co.add_argument("--max-batches", type=int, help="stop after this many batches (default 100)")
    co.add_argument("--batch-size", type=int, help="segments per batch (default 64)")
    co.add_argument("--method", help="covariance (default, exact) or incremental-svd")
    co.add_argument("--seed", type=int, help="segment sampling seed (default 0)")
    co.add_argument("--device", help="auto (default), cpu, cuda")
    _add_precision(co)
    co.add_argument("--out", required=True, help="output directory")
    co.add_argument("--overwrite", action="store_true", help="replace an existing result")
    _add_config_args(co)
    co.set_defaults(func=cmd_collect)

    ft = sub.add_parser("finetune", help="fine-tune a pretrained agent on a task with a method")
    ft.add_argument(
        "--checkpoint", help="checkpoint directory or Hugging Face hub id (default: shipped agent)"
    )
    ft.add_argument("--stats", help="eva_rl.json-style stats for a plain transformers checkpoint")
    ft.add_argument("--datasets", nargs="+", metavar="ID", help="downstream Minari dataset ids")
    ft.add_argument("--task", help="or a Meta-World task: its metaworld/<task>/scripted-v0 data")
    ft.add_argument("--env", help="evaluate in this env (default: the datasets' own envs)")
    ft.add_argument("--data-root", help="Minari root (default: $MINARI_DATASETS_PATH)")
    ft.add_argument("--method", help="initialisation method (`eva-rl methods`; default eva)")
    ft.add_argument("--rank", type=int, help="LoRA rank r (default 8)")
    ft.add_argument("--rho", type=float, help="EVA/AdaLoRA: rho * r initial components (2)")
    ft.add_argument("--seed", type=int, help="seed of sampling, init and training (default 0)")
    ft.add_argument("--steps", type=int, help="gradient updates (default 2000)")
    ft.add_argument("--eval-every", type=int, help="evaluate every K updates (default 500)")
    ft.add_argument("--device", help="auto (default), cpu, cuda")
    _add_precision(ft)
    ft.add_argument("--out", help="run directory (required unless the config sets out)")
    ft.add_argument("--resume", action="store_true", help="continue from checkpoints/latest")
    _add_config_args(ft)
    ft.set_defaults(func=cmd_finetune)

    me = sub.add_parser("methods", help="list the fine-tuning initialisation methods")
    me.set_defaults(func=cmd_methods)

    qs = sub.add_parser("quickstart", help="fine-tune the shipped agent with EVA and LoRA, compare")
    qs.add_argument("--task", help="CW10 task (default peg-unplug-side-v3)")
    qs.add_argument("--steps", type=int, help="updates per run (default 300)")
    qs.add_argument("--out", help="output directory (default runs/quickstart)")
    _add_config_args(qs)
    qs.set_defaults(func=cmd_quickstart)

    sw = sub.add_parser("sweep", help="run a grid of fine-tuning runs in parallel (resumable)")
    sw.add_argument(
        "config", help="sweep YAML (base, out, grid, set, workers, threads, executor, gpus)"
    )
    sw.add_argument(
        "--executor", choices=["local", "ray"], help="local processes (default) or Ray tasks"
    )
    sw.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="sweep config overrides")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="tables with confidence intervals and plots of many runs")
    rp.add_argument("runs", help="directory holding finished runs (e.g. a sweep's out)")
    rp.add_argument("--out", required=True, help="report directory, e.g. results/<name>")
    rp.add_argument("--tasks", nargs="+", help="only these tasks (default: every task found)")
    rp.add_argument("--overwrite", action="store_true", help="replace an existing report")
    rp.add_argument(
        "--reference", default="lora", help="method the others are compared with (default lora)"
    )
    rp.set_defaults(func=cmd_report)

    cu = sub.add_parser("curve", help="plot a training run's loss and evaluation curves (PNG)")
    cu.add_argument("run", help="run directory (holds tb/)")
    cu.add_argument("--out", required=True, help="PNG path")
    cu.add_argument("--title", help="figure title")
    cu.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    cu.set_defaults(func=cmd_curve)

    s = sub.add_parser("suites", help="list the environment suites in envs/")
    s.set_defaults(func=cmd_suites)
    return root


OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")  # key=value, dotted key


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse, with `key=value` overrides recognised wherever they stand (after a flag that
    takes several values too: `--tasks hammer-v3 episodes=5`)."""
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = parser().parse_args([a for a in argv if not OVERRIDE.match(a)])
    if overrides and not hasattr(args, "overrides"):
        raise UserError(f"eva-rl {args.command} takes no key=value overrides: {overrides[0]}")
    if hasattr(args, "overrides"):
        args.overrides = overrides
    return args


def main(argv: list[str] | None = None) -> int:
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
