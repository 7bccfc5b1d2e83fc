"""Whether a dataset's numbers can be trained on: finite observations, actions and rewards in
every episode (checked when a dataset is written, listed and loaded: one NaN otherwise surfaces
as a diverged loss or a `return nan`), and actions inside the action space (warned about once
per dataset, with the share outside: they are trained on as they are, while an env clips what
an agent does), episodes no longer than a model's timestep embedding, and an env recorded with
settings its id alone does not give (warned: evaluation makes the env from the id)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from eva_rl.errors import UserError

FIELDS = ("observations", "actions", "rewards")
RENDER_KWARGS = frozenset({"render_mode", "width", "height"})  # change frames, not episodes


def non_finite(observations, actions, rewards) -> str | None:
    """Where the first NaN or inf of an episode is ('observations hold nan at step 3'), else
    None."""
    for field, values in zip(FIELDS, (observations, actions, rewards), strict=True):
        values = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            return f"{field} hold {values[where]} at step {where[0]}"
    return None


def data_file(data_path: str | Path) -> Path:
    """The file a Minari dataset keeps its episodes in (its data folder if none is found)."""
    folder = Path(data_path)
    files = sorted(p for p in folder.glob("*") if p.name != "metadata.json")
    return files[0] if files else folder


def broken(dataset_id: str, data_path, episode: int, problem: str) -> UserError:
    return UserError(
        f"Minari dataset {dataset_id!r} ({data_file(data_path)}): episode {episode}'s "
        f"{problem}; training on it would diverge or learn NaN: re-record or rebuild the "
        "dataset (--overwrite), or delete it"
    )


def check_episode(dataset, episode) -> None:
    """Refuse a Minari episode holding NaN or inf, naming the dataset's file and the episode."""
    problem = non_finite(episode.observations, episode.actions, episode.rewards)
    if problem:
        raise broken(dataset.spec.dataset_id, dataset.spec.data_path, episode.id, problem)


def check_written(dataset_id: str, episodes: list[dict]) -> None:
    """Before a dataset is written: every episode finite, else nothing is written."""
    for i, e in enumerate(episodes):
        problem = non_finite(e["observations"], e["actions"], e["rewards"])
        if problem:
            raise UserError(
                f"dataset {dataset_id} was not written: episode {i}'s {problem} (the env or "
                "the agent produced it); fix the env or agent, or record other seeds"
            )


def warn_outside(dataset_id: str, space, actions: np.ndarray) -> None:
    """Warn once if actions lie outside the dataset's Box action space, with the share."""
    low = np.broadcast_to(np.asarray(space.low, np.float64).reshape(-1), actions.shape[1:])
    high = np.broadcast_to(np.asarray(space.high, np.float64).reshape(-1), actions.shape[1:])
    slack = 1e-6 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    outside = ((actions < low - slack) | (actions > high + slack)).any(axis=1)
    if not outside.any():
        return
    worst = actions[outside].flat[np.argmax(np.abs(actions[outside]))]
    bounds = f"[{low.min():g}, {high.max():g}]"
    warnings.warn(
        f"dataset {dataset_id}: {outside.mean():.1%} of its actions lie outside its action "
        f"space {bounds} (the furthest: {worst:g}); a DT learns to ask for them, the env clips "
        "them: check how the data were recorded",
        stacklevel=3,
    )


def check_timesteps(traj, max_ep_len: int) -> None:
    """Refuse data whose timesteps the model has no embedding for (an index error deep in the
    forward otherwise, a device-side assert on CUDA)."""
    last = int(traj.timesteps.max()) if len(traj.timesteps) else 0
    if last >= max_ep_len:
        raise UserError(
            f"dataset {', '.join(traj.dataset_ids)} has episodes of {last + 1} steps, but the "
            f"model embeds timesteps 0..{max_ep_len - 1} (max_ep_len {max_ep_len}); use data of "
            f"episodes up to {max_ep_len} steps, or a model with max_ep_len >= {last + 1}"
        )


def recorded_env_kwargs(spec) -> dict:
    """The kwargs a dataset's env spec holds beyond its id's registered defaults (rendering
    aside); {} for an id this process has not registered (nothing to compare with)."""
    import gymnasium as gym

    if spec is None or spec.id not in gym.registry:
        return {}
    defaults, missing = gym.registry[spec.id].kwargs, object()
    differ = {}
    for key, value in spec.kwargs.items():
        default = defaults.get(key, missing)
        try:
            same = default is not missing and bool(np.all(np.asarray(default) == np.asarray(value)))
        except (TypeError, ValueError):  # shapes that do not compare: different
            same = False
        if key not in RENDER_KWARGS and not same:
            differ[key] = value
    return differ


def warn_env_kwargs(dataset_id: str, spec, env: str) -> None:
    """Warn once if a dataset's env was made with settings the evaluation's env will not have:
    an evaluator makes `env` from its name alone, with the registered defaults."""
    if kwargs := recorded_env_kwargs(spec):
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        warnings.warn(
            f"dataset {dataset_id} was recorded on {spec.id} with {shown}; evaluations make "
            f"{env} from its id alone, with gymnasium's defaults, so they score another env "
            "than the data's: register an id with those settings and record the data on it",
            stacklevel=3,
        )
