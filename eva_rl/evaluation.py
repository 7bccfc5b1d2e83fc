"""Seeded, batched evaluation of a DT agent on Meta-World tasks or any Box gymnasium env.

Episodes run in env *slots*, up to `max_envs` at once; each env step is ONE forward pass (in the
run's precision) for the live episodes of a group of slots. Episode i of an env is reset with
seed `seed + i` and played to its end, then the slot takes the next episode of that env: a
fixed number of episodes per env, short episodes never over-counted, and an episode's outcome
independent of which slot, group or process played it.

The slots are split into `workers` groups, each stepped in its own worker process through
Gymnasium's vector API (`AsyncVectorEnv`, shared memory, autoreset disabled: every reset is
ours, with its seed), so 100 episodes cost `workers` processes, not 100; while one group's envs
step, this process runs another group's forward (`eva_rl.rollout`). With one worker the group
steps in this process (`SyncVectorEnv`), unless episodes are recorded as videos (frames are
rendered in worker processes, see `eva_rl.video`). Every layout gives identical episodes. Env
instances are built once per `Evaluator` and reused by later episodes and later calls
(building a Meta-World env costs ~0.2 s; a training run evaluates several times).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from eva_rl import ownership
from eva_rl.agent import Agent, load_agent
from eva_rl.assets import SHIPPED
from eva_rl.config import check_seed
from eva_rl.data.catalog import dataset_id
from eva_rl.data.segments import load_trajectories
from eva_rl.envs import EnvSlots, env_dims, load_suite, make_env, metaworld_task_names
from eva_rl.errors import UserError
from eva_rl.io import atomic_write_dir, atomic_write_json, check_writable
from eva_rl.results import EVAL_SEED, EnvResult, Episode, EvalResult
from eva_rl.rollout import MeanAction, NoisyAction, Rollouts, SlotGroup
from eva_rl.runtime import Precision, check_precision, resolve_device, resolve_precision
from eva_rl.signals import interrupts_held
from eva_rl.video import check_video, log_videos


@dataclass
class EvalConfig:
    episodes: int = 10  # per env
    # episode i is reset with seed + i: by default the episodes a run's evaluations play
    # (finetune, pretrain: 1000 + i), none of which `data record` (0 + i) recorded
    seed: int = EVAL_SEED
    target_returns: dict[str, float] = field(default_factory=dict)  # env -> target, overrides
    # asks for more than the target (1.2: 20% more, `scaled_target`: also for negative returns)
    target_scale: float = 1.0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: Precision = "auto"  # auto (bf16 where the hardware has it natively) | bf16 | fp32
    # env instances alive at once (~25 MB each; building one costs ~0.2 s): 0 = auto, all
    # episodes at once on a GPU (one forward for all), 20 on a CPU (the forward's cost per
    # episode is flat there above ~10, and fewer envs are built)
    max_envs: int = 0
    # processes stepping the envs, each a group of slots whose env steps overlap the forward
    # of another group; 0 = auto: half the cores from 4 cores up, 2 on 2-3 cores (measured
    # 1.2x faster than stepping in process on 2 cores), 1 = this process
    workers: int = 0
    # Gaussian action noise (std as a fraction of each action's half-range), seeded per
    # episode: 0 to evaluate; data recording (`eva-rl data record`) uses it for variety
    noise: float = 0.0
    video: int = 0  # record the first `video` episodes of each env (MP4 + TensorBoard)
    video_size: int = 240  # frame width and height, pixels
    video_every: int = 2  # keep every k-th frame (frame skip)

    def __post_init__(self):
        if self.max_envs < 0:
            raise UserError(f"max_envs must be >= 0 (0 = auto: 20 on a CPU, all at once on a "
                            f"GPU), got {self.max_envs}")  # fmt: skip
        if self.episodes < 1:
            raise UserError(f"eval episodes must be >= 1, got {self.episodes}")
        if self.workers < 0:
            raise UserError(f"eval workers must be >= 0 (0 = auto, 1 = in this process), got "
                            f"{self.workers}")  # fmt: skip
        if not math.isfinite(self.target_scale):
            raise UserError(f"target_scale must be finite, got {self.target_scale}")
        check_precision(self.precision)
        if not 0.0 <= self.noise < float("inf"):
            raise UserError(f"noise must be >= 0, got {self.noise}")
        check_video(self.video, self.video_size, self.video_every)
        check_seed(self.seed, "eval.seed")


def scaled_target(target: float, scale: float) -> float:
    """`scale` times as good as `target`: scale x target for a positive return (ODT's online
    target, 2 x the evaluation's), and as far above it for a negative one (Reacher's -40 at
    scale 2 asks for 0, not -80: a multiple of a negative return would ask for worse)."""
    return target + (scale - 1.0) * abs(target)


def target_return(agent: Agent, name: str, cfg: EvalConfig) -> float:
    """The override for `name`, else the checkpoint's target, scaled by `cfg.target_scale`."""
    if name in cfg.target_returns:
        base = cfg.target_returns[name]
    elif name in agent.meta.target_returns:
        base = agent.meta.target_returns[name]
    else:
        known = ", ".join(sorted(agent.meta.target_returns)) or "none"
        raise UserError(
            f"no target return for env {name!r} (the checkpoint has targets for: {known}); "
            f"pass --target-return {name}=VALUE"
        )
    if not math.isfinite(base):  # a NaN target conditions every action on NaN
        raise UserError(f"the target return for env {name!r} is {base}; give a finite one")
    return scaled_target(float(base), cfg.target_scale)


