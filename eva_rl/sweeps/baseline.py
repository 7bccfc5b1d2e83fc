"""The base agent's scores beside every method: one evaluation of the base checkpoint per task,
on the episodes of the runs' final evaluation, planned with the runs (`plan.baselines`) and run
like them."""

from __future__ import annotations

from eva_rl.io import atomic_write_json
from eva_rl.sweeps.plan import Run


def run_baseline(run: Run) -> None:
    """Evaluate the base checkpoint as the runs' final evaluation does; write the JSON."""
    from eva_rl.agent import Agent
    from eva_rl.data.segments import load_trajectories
    from eva_rl.evaluation import EvalConfig, evaluate, scaled_target
    from eva_rl.runtime import resolve_device

    key = run.config["key"]
    ev = key["eval"]
    agent = Agent.load(key["checkpoint"], stats=key["stats"], device=resolve_device(key["device"]))
    data = load_trajectories(key["datasets"], key["data_root"])
    scale = key.get("target_scale", 1.0)  # the target the runs evaluate with
    agent.meta.target_returns.update(
        {e: scaled_target(r, scale) for e, r in data.max_returns().items()}
    )
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
