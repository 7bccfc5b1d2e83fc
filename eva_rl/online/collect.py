"""Collecting online episodes: the policy's sampled actions in the evaluator's env
slots, and the collected episodes kept on disk (one .npz each) so a resumed run has them all.

Sampling is seeded per episode (from its reset seed, as `NoisyAction`), so an episode's actions
do not depend on the slot, the batch or the process's RNG: a seed fixes the whole collection.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from eva_rl.evaluation import EvalConfig, Evaluator
from eva_rl.io import atomic_write_bytes
from eva_rl.online.policy import ACTION_BOUND, ActionMean, GaussianHead
from eva_rl.rollout import MeanAction

SAMPLE_TAG = 0x6F6E6C696E65  # "online": keeps these draws apart from NoisyAction's


class SampledAction(MeanAction):
    """An action drawn from the Gaussian head at the DT's pre-tanh output mu: tanh(mu + sigma
    eps) (or mu + sigma eps without tanh), eps from a generator seeded by the episode's seed.
    With `expl_noise` (the deterministic policy) it is the DT's action plus expl_noise x eps
    instead, clamped into (-1, 1) when the DT ends in tanh (the TD3 reference's `noise_level`).
    `capture` must be open on the model while the rollout runs (it records mu)."""

    def __init__(self, head: GaussianHead, capture: ActionMean, expl_noise: float | None = None):
        self.std = head.log_std.detach().exp().cpu().numpy().astype(np.float64)
        self.squash, self.capture, self.expl_noise = head.squash, capture, expl_noise
        self.rngs: dict[int, np.random.Generator] = {}

    def start(self, slot: int, seed: int) -> None:
        self.rngs[slot] = np.random.default_rng([seed, SAMPLE_TAG])

    def choose(self, slots: np.ndarray, mean: np.ndarray, obs: np.ndarray) -> np.ndarray:
        # the forward pads its rows to a minimum (eva_rl.windows): the first rows are ours
        mu = self.capture.value[: len(slots)].float().cpu().numpy().astype(np.float64)
        eps = np.stack([self.rngs[s].standard_normal(mu.shape[1]) for s in slots])
        if self.expl_noise is None:
            x = mu + self.std * eps
            return (np.tanh(x) if self.squash else x).astype(np.float32)
        if not self.squash:
            return (mu + self.expl_noise * eps).astype(np.float32)
        return np.clip(np.tanh(mu) + self.expl_noise * eps, -ACTION_BOUND, ACTION_BOUND).astype(
            np.float32
        )


class Collector(Evaluator):
    """An `Evaluator` that records episodes played with `SampledAction` at the exploration
    targets; `collect(first_seed)` plays `cfg.episodes` episodes per env from that seed."""

    def __init__(self, agent, envs: list[str], cfg: EvalConfig, head: GaussianHead,
                 expl_noise: float | None = None):  # fmt: skip
        super().__init__(agent, envs, cfg, progress=False, record=True)
        self.head, self.expl_noise = head, expl_noise
        self._sampler: SampledAction | None = None

    def _choice(self) -> MeanAction:
        return self._sampler

    def collect(self, first_seed: int) -> dict:
        """Env -> its episodes (each with `trajectory`), reset with seeds first_seed + i."""
        self.cfg = dataclasses.replace(self.cfg, seed=first_seed)
        with ActionMean(self.agent.model) as capture:
            self._sampler = SampledAction(self.head, capture, self.expl_noise)
            result = self.run()
        return {name: r.episodes for name, r in result.envs.items()}


def save_episode(path: Path, record: dict, env: str) -> None:
    """One collected episode as .npz (Minari's layout and its env), written atomically."""
    arrays = {k: np.asarray(record[k]) for k in ("observations", "actions", "rewards",
                                                 "terminations", "truncations")}  # fmt: skip
    arrays |= {f"info_{k}": np.asarray(v) for k, v in record.get("infos", {}).items()}
    buffer = io.BytesIO()
    np.savez(buffer, env=np.asarray(env), seed=np.asarray(record.get("seed", -1)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_episode(path: Path) -> tuple[dict, str]:
    """An episode `save_episode` wrote, and its env."""
    with np.load(path, allow_pickle=False) as z:
        record = {k: z[k] for k in z.files if k not in ("env", "seed") and "info_" not in k}
        record["infos"] = {k.removeprefix("info_"): z[k] for k in z.files if k.startswith("info_")}
        record["seed"] = int(z["seed"])
        return record, str(z["env"])


class EpisodeStore:
    """The run's `episodes/` folder: episode n is `NNNNNNN.npz`; a resume drops the ones
    collected after its checkpoint (they will be collected again, identically)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, n: int) -> Path:
        return self.directory / f"{n:07d}.npz"

    def add(self, n: int, record: dict, env: str) -> None:
        save_episode(self.path(n), record, env)

    def truncate(self, count: int) -> None:
        for path in self.directory.glob("*.npz"):
            if int(path.stem) >= count:
                path.unlink()

    def load(self, count: int) -> list[tuple[dict, str]]:
        return [load_episode(self.path(n)) for n in range(count)]
