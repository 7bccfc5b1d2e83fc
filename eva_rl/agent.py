"""Decision-Transformer agents: construction, checkpoints (HF dir + `eva_rl.json`) and acting.

A checkpoint is a `save_pretrained` directory, loadable by plain transformers, plus `eva_rl.json`
holding what acting needs and the model itself does not: state normalisation, return scale,
context length, horizon, per-env target returns and provenance. A plain transformers DT
directory loads too when those stats are given in a separate JSON file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DecisionTransformerConfig, DecisionTransformerModel

from eva_rl import assets
from eva_rl.assets import HUB_ID, locate_checkpoint
from eva_rl.config import from_dict
from eva_rl.data.checks import check_timesteps
from eva_rl.data.segments import feature_scale
from eva_rl.errors import UserError
from eva_rl.io import atomic_write_dir, atomic_write_json
from eva_rl.layers import check_adapter
from eva_rl.weights import check_weights, weights_digest

META_FILE = "eva_rl.json"


# Bounds, not memory estimates: context_length 100,000 asks for a 90 GB causal mask (3K tokens
# squared) per sample, max_ep_len and hidden_size size embeddings and matrices alike.
MODEL_LIMITS = {"hidden_size": 8192, "n_layer": 128, "n_head": 128, "context_length": 1024,
                "max_ep_len": 100_000}  # fmt: skip


@dataclass
class ModelConfig:
    hidden_size: int = 128  # width of the token embeddings and the blocks
    n_layer: int = 3  # GPT-2 blocks
    n_head: int = 1  # attention heads per block
    context_length: int = 20  # K timesteps, 3K tokens
    dropout: float = 0.1  # GPT-2's embedding, attention and residual dropout
    max_ep_len: int = 1000  # size of the timestep embedding; must exceed the horizon
    activation_function: str = "relu"  # of the blocks' MLPs (transformers' names)

    def __post_init__(self):
        for key, limit in MODEL_LIMITS.items():
            value = getattr(self, key)
            if not 1 <= value <= limit:
                raise UserError(
                    f"model.{key} must be in [1, {limit}], got {value} ({limit} lies far above "
                    "any Decision Transformer's and below sizes that cannot be allocated)"
                )
        if self.hidden_size % self.n_head:
            raise UserError(
                f"model.hidden_size {self.hidden_size} must divide by n_head {self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")


def horizon_message(horizon: int, max_ep_len: int) -> str:
    """The one rule for horizons, in pretraining configs and in stats files alike."""
    return (
        f"horizon {horizon} does not fit the model's max_ep_len {max_ep_len}: an episode of H "
        "steps needs timestep embeddings 0..H-1, so horizon must be in [1, max_ep_len]"
    )


def build_model(cfg: ModelConfig, state_dim: int, act_dim: int) -> DecisionTransformerModel:
    config = DecisionTransformerConfig(
        state_dim=state_dim,
        act_dim=act_dim,
        hidden_size=cfg.hidden_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.hidden_size,
        max_ep_len=cfg.max_ep_len,
        n_positions=3 * cfg.context_length,
        activation_function=cfg.activation_function,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        action_tanh=True,
        bos_token_id=None,  # a DT has no vocabulary; GPT-2's token ids only trigger warnings
        eos_token_id=None,
    )
    return DecisionTransformerModel(config)


@dataclass
class AgentMeta:
    """Everything needed to act with a DT besides its weights."""

    state_mean: list[float]
    state_std: list[float]
    return_scale: float
    context_length: int
    horizon: int
    target_returns: dict[str, float] = field(default_factory=dict)  # env name -> target return
    # env name -> [random, expert] returns: scores are then normalised returns (D4RL's rule)
    reference_returns: dict[str, list[float]] = field(default_factory=dict)
    suite: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.state_mean) != len(self.state_std):
            raise UserError("state_mean and state_std must have the same length")
        if not (self.return_scale > 0 and math.isfinite(self.return_scale)):
            raise UserError(f"return_scale must be a finite number > 0, got {self.return_scale}")
        for key in ("context_length", "horizon"):  # steps attended to; steps of an episode
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(self, key)}; fix the stats")
        if not all(s >= 0 and math.isfinite(s) for s in self.state_std):
            raise UserError("state_std must be finite and >= 0 in every dimension")
        # checkpoints written before `feature_scale` hold 1e-6 for constant features
        self.state_std = feature_scale(self.state_std).tolist()
        numbers = {"state_mean": self.state_mean, "target_returns": self.target_returns.values()}
        for env, ref in self.reference_returns.items():
            numbers[f"reference_returns[{env!r}]"] = ref
            if len(ref) != 2 or ref[1] == ref[0]:
                raise UserError(
                    f"reference_returns[{env!r}] must be [random, expert] with different values"
                )
        for key, values in numbers.items():  # NaN would act, and be scored, silently
            if not all(math.isfinite(v) for v in values):
                raise UserError(f"{key} holds a non-finite number (NaN or inf); fix the stats")


class Agent:
    """A DecisionTransformerModel with its `AgentMeta`."""

    def __init__(self, model: DecisionTransformerModel, meta: AgentMeta, source: str | None = None):
        self.model = model
        self.meta = meta
        self.source = source  # the checkpoint it was loaded from, named in errors
        if len(meta.state_mean) != model.config.state_dim:
            raise UserError(
                f"checkpoint has state_dim={model.config.state_dim} but its normalisation stats "
                f"have {len(meta.state_mean)} entries; the stats belong to another model"
            )
        if 3 * meta.context_length > model.config.n_positions:
            raise UserError(
                f"context_length {meta.context_length} needs {3 * meta.context_length} tokens but "
                f"the model was built for {model.config.n_positions}"
            )
        if meta.horizon > model.config.max_ep_len:
            raise UserError(horizon_message(meta.horizon, model.config.max_ep_len))

    @property
    def state_dim(self) -> int:
        return self.model.config.state_dim

    @property
    def act_dim(self) -> int:
        return self.model.config.act_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_dims(self, state_dim: int, act_dim: int, what: str) -> None:
        """Refuse data or envs whose shapes differ from the checkpoint's, naming both."""
        ours = (self.model.config.state_dim, self.model.config.act_dim)
        if ours != (state_dim, act_dim):
            raise UserError(
                f"checkpoint has state_dim={ours[0]}, act_dim={ours[1]} but {what} has "
                f"state_dim={state_dim}, act_dim={act_dim}; use a checkpoint trained on such data"
            )

    def segment_sampler(self, traj, seed: int):
        """Segments of `traj` as this checkpoint sees them: its context length, return scale and
        state statistics (not the new data's), on its device. Refuses data of other shapes."""
        import numpy as np

        from eva_rl.data.segments import SegmentSampler

        self.check_dims(traj.state_dim, traj.act_dim, f"dataset {', '.join(traj.dataset_ids)}")
        check_timesteps(traj, self.model.config.max_ep_len)
        longest = int(traj.episode_length.max())
        if longest < self.meta.context_length:
            warnings.warn(
                f"every episode of {', '.join(traj.dataset_ids)} is shorter than the context "
                f"({longest} < {self.meta.context_length} steps): segments are mostly padding",
                stacklevel=2,
            )
        return SegmentSampler(
            traj,
            self.meta.context_length,
            self.meta.return_scale,
            np.asarray(self.meta.state_mean, np.float32),
            np.asarray(self.meta.state_std, np.float32),
            seed=seed,
            device=self.device,
        )

    def normalize(self, states: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.meta.state_mean, dtype=states.dtype, device=states.device)
        std = torch.as_tensor(self.meta.state_std, dtype=states.dtype, device=states.device)
        return (states - mean) / std

    @torch.no_grad()
    def predict(self, states, actions, returns_to_go, timesteps, attention_mask) -> torch.Tensor:
        """Actions for the last position of each (normalised, left-padded) history: (B, A)."""
        out = self.model(
            states=states,
            actions=actions,
            returns_to_go=returns_to_go,
            timesteps=timesteps,
            attention_mask=attention_mask,
            return_dict=True,
        )
        return out.action_preds[:, -1]

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint directory atomically: never a half-written one at `path`."""
        atomic_write_dir(path, lambda tmp: self._write(tmp))

    def _write(self, directory: Path) -> None:
        with quiet_transformers():
            self.model.save_pretrained(directory)
        atomic_write_json(directory / META_FILE, dataclasses.asdict(self.meta))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        stats: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ) -> Agent:
        """Load a checkpoint: a local directory or a Hugging Face hub id (cached by
        transformers). `stats` is an `eva_rl.json`-shaped file for a plain transformers DT; the
        public D4RL DTs whose stats ship in `envs/hub/` need none (under the ids recorded there)."""
        source = locate_checkpoint(path)
        if stats is not None:
            meta_path = Path(stats)
            if not meta_path.is_file():
                raise UserError(f"stats file {stats} not found; check the --stats path")
        elif isinstance(source, Path):
            meta_path = source / META_FILE
            if not meta_path.is_file():
                raise UserError(
                    f"{source} has no {META_FILE} (a plain transformers checkpoint?); "
                    f"{assets.STATS_FIX}"
                )
        else:
            meta_path = assets.hub_stats(source)
        meta = read_meta(meta_path)
        try:
            with quiet_transformers():
                model, info = DecisionTransformerModel.from_pretrained(
                    source,
                    local_files_only=isinstance(source, Path),
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,  # reported in `info`, refused below
                )
        except Exception as e:  # safetensors, JSON, network, transformers: one line
            first = str(e).splitlines()[0] if str(e) else ""
            if isinstance(source, Path):
                raise UserError(
                    f"checkpoint {source} cannot be loaded ({type(e).__name__}: {first}); "
                    "restore or retrain it"
                ) from None
            raise UserError(
                f"cannot load {source!r} from the Hugging Face hub ({type(e).__name__}: {first});"
                " check the id and the network (offline, only models already in the cache "
                "load), or pass a local checkpoint directory"
            ) from None
        check_weights(model, info, source)
        return cls(model.to(device).eval(), meta, str(source))


def checkpoint_ref(path: str | os.PathLike) -> str:
    """How saved adapters name their base: an absolute directory, or the hub id."""
    source = locate_checkpoint(path)
    return str(source.resolve()) if isinstance(source, Path) else source


def resolve_base(adapter: Path, named: str) -> str:
    """The base checkpoint of the adapter in `adapter`, which names it `named` (an absolute
    directory or a hub id). Where that directory is not here (a run folder made on another
    machine or checkout), the same path's tails are tried under the working directory and the
    project root (`/elsewhere/results/pretrained/mt40-cpu/agent` -> `results/pretrained/...`),
    and a candidate is taken only if its content is the adapter's base: its weights' sha256 as
    recorded at export, and its normalisation stats as the adapter carries them. The named
    directory itself must have those weights too: a base retrained at the same path would
    merge the adapter onto weights it was not trained with."""
    if HUB_ID.match(named) and not Path(named).exists():
        return named
    own = adapter / META_FILE
    meta = read_meta(own) if own.is_file() else None
    digest = meta.provenance.get("base_weights_sha256") if meta else None
    if Path(named, "config.json").is_file():
        if digest is not None and weights_digest(Path(named)) != digest:
            raise UserError(
                f"adapter {adapter} was trained on other weights than those now at {named} "
                "(their sha256 differs from the one recorded at export); restore that "
                "checkpoint, or fine-tune the adapter again on the new one"
            )
        return named
    parts = Path(named).parts
    for i in range(1 if Path(named).is_absolute() else 0, len(parts)):
        for root in dict.fromkeys((Path.cwd(), assets.root())):
            candidate = root / Path(*parts[i:])
            if (candidate / "config.json").is_file() and _same_base(candidate, meta, digest):
                return str(candidate.resolve())
    raise UserError(
        f"adapter {adapter} was trained on {named}, which is not a checkpoint directory here, "
        f"and no checkpoint with its base's {'weights and ' if digest else ''}stats is at the "
        "end of that path here; restore the base checkpoint at that path"
    )


def _same_base(candidate: Path, meta: AgentMeta | None, digest: str | None) -> bool:
    """Whether `candidate` is the base an adapter recorded: every recorded fingerprint agrees
    (weights' sha256, normalisation stats) and there was at least one to check."""
    checks = []
    if digest is not None:
        checks.append(weights_digest(candidate) == digest)
    if meta is not None and (candidate / META_FILE).is_file():
        checks.append(not _differing(read_meta(candidate / META_FILE), meta))
    return bool(checks) and all(checks)


def _differing(a: AgentMeta, b: AgentMeta) -> list[str]:
    """The fields by which two stats would feed the same weights different inputs."""
    fields = ("state_mean", "state_std", "return_scale", "context_length")
    return [f for f in fields if getattr(a, f) != getattr(b, f)]


def load_agent(path: str | os.PathLike, stats=None, device: str | torch.device = "cpu") -> Agent:
    """Any agent directory: a checkpoint, or a fine-tuned adapter (`agent/` of a finetune run,
    PEFT's format) merged into the base checkpoint it names; the adapter's `eva_rl.json` holds
    the stats of its base, so it needs no `stats`, and a `stats` that differs from them is
    refused: the adapter was trained on inputs normalised its way, so it cannot act with
    the user's file, and ignoring that file silently would report numbers not asked for."""
    from peft import PeftModel

    path = Path(path)
    adapter_config = path / "adapter_config.json"
    if not adapter_config.is_file():
        return Agent.load(path, stats=stats, device=device)
    try:
        base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{adapter_config} is not a readable adapter config ({e!r})") from None
    base_path = resolve_base(path, base_path)
    # the adapter's eva_rl.json carries its base's stats, so a plain base needs no `stats`
    own = path / META_FILE if (path / META_FILE).is_file() else None
    base = Agent.load(base_path, stats=stats or own, device=device)
    meta = base.meta if own is None or stats is None else read_meta(own)  # base read `own`
    if differing := _differing(base.meta, meta):
        raise UserError(
            f"stats file {stats} differs from the stats adapter {path} was trained with (in "
            f"{', '.join(differing)}; its {META_FILE}); the adapter acts with its own: drop --stats"
        )
    check_adapter(path, base.model, base_path)
    with quiet_transformers():
        merged = PeftModel.from_pretrained(base.model, str(path)).merge_and_unload()
    return Agent(merged.eval(), meta, str(path))


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars loading or saving weights (a DT is one small file; the bars are noise
    between a run's own, at every checkpoint), and not PEFT's use of a property transformers
    deprecates (nothing a user can act on), without changing either setting for anything else."""
    from transformers.utils import logging

    was, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()  # no load report: mismatches are refused in one line
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
            yield
    finally:
        logging.set_verbosity(verbosity)
        if was:
            logging.enable_progress_bar()


def read_meta(path: Path) -> AgentMeta:
    """An `eva_rl.json`-shaped file (a checkpoint's, or a `--stats` file), checked."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON stats file ({e}); fix it") from None
    try:
        return from_dict(AgentMeta, data)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
