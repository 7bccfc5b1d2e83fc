"""Environment suites (declared in `envs/`) and a serialisable Meta-World v3 task env.

Meta-World's own `Meta-World/MT1` registration uses a lambda entry point, which Minari cannot
serialise, ignores `reset(seed=...)`, reports stale observation bounds and returns different info
keys at reset and step. `MetaWorldTaskEnv` fixes all four, so a Minari dataset can store its spec
and `recover_environment()` rebuilds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from eva_rl import assets
from eva_rl.config import check_seed, from_dict, read_yaml
from eva_rl.errors import UserError

ENV_ID = "eva_rl/MetaWorldTask-v0"
INFO_KEYS = (
    "success",
    "near_object",
    "grasp_success",
    "grasp_reward",
    "in_place_reward",
    "obj_to_target",
    "unscaled_reward",
)


def metaworld_task_names() -> list[str]:
    import metaworld.env_dict

    return list(metaworld.env_dict.ALL_V3_ENVIRONMENTS)


class MetaWorldTaskEnv(gym.Env):
    """One Meta-World v3 task, goal observable, with a fresh random object/goal every reset.

    `reset(seed=s)` reseeds the task's generator, so the same seed gives the same layout; info
    holds the same float keys (`INFO_KEYS`) at reset (all 0: nothing happened yet) and every step.
    The episode is truncated after `horizon` steps.
    """

    metadata = {"render_modes": ["rgb_array", "depth_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        horizon: int = 200,
        render_mode: str | None = None,
        camera_name: str = "corner",
        width: int = 480,
        height: int = 480,
    ):
        import metaworld.env_dict

        classes = metaworld.env_dict.ALL_V3_ENVIRONMENTS
        if task not in classes:
            raise UserError(unknown_name_message("Meta-World task", task, list(classes)))
        if horizon < 1:
            raise UserError(f"horizon must be >= 1, got {horizon}")
        self.task = task
        self.horizon = horizon
        self.render_mode = render_mode
        env = classes[task](
            render_mode=render_mode, camera_name=camera_name, width=width, height=height
        )
        env._partially_observable = False  # the goal position is part of the observation
        env.__dict__.pop("sawyer_observation_space", None)  # cached with the old observability
        env._set_task_called = True
        env._freeze_rand_vec = False  # a new object/goal layout at every reset ...
        env.seeded_rand_vec = True  # ... drawn from the env's own seeded generator
        env.max_path_length = max(env.max_path_length, horizon)
        self._env = env
        self._seeded = False
        self._t = 0
        self.action_space = env.action_space
        self.observation_space = env.sawyer_observation_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            self._env.seed(int(self.np_random.integers(2**31 - 1)))
            self._seeded = True
        obs, _ = self._env.reset()
        self._t = 0
        return obs, dict.fromkeys(INFO_KEYS, 0.0)

    def step(self, action):
        obs, reward, terminated, _, raw = self._env.step(np.asarray(action))
        self._t += 1
        info = {key: float(raw[key]) for key in INFO_KEYS}
        return obs, float(reward), bool(terminated), self._t >= self.horizon, info

    def render(self):
        """The camera's frame, turned 180 degrees where the camera is mounted upside down (its up
        axis points at the floor: Meta-World's corner cameras), so the table is below the robot
        and the scene is not mirrored, as a flip of the rows alone would leave it."""
        frame = self._env.render()
        if frame is not None and self._camera_upside_down():
            frame = np.ascontiguousarray(frame[::-1, ::-1])
        return frame

    def _camera_upside_down(self) -> bool:
        renderer = self._env.mujoco_renderer
        camera = renderer.camera_id
        if camera is None or camera < 0:  # the free camera is level
            return False
        up = self._env.data.cam_xmat[camera].reshape(3, 3)[:, 1]  # the camera's y axis (world)
        return bool(up[2] < 0)

    def close(self):
        self._env.close()


def register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="eva_rl.envs:MetaWorldTaskEnv", disable_env_checker=True)


def make_task_env(task: str, horizon: int = 200, **kwargs: Any) -> gym.Env:
    """`gym.make` through the registered string entry point, so the spec is serialisable."""
    register()
    return gym.make(ENV_ID, task=task, horizon=horizon, **kwargs)


def make_env(name: str, horizon: int, render_size: int | None = None, cut: bool = False) -> gym.Env:
    """A Meta-World v3 task (truncated at `horizon`) or, for any other name, `gymnasium.make`.

    Generic envs keep their own time limit (evaluation also stops every episode at `horizon`),
    unless `cut`: then their time limit is `horizon` (a recorded dataset's env says so).
    `render_size`: render RGB frames of that width and height (videos).
    """
    render = {}
    if render_size is not None:
        render = {"render_mode": "rgb_array", "width": render_size, "height": render_size}
    if name in metaworld_task_names():
        return make_task_env(name, horizon, **render)
    try:
        limit = {"max_episode_steps": horizon} if cut else {}
        try:
            return gym.make(name, **render, **limit)
        except TypeError:  # an env without frame-size arguments renders at its own size
            render.pop("width", None), render.pop("height", None)
            return gym.make(name, **render, **limit)
    except (gym.error.Error, ImportError) as e:  # ImportError: `module:Env` with a bad module
        raise UserError(
            f"cannot make env {name!r}: not a Meta-World v3 task and gymnasium says: {e}"
        ) from None


def env_dims(env: gym.Env, name: str) -> tuple[int, int]:
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box) or not isinstance(act, gym.spaces.Box):
        raise UserError(
            f"env {name} has observation space {obs} and action space {act}; "
            "a Decision Transformer needs Box observations and a 1-D Box action space"
        )
    if len(act.shape) != 1:
        raise UserError(f"env {name} has action shape {act.shape}; only 1-D actions are supported")
    return int(np.prod(obs.shape)), int(act.shape[0])


class EnvSlots(gym.Env):
    """A group of env instances stepped together: one sub-env of a Gymnasium vector env.

    Observations are (slots, obs_dim); actions are (slots, act_dim + 1), the last column a
    flag apart from the action: 1 steps the slot, 0 leaves it idle (no action value does).
    Rewards, terminations, truncations and success come back per slot in `info`.
    `reset(options={"assign": {group: {slot: (seed, video)}}})` starts a new episode in the
    named slots of this group (its index is `group`); `video` (a path, or None) records the
    episode as an MP4 of every `video_every`-th frame, written when the episode ends, when the
    slot starts another, or at `flush_videos()`. Each episode's last `info` (its numbers: for
    Meta-World the distance of the object to the goal, grasp flags, ...) is kept and handed over
    by `end_infos()`. Instances are built on first use, so the vector env's throw-away probe of
    the spaces is cheap.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        group: int,
        names: list[str | None],
        horizon: int,
        dims: tuple[int, int],
        video_size: int | None = None,
        video_every: int = 1,
    ):
        self.group, self.names, self.horizon = group, names, horizon
        self.video_size, self.video_every = video_size, video_every
        n, (obs_dim, act_dim) = len(names), dims
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n, obs_dim), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (n, act_dim + 1), np.float32)
        self._envs: list[gym.Env | None] | None = None
        self._obs = np.zeros((n, obs_dim), np.float32)
        self._videos: dict[int, tuple[str, list, int]] = {}  # slot -> path, frames, steps
        self._seeds: list[int | None] = [None] * n  # the episode each slot plays
        self._last: list[dict] = [{} for _ in range(n)]  # its latest info (read at its end)
        self._ended: dict[tuple[str, int], dict[str, float]] = {}  # (env, seed) -> last info

    def _instances(self) -> list[gym.Env | None]:
        if self._envs is None:
            self._envs = [make_env(n, self.horizon, self.video_size) if n else None
                          for n in self.names]  # fmt: skip
        return self._envs

    def reset(self, *, seed=None, options=None):
        envs = self._instances()
        mine = (options or {}).get("assign", {}).get(self.group, {})
        for slot, (episode_seed, video) in mine.items():
            self._write_video(slot)
            if self._seeds[slot] is not None:
                self._ended[(self.names[slot], self._seeds[slot])] = _numbers(self._last[slot])
            self._seeds[slot], self._last[slot] = int(episode_seed), {}
            self._obs[slot] = _flat(envs[slot].reset(seed=int(episode_seed))[0])
            if video is not None:
                self._videos[slot] = (video, [envs[slot].render()], 0)
        return self._obs.copy(), {}

    def step(self, actions):
        envs, n = self._instances(), len(self.names)
        reward = np.zeros(n)
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        success = np.full(n, np.nan)
        for slot in np.flatnonzero(actions[:, -1] == 1):
            obs, r, terminated[slot], truncated[slot], info = envs[slot].step(actions[slot, :-1])
            self._obs[slot] = _flat(obs)
            reward[slot] = float(r)
            if "success" in info:
                success[slot] = float(info["success"])
            self._last[slot] = info  # its numbers are taken once the episode has ended
            if slot in self._videos:
                path, frames, steps = self._videos[slot]
                if (steps + 1) % self.video_every == 0:
                    frames.append(envs[slot].render())
                self._videos[slot] = (path, frames, steps + 1)
                if terminated[slot] or truncated[slot]:
                    self._write_video(slot)
        info = {"reward": reward, "terminated": terminated, "truncated": truncated}
        info["success"] = success
        return self._obs.copy(), 0.0, False, False, info

    def _write_video(self, slot: int) -> None:
        if slot in self._videos:
            from eva_rl.video import write_mp4

            path, frames, _ = self._videos.pop(slot)
            fps = self._envs[slot].metadata.get("render_fps", 30) / self.video_every
            write_mp4(path, frames, fps)

    def end_infos(self) -> dict[tuple[str, int], dict[str, float]]:
        """The last info numbers of every episode played since the previous call, by (env,
        seed); the slots then forget their episodes (the next run may replay the same seeds)."""
        ended = dict(self._ended)
        for slot, seed in enumerate(self._seeds):
            if seed is not None:
                ended[(self.names[slot], seed)] = _numbers(self._last[slot])
        self._ended, self._seeds = {}, [None] * len(self.names)
        return ended

    def flush_videos(self) -> None:
        """Write the videos of episodes that ended by our horizon, not by the env."""
        for slot in list(self._videos):
            self._write_video(slot)

    def close(self):
        for env in self._envs or []:
            if env is not None:
                env.close()
        self._envs = None