class Evaluator:
    """Evaluates `agent` on `envs`, as often as asked, with one set of env slots and workers.

    Use as a context manager (or call `close`) so worker processes end with it. The model's
    device and train/eval mode are restored after every `run` (safe inside a training loop).
    """

    def __init__(
        self,
        agent: Agent,
        envs: list[str],
        cfg: EvalConfig,
        progress: bool = True,
        max_episodes: int | None = None,
        record: bool = False,
    ):
        """`record` keeps every episode's observations, actions, rewards, terminations,
        truncations and success in `Episode.trajectory` (for writing datasets)."""
        if not envs:
            raise UserError("no envs to evaluate")
        if len(set(envs)) != len(envs):
            raise UserError(f"env names must be unique, got {envs}")
        self.agent, self.names, self.cfg, self.progress = agent, list(envs), cfg, progress
        self.record = record
        self._video_dir: Path | None = None
        self.targets = {name: target_return(agent, name, cfg) for name in envs}
        if cfg.video:
            from eva_rl.video import setup_rendering

            setup_rendering()  # for the worker processes that render
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.horizon = agent.meta.horizon
        spaces = {}
        for name in envs:  # refuse a mismatch before any rollout
            env = make_env(name, self.horizon)
            try:
                agent.check_dims(*env_dims(env, name), f"env {name}")
                spaces[name] = (env.action_space.low, env.action_space.high)
            finally:
                env.close()
        self._bounds = spaces
        per_env = max(cfg.episodes, max_episodes or 0)
        max_envs = cfg.max_envs or (len(envs) * per_env if self.device.type == "cuda" else 20)
        self._slot_names = _plan_slots(self.names, per_env, max_envs)
        self._groups: list[SlotGroup] = []
        self._workers = 0  # env-stepping processes

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for group in self._groups:
            group.vec.close()
        self._groups = []

    def _open(self) -> None:
        """Spread the slots over the groups (round robin), one vector env per group: in this
        process for one worker (unless filming: frames are rendered in worker processes),
        else one worker process per group."""
        slots, cores = len(self._slot_names), torch.get_num_threads()  # its share of the cores
        workers = min(self.cfg.workers or (cores // 2 if cores >= 4 else min(cores, 2)), slots)
        size = -(-slots // workers)
        names = [self._slot_names[g::workers] for g in range(workers)]
        names = [g + [None] * (size - len(g)) for g in names]  # equal shapes for batching
        dims = (self.agent.state_dim, self.agent.act_dim)
        video = (self.cfg.video_size, self.cfg.video_every) if self.cfg.video else (None, 1)
        mode = gym.vector.AutoresetMode.DISABLED
        self._groups = []
        for g, group in enumerate(names):
            fns = [functools.partial(EnvSlots, 0, group, self.horizon, dims, *video)]
            if workers == 1 and not self.cfg.video:
                vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
            else:
                vec = gym.vector.AsyncVectorEnv(
                    fns, shared_memory=True, copy=False, context="spawn", autoreset_mode=mode
                )
            self._groups.append(SlotGroup(vec, group, g * size))
        self._workers = sum(isinstance(g.vec, gym.vector.AsyncVectorEnv) for g in self._groups)

    def run(self, episodes: int | None = None, video_dir: str | None = None) -> EvalResult:
        """`episodes` (default `cfg.episodes`) seeded episodes per env; see the module doc.
        With `cfg.video` and a `video_dir`, the first `cfg.video` episodes of each env are
        recorded there as `<env>-seed<seed>.mp4` (and named in their `Episode.video`)."""
        episodes = episodes or self.cfg.episodes
        self._video_dir = Path(video_dir) if video_dir and self.cfg.video else None
        if not self._groups:
            self._open()
        started = time.perf_counter()
        model, was_training = self.agent.model, self.agent.model.training
        old_device = self.agent.device
        model.to(self.device).eval()
        threads = torch.get_num_threads()
        if self.device.type == "cpu" and self._workers:  # the workers step envs meanwhile
            torch.set_num_threads(max(1, threads - self._workers))
        try:
            played = self._play(episodes)
        except BaseException:
            self.close()  # envs left mid-episode cannot serve another run; the next one reopens
            raise
        finally:
            model.to(old_device).train(was_training)
            torch.set_num_threads(threads)
        envs = {
            name: EnvResult(name, self.targets[name], played[name], self._reference(name))
            for name in self.names
        }
        config = {
            "episodes": episodes,
            "seed": self.cfg.seed,
            "target_scale": self.cfg.target_scale,
            "horizon": self.horizon,
            "context_length": self.agent.meta.context_length,
            "precision": self.precision,
        }
        return EvalResult(envs, config, time.perf_counter() - started)

    def _reference(self, name: str) -> tuple[float, float] | None:
        ref = self.agent.meta.reference_returns.get(name)
        return tuple(ref) if ref else None

    def _play(self, episodes: int) -> dict[str, list[Episode]]:
        """Play `episodes` episodes per env in the slots (see `eva_rl.rollout`)."""
        rollouts = Rollouts(self.agent, self._groups, self.targets, self._bounds, self._choice(),
                            self.device, self.precision, self.horizon, self.cfg.seed,
                            self.record)  # fmt: skip
        with tqdm(
            total=episodes * len(self.names), unit="ep", desc="eval", disable=not self.progress
        ) as bar:  # closed on errors too: they get a line
            rollouts.begin(episodes, self._video_dir, self.cfg.video)
            while rollouts.running:
                bar.update(rollouts.step())
        return rollouts.finish()

    def _choice(self) -> MeanAction:
        """The mean action, or with the configured Gaussian noise (a fraction of each slot's
        action half-range; 1 where the range is unbounded)."""
        if not self.cfg.noise:
            return MeanAction()
        names = [name for group in self._groups for name in group.names]
        half = [(self._bounds[n][1] - self._bounds[n][0]) / 2 if n else np.ones(self.agent.act_dim)
                for n in names]  # fmt: skip
        half = np.stack(half).astype(np.float32)
        return NoisyAction(self.cfg.noise * np.where(np.isfinite(half), half, 1.0))


def _plan_slots(names: list[str], episodes: int, max_envs: int) -> list[str]:
    """Env name of every slot: one per episode when `max_envs` allows, else shared out round
    robin over the envs (each at least one slot)."""
    total = len(names) * episodes
    slots = max(min(max_envs, total), len(names))
    counts = dict.fromkeys(names, 0)
    while sum(counts.values()) < slots:
        for name in names:
            if counts[name] < episodes and sum(counts.values()) < slots:
                counts[name] += 1
    return [name for name in names for _ in range(counts[name])]


def evaluate(agent: Agent, envs: list[str], cfg: EvalConfig, progress: bool = True) -> EvalResult:
    """Play `cfg.episodes` seeded episodes per env (see `Evaluator`); workers end with it."""
    with Evaluator(agent, envs, cfg, progress) as evaluator:
        return evaluator.run()


@dataclass
class EvaluateConfig:
    """What `eva-rl evaluate` does: which agent, which envs, where the results go."""

    checkpoint: str = SHIPPED  # a checkpoint or adapter directory, or a Hugging Face hub id
    stats: str | None = None  # eva_rl.json-style stats for a plain transformers checkpoint
    envs: list[str] = field(default_factory=list)  # gymnasium ids or Meta-World tasks
    # or every env of a suite, its reference returns normalising the scores where the agent
    # has none (default: the envs a fine-tuned agent was tuned on, else every env the
    # checkpoint has a target for)
    suite: str | None = None
    # targets from the best return in these Minari datasets, per env they recorded ([]: each
    # Meta-World env's scripted-expert data); e.g. zero-shot on envs the agent has no target for
    targets_from_datasets: list[str] | None = None
    out: str = ""  # the JSON report
    tb: str | None = None  # TensorBoard directory (default: <out without .json>_tb)
    overwrite: bool = False  # replace an existing report
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if not self.out:
            raise UserError("name the JSON report with --out FILE")
        if self.envs and self.suite:
            raise UserError("pass --envs or --suite, not both")
        report, tb = Path(self.out).resolve(), self.tb_dir.resolve()
        if report.is_relative_to(tb) or tb.is_relative_to(report):  # the same, or one holds one
            raise UserError(
                f"--tb {self.tb} and --out {self.out} are the same path or one holds the other; "
                "give --tb a folder beside the report, or leave it out"
            )

    @property
    def tb_dir(self) -> Path:
        return Path(self.tb or Path(self.out).with_suffix("").as_posix() + "_tb")

    @property
    def video_dir(self) -> Path:
        return Path(Path(self.out).with_suffix("").as_posix() + "_videos")


def run_evaluation(cfg: EvaluateConfig, progress: bool = True) -> EvalResult:
    """Evaluate, then write the JSON report (with bootstrap intervals), TensorBoard scalars and
    any recorded videos; the outputs are checked before the first rollout."""
    from torch.utils.tensorboard import SummaryWriter

    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} exists; pass --overwrite or choose another --out")
    check_writable(out)
    check_writable(cfg.tb_dir, directory=True)
    check_tb(cfg)
    agent = load_agent(cfg.checkpoint, stats=cfg.stats, device=resolve_device(cfg.eval.device))
    suite = load_suite(cfg.suite) if cfg.suite else None
    if suite is not None:  # its normalisation where the agent has none (pretrained on datasets)
        references = {**suite.reference_returns, **agent.meta.reference_returns}
        agent.meta = dataclasses.replace(agent.meta, reference_returns=references)
    envs = cfg.envs or (suite.tasks if suite else [])
    envs = envs or agent.meta.provenance.get("envs") or sorted(agent.meta.target_returns)
    if unplayed := [env for env in cfg.eval.target_returns if env not in envs]:  # else dropped
        raise UserError(f"a target return is given for {', '.join(unplayed)}, which this "
                        f"evaluation does not play (envs: {', '.join(envs)}); add it to --envs "
                        "or drop its target")  # fmt: skip
    eval_cfg = cfg.eval
    if cfg.targets_from_datasets is not None:
        found = dataset_targets(cfg.targets_from_datasets, envs)
        targets = {**found, **eval_cfg.target_returns}  # explicit targets win
        eval_cfg = dataclasses.replace(eval_cfg, target_returns=targets)
    with Evaluator(agent, envs, eval_cfg, progress) as evaluator:
        result = evaluator.run(video_dir=str(cfg.video_dir))
    result.config.update(checkpoint=str(cfg.checkpoint), envs=envs, stats=cfg.stats)
    step = agent.meta.provenance.get("steps", 0)

    def write_tb(stage: Path) -> None:  # replaces an earlier evaluation's folder whole
        ownership.claim(stage, "evaluation")
        with interrupts_held(), SummaryWriter(stage) as writer:  # eva_rl.signals
            result.log(writer, step=step)
        log_videos(result, stage, step)

    atomic_write_dir(cfg.tb_dir, write_tb)  # whole or not at all
    atomic_write_json(out, result.to_dict(intervals=True))  # last: its presence means done
    return result


def check_tb(cfg: EvaluateConfig) -> None:
    """The TensorBoard folder is replaced whole (an earlier one's events would show beside the
    new ones): a new or empty one, or with `overwrite` one an evaluation made (marked, or before
    markers the default `<out>_tb` of an existing report, event files only)."""
    tb = cfg.tb_dir
    if tb.is_dir() and any(tb.iterdir()):
        events = all(e.name.startswith("events.out.tfevents.") for e in tb.iterdir())
        if not (cfg.tb is None and Path(cfg.out).is_file() and events):
            ownership.check_replaceable(tb, "eva-rl evaluate", "--tb", kind="evaluation")
        if not cfg.overwrite:
            raise UserError(f"{tb} holds an earlier evaluation's TensorBoard events; pass "
                            "--overwrite or choose another --tb")  # fmt: skip


def dataset_targets(ids: list[str], envs: list[str]) -> dict[str, float]:
    """Env -> the best return in the datasets recorded in it (`ids`; none given: each
    Meta-World env's scripted-expert dataset)."""
    if not ids:
        ids = [dataset_id(env) for env in envs if env in metaworld_task_names()]
        if not ids:
            raise UserError("--targets-from-datasets needs dataset ids for non-Meta-World envs")
    return load_trajectories(ids).max_returns()
