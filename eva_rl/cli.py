"""The `eva-rl` command line: parse arguments, call one stage, map bad input to exit code 2.

Each command reads an optional `--config FILE`, then `key=value` overrides, then its flags
(later wins), into the stage's config dataclass.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from eva_rl.config import apply_override, from_dict, read_yaml
from eva_rl.errors import RunError, UserError


def _config(cls: type, args: argparse.Namespace, flags: dict[str, Any]):
    data: dict[str, Any] = read_yaml(args.config) if args.config else {}
    for item in args.overrides:
        apply_override(data, item)
    data.update({k: v for k, v in flags.items() if v is not None and v is not False})
    return from_dict(cls, data)


def cmd_data_build(args: argparse.Namespace) -> None:
    from eva_rl.data import catalog
    from eva_rl.data.build import DataBuildConfig, build

    cfg = _config(
        DataBuildConfig,
        args,
        dict(
            suite=args.suite,
            tasks=args.tasks,
            episodes=args.episodes,
            seed=args.seed,
            workers=args.workers,
            root=args.root,
            overwrite=args.overwrite,
            skip_existing=args.skip_existing,
        ),
    )
    summaries = build(cfg)
    print(f"\n{len(summaries)} dataset(s) under {catalog.datasets_root(cfg.root)}:")
    for s in summaries:
        print("  " + catalog.format_summary(s))


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
    from eva_rl.pretrain import PretrainConfig, pretrain

    cfg = _config(PretrainConfig, args, dict(out=args.out, resume=args.resume))
    result = pretrain(cfg)
    print(f"agent saved to {result['agent']}; TensorBoard: tensorboard --logdir {cfg.out}/tb")


def cmd_suites(args: argparse.Namespace) -> None:
    from eva_rl.envs import available_suites, load_suite

    for name in sorted(n for n in available_suites() if "/" in n):
        suite = load_suite(name)
        tasks = f"{len(suite.tasks):3d} tasks"
        print(f"{name:20s} {tasks}  horizon {suite.horizon}  {suite.description}")


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
    ls = data_sub.add_parser("list", help="local Minari datasets with their statistics")
    ls.add_argument("--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of lines")
    ls.set_defaults(func=cmd_data_list)

    pt = sub.add_parser("pretrain", help="pretrain a Decision Transformer (e.g. on MT40)")
    pt.add_argument("--out", help="run directory (default: the config's out)")
    pt.add_argument("--resume", action="store_true", help="continue from checkpoints/latest")
    _add_config_args(pt)
    pt.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("suites", help="list the environment suites in envs/")
    s.set_defaults(func=cmd_suites)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