def _numbers(info: dict) -> dict[str, float]:
    """The scalar numbers of a step's info (flags as 0/1) to 6 significant digits (they are
    stored with every episode); arrays and strings are left out."""
    out = {}
    for key, value in info.items():
        if isinstance(value, (bool, int, float, np.number)) or (
            isinstance(value, np.ndarray) and value.size == 1
        ):
            out[key] = float(f"{float(value):.6g}")
    return out


def _flat(obs) -> np.ndarray:
    return np.asarray(obs, np.float32).reshape(-1)


# --- suites -----------------------------------------------------------------------------------


@dataclass
class NoiseMixture:
    """Per-episode Gaussian action-noise std, drawn from `levels` with probabilities `weights`."""

    levels: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.6, 1.0])
    weights: list[float] = field(default_factory=lambda: [0.3, 0.2, 0.2, 0.15, 0.15])

    def __post_init__(self):
        if len(self.levels) != len(self.weights) or not self.levels:
            raise UserError("noise.levels and noise.weights must be non-empty and of equal length")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise UserError("noise.weights must be non-negative with a positive sum")
        if any(s < 0 for s in self.levels):
            raise UserError("noise.levels must be non-negative standard deviations")


@dataclass
class DatasetRecipe:
    episodes_per_task: int = 100
    noise: NoiseMixture = field(default_factory=NoiseMixture)
    seed: int = 0

    def __post_init__(self):
        if self.episodes_per_task < 1:
            raise UserError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        check_seed(self.seed, "dataset.seed")


