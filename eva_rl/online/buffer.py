"""ODT's replay buffer of whole trajectories; the Minari dataset of what an online run collected.

As in the Online Decision Transformer's reference code (facebookresearch/online-dt,
`replay_buffer.py` and `data.py`): the buffer holds at most `capacity` trajectories (ODT: 1000),
is seeded with the offline data's highest-return ones and, once full, replaces the oldest entry
with each new one, overwriting from slot 0. The seeded trajectories are ordered by return, lowest
first (ODT's `main.py` `_load_dataset` sorts them so), so the lowest-return one is the first to
go, then the next, then the online ones in the order they came. ODT's loader also drops the
single lowest-return trajectory (a quirk of its timestep count); here it is kept. With several
envs (ODT has one) each env keeps a share of the buffer in proportion to its episodes.
A collected trajectory enters with its return-to-go recomputed from its own rewards (hindsight
relabelling), not the exploration target it was played with.

Segments come from `SegmentSampler` on the buffer's current `Trajectories`, so they are drawn
exactly as in offline fine-tuning: trajectory in proportion to its length (ODT's `sample_trajs`),
uniform start, left padding, the checkpoint's state statistics and return scale. The sampler is
rebuilt lazily after the buffer changes (an online iteration adds one trajectory, then samples
hundreds of batches), and every rebuilt sampler draws from the buffer's one generator.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eva_rl.data.segments import SegmentSampler, Trajectories
from eva_rl.errors import UserError

DEFAULT_CAPACITY = 1000  # ODT's `replay_size`
STATE_VERSION = 1


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted suffix sums, summed in float64 and stored float32: what `load_trajectories`
    computes for a recorded episode, so a trajectory's relabelled returns equal those of the
    dataset it is later written to."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return np.cumsum(rewards[::-1])[::-1].astype(np.float32)


def as_recorded(episode: Any) -> dict[str, Any]:
    """An episode in Minari's layout (observations T+1, actions T, rewards T, terminations,
    truncations, infos, seed) from a dict of that layout or from an evaluator `Episode` recorded
    with `record=True` (its `trajectory` and `seed`)."""
    if isinstance(episode, Mapping):
        record = dict(episode)
    else:
        trajectory = getattr(episode, "trajectory", None)
        if trajectory is None:
            raise ValueError("an episode without its steps: evaluate with record=True")
        record = {**trajectory, "seed": episode.seed}
    record.setdefault("infos", {})
    obs, actions = np.asarray(record["observations"]), np.asarray(record["actions"])
    n = len(record["rewards"])
    if n < 1 or len(obs) != n + 1 or len(actions) != n:
        raise ValueError(
            f"an episode needs T >= 1 rewards, T actions and T+1 observations; got "
            f"{n}, {len(actions)} and {len(obs)}"
        )
    return record


@dataclass
class _Entry:
    """One trajectory in the buffer: raw states (T, S), actions (T, A), relabelled RTG (T,)."""

    states: np.ndarray
    actions: np.ndarray
    returns_to_go: np.ndarray
    env: int  # index into the buffer's `envs`
    online: bool  # collected by the run (else seeded from the offline data)
    terminated: bool = False  # ended by termination, not a cut (for TD3's terminal targets)


class TrajectoryBuffer:
    """ODT's replay buffer: whole trajectories, first in first out, sampled as DT segments."""

    def __init__(
        self,
        traj: Trajectories,
        capacity: int,
        context: int,
        return_scale: float,
        state_mean: np.ndarray,
        state_std: np.ndarray,
        seed: int,
        device: str | torch.device = "cpu",
    ):
        """Seeded with the `capacity` highest-return trajectories of `traj`, lowest first."""
        if capacity < 1:
            raise UserError(f"the replay buffer's capacity must be >= 1, got {capacity}")
        self.capacity, self.context, self.return_scale = capacity, context, float(return_scale)
        self.state_mean = np.asarray(state_mean, np.float32)
        self.state_std = np.asarray(state_std, np.float32)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.state_dim, self.act_dim = traj.state_dim, traj.act_dim
        self.envs, self.dataset_ids = list(traj.envs), list(traj.dataset_ids)
        self.time_limits = dict(traj.time_limits)
        self.added = 0  # online trajectories added over the run, evicted ones included
        self.entries = [self._seed_entry(traj, e) for e in _top_by_return(traj, capacity)]
        self._sampler: SegmentSampler | None = None

    @classmethod
    def for_agent(cls, agent, traj: Trajectories, capacity: int = DEFAULT_CAPACITY, seed: int = 0):
        """A buffer whose segments are what `agent.segment_sampler` would give: the checkpoint's
        context length, return scale and state statistics, on its device."""
        agent.check_dims(traj.state_dim, traj.act_dim, f"dataset {', '.join(traj.dataset_ids)}")
        meta = agent.meta
        return cls(traj, capacity, meta.context_length, meta.return_scale,
                   np.asarray(meta.state_mean, np.float32), np.asarray(meta.state_std, np.float32),
                   seed=seed, device=agent.device)  # fmt: skip

    @staticmethod
    def _seed_entry(traj: Trajectories, episode: int) -> _Entry:
        start = int(traj.episode_start[episode])
        s = slice(start, start + int(traj.episode_length[episode]))
        ended = traj.episode_terminated
        return _Entry(traj.states[s], traj.actions[s], traj.returns_to_go[s],
                      int(traj.episode_env[episode]), online=False,
                      terminated=bool(ended[episode]) if ended is not None else False)  # fmt: skip

    def __len__(self) -> int:
        return len(self.entries)

    def returns(self) -> np.ndarray:
        """Each trajectory's return, oldest entry first (the next to be evicted)."""
        return np.asarray([float(e.returns_to_go[0]) for e in self.entries])

    def online(self) -> np.ndarray:
        """Per entry, oldest first: whether the run collected it."""
        return np.asarray([e.online for e in self.entries], dtype=bool)

    def add(self, episode: Any, env: str | None = None) -> None:
        """Append a collected episode (see `as_recorded`) with its return-to-go recomputed from
        its own rewards, evicting the oldest entry when full. `env`: the env it was played in;
        may be left out when the buffer holds one env."""
        record = as_recorded(episode)
        n = len(record["rewards"])
        states = np.asarray(record["observations"], np.float32)[:n].reshape(n, -1)
        actions = np.asarray(record["actions"], np.float32).reshape(n, -1)
        if (states.shape[1], actions.shape[1]) != (self.state_dim, self.act_dim):
            raise ValueError(
                f"an episode of (state_dim, act_dim) = ({states.shape[1]}, {actions.shape[1]}) "
                f"for a buffer of ({self.state_dim}, {self.act_dim})"
            )
        rtg = returns_to_go(record["rewards"])
        if not np.isfinite(rtg).all():
            raise ValueError("an episode with non-finite rewards")
        ended = bool(np.asarray(record.get("terminations", [False]))[-1])
        self.entries.append(_Entry(states, actions, rtg, self._env_index(env), online=True,
                                   terminated=ended))  # fmt: skip
        self.added += 1
        if len(self.entries) > self.capacity:
            self.entries.pop(0)
        self._sampler = None

    def extend(self, episodes: Iterable[Any], env: str | None = None) -> None:
        """`add` each episode in order (ODT's `add_new_trajs`)."""
        for episode in episodes:
            self.add(episode, env)

    def _env_index(self, env: str | None) -> int:
        if env is None:
            if len(self.envs) != 1:
                raise ValueError(f"the buffer holds envs {self.envs}: name the episode's env")
            return 0
        if env not in self.envs:
            self.envs.append(env)
        return self.envs.index(env)

    def trajectories(self) -> Trajectories:
        """The buffer's contents as one `Trajectories`, oldest entry first."""
        lengths = np.asarray([len(e.returns_to_go) for e in self.entries], dtype=np.int64)
        return Trajectories(
            states=np.concatenate([e.states for e in self.entries]),
            actions=np.concatenate([e.actions for e in self.entries]),
            returns_to_go=np.concatenate([e.returns_to_go for e in self.entries]),
            timesteps=np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
            episode_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
            episode_length=lengths,
            episode_env=np.asarray([e.env for e in self.entries], dtype=np.int64),
            envs=list(self.envs),
            dataset_ids=list(self.dataset_ids),
            time_limits=dict(self.time_limits),
            episode_terminated=self.terminated(),
        )

    def terminated(self) -> np.ndarray:
        """Per entry, oldest first: whether its episode ended by termination."""
        return np.asarray([e.terminated for e in self.entries], dtype=bool)

    def sampler(self) -> SegmentSampler:
        """The `SegmentSampler` of the current contents (rebuilt only after a change); it draws
        from the buffer's generator (`default_rng` passes a Generator through unchanged)."""
        if self._sampler is None:
            self._sampler = SegmentSampler(self.trajectories(), self.context, self.return_scale,
                                           self.state_mean, self.state_std, seed=self.rng,
                                           device=self.device)  # fmt: skip
        return self._sampler

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A batch in `SegmentSampler.sample`'s layout, so the training loop takes either."""
        return self.sampler().sample(batch_size)

    def sample_with_ends(self, batch_size: int) -> dict[str, torch.Tensor]:
        """`sample`'s batch (the same draws) plus `terminal_end` (B,): 1 where the segment's last
        step is the last step of an episode that terminated (TD3's done = 1 there)."""
        sampler = self.sampler()
        batch = sampler.sample(batch_size)
        episodes, ends = sampler.last
        flags = ends & sampler.traj.episode_terminated[episodes]
        batch["terminal_end"] = torch.from_numpy(flags.astype(np.float32)).to(self.device)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to sample what an uninterrupted one would: contents in
        insertion order, the generator and the settings that shape a batch. Tensors and plain
        containers only, so it loads with `torch.load(weights_only=True)`."""
        traj = self.trajectories()
        return {
            "version": STATE_VERSION,
            "capacity": self.capacity,
            "context": self.context,
            "return_scale": self.return_scale,
            "envs": list(self.envs),
            "dataset_ids": list(self.dataset_ids),
            "time_limits": dict(self.time_limits),
            "added": self.added,
            "states": torch.from_numpy(traj.states),
            "actions": torch.from_numpy(traj.actions),
            "returns_to_go": torch.from_numpy(traj.returns_to_go),
            "lengths": torch.from_numpy(traj.episode_length),
            "env": torch.from_numpy(traj.episode_env),
            "online": torch.from_numpy(self.online()),
            "terminated": torch.from_numpy(self.terminated()),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents and the generator by a saved buffer's."""
        ours = (self.capacity, self.context, self.return_scale)
        theirs = (state["capacity"], state["context"], state["return_scale"])
        if state.get("version") != STATE_VERSION or ours != theirs:
            raise UserError(
                f"the saved replay buffer has (capacity, context, return scale) {theirs}, this "
                f"run {ours}; resume with the settings it was saved with"
            )
        bounds = np.cumsum(state["lengths"].numpy())[:-1]
        parts = [np.split(state[k].numpy(), bounds) for k in ("states", "actions", "returns_to_go")]
        ended = state.get("terminated", torch.zeros_like(state["online"]))  # older: unknown
        flags = zip(state["env"].tolist(), state["online"].tolist(), ended.tolist(), strict=True)
        self.entries = [_Entry(s, a, g, int(e), bool(o), bool(d)) for (s, a, g), (e, o, d) in
                        zip(zip(*parts, strict=True), flags, strict=True)]  # fmt: skip
        self.envs, self.dataset_ids = list(state["envs"]), list(state["dataset_ids"])
        self.time_limits, self.added = dict(state["time_limits"]), int(state["added"])
        self.rng.bit_generator.state = state["rng"]
        self._sampler = None


