"""What each `eva-rl` command does once its arguments are parsed: build the stage's config,
call the stage, print what it made. The parser and the exit codes live in `eva_rl.cli`."""

from __future__ import annotations

from pathlib import Path

from eva_rl.errors import UserError
from eva_rl.runtime import cpu_count, set_threads


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


def cmd_online(args) -> None:
    from eva_rl.online.config import OnlineConfig
    from eva_rl.online.run import online

    cfg = _config(OnlineConfig, args)
    s = online(cfg)
    final, first = s["final"], s["initial"] or {}
    print(
        f"{s['method']} online on {s['task'] or ','.join(s['datasets'])}: {s['score_name']} "
        f"{_fmt(final.get('score'))} (start {_fmt(first.get('score'))}), return "
        f"{_fmt(final.get('return'), '.1f')} after {s['env_steps']} env steps, {s['updates']} "
        f"updates, {s['episodes_collected']} episodes collected; {s['wall_seconds']:.0f} s"
    )
    speed = s["throughput"]
    print(f"speed: {_fmt(speed['updates_per_s'], '.1f')} updates/s updating, "
          f"{_fmt(speed['env_steps_per_s'], '.0f')} env-steps/s collecting")  # fmt: skip
    print(f"run: {cfg.out}; collected data: {', '.join(s['dataset'])} under {cfg.out}/minari")


def cmd_methods(args) -> None:
    from eva_rl.adapters.methods import METHODS

    for name, method in METHODS.items():
        print(f"{name:14s} {method.summary}")


def cmd_sweep(args) -> None:
    from eva_rl.sweeps import load_sweep, sweep

    flags = [f"{key}={value}" for key in ("executor", "address") if (value := getattr(args, key))]
    cfg = load_sweep(args.sweep, [*flags, *args.overrides])
    if args.status or args.blind:
        import dataclasses

        from eva_rl.config import read_yaml
        from eva_rl.sweeps import SWEEP_FILE, planned_status
        from eva_rl.sweeps.config import INDEX_FILE
        from eva_rl.sweeps.executors import local_shares, shares

        status = planned_status(cfg)
        left = status.total - len(status.done) - len(status.reused)
        saved = Path(cfg.out) / SWEEP_FILE  # the last invocation's, `workers=` override included
        if saved.is_file() and not any(o.startswith("workers=") for o in args.overrides):
            cfg = dataclasses.replace(cfg, workers=read_yaml(saved).get("workers", cfg.workers))
        # as many at once as the local executor would run for what is left (GPU slots too)
        try:
            parallel = local_shares(cfg, left)[1]
        except UserError:  # a GPU sweep looked at from a machine without its GPUs
            parallel = shares(cfg, [cpu_count()], left)[0]
        print(status.describe(parallel, blind=args.blind))
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
    if blocked := result["blocked"]:
        names = ", ".join(list(blocked)[:3]) + ("..." if len(blocked) > 3 else "")
        print(
            f"not run yet, {len(blocked)} waiting for the run each starts from to finish: "
            f"{names} (from_run {next(iter(blocked.values()))}, ...); run the sweep again then "
            "(wait=true: this sweep waits for them)"
        )
    print(f"report: eva-rl report {result['out']} --out results/<name>")


def cmd_report(args) -> None:
    from eva_rl.adapters.methods import REFERENCE
    from eva_rl.reports import write_report

    command = " ".join(["eva-rl", "report", *args.runs, "--out", args.out])
    command += " --tasks " + " ".join(args.tasks) if args.tasks else ""
    command += " --by " + " ".join(args.by) if args.by else ""
    changed = args.reference != [REFERENCE]
    command += " --reference " + " ".join(args.reference) if changed else ""
    command += " --partial" if args.partial else ""
    command += f" --hypotheses {args.hypotheses}" if args.hypotheses else ""
    result = write_report(args.runs, args.out, command, args.overwrite, args.tasks,
                          args.reference, args.partial, args.hypotheses, args.by or [])  # fmt: skip
    left = f" ({result['left_out']} runs of unfinished seeds left out)" if args.partial else ""
    print(
        f"{result['runs']} runs{left}, {result['configs']} configurations -> "
        f"{result['out']}/README.md"
    )
    if result["registration"] is not None:  # the README's sentence, without its markdown
        print(result["registration"].sentence(markdown=False))
    for test in result["hypotheses"]:
        print(f"{test.hypothesis.name}: {test.verdict}")


def cmd_export(args) -> None:
    from eva_rl.io import check_writable
    from eva_rl.sweeps import export_runs

    check_writable(args.out, directory=True)  # a file in the way: --overwrite would not help
    result = export_runs(args.runs, args.out, args.overwrite, args.weights)
    pending = f"; {result['pending']} runs of the sweep not finished" if result["pending"] else ""
    left = "no checkpoints" if args.weights else "no checkpoints or weights"
    print(f"{result['runs']} finished runs -> {result['out']} ({left}){pending}")
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
    from eva_rl.compare import CompareConfig, compare_agents

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