@dataclass
class Suite:
    """Envs evaluated together. `metaworld`: v3 task names, data from `data build` (the
    scripted-expert `dataset` recipe). `gymnasium`: any registered env ids, data from the
    `datasets` it names (record them with `eva-rl data record`)."""

    name: str
    family: Literal["metaworld", "gymnasium"] = "metaworld"
    tasks: list[str] = field(default_factory=list)
    horizon: int = 200
    description: str = ""
    dataset: DatasetRecipe = field(default_factory=DatasetRecipe)
    datasets: list[str] = field(default_factory=list)  # gymnasium: Minari ids of its data
    # env -> [random, expert] returns: scores become normalised returns (D4RL's convention)
    reference_returns: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self):
        if not self.tasks:
            raise UserError(f"suite {self.name} lists no tasks")
        if self.family == "metaworld":
            valid = metaworld_task_names()
            for task in self.tasks:
                if task not in valid:
                    raise UserError(unknown_name_message(f"task in suite {self.name}", task, valid))
        else:
            for task in self.tasks:
                if task not in gym.registry:
                    raise UserError(f"suite {self.name}: {task!r} is no registered gymnasium env")


def suites_dir() -> Path:
    """`$EVA_RL_ENVS_DIR`, else the `envs/` that travels with eva_rl (`eva_rl.assets`)."""
    return Path(os.environ.get("EVA_RL_ENVS_DIR", assets.envs_dir()))


def available_suites() -> dict[str, Path]:
    """Suite name (`metaworld/cw10`, or its short form `cw10`) -> file."""
    root = suites_dir()
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        name = path.relative_to(root).with_suffix("").as_posix()
        found[name] = path
    for name, path in list(found.items()):
        found.setdefault(name.rsplit("/", 1)[-1], path)
    return found


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (`cw10`, `metaworld/cw10`) or by the path of its YAML file."""
    if name_or_path.endswith((".yaml", ".yml")):
        path, name = Path(name_or_path), Path(name_or_path).stem
    else:
        suites = available_suites()
        if name_or_path not in suites:
            full = sorted(n for n in suites if "/" in n)
            raise UserError(unknown_name_message("suite", name_or_path, full))
        path = suites[name_or_path]
        name = path.relative_to(suites_dir()).with_suffix("").as_posix()
    data = read_yaml(path)
    data.setdefault("name", name)
    try:
        return from_dict(Suite, data)
    except UserError as e:  # name the file: a suite's keys may be wrong in any of several
        raise UserError(f"suite file {path}: {e}") from None


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    return f"unknown {kind} {name!r}; valid: {', '.join(valid)}"
