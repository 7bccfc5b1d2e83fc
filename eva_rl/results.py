"""Typed results, written once and read everywhere: an evaluation (`EvalResult`).

The primary score of an env is its final-step success where the env reports `success` (the
paper's metric, through L2M), else the normalised return `100 * (R - R_random) / (R_expert -
R_random)` where reference returns are known (the D4RL convention), else the raw return.
Any-step success, the return and the length are kept beside it.

The JSON layout is the one `eva-rl evaluate` has always written (per env: means, target, every
episode; at the top: means over envs), so older files stay readable.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from eva_rl import markdown

SCORES = ("success_final", "normalized_return", "return")  # in order of preference


@dataclass
class Episode:
    seed: int
    ret: float  # "return" in JSON
    length: int
    success_any: float | None = None  # None: the env reports no `success`
    success_final: float | None = None
    video: str | None = None  # path of its MP4, when recorded
    trajectory: dict | None = field(default=None, repr=False, compare=False)  # when recorded
    # the env's info numbers at the last step (Meta-World: obj_to_target, grasp_success, ...):
    # how close an unsuccessful episode came, a finer outcome than success
    final_info: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "seed": self.seed,
            "return": self.ret,
            "length": self.length,
            "success_any": self.success_any,
            "success_final": self.success_final,
        }
        if self.video is not None:
            out["video"] = self.video
        if self.final_info:
            out["final_info"] = self.final_info
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Episode:
        return cls(
            seed=int(d["seed"]),
            ret=float(d["return"]),
            length=int(d["length"]),
            success_any=d.get("success_any"),
            success_final=d.get("success_final"),
            video=d.get("video"),
            final_info=d.get("final_info", {}),
        )


def normalized(ret: float, reference: tuple[float, float]) -> float:
    """D4RL's normalised score: 0 = the random policy's return, 100 = the expert's."""
    low, high = reference
    return 100.0 * (ret - low) / (high - low)