def _top_by_return(traj: Trajectories, capacity: int) -> np.ndarray:
    """The episodes the buffer starts with, lowest return first (ties: dataset order): the
    `capacity` highest-return ones, as ODT keeps them (module docstring). With several envs
    each keeps a share of `capacity` in proportion to its episodes (largest remainder), its
    own best, and the shares interleave by rank within their env: ranked together, one env's
    larger returns (another reward scale) would crowd the others' data out of the buffer."""
    returns = traj.returns_to_go[traj.episode_start].astype(np.float64)
    envs = np.unique(traj.episode_env)
    counts = np.array([np.sum(traj.episode_env == e) for e in envs])
    keep = min(capacity, int(counts.sum()))
    exact = keep * counts / counts.sum()
    shares = np.floor(exact).astype(int)
    shares[np.argsort(shares - exact, kind="stable")[: keep - shares.sum()]] += 1
    chosen, rank = [], []
    for env, share in zip(envs, shares, strict=True):
        mine = np.flatnonzero(traj.episode_env == env)
        best = mine[np.argsort(returns[mine], kind="stable")][len(mine) - share :]
        chosen += best.tolist()
        rank += [(i + 1) / share for i in range(share)]
    return np.asarray(chosen, dtype=np.int64)[np.argsort(rank, kind="stable")]


