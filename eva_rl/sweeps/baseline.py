"""The base agent's scores beside every method: one evaluation of the base checkpoint per task,
on the episodes of the runs' final evaluation, planned with the runs and run like them."""

from __future__ import annotations

from pathlib import Path

from eva_rl.config import from_dict, to_dict
from eva_rl.io import atomic_write_json
from eva_rl.sweeps.config import BASELINE_DIR, SweepConfig
from eva_rl.sweeps.plan import Run


def baselines(cfg: SweepConfig, runs: list[Run]) -> list[Run]:
    """One evaluation of the base checkpoint per distinct (checkpoint, data, evaluation) of the
    runs, with their final evaluation's episodes: the base agent's score on the same episodes."""
    from eva_rl.training.finetune import FinetuneConfig

    found: dict[str, Run] = {}
    for run in runs:
        c = from_dict(FinetuneConfig, run.config)
        key = {
            "checkpoint": c.checkpoint,
            "stats": c.stats,
            "datasets": c.dataset_ids,
            "data_root": c.data_root,
            "task": c.task or None,
            "eval": to_dict(c.eval),
            "device": c.device,
            "precision": c.precision,
        }
        name = (c.task or ",".join(c.dataset_ids)).replace("/", "_")
        if name in found and found[name].config["key"] != key:
            name = f"{name}-{len([n for n in found if n.startswith(name)])}"
        if name not in found:
            out = str(Path(cfg.out) / BASELINE_DIR / f"{name}.json")
            found[name] = Run(f"{BASELINE_DIR}.{name}", {}, {"out": out, "key": key}, True)
    return list(found.values())


def run_baseline(run: Run) -> None:
    """Evaluate the base checkpoint as the runs' final evaluation does; write the JSON."""
    from eva_rl.agent import Agent
    from eva_rl.data.segments import load_trajectories
    from eva_rl.evaluation import EvalConfig, evaluate
    from eva_rl.runtime import resolve_device

    key = run.config["key"]
    ev = key["eval"]
    agent = Agent.load(key["checkpoint"], stats=key["stats"], device=resolve_device(key["device"]))
    data = load_trajectories(key["datasets"], key["data_root"])
    agent.meta.target_returns.update(data.max_returns())  # the target the runs evaluate with
    cfg = EvalConfig(
        episodes=ev["final_episodes"] or ev["episodes"],
        seed=ev["seed"],
        device=key["device"],
        precision=key["precision"],
        max_envs=ev["max_envs"],
        workers=ev["workers"],
    )
    result = evaluate(agent, data.envs, cfg, progress=False)
    result.config.update(
        checkpoint=key["checkpoint"], task=key["task"], datasets=key["datasets"], baseline=True
    )
    atomic_write_json(run.out, result.to_dict())
