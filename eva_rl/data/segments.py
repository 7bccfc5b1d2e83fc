"""Decision-Transformer training segments sampled from one or many Minari datasets.

All episodes are flattened into contiguous arrays once; a batch is then pure index arithmetic:
episode chosen in proportion to its length (so tasks mix by their share of transitions), a
uniform start, up to K steps, left-padded with an attention mask. Nothing here assumes
Meta-World: any Minari dataset with Box observations and actions works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from einops import rearrange

from eva_rl.data import catalog
from eva_rl.data.checks import check_episode, warn_env_kwargs, warn_outside
from eva_rl.envs import ENV_ID
from eva_rl.errors import UserError

CONSTANT_STD = 1e-6  # a feature whose std is at most this never varied in the stats' data


def feature_scale(std) -> np.ndarray:
    """The divisor of each state feature: its std, or 1 where the feature never varied.

    Dividing by a floored std (the old rule) scaled any later deviation of such a feature by up
    to 1e6, which swamped every other feature after the DT's embedding and layer norm (hammer-v3
    reports a quaternion that the MT40 data always left at 0: every hammer state looked alike).
    Scale 1 leaves the data the stats came from unchanged (its deviation there is 0) and passes
    new variation through centred, unscaled, as scikit-learn's StandardScaler does.
    """
    std = np.asarray(std, dtype=np.float64)
    return np.where(std <= CONSTANT_STD, 1.0, std)


# Segments per batch, at most: far above any batch that fits a GPU (the paper's is 128), low
# enough that a mistyped size fails here in one line, not in the allocator of a forward pass
MAX_BATCH = 65536


def time_limit(dataset) -> int | None:
    """The episode length limit of the env a dataset recorded (None if it names none)."""
    spec = dataset.spec.env_spec
    if spec is None:
        return None
    if spec.id == ENV_ID:
        return spec.kwargs.get("horizon")
    return spec.max_episode_steps


def env_name(dataset) -> str:
    """The name an evaluator builds the env from: the Meta-World task, else the gym id."""
    spec = dataset.spec.env_spec
    if spec is None:
        return dataset.spec.dataset_id
    return spec.kwargs["task"] if spec.id == ENV_ID else spec.id


@dataclass
class Trajectories:
    """Every step of every episode, flattened; `episode_*` index into the flat arrays."""

    states: np.ndarray  # (N, state_dim) float32, raw
    actions: np.ndarray  # (N, act_dim) float32
    returns_to_go: np.ndarray  # (N,) float32, undiscounted suffix sums, raw
    timesteps: np.ndarray  # (N,) int64
    episode_start: np.ndarray  # (E,) int64
    episode_length: np.ndarray  # (E,) int64
    episode_env: np.ndarray  # (E,) int64, index into `envs`
    envs: list[str]  # env name per source dataset
    dataset_ids: list[str]
    time_limits: dict[str, int | None] = field(default_factory=dict)  # env -> its own limit
    # (E,) bool: the episode ended by termination, not a cut (None: unknown, read as not)
    episode_terminated: np.ndarray | None = None

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def state_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std over all states (1 where a feature is constant: `feature_scale`)."""
        mean = self.states.mean(0, dtype=np.float64)
        std = self.states.std(0, dtype=np.float64)
        return mean.astype(np.float32), feature_scale(std).astype(np.float32)

    def select(self, episodes: np.ndarray) -> Trajectories:
        """The trajectories of the given episode indices (in that order)."""
        parts = [
            np.arange(s, s + n)
            for s, n in zip(
                self.episode_start[episodes], self.episode_length[episodes], strict=True
            )
        ]
        index = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        lengths = self.episode_length[episodes]
        return Trajectories(
            states=self.states[index],
            actions=self.actions[index],
            returns_to_go=self.returns_to_go[index],
            timesteps=self.timesteps[index],
            episode_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
            episode_length=lengths,
            episode_env=self.episode_env[episodes],
            envs=self.envs,
            dataset_ids=self.dataset_ids,
            time_limits=self.time_limits,
            episode_terminated=None
            if self.episode_terminated is None
            else self.episode_terminated[episodes],
        )

    def split(self, fraction: float, seed: int) -> tuple[Trajectories, Trajectories | None]:
        """(train, held-out): `fraction` of each env's episodes held out, chosen by `seed` and
        the env's episode count alone (a generator per env), so every run on a dataset holds out
        the same episodes, whatever other datasets it trains on. None when nothing is held
        out."""
        if fraction <= 0:
            return self, None
        held = []
        for i in range(len(self.envs)):
            rng = np.random.default_rng(seed)  # one for all envs made a later env's split
            mine = np.flatnonzero(self.episode_env == i)  # depend on the envs before it
            count = int(round(fraction * len(mine)))
            if count >= len(mine):
                raise UserError(
                    f"holding out {fraction:.0%} of {self.envs[i]}'s {len(mine)} episodes leaves "
                    "none to train on; lower data.heldout"
                )
            held += list(rng.choice(mine, size=count, replace=False))
        if not held:
            return self, None
        mask = np.zeros(len(self.episode_length), dtype=bool)
        mask[held] = True
        return self.select(np.flatnonzero(~mask)), self.select(np.flatnonzero(mask))

    def horizon(self) -> int:
        """The longest time limit of the recorded envs, else the longest episode."""
        limits = [limit for limit in self.time_limits.values() if limit]
        return max(limits) if limits else int(self.episode_length.max())

    def max_returns(self) -> dict[str, float]:
        """Best episode return per env: the paper's evaluation target."""
        ep_returns = self.returns_to_go[self.episode_start]
        return {
            name: float(ep_returns[self.episode_env == i].max()) for i, name in enumerate(self.envs)
        }


