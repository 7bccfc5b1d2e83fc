"""Rollout videos: offscreen rendering set-up, MP4 files (imageio with its own ffmpeg),
TensorBoard videos (animated GIF image summaries, what `SummaryWriter.add_video` writes, without
its moviepy dependency), and several agents side by side on the same episodes (`eva-rl video`).

MuJoCo picks its OpenGL backend when it is first imported, so frames are rendered in env worker
processes started after `setup_rendering` chose it: EGL on a machine with an NVIDIA GPU, OSMesa
elsewhere (`apt-get install libosmesa6`); `MUJOCO_GL` set by the user wins. Rendering reads
the simulation, never steps it: episodes are the same with and without video (tested).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eva_rl.errors import UserError
from eva_rl.evaluation import EvalConfig

LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa"}


def setup_rendering() -> str:
    """Choose and check MuJoCo's offscreen backend for the processes this one starts."""
    backend = os.environ.get("MUJOCO_GL")
    if backend is None:
        backend = "egl" if _nvidia_gpu() else "osmesa"
    library = LIBRARIES.get(backend)
    if library is not None and ctypes.util.find_library(library) is None:
        raise UserError(
            f"recording videos needs offscreen rendering and {library} is missing: on a CPU "
            "machine `apt-get install libosmesa6`; on a GPU machine the NVIDIA driver's EGL "
            "(MUJOCO_GL=egl)"
        )
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def _nvidia_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def write_mp4(path: str | os.PathLike, frames: list[np.ndarray], fps: float) -> None:
    """H.264 MP4 of RGB frames, written beside `path` and renamed into place."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    try:
        iio.imwrite(tmp, np.stack(frames), fps=fps, extension=".mp4", plugin="FFMPEG",
                    codec="libx264", macro_block_size=1)  # fmt: skip
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a video: (frames, height, width, 3) uint8."""
    import imageio.v3 as iio

    return np.asarray(iio.imread(path, plugin="FFMPEG"))


def log_video(writer, tag: str, path: str | os.PathLike, step: int, size: int = 160) -> None:
    """An MP4 as a TensorBoard video: an animated GIF image summary (frames shrunk to `size`
    pixels wide and thinned to at most 100, to keep event files small)."""
    import imageio.v3 as iio
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = read_frames(path)
    frames = frames[:: max(1, len(frames) // 100)]
    scale = max(1, frames.shape[2] // size)
    frames = frames[:, ::scale, ::scale]
    buffer = io.BytesIO()
    iio.imwrite(buffer, frames, extension=".gif", duration=100, loop=0)
    image = Summary.Image(
        height=frames.shape[1], width=frames.shape[2], colorspace=3,
        encoded_image_string=buffer.getvalue(),
    )  # fmt: skip
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    writer._get_file_writer().add_summary(summary, step)


def log_videos(result, log_dir: str | os.PathLike, step: int) -> None:
    """An evaluation's recorded episodes as TensorBoard videos, `video/<env>/seed<seed>`."""
    videos = [(name, e) for name, r in result.envs.items() for e in r.episodes if e.video]
    if not videos:
        return
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir) as writer:
        for name, episode in videos:
            log_video(writer, f"video/{name}/seed{episode.seed}", episode.video, step)


def side_by_side(paths: list[str | os.PathLike], labels: list[str], out: str | os.PathLike,
                 fps: float) -> None:  # fmt: skip
    """One MP4 with the videos next to each other (the shorter ones hold their last frame) and
    a label strip above each."""
    videos = [read_frames(p) for p in paths]
    length = max(len(v) for v in videos)
    videos = [np.concatenate([v, np.repeat(v[-1:], length - len(v), 0)]) for v in videos]
    labelled = [_label(v, text) for v, text in zip(videos, labels, strict=True)]
    write_mp4(out, list(np.concatenate(labelled, axis=2)), fps)


def _label(frames: np.ndarray, text: str) -> np.ndarray:
    """A white strip with `text` above every frame (matplotlib renders the text once), the
    font shrunk until the text fits the frame's width."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = frames.shape[2]
    fig = Figure(figsize=(width / 100, 0.3), dpi=100)
    label = fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    wide = label.get_window_extent(canvas.get_renderer()).width
    if wide > 0.96 * width:
        label.set_fontsize(10 * 0.96 * width / wide)
        canvas.draw()
    strip = np.asarray(canvas.buffer_rgba())[..., :3]
    strip = np.broadcast_to(strip[None, :, :width], (len(frames), strip.shape[0], width, 3))
    return np.concatenate([strip, frames], axis=1)


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
    from tqdm import tqdm

    from eva_rl.agent import load_agent
    from eva_rl.envs import make_env
    from eva_rl.evaluation import Evaluator

    out = Path(cfg.out)
    seeds = [cfg.eval.seed + i for i in range(cfg.eval.episodes)]
    paths = [out / f"{cfg.env}-seed{s}.mp4" for s in seeds]
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
