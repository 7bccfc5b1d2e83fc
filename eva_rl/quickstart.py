"""`eva-rl quickstart`: the first run of a new user, in a few minutes on 2 CPU cores.

Builds the task's scripted-expert dataset if it is missing, fine-tunes the shipped agent on it
with EVA and with LoRA (in parallel, as a two-run sweep), evaluates both during training and
writes TensorBoard logs and a comparison report. Running it again reuses what is finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eva_rl import assets
from eva_rl.assets import SHIPPED
from eva_rl.config import check_seed, from_dict, read_yaml
from eva_rl.errors import UserError

if TYPE_CHECKING:
    from eva_rl.sweeps import SweepConfig


@dataclass
class QuickstartConfig:
    # one of the paper's hardest CW10 tasks; the shipped agent solves 0.1 of it zero-shot
    task: str = "peg-unplug-side-v3"
    methods: list[str] = field(default_factory=lambda: ["eva", "lora"])  # compared side by side
    steps: int = 300  # updates per run
    eval_every: int = 100  # updates between evaluations
    seed: int = 0  # of both runs (the same batches and episodes)
    checkpoint: str = SHIPPED  # the agent both runs adapt
    base: str = "configs/finetune/cw10-cpu.yaml"  # finetune config of both runs
    data_root: str | None = None  # Minari root; None: $MINARI_DATASETS_PATH or ~/.minari
    out: str = "runs/quickstart"  # runs, report and video go here
    set: dict[str, Any] = field(default_factory=dict)  # extra finetune overrides
    video: bool = True  # the base agent and every method side by side on one episode (MP4)

    def __post_init__(self):
        for path, what in ((self.checkpoint, "checkpoint"), (self.base, "base config")):
            if not Path(assets.locate(path)).exists():
                raise UserError(f"{what} {path} not found; check the path")
        if self.steps < 1 or self.eval_every < 1:
            raise UserError("steps and eval_every must be >= 1")
        check_seed(self.seed, "seed")
        from eva_rl.adapters.methods import METHODS, unknown_method

        if not self.methods:
            raise UserError("methods is empty; name the methods to compare, e.g. "
                            "methods=[eva, lora] (eva-rl methods lists them)")  # fmt: skip
        for method in self.methods:  # before any dataset is built
            if method not in METHODS:
                raise UserError(unknown_method(method))
            if self.methods.count(method) > 1:
                raise UserError(f"methods names {method} twice; list each method once")
        self._check_runs()

    def sweep_config(self) -> SweepConfig:
        """The two-run (one per method) sweep the quickstart runs into `out`/runs."""
        from eva_rl.sweeps import SweepConfig

        return SweepConfig(
            base=assets.locate(self.base),
            out=str(Path(self.out) / "runs"),
            grid={"method.name": list(self.methods)},
            set={
                "checkpoint": self.checkpoint,
                "data_root": self.data_root,
                "task": self.task,
                "seed": self.seed,
                "loop.steps": self.steps,
                "loop.eval_every": self.eval_every,
                "loop.save_every": self.eval_every,
                **self.set,
            },
        )

    def _check_runs(self) -> None:
        """Every run's finetune config (the base file, these settings, `set`) is valid: a bad
        `set` key fails in a second, not after the dataset is built."""
        from eva_rl.sweeps import plan

        try:
            plan(self.sweep_config(), inputs=False)
        except UserError as e:
            raise UserError(f"set (finetune keys) or base {self.base}: {e}") from None


def quickstart(cfg: QuickstartConfig, progress: bool = True) -> dict[str, Any]:
    from eva_rl.data.build import DataBuildConfig, build
    from eva_rl.reports import write_report
    from eva_rl.sweeps import sweep

    build(DataBuildConfig(tasks=[cfg.task], skip_existing=True, root=cfg.data_root))
    out = Path(cfg.out)
    sweep_cfg = cfg.sweep_config()
    runs = Path(sweep_cfg.out)
    sweep(sweep_cfg, progress=progress)
    report = out / "report"
    command = f"eva-rl quickstart --task {cfg.task} --steps {cfg.steps} --out {cfg.out}"
    result = write_report(runs, report, command, overwrite=True)
    video = side_by_side_video(cfg, runs, out / "videos") if cfg.video else None
    return {"runs": runs, "report": report, "table": result["table"], "video": video}


def side_by_side_video(cfg: QuickstartConfig, runs: Path, out: Path) -> str:
    """The base agent and each fine-tuned agent on the same episode (the evaluation's first
    seed), next to each other in one MP4 in `out`; a machine without a renderer gets the reason."""
    from eva_rl.compare import CompareConfig, compare_agents
    from eva_rl.data.catalog import dataset_id
    from eva_rl.data.segments import load_trajectories
    from eva_rl.evaluation import EvalConfig
    from eva_rl.training.finetune import FinetuneConfig

    first = runs / f"method={cfg.methods[0]}" / "config.yaml"
    run_cfg = from_dict(FinetuneConfig, read_yaml(first))
    targets = load_trajectories([dataset_id(cfg.task)], cfg.data_root).max_returns()
    compare = CompareConfig(
        checkpoints=[cfg.checkpoint, *(str(runs / f"method={m}" / "agent") for m in cfg.methods)],
        labels=["base agent", *cfg.methods],
        env=cfg.task,
        out=str(out),
        overwrite=True,
        eval=EvalConfig(episodes=1, seed=run_cfg.eval.seed, target_returns=targets),
    )
    try:
        ((path, _),) = compare_agents(compare, progress=False)
    except UserError as e:  # no renderer: the quickstart's numbers still stand
        return f"no video ({e})"
    return str(path)
