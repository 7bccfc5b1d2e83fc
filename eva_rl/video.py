"""Rollout videos: offscreen rendering set-up, MP4 files (imageio with its own ffmpeg),
TensorBoard videos (animated GIF image summaries, what `SummaryWriter.add_video` writes, without
its moviepy dependency) and films side by side. Below the evaluator: env workers write MP4s here;
`eva_rl.compare` (`eva-rl video`) films agents through the evaluator.

MuJoCo picks its OpenGL backend when it is first imported, so frames are rendered in env worker
processes started after `setup_rendering` chose it: EGL on a machine with an NVIDIA GPU, OSMesa
elsewhere (`apt-get install libosmesa6`); `MUJOCO_GL` set by the user wins. Rendering reads
the simulation, never steps it: episodes are the same with and without video (tested).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import io
import math
import os
from pathlib import Path

import numpy as np

from eva_rl.errors import UserError
from eva_rl.signals import interrupts_held

LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa"}


def check_video(video: int, size: int, every: int) -> None:
    """The video options of an evaluation config (`eval.*`), checked before any rollout."""
    if video < 0:
        raise UserError(f"eval.video must be >= 0 (0: no videos), got {video}")
    if every < 1:
        raise UserError(f"eval.video_every must be >= 1 (1: every frame), got {every}")
    if size < 16 or size % 2:  # H.264 (yuv420p) encodes even sizes only; ffmpeg fails silently
        raise UserError(
            "eval.video_size must be an even number of pixels >= 16 (H.264 encodes even frame "
            f"sizes only), got {size}"
        )


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
    """H.264 MP4 of RGB frames, written beside `path` and renamed into place; refused where
    ffmpeg wrote nothing (it fails without raising, say on an odd frame size)."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    try:
        video = np.stack(frames)
        iio.imwrite(tmp, video, fps=fps, extension=".mp4", plugin="FFMPEG", codec="libx264",
                    macro_block_size=1)  # fmt: skip
        if not tmp.is_file() or tmp.stat().st_size == 0:
            height, width = video.shape[1:3]
            fix = "choose an even --video-size (H.264 encodes even sizes only)"
            fix = fix if width % 2 or height % 2 else "see ffmpeg's messages above"
            raise UserError(f"ffmpeg wrote nothing for {path} ({len(video)} frames of "
                            f"{width}x{height} pixels); {fix}")  # fmt: skip
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a video: (frames, height, width, 3) uint8."""
    import imageio.v3 as iio

    return np.asarray(iio.imread(path, plugin="FFMPEG"))


def log_video(writer, tag: str, path: str | os.PathLike, step: int, size: int = 160) -> None:
    """An MP4 as a TensorBoard video: an animated GIF image summary (frames shrunk to at most
    `size` pixels wide and thinned to at most 100, to keep event files small), added to `writer`,
    a `torch.utils.tensorboard.FileWriter` (SummaryWriter takes no ready-made summary)."""
    import imageio.v3 as iio
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = read_frames(path)
    frames = frames[:: math.ceil(len(frames) / 100)]
    height, width = frames.shape[1:3]
    if width > size:  # a resize (PIL comes with imageio, its GIF writer), not a pixel stride
        shape = (size, max(1, round(height * size / width)))
        small = [Image.fromarray(f).resize(shape, Image.Resampling.BILINEAR) for f in frames]
        frames = np.stack([np.asarray(f) for f in small])
    buffer = io.BytesIO()
    iio.imwrite(buffer, frames, extension=".gif", duration=100, loop=0)
    image = Summary.Image(
        height=frames.shape[1], width=frames.shape[2], colorspace=3,
        encoded_image_string=buffer.getvalue(),
    )  # fmt: skip
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    writer.add_summary(summary, step)


def log_videos(result, log_dir: str | os.PathLike, step: int) -> None:
    """An evaluation's recorded episodes as TensorBoard videos, `video/<env>/seed<seed>`."""
    videos = [(name, e) for name, r in result.envs.items() for e in r.episodes if e.video]
    if not videos:
        return
    from torch.utils.tensorboard import FileWriter

    with interrupts_held(), contextlib.closing(FileWriter(log_dir)) as writer:  # eva_rl.signals
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
