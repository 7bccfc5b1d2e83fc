"""`eva-rl video`: several agents on the same seeded episodes of one env, each episode one MP4
with the agents' films side by side under their labels and outcomes."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from eva_rl.agent import load_agent
from eva_rl.envs import make_env
from eva_rl.errors import UserError
from eva_rl.evaluation import EvalConfig, Evaluator
from eva_rl.io import check_writable
from eva_rl.video import side_by_side


@dataclass
class CompareConfig:
    """What `eva-rl video` does: every agent plays the same seeded episodes of one env; each
    episode becomes one MP4 with the agents next to each other."""

    # agent directories (a finetune run's agent/), checkpoints or Hugging Face hub ids
    checkpoints: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # one per checkpoint (default: its run's name)
    env: str = ""  # a gymnasium id or Meta-World task
    out: str = ""  # folder of the MP4s, <env>-seed<seed>.mp4
    overwrite: bool = False  # replace the MP4s of an earlier call
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes=1))

    def __post_init__(self):
        if not self.checkpoints or not self.env or not self.out:
            raise UserError("eva-rl video needs CHECKPOINT ..., --env ENV and --out DIR")
        if self.labels and len(self.labels) != len(self.checkpoints):
            raise UserError(
                f"{len(self.labels)} labels for {len(self.checkpoints)} checkpoints; give one "
                "label per checkpoint, or none"
            )
        self.eval.video = self.eval.episodes  # every episode is filmed

    def label_of(self, index: int) -> str:
        if self.labels:
            return self.labels[index]
        path = Path(self.checkpoints[index])
        return path.parent.name if path.name == "agent" else path.name  # a finetune run's name


def compare_agents(cfg: CompareConfig, progress: bool = True) -> list[tuple[Path, list[str]]]:
    """Film every agent on the episodes `cfg.eval` names (seed + i) and put each episode's
    films side by side, each under its label and its outcome (success at the final step,
    return). Returns each MP4's path with those captions."""
    out = Path(cfg.out)
    check_writable(out, directory=True)  # a file there fails now, not after the rollouts
    seeds = [cfg.eval.seed + i for i in range(cfg.eval.episodes)]
    paths = [out / f"{cfg.env}-seed{s}.mp4" for s in seeds]
    for path in paths:
        check_writable(path)  # a folder in a video's place
    if not cfg.overwrite and any(p.exists() for p in paths):
        raise UserError(f"{out} already holds these videos; pass --overwrite or another --out")
    make_env(cfg.env, horizon=1).close()  # a wrong name or path fails before any film
    agents = [load_agent(c) for c in cfg.checkpoints]
    made = not out.exists()
    scratch = out / ".films"  # each agent's own films, removed once combined
    films: list[list] = []
    try:
        for i, agent in enumerate(tqdm(agents, desc="video", unit="agent", disable=not progress)):
            with Evaluator(agent, [cfg.env], cfg.eval, progress=False) as evaluator:
                result = evaluator.run(video_dir=str(scratch / str(i)))
            films.append(result.envs[cfg.env].episodes)
        videos = []
        for k, path in enumerate(paths):
            captions = [f"{cfg.label_of(i)}: {_outcome(f[k])}" for i, f in enumerate(films)]
            side_by_side([f[k].video for f in films], captions, path, fps=40)
            videos.append((path, captions))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):  # the folder this call made, if left empty
                out.rmdir()
    return videos


def _outcome(episode) -> str:
    success = "" if episode.success_final is None else f"success {episode.success_final:.0f}, "
    return f"{success}return {episode.ret:.0f}"