def mean_or_none(values) -> float | None:
    """Mean of the values that exist; None when none does (an env without success info)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass
class EnvResult:
    name: str
    target_return: float
    episodes: list[Episode]
    reference: tuple[float, float] | None = None  # (random, expert) returns, for normalising

    def values(self, metric: str) -> list[float | None]:
        """One value per episode of `metric` (success_any/final, return, normalized_return,
        length, score)."""
        if metric == "score":
            metric = self.score_name
        if metric == "return":
            return [e.ret for e in self.episodes]
        if metric == "length":
            return [float(e.length) for e in self.episodes]
        if metric == "normalized_return":
            if self.reference is None:
                return [None] * len(self.episodes)
            return [normalized(e.ret, self.reference) for e in self.episodes]
        return [getattr(e, metric) for e in self.episodes]

    def mean(self, metric: str) -> float | None:
        return mean_or_none(self.values(metric))

    def final_info(self) -> dict[str, float]:
        """The mean over episodes of each last-step info number every episode has."""
        if not self.episodes:
            return {}
        keys = set.intersection(*(set(e.final_info) for e in self.episodes))
        return {k: float(np.mean([e.final_info[k] for e in self.episodes])) for k in sorted(keys)}

    @property
    def score_name(self) -> str:
        if any(e.success_final is not None for e in self.episodes):
            return "success_final"
        return "normalized_return" if self.reference is not None else "return"

    def to_dict(self) -> dict[str, Any]:
        returns = np.asarray(self.values("return"), dtype=np.float64)
        out = {
            "target_return": self.target_return,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "length_mean": self.mean("length"),
            "success_any": self.mean("success_any"),
            "success_final": self.mean("success_final"),
            "score_name": self.score_name,
            "score": self.mean("score"),
        }
        if self.reference is not None:
            out["reference_returns"] = list(self.reference)
            out["normalized_return"] = self.mean("normalized_return")
        if final := self.final_info():
            out["final_info"] = final
        out["episodes"] = [e.to_dict() for e in self.episodes]
        return out

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> EnvResult:
        ref = d.get("reference_returns")
        return cls(
            name=name,
            target_return=float(d["target_return"]),
            episodes=[Episode.from_dict(e) for e in d["episodes"]],
            reference=tuple(ref) if ref is not None else None,
        )


@dataclass
class EvalResult:
    envs: dict[str, EnvResult]
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    METRICS = ("score", "success_final", "success_any", "normalized_return", "return", "length")

    @property
    def score_name(self) -> str:
        """The primary score shared by every env (see the module docstring)."""
        names = {r.score_name for r in self.envs.values()}
        for name in SCORES:
            if names == {name}:
                return name
        return "return"  # envs disagree (success on some only): the one every env has

    def mean(self, metric: str) -> float | None:
        """Mean over envs of each env's mean (every env weighs the same)."""
        if metric == "score":
            metric = self.score_name
        return mean_or_none([r.mean(metric) for r in self.envs.values()])

    def metrics(self) -> dict[str, float]:
        """Every metric that exists, averaged over envs: what TensorBoard and summaries get."""
        out = {m: self.mean(m) for m in self.METRICS}
        return {k: v for k, v in out.items() if v is not None}

    def intervals(self) -> dict[str, tuple[float, float]]:
        """95% stratified-bootstrap intervals (episodes resampled within each env) of the means
        of every metric that all episodes have."""
        from eva_rl.stats import stratified_bootstrap_ci

        out = {}
        for metric in ("score", "success_final", "success_any", "normalized_return", "return"):
            shared = self.score_name if metric == "score" else metric  # as `mean` reads it
            groups = [r.values(shared) for r in self.envs.values()]
            if all(v is not None for g in groups for v in g):
                out[metric] = stratified_bootstrap_ci(groups)
        return out

    def to_dict(self, intervals: bool = False) -> dict[str, Any]:
        """The JSON layout; `intervals` adds `<metric>_ci95` (a bootstrap: about a second)."""
        out: dict[str, Any] = {"config": self.config, "envs": {}}
        out["envs"] = {name: r.to_dict() for name, r in self.envs.items()}
        returns = [r.mean("return") for r in self.envs.values()]
        out["return_mean"] = float(np.mean(returns))
        out["return_std"] = mean_or_none([r.to_dict()["return_std"] for r in self.envs.values()])
        out["length_mean"] = self.mean("length")
        out["success_any"] = self.mean("success_any")
        out["success_final"] = self.mean("success_final")
        out["normalized_return"] = self.mean("normalized_return")
        out["score_name"] = self.score_name
        out["score"] = self.mean("score")
        if intervals:
            for metric, (low, high) in self.intervals().items():
                out[f"{metric}_ci95"] = [low, high]
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 3)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        envs = {name: EnvResult.from_dict(name, r) for name, r in d["envs"].items()}
        return cls(envs=envs, config=d.get("config", {}), seconds=d.get("seconds"))

    def log(self, writer, step: int, prefix: str = "eval") -> None:
        """TensorBoard scalars <prefix>/<env>/<metric> and the means <prefix>/<metric>."""
        for name, r in self.envs.items():
            for metric in self.METRICS:
                value = r.mean(metric)
                if value is not None:
                    writer.add_scalar(f"{prefix}/{name}/{metric}", value, step)
        for metric, value in self.metrics().items():
            writer.add_scalar(f"{prefix}/{metric}", value, step)

    def to_markdown(self) -> str:
        """One row per env, then the mean, then the intervals of the means."""

        def cell(v, spec=".2f"):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{spec}}"

        header = ["env", f"score ({self.score_name})", "success (final step)",
                  "success (any step)", "return", "length"]  # fmt: skip
        means = [(name, r.mean) for name, r in self.envs.items()] + [("**mean**", self.mean)]
        rows = [
            [name, cell(get("score")), cell(get("success_final")), cell(get("success_any")),
             cell(get("return"), ".1f"), cell(get("length"), ".0f")]
            for name, get in means
        ]  # fmt: skip
        lines = [markdown.table(header, rows)]
        for metric, (low, high) in self.intervals().items():
            lines.append(
                f"\nmean {metric}: 95% CI [{low:.3f}, {high:.3f}] "
                "(stratified bootstrap over episodes)"
            )
        for name, r in self.envs.items():
            if final := r.final_info():
                means = ", ".join(f"{k} {v:.3g}" for k, v in final.items())
                lines.append(f"\n{name} at the last step (mean over episodes): {means}")
        return "\n".join(lines)