def _dims(dataset) -> tuple[int, int]:
    """(state_dim, act_dim) of a Minari dataset with Box spaces."""
    obs, act = dataset.observation_space, dataset.action_space
    if not isinstance(obs, gym.spaces.Box) or not isinstance(act, gym.spaces.Box):
        raise UserError(
            f"dataset {dataset.spec.dataset_id} has spaces {obs} / {act}; a Decision "
            "Transformer needs Box observations and actions"
        )
    return int(np.prod(obs.shape)), int(np.prod(act.shape))


def load_trajectories(dataset_ids: list[str], root: str | Path | None = None) -> Trajectories:
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "a", "g", "t")}
    lengths, env_index, envs, terminated = [], [], [], []
    shapes: dict[str, tuple[int, int]] = {}
    limits: dict[str, int | None] = {}  # env -> its time limit
    limit_from: dict[str, str] = {}  # env -> the dataset its limit was read from
    if len(set(dataset_ids)) != len(dataset_ids):
        twice = sorted({d for d in dataset_ids if dataset_ids.count(d) > 1})
        raise UserError(f"dataset {', '.join(twice)} is listed twice: its episodes would count "
                        "twice (and a held-out one would be trained on); list it once")  # fmt: skip
    for ds_id in dataset_ids:
        dataset = catalog.load(ds_id, root)
        name = env_name(dataset)
        if dataset.spec.env_spec is not None and dataset.spec.env_spec.id != ENV_ID:
            warn_env_kwargs(ds_id, dataset.spec.env_spec, name)
        limit = time_limit(dataset)
        if name in limits and limits[name] != limit:  # one env, one horizon to evaluate at
            raise UserError(
                f"datasets {limit_from[name]} and {ds_id} record {name} with different time limits "
                f"({limits[name]} and {limit} steps), and its evaluations have one; list "
                "datasets of one limit, or record them again at one"
            )
        limits[name] = limit
        limit_from.setdefault(name, ds_id)
        shapes[ds_id] = _dims(dataset)
        if len(set(shapes.values())) > 1:
            (first, a), (_, b) = next(iter(shapes.items())), (ds_id, shapes[ds_id])
            raise UserError(
                f"datasets of different shapes cannot train one model: {first} has "
                f"(state_dim, act_dim) = {a}, {ds_id} has {b}"
            )
        if name not in envs:
            envs.append(name)
        first = len(columns["a"])
        for ep in dataset.iterate_episodes():
            check_episode(dataset, ep)  # NaN or inf: refused, naming the file and episode
            n = len(ep.rewards)
            rewards = np.asarray(ep.rewards, dtype=np.float64)
            observations = np.asarray(ep.observations, np.float32)[:n]
            columns["s"].append(rearrange(observations, "n ... -> n (...)"))
            columns["a"].append(rearrange(np.asarray(ep.actions, np.float32), "n ... -> n (...)"))
            columns["g"].append(np.cumsum(rewards[::-1])[::-1].astype(np.float32))
            columns["t"].append(np.arange(n, dtype=np.int64))
            lengths.append(n)
            env_index.append(envs.index(name))
            terminated.append(bool(np.asarray(ep.terminations)[-1]))
        warn_outside(ds_id, dataset.action_space, np.concatenate(columns["a"][first:]))
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    return Trajectories(
        states=np.concatenate(columns["s"]),
        actions=np.concatenate(columns["a"]),
        returns_to_go=np.concatenate(columns["g"]),
        timesteps=np.concatenate(columns["t"]),
        episode_start=np.concatenate([[0], np.cumsum(lengths_arr)[:-1]]).astype(np.int64),
        episode_length=lengths_arr,
        episode_env=np.asarray(env_index, dtype=np.int64),
        envs=envs,
        dataset_ids=list(dataset_ids),
        time_limits=limits,
        episode_terminated=np.asarray(terminated, dtype=bool),
    )


class SegmentSampler:
    """Seeded, vectorised sampler of left-padded K-step segments."""

    def __init__(
        self,
        traj: Trajectories,
        context: int,
        return_scale: float,
        state_mean: np.ndarray,
        state_std: np.ndarray,
        seed: int,
        device: str | torch.device = "cpu",
    ):
        self.traj = traj
        self.context = context
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self._p = traj.episode_length / traj.episode_length.sum()
        self._states = torch.from_numpy((traj.states - state_mean) / state_std)
        self._actions = torch.from_numpy(traj.actions)
        self._rtg = torch.from_numpy(traj.returns_to_go / return_scale)
        self._timesteps = torch.from_numpy(traj.timesteps)
        # the last batch's episodes and whether each segment ends on its episode's last step
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """states (B,K,S), actions (B,K,A), returns_to_go (B,K,1), timesteps (B,K),
        attention_mask (B,K): 1 on the real steps, which sit at the right end."""
        t = self.traj
        episodes = self.rng.choice(len(self._p), size=batch_size, p=self._p)
        length = t.episode_length[episodes]
        start = (self.rng.random(batch_size) * length).astype(np.int64)  # uniform in [0, len)
        steps = np.minimum(self.context, length - start)
        j = np.arange(self.context)[None, :]
        pad = (self.context - steps)[:, None]
        mask = j >= pad
        index = t.episode_start[episodes, None] + start[:, None] + (j - pad)
        index = torch.from_numpy(np.where(mask, index, 0))
        m = torch.from_numpy(mask)
        self.last = (episodes, start + steps == length)
        batch = {
            "states": self._states[index] * m[..., None],
            "actions": self._actions[index] * m[..., None],
            "returns_to_go": (self._rtg[index] * m)[..., None],
            "timesteps": self._timesteps[index] * m,
            "attention_mask": m.long(),
        }
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
