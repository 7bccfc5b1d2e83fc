"""eva_rl: fine-tune pretrained Decision-Transformer agents with parameter-efficient adapters.

The pipeline's stages as functions taking their config dataclasses and returning typed results
(the CLI calls the same functions); `docs/python-api.md` has a worked example::

    import eva_rl

    agent = eva_rl.load_agent("results/pretrained/mt40-cpu/agent")
    summary = eva_rl.finetune(eva_rl.FinetuneConfig(task="hammer-v3", out="runs/x"))
    result = eva_rl.evaluate(agent, ["hammer-v3"], eva_rl.EvalConfig(episodes=10))

Names are imported on first use, so `import eva_rl` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # stages
    "build_datasets": ("eva_rl.data.build", "build"),
    "record": ("eva_rl.data.record", "record"),
    "pretrain": ("eva_rl.training.pretrain", "pretrain"),
    "load_agent": ("eva_rl.agent", "load_agent"),
    "collect": ("eva_rl.eva.collector", "collect_on_datasets"),
    "finetune": ("eva_rl.training.finetune", "finetune"),
    "evaluate": ("eva_rl.evaluation", "evaluate"),
    # not `online`: that name is the subpackage eva_rl.online, which would shadow it
    "online_finetune": ("eva_rl.online.run", "online"),
    "compare_agents": ("eva_rl.compare", "compare_agents"),
    "sweep": ("eva_rl.sweeps", "sweep"),
    "report": ("eva_rl.reports", "write_report"),
    "load_config": ("eva_rl.config", "load_config"),
    # configs
    "DataBuildConfig": ("eva_rl.data.build", "DataBuildConfig"),
    "RecordConfig": ("eva_rl.data.record", "RecordConfig"),
    "PretrainConfig": ("eva_rl.training.pretrain", "PretrainConfig"),
    "ModelConfig": ("eva_rl.agent", "ModelConfig"),
    "CollectorConfig": ("eva_rl.eva.collector", "CollectorConfig"),
    "FinetuneConfig": ("eva_rl.training.finetune", "FinetuneConfig"),
    "FinetuneEvalConfig": ("eva_rl.training.finetune", "FinetuneEvalConfig"),
    "SplitConfig": ("eva_rl.training.finetune", "SplitConfig"),
    "MethodConfig": ("eva_rl.adapters.methods", "MethodConfig"),
    "OptimConfig": ("eva_rl.training.loop", "OptimConfig"),
    "LoopConfig": ("eva_rl.training.loop", "LoopConfig"),
    "EvalConfig": ("eva_rl.evaluation", "EvalConfig"),
    "OnlineConfig": ("eva_rl.online.config", "OnlineConfig"),
    "TD3Config": ("eva_rl.online.config", "TD3Config"),
    "load_online_head": ("eva_rl.online.head", "load_head"),
    "CompareConfig": ("eva_rl.compare", "CompareConfig"),
    "SweepConfig": ("eva_rl.sweeps", "SweepConfig"),
    # results and agents
    "Agent": ("eva_rl.agent", "Agent"),
    "EvalResult": ("eva_rl.results", "EvalResult"),
    "RunSummary": ("eva_rl.results", "RunSummary"),
    "CollectResult": ("eva_rl.eva.collector", "CollectResult"),
    "METHODS": ("eva_rl.adapters.methods", "METHODS"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eva_rl' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