@dataclass
class EvalPoint:
    """One evaluation during training: metrics averaged over envs, and every episode."""

    step: int
    metrics: dict[str, float]  # score, success_final, success_any, return, length, heldout_loss...
    episodes: dict[str, list[Episode]] = field(default_factory=dict)  # env -> episodes
    score_name: str | None = None  # what `score` is (EvalResult's); None in older summaries

    def to_dict(self) -> dict[str, Any]:
        eps = {env: [e.to_dict() for e in es] for env, es in self.episodes.items()}
        named = {"score_name": self.score_name} if self.score_name else {}
        return {"step": self.step, **self.metrics, **named, "episodes": eps}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalPoint:
        skip = ("step", "episodes", "score_name")
        metrics = {k: v for k, v in d.items() if k not in skip and v is not None}
        if "score" not in metrics:  # written before scores existed: success, else the return
            for name in ("success_final", "return"):
                if name in metrics:
                    metrics["score"] = metrics[name]
                    break
        episodes = {
            env: [Episode.from_dict(e) for e in es] for env, es in d.get("episodes", {}).items()
        }
        return cls(int(d["step"]), metrics, episodes, d.get("score_name"))

    @classmethod
    def of(cls, step: int, result: EvalResult, **extra: float) -> EvalPoint:
        episodes = {name: r.episodes for name, r in result.envs.items()}
        return cls(step, {**result.metrics(), **extra}, episodes, result.score_name)


# evaluation episode i is reset with EVAL_SEED + i (`EvalConfig.seed`): a dataset recorded with
# these seeds holds the layouts an evaluation plays (`data record` warns)
EVAL_SEED = 1000
SUMMARY_FILE = "summary.json"  # a run's summary; a run folder that has one has finished

STEP_UNITS = {"updates": "updates", "env_steps": "env steps"}  # RunSummary.step_unit -> words


@dataclass
class RunSummary:
    """What a fine-tuning run did and reached (`summary.json`); reports read only this. The
    fields are the file's keys (plus the derived `DERIVED`); `metadata["before"]` is the value
    a summary written before that field existed reads as."""

    method: str
    task: str | None
    datasets: list[str]
    rank: int
    rho: float
    seed: int
    steps: int
    eval: list[EvalPoint]
    final_loss: float | None
    trainable_parameters: int
    total_parameters: int = field(metadata={"before": 0})
    gradient_signal: float
    collector_seconds: float | None = field(metadata={"before": None})
    ranks: dict[str, int] = field(metadata={"before": {}})
    processes: int = field(metadata={"before": 1})
    effective_batch_size: int = field(metadata={"before": 0})
    train_seconds: float = field(metadata={"before": 0.0})
    wall_seconds: float = field(metadata={"before": 0.0})
    config: dict[str, Any] = field(metadata={"before": {}})
    precision: str = field(metadata={"before": "fp32"})  # summaries before bf16 existed: fp32
    # what an evaluation's `step` counts: updates (finetune) or env_steps (online)
    step_unit: str = field(default="updates", metadata={"before": "updates"})
    # the machines that ran it, in order (`runtime.machine`); none recorded before 2026-12-07
    machines: list[dict[str, Any]] = field(default_factory=list, metadata={"before": []})

    # written for readers, not read: a summary's score_name follows from its evaluations
    DERIVED = ("final", "initial", "best_score", "total_rank", "score_name")

    @property
    def final(self) -> dict[str, float]:
        return self.eval[-1].metrics if self.eval else {}

    @property
    def initial(self) -> dict[str, float] | None:
        """The metrics at step 0 (before any update), when the run evaluated there."""
        return self.eval[0].metrics if self.eval and self.eval[0].step == 0 else None

    def best(self, metric: str = "score") -> float | None:
        return max((p.metrics[metric] for p in self.eval if metric in p.metrics), default=None)

    @property
    def total_rank(self) -> int:
        return sum(self.ranks.values())

    @property
    def score_name(self) -> str:
        """The primary score the evaluations report (`score` is its value): as the evaluation
        named it (the return where a task's envs disagree on success), or, in summaries before
        that was kept, the first of `SCORES` they measured."""
        for point in self.eval:
            if point.score_name:
                return point.score_name
        for point in self.eval:
            for name in SCORES:
                if name in point.metrics:
                    return name
        return "return"

    @property
    def label(self) -> str:
        return self.task or ",".join(self.datasets)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["eval"] = [p.to_dict() for p in self.eval]
        derived = self.final, self.initial, self.best(), self.total_rank, self.score_name
        return out | dict(zip(self.DERIVED, derived, strict=True))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        points = [EvalPoint.from_dict(p) for p in d["eval"]]
        before = {
            f.name: copy.deepcopy(f.metadata["before"])
            for f in fields(cls)
            if "before" in f.metadata
        }
        values = {f.name: d[f.name] if f.name in d else before[f.name] for f in fields(cls)}
        values["ranks"] = {k: int(v) for k, v in values["ranks"].items()}
        return cls(**values | {"eval": points, "datasets": list(values["datasets"])})
