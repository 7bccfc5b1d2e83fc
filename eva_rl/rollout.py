"""Rollouts: an agent's episodes played in env slots, one forward pass per step for the live
slots of a group.

Slots are split into groups, each a Gymnasium vector env with one sub-env (`EnvSlots`) that
steps its slots' envs, in this process (`SyncVectorEnv`) or in a worker process
(`AsyncVectorEnv`). Groups are stepped asynchronously: while the workers step one group's envs,
this process runs the forward of another, so env steps and forwards overlap. Each slot's
history is kept incrementally as the DT's first-layer tokens (`eva_rl.windows`).

Episode i of an env is reset with seed `seed + i` and played to its end, then its slot takes the
next episode of that env; an episode's outcome does not depend on which slot or group played it
(the forward of a slot does not depend on the other slots in its batch). How an action is chosen
from the model's action is pluggable (`MeanAction` to evaluate, `NoisyAction` to record varied
data); each chosen action must be finite.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from eva_rl.agent import Agent
from eva_rl.data.catalog import success_infos
from eva_rl.errors import UserError
from eva_rl.results import Episode
from eva_rl.runtime import autocast
from eva_rl.windows import ContextWindows

TRACK = ("observations", "actions", "rewards", "terminations", "truncations", "success")


class MeanAction:
    """The model's action as it is (evaluation)."""

    def start(self, slot: int, seed: int) -> None:
        """A new episode (its reset seed) in `slot`."""

    def choose(self, slots: np.ndarray, mean: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """The actions of `slots` given the model's (`mean`) and the observations it saw."""
        return mean


class NoisyAction(MeanAction):
    """The model's action plus Gaussian noise of std `scale` (per slot and action dimension),
    drawn from a generator seeded by the episode's seed: the same noise in any slot."""

    def __init__(self, scale: np.ndarray):
        self.scale = scale
        self.rngs: list[np.random.Generator | None] = [None] * len(scale)

    def start(self, slot: int, seed: int) -> None:
        self.rngs[slot] = np.random.default_rng([seed, 0x6E6F697365])

    def choose(self, slots: np.ndarray, mean: np.ndarray, obs: np.ndarray) -> np.ndarray:
        noise = np.stack([self.rngs[s].standard_normal(mean.shape[1]) for s in slots])
        return mean + noise * self.scale[slots]


class SlotGroup:
    """A vector env holding one `EnvSlots` group; global slots `offset .. offset + size`.
    Steps and resets are sent, then received: in a worker process they run meanwhile."""

    def __init__(self, vec: gym.vector.VectorEnv, names: list[str | None], offset: int):
        self.vec, self.names, self.offset = vec, names, offset
        self.slots = np.arange(offset, offset + len(names))
        self.in_flight = False
        self._worker = isinstance(vec, gym.vector.AsyncVectorEnv)
        self._pending: np.ndarray | dict | None = None

    def send(self, actions: np.ndarray) -> None:
        if self._worker:
            self.vec.step_async(actions)
        else:
            self._pending = actions
        self.in_flight = True

    def receive(self) -> tuple[np.ndarray, dict]:
        self.in_flight = False
        if self._worker:
            obs, _, _, _, info = self.vec.step_wait()
        else:
            obs, _, _, _, info = self.vec.step(self._pending)
        return obs[0], {key: value[0] for key, value in info.items()}

    def send_reset(self, assign: dict[int, tuple[int, str | None]]) -> None:
        """Start episodes in local slots: {slot: (seed, video path or None)}."""
        options = {"assign": {0: assign}}
        if self._worker:
            self.vec.reset_async(options=options)
        else:
            self._pending = options

    def receive_reset(self) -> np.ndarray:
        if self._worker:
            return self.vec.reset_wait()[0][0]
        return self.vec.reset(options=self._pending)[0][0]


@dataclass
class Live:
    """The episode a slot is playing."""

    index: int  # its index among its env's episodes
    episode: Episode
    track: dict[str, list] | None = None  # its steps, when recorded


class Rollouts:
    """Live episodes in the slots of `groups`: `begin`, then `step` while `running`, then
    `finish`. State lives across calls (windows, live episodes, in-flight groups)."""

    def __init__(self, agent: Agent, groups: list[SlotGroup], targets: dict[str, float],
                 bounds: dict[str, tuple[np.ndarray, np.ndarray]], choice: MeanAction,
                 device: torch.device, precision: str, horizon: int, seed: int = 0,
                 record: bool = False):  # fmt: skip
        self.agent, self.groups, self.targets, self.choice = agent, groups, targets, choice
        self.device, self.precision, self.horizon = device, precision, horizon
        self.seed, self.record = seed, record
        self.names = [name for g in groups for name in g.names]  # None: an idle slot
        n = len(self.names)
        low = [bounds[name][0] if name else np.zeros(agent.act_dim) for name in self.names]
        high = [bounds[name][1] if name else np.zeros(agent.act_dim) for name in self.names]
        self.low, self.high = np.stack(low).astype(np.float32), np.stack(high).astype(np.float32)
        self.live: list[Live | None] = [None] * n
        self.obs = np.zeros((n, agent.state_dim), np.float32)  # each slot's latest observation
        self.acted = np.zeros((n, agent.act_dim), np.float32)  # each slot's latest action
        self.windows: ContextWindows | None = None
        self.queue: dict[str, collections.deque] = {}
        self.done: dict[str, dict[int, Episode]] = {}
        self.video_dir, self.videos = None, 0

    @property
    def running(self) -> bool:
        return any(g.in_flight for g in self.groups)

    def begin(self, episodes: int, video_dir=None, videos: int = 0) -> None:
        """Queue `episodes` episodes per env and start the first in every slot; `videos`: the
        first that many episodes of each env are filmed into `video_dir`."""
        envs = dict.fromkeys(name for name in self.names if name)
        self.queue = {name: collections.deque(range(episodes)) for name in envs}
        self.done = {name: {} for name in envs}
        self.video_dir, self.videos = video_dir, videos
        with self._computing():
            self.windows = ContextWindows(self.agent, len(self.names), self.device)
            started = [self._assign(group, group.slots) for group in self.groups]
            for group, slots in zip(self.groups, started, strict=True):  # built meanwhile
                self._started(group, slots)
                self._send(group)

    def step(self) -> int:
        """Take the env step of every group in flight and send its next actions; the number of
        episodes that ended."""
        ended = 0
        with self._computing():
            for group in self.groups:
                if group.in_flight:
                    ended += self._receive(group)
                    self._send(group)
        return ended

    def _computing(self) -> contextlib.ExitStack:
        """No autograd, and the run's precision for the forward and the new tokens' embeddings."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.precision))
        return stack

    def refill(self, group: SlotGroup, free) -> None:
        """Start the next episode of each free slot's env, if any is left."""
        self._started(group, self._assign(group, free))

    def _assign(self, group: SlotGroup, free) -> list[int]:
        """Give each free slot the next episode of its env, if any is left, and send the
        group's resets; the slots that got one."""
        assign, started = {}, []
        for s in free:
            name = self.names[s]
            if name is None or not self.queue[name]:
                continue
            i = self.queue[name].popleft()
            live = Live(i, Episode(self.seed + i, 0.0, 0))
            if self.video_dir is not None and i < self.videos:
                live.episode.video = str(self.video_dir / f"{name}-seed{self.seed + i}.mp4")
            assign[s - group.offset] = (self.seed + i, live.episode.video)
            self.live[s] = live
            started.append(s)
        if started:
            group.send_reset(assign)
        return started

    def _started(self, group: SlotGroup, started: list[int]) -> None:
        """Take the first observations of the episodes `_assign` started."""
        if not started:
            return
        obs = group.receive_reset()
        rows = np.asarray(started)
        self.obs[rows] = obs[rows - group.offset]
        for s in started:
            self.choice.start(s, self.live[s].episode.seed)
            if self.record:
                self.live[s].track = {key: [] for key in TRACK}
                self.live[s].track["observations"].append(self.obs[s].copy())
        targets = [self.targets[self.names[s]] for s in started]
        states = torch.as_tensor(self.obs[rows], device=self.device)
        self.windows.start(torch.as_tensor(rows, device=self.device), states, targets)

    def _send(self, group: SlotGroup) -> None:
        """The forward for the group's live slots, then their env step (asynchronously)."""
        live = np.asarray([s for s in group.slots if self.live[s] is not None])
        if not len(live):
            return
        with autocast(self.device, self.precision):
            mean = self.windows.actions(torch.as_tensor(live, device=self.device))
        act = self.choice.choose(live, mean.float().cpu().numpy(), self.obs[live])
        if not np.isfinite(act).all():
            self._refuse(act, live)
        act = np.clip(act, self.low[live], self.high[live]).astype(np.float32, copy=False)
        self.acted[live] = act
        batch = np.zeros((1, len(group.slots), self.agent.act_dim + 1), dtype=np.float32)
        batch[0, live - group.offset, :-1] = act
        batch[0, live - group.offset, -1] = 1.0  # step these slots; the others stay idle
        group.send(batch)

    def _refuse(self, act: np.ndarray, live: np.ndarray) -> None:
        """A non-finite action is an error naming the agent, never a step or a score."""
        row = int(np.flatnonzero(~np.isfinite(act).all(axis=1))[0])
        s, who = live[row], " ".join(filter(None, ["the agent", self.agent.source]))
        episode = self.live[s].episode
        where = f"{self.names[s]} (episode seed {episode.seed}, step {episode.length})"
        if not np.isfinite(self.obs[s]).all():
            raise UserError(f"env {where} returned a non-finite observation {self.obs[s]}; "
                            "the env is broken: fix it or evaluate elsewhere")  # fmt: skip
        raise UserError(
            f"{who} chose a non-finite action {act[row]} in {where}: its weights or stats "
            "overflow to NaN or inf; restore or retrain it"
        )

    def _receive(self, group: SlotGroup) -> int:
        """Book the group's env step: returns, successes, recorded steps, ended episodes (their
        slots refilled), the windows of the others."""
        obs, info = group.receive()
        going, rewards, free = [], [], []
        for s in group.slots:
            live = self.live[s]
            if live is None:
                continue
            j = s - group.offset
            ep, r = live.episode, float(info["reward"][j])
            ep.ret += r
            ep.length += 1
            success = float(info["success"][j])
            if not np.isnan(success):
                ep.success_final = success
                ep.success_any = max(ep.success_any or 0.0, success)
            terminated, truncated = bool(info["terminated"][j]), bool(info["truncated"][j])
            ended = terminated or truncated or ep.length == self.horizon
            self.obs[s] = obs[j]
            if live.track is not None:
                cut = truncated or (ep.length == self.horizon and not terminated)
                step = (obs[j].copy(), self.acted[s].copy(), r, terminated, cut, success)
                for key, value in zip(TRACK, step, strict=True):
                    live.track[key].append(value)
            if ended:
                if live.track is not None:
                    ep.trajectory = _as_arrays(live.track)
                self.done[self.names[s]][live.index] = ep
                self.live[s] = None
                free.append(s)
            else:
                going.append(s)
                rewards.append(r)
        if going:
            rows = np.asarray(going)
            self.windows.push(torch.as_tensor(rows, device=self.device),
                              torch.as_tensor(self.acted[rows], device=self.device), rewards,
                              torch.as_tensor(self.obs[rows], device=self.device))  # fmt: skip
        if free:
            self.refill(group, free)
        return len(free)

    def finish(self) -> dict[str, list[Episode]]:
        """Every env's episodes in order, with the last info numbers of each; videos written."""
        for group in self.groups:
            if self.video_dir is not None:
                group.vec.call("flush_videos")
            for ended in group.vec.call("end_infos"):
                for (name, seed), info in ended.items():
                    self.done[name][seed - self.seed].final_info = info
        return {name: [done[i] for i in range(len(done))] for name, done in self.done.items()}


def _as_arrays(track: dict[str, list]) -> dict:
    """A recorded episode in Minari's layout: T+1 observations, T of everything else, and
    `success` as an info (T+1 entries, 0 at reset) where the env reports it."""
    out = {key: np.asarray(track[key]) for key in TRACK[:5]}
    out["observations"] = out["observations"].astype(np.float32)
    out["actions"] = out["actions"].astype(np.float32)
    out["infos"] = success_infos(track["success"])
    return out