def write_online_dataset(
    episodes: Sequence[Any],
    dataset_id: str,
    env: str,
    horizon: int,
    config: Any,
    root: str | Path | None = None,
    overwrite: bool = False,
    description: str = "",
) -> dict[str, Any]:
    """Write the episodes an online run collected (see `as_recorded`) as Minari dataset
    `dataset_id`, through the writer `data build` and `data record` use (staged, then moved into
    place in one rename), with `config` (the run's config dataclass) beside it; its summary."""
    from eva_rl.data import catalog
    from eva_rl.envs import make_env, metaworld_task_names
    from eva_rl.io import check_writable

    records = [as_recorded(e) for e in episodes]
    if not records:
        raise UserError(f"no episodes to write to {dataset_id}")
    catalog.check_id(dataset_id)
    root = catalog.datasets_root(root)
    if catalog.exists(root, dataset_id) and not overwrite:
        raise UserError(f"dataset {dataset_id} already exists under {root}; pass --overwrite")
    check_writable(root, directory=True)
    started = time.perf_counter()
    metaworld = env in metaworld_task_names()
    environment = make_env(env, horizon, cut=True)  # the dataset's env names the cut
    try:
        with catalog.staging(root) as staged:
            return catalog.write_dataset(
                staged,
                root,
                dataset_id,
                records,
                environment,
                algorithm="eva_rl-online",
                description=description
                or f"{env}: {len(records)} episodes collected by online fine-tuning (ODT), "
                f"cut at {horizon} steps.",
                requirements=["metaworld>=3.0", "mujoco>=3.0"]
                if metaworld
                else ["gymnasium[mujoco]>=1.0"],
                summary={
                    "env": env,
                    "policy": "online fine-tuning (ODT)",
                    "horizon": horizon,
                    "seconds": round(time.perf_counter() - started, 2),
                },
                config=config,
                overwrite=overwrite,
            )
    finally:
        environment.close()
