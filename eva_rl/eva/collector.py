"""The collector: principal directions of every adapted layer's inputs on downstream data.

Forward pre-hooks record each target layer's input on the valid tokens of a batch (the DT's
per-timestep attention mask expanded to its interleaved return/state/action tokens); once every
layer still recording has its input, the hook stops the forward pass. Two methods:

- `covariance` (default): exact streaming statistics (token count, sum, X^T X accumulated in
  float64); after each batch the top eigenvectors of each layer's centred scatter matrix, batched
  over layers of equal width (`top_directions`: refined from the previous batch's for wide
  layers, a full `eigh` for narrow ones). They are the top right-singular vectors of all centred
  inputs seen so far; a batch costs one matrix product per layer and a few small ones, instead
  of an SVD of the stacked inputs.
- `incremental-svd`: the Ross et al. (2008) incremental SVD that PEFT's EVA uses (exact SVD of
  `[S * V; X - batch_mean; mean_correction]` each batch), kept for comparison.

The statistics and decompositions live in `eva_rl.eva.linalg`; the `Collector` object owns the
hooks and every layer's state, and `collect` drives it over batches.

Under torchrun (`eva_rl.distributed`) every rank records its own shard of the data and the ranks
sum their `covariance` statistics with one all-reduce per batch, whose size depends on the layer
widths only (PEFT all-gathers the raw activations instead); rank 0 decides convergence and
broadcasts the final result, so every rank ends with the same directions and ranks.

Convergence follows PEFT: after each batch every component is compared (cosine) with its value
one batch earlier; a layer has converged when all components it is currently allocated reach
`tau`; converged layers stop recording (and resume if their allocation grows). Collection stops
when every layer has converged or after `max_batches` (then it warns and still returns).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from einops import rearrange
from tqdm import tqdm

from eva_rl import distributed
from eva_rl.config import check_seed
from eva_rl.data.segments import MAX_BATCH
from eva_rl.errors import UserError
from eva_rl.eva.linalg import CovarianceStats, IncrementalSVD, flip_signs, top_directions
from eva_rl.eva.ranks import allocate_ranks
from eva_rl.layers import check_rank, target_layers
from eva_rl.runtime import Precision, autocast, check_precision, resolve_precision

TOKEN_TYPES = ("return", "state", "action")  # order of the DT's interleaved tokens
# covariance: exact streaming statistics; incremental-svd: PEFT's algorithm, for comparison
CollectorMethod = Literal["covariance", "incremental-svd"]


class _Recorded(Exception):
    """Raised by the last hook a batch needs, to skip the rest of the forward pass."""


@dataclass
class CollectorConfig:
    rank: int = 8  # nominal LoRA rank r; the budget is r x number of layers
    rho: float = 2.0  # components kept per layer: round(rho * r)
    tau: float = 0.99  # cosine threshold for convergence
    whiten: bool = False  # divide components by sqrt of their singular values (as PEFT)
    max_batches: int = 100  # cap: stop (with a warning) even if not every layer converged
    batch_size: int = 64  # segments per batch
    # the layers whose inputs are collected (GPT-2 block matrices, by name suffix)
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    # the tokens whose layer inputs count: return-to-go, state, action
    token_types: list[str] = field(default_factory=lambda: list(TOKEN_TYPES))
    # covariance: exact streaming statistics; incremental-svd: PEFT's algorithm, for comparison
    method: CollectorMethod = "covariance"
    seed: int = 0  # segment sampling
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: Precision = "auto"  # of the forward passes; the statistics stay fp32/fp64

    def __post_init__(self):
        check_precision(self.precision)
        if self.rank < 1:
            raise UserError(f"rank must be >= 1, got {self.rank}")
        if not 1.0 <= self.rho < math.inf:
            raise UserError(f"rho must be >= 1 (1 = no redistribution), got {self.rho}")
        if not 0.0 < self.tau <= 1.0:
            raise UserError(f"tau must be in (0, 1], got {self.tau}")
        if self.max_batches < 2:
            raise UserError(f"max_batches must be >= 2 (convergence compares batches), "
                            f"got {self.max_batches}")  # fmt: skip
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise UserError(f"batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        bad = [t for t in self.token_types if t not in TOKEN_TYPES]
        if bad or not self.token_types:
            raise UserError(f"token_types must be a non-empty subset of {list(TOKEN_TYPES)}")
        if self.method not in get_args(CollectorMethod):  # built directly, not through a file
            raise UserError(f"collector.method must be one of {list(get_args(CollectorMethod))}, "
                            f"got {self.method!r}")  # fmt: skip
        check_seed(self.seed, "collector.seed")

    @property
    def components(self) -> int:
        return round(self.rho * self.rank)


@dataclass
class LayerResult:
    components: torch.Tensor  # (rank, d_in): the allocated top directions
    rank: int
    ratios: list[float]  # explained-variance ratios of all round(rho*r) components
    converged_at: int | None  # batch after which the layer stopped recording (None: never)
    tokens: int


@dataclass
class CollectResult:
    layers: dict[str, LayerResult]
    budget: int
    batches: int
    seconds: float
    device: str
    converged: bool
    precision: str = "fp32"


def token_mask(attention_mask: torch.Tensor, token_types: list[str] = TOKEN_TYPES) -> torch.Tensor:
    """(B, K) step mask -> (B, 3K) token mask over (return, state, action) interleaved tokens."""
    keep = torch.tensor([t in token_types for t in TOKEN_TYPES], device=attention_mask.device)
    return rearrange(attention_mask.bool()[:, :, None] & keep, "b k t -> b (k t)")


class Collector:
    """Records the inputs of a model's target layers, batch after batch, and keeps each layer's
    statistics, current top directions and convergence (see the module docstring). Use as a
    context manager: the hooks are registered on entry and removed (and the model's train/eval
    mode restored) on exit."""

    def __init__(self, model: torch.nn.Module, cfg: CollectorConfig):
        if distributed.active() and cfg.method != "covariance":
            raise UserError(f"method {cfg.method!r} runs in one process; use method=covariance")
        self.model, self.cfg = model, cfg
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.layers = target_layers(model, cfg.target_modules)
        check_rank(model, cfg.rank, cfg.target_modules, cfg.rho)  # components fit each layer
        self.names = list(self.layers)
        self.k = cfg.components
        self.budget = cfg.rank * len(self.names)
        self.stats: dict[str, CovarianceStats | IncrementalSVD] = {}
        self.bases: dict[str, torch.Tensor] = {}  # (d, 2k) Ritz vectors of the last refresh
        self.current: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # top k: vectors, values
        self.previous: dict[str, torch.Tensor] = {}  # the top k one batch earlier
        self.stable = {n: torch.zeros(self.k, dtype=torch.bool) for n in self.names}
        self.converged_at: dict[str, int | None] = dict.fromkeys(self.names)
        self.recording: set[str] = set(self.names)
        self.ranks: dict[str, int] = {}
        self.ratios: dict[str, torch.Tensor] = {}
        self.batches = 0
        self._rows: torch.Tensor | None = None  # this batch's valid tokens, as flat indices
        self._inputs: dict[str, torch.Tensor] = {}  # this batch's recorded inputs per layer

    def __enter__(self) -> Collector:
        self._handles = [
            self.layers[n].register_forward_pre_hook(self._hook(n)) for n in self.names
        ]
        self._was_training = self.model.training
        self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self.model.train(self._was_training)

    def _hook(self, name: str):
        """Record the layer's input on the valid tokens; once every recording layer has its
        input, stop the forward pass (nothing after it is needed)."""

        def pre_hook(_module, args):
            if name in self.recording:
                if args[0].dim() != 3 or args[0].shape[1] != self._tokens:
                    raise UserError(f"{name}'s input is not the transformer's token stream "
                                    f"({self._tokens} tokens per segment; it has shape "
                                    f"{tuple(args[0].shape)}): EVA collects the inputs of the "
                                    "blocks' layers (c_attn, c_proj, c_fc), not embeddings or "
                                    "prediction heads")  # fmt: skip
                tokens = rearrange(args[0], "b n d -> (b n) d")  # rows of token_mask's flat index
                self._inputs[name] = tokens.index_select(0, self._rows)
                if len(self._inputs) == len(self.recording):
                    raise _Recorded

        return pre_hook

    def step(self, batch: dict[str, torch.Tensor]) -> bool:
        """Record one batch, update every recording layer's directions and convergence, and
        reallocate the ranks; True once every layer has converged."""
        self.batches += 1
        mask = token_mask(batch["attention_mask"], self.cfg.token_types)
        self._rows, self._tokens = mask.flatten().nonzero().squeeze(1), mask.shape[1]
        with torch.no_grad(), autocast(self.device, self.precision), contextlib.suppress(_Recorded):
            self.model(**batch, return_dict=True)
        inputs, self._inputs = self._inputs, {}
        if not self.stats:
            self._start(inputs)
        self._record(inputs)
        self._refresh()
        for n in self.recording:
            vectors = self.current[n][0]
            if n in self.previous:
                cos = torch.nn.functional.cosine_similarity(vectors, self.previous[n], dim=1)
                self.stable[n] = (cos >= self.cfg.tau).cpu()
            self.previous[n] = vectors
        self.ratios = {n: self._explained(n) for n in self.names}
        self.ranks = allocate_ranks(self.ratios, self.budget)
        # a layer allocated rank 0 has nothing to compare and counts as converged (as PEFT's
        # `torch.all` of an empty tensor): its ratios stay those of the batches it saw, and it
        # regains rank only if the other layers' ratios fall
        done = {n: bool(self.stable[n][: self.ranks[n]].all()) for n in self.names}
        done = _agree(done)
        for n in self.names:
            if done[n] and n in self.recording:
                self.converged_at[n] = self.batches
            elif not done[n]:
                self.converged_at[n] = None
        self.recording = {n for n in self.names if not done[n]}
        return not self.recording

    def _start(self, inputs: dict[str, torch.Tensor]) -> None:
        """On the first batch: every layer's statistics, shifted by its inputs' mean over all
        ranks (the covariance does not depend on the shift; float32 products need it)."""
        for n in self.names:
            x = inputs[n]
            if self.cfg.method == "covariance":
                count = x.new_tensor([x.shape[0]], dtype=torch.float64)
                moments = distributed.all_reduce_sum_(torch.cat([x.sum(0).double(), count]))
                self.stats[n] = CovarianceStats((moments[:-1] / moments[-1]).float())
            else:
                self.stats[n] = IncrementalSVD(x.shape[1], self.k, x.device)

    def _record(self, inputs: dict[str, torch.Tensor]) -> None:
        """Add the batch to each recording layer: incremental-SVD layers update at once;
        covariance layers add their moments, summed over ranks first in one all-reduce."""
        moments = {}
        for n, x in inputs.items():
            if isinstance(self.stats[n], CovarianceStats):
                moments[n] = self.stats[n].moments(x)
            else:
                self.stats[n].update(x)
        for n, (count, total, gram) in _sum_over_ranks(moments).items():
            self.stats[n].add(count, total, gram)

    def _refresh(self) -> None:
        """The top-k directions of every layer that recorded this batch; covariance layers of
        equal width, and equally fresh, decomposed as one stack."""
        groups: dict[tuple[int, bool], list[str]] = {}
        for n in sorted(self.recording):
            st = self.stats[n]
            if isinstance(st, IncrementalSVD):
                self.current[n] = st.decompose(self.k)
            else:
                groups.setdefault((st.sum.shape[0], n not in self.bases), []).append(n)
        for (_, fresh), names in groups.items():
            scatters = torch.stack([self.stats[n].scatter() for n in names])
            previous = None if fresh else torch.stack([self.bases[n] for n in names])
            basis, values = top_directions(scatters, previous, self.k)
            for i, n in enumerate(names):
                self.bases[n] = basis[i]
                vectors = flip_signs(basis[i, :, : self.k].T.contiguous())
                self.current[n] = (vectors, values[i, : self.k].clamp_min(0))

    def _explained(self, name: str) -> torch.Tensor:
        """Explained-variance ratios: component variance / total variance of the inputs."""
        total = self.stats[name].total_variance()
        return (self.current[name][1] / total.clamp_min(1e-30)).cpu()

    def result(self, seconds: float) -> CollectResult:
        """Every layer's allocated components (whitened if asked) and its bookkeeping; rank 0's
        result on every rank of a torchrun job."""
        layers = {}
        for n in self.names:
            vectors, values = self.current[n]
            r = self.ranks[n]
            out = vectors[:r].clone()
            if self.cfg.whiten:  # PEFT divides by sqrt(singular value) = eigenvalue ** 0.25
                out = out / values[:r].clamp_min(1e-24).pow(0.25)[:, None]
            layers[n] = LayerResult(
                components=out.float().cpu(),
                rank=r,
                ratios=[float(v) for v in self.ratios[n]],
                converged_at=self.converged_at[n],
                tokens=self.stats[n].n,
            )
        return CollectResult(
            layers=distributed.broadcast_object(layers),  # rank 0's, bit for bit, everywhere
            budget=self.budget,
            batches=self.batches,
            seconds=seconds,
            device=str(self.device),
            converged=not self.recording,
            precision=self.precision,
        )


def collect(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    cfg: CollectorConfig,
    progress: bool = True,
) -> CollectResult:
    """Record target-layer inputs over `batches` until every layer converged or `max_batches`
    (then it warns and uses the data seen). A finite input that ends first is cycled over, with
    a warning (its statistics count every batch once per pass: the covariance is unchanged).
    Under torchrun each rank passes its own shard's batches and gets the same result."""
    started = time.perf_counter()
    seen: list[dict[str, torch.Tensor]] | None = []  # replayed if the input ends
    source = iter(batches)
    collector = Collector(model, cfg)  # checks the config against the model: before the bar
    bar = tqdm(total=cfg.max_batches, desc="collect", unit="batch", disable=not progress)
    with bar, collector:
        for _ in range(cfg.max_batches):
            batch = next(source, None)
            if batch is None:  # a finite input ended: go round it again
                if not seen:
                    raise UserError("the collector got no batches; pass a non-empty input")
                warnings.warn(
                    f"the collector's input ended after {len(seen)} batches; cycling over them",
                    stacklevel=2,
                )
                source, seen = itertools.cycle(seen), None
                batch = next(source)
            elif seen is not None:
                seen.append(batch)
            done = collector.step(batch)
            bar.update(1)
            bar.set_postfix(converged=f"{len(collector.names) - len(collector.recording)}"
                                      f"/{len(collector.names)}")  # fmt: skip
            if done:
                break
    if collector.recording:
        warnings.warn(
            f"collector hit max_batches={cfg.max_batches} before convergence (tau={cfg.tau}); "
            f"not converged: {', '.join(sorted(collector.recording))}. Results use the data "
            "seen so far.",
            stacklevel=2,
        )
    return collector.result(time.perf_counter() - started)


def _sum_over_ranks(moments: dict[str, tuple]) -> dict[str, tuple]:
    """This batch's moments summed over the ranks of a torchrun job: one all-reduce of count,
    sum and the upper triangle of X^T X for every recording layer (sizes fixed by the widths)."""
    if not moments or not distributed.active():
        return moments
    names = sorted(moments)
    parts = []
    for n in names:
        count, total, gram = moments[n]
        upper = torch.triu_indices(*gram.shape, device=gram.device)
        parts += [total.new_tensor([count]), total, gram[upper[0], upper[1]]]
    flat = distributed.all_reduce_sum_(torch.cat(parts))
    summed, offset = {}, 0
    for n in names:
        d = moments[n][1].shape[0]
        count = int(flat[offset].round())
        total = flat[offset + 1 : offset + 1 + d]
        upper = torch.triu_indices(d, d, device=flat.device)
        gram = torch.zeros(d, d, dtype=flat.dtype, device=flat.device)
        gram[upper[0], upper[1]] = flat[offset + 1 + d : offset + 1 + d + upper.shape[1]]
        summed[n] = (count, total, gram + gram.triu(1).T)
        offset += 1 + d + upper.shape[1]
    return summed


def _agree(done: dict[str, bool]) -> dict[str, bool]:
    """Rank 0's convergence decisions, so every rank records (and stops) in step."""
    if not distributed.active():
        return done
    flags = distributed.broadcast_(torch.tensor([done[p] for p in done], dtype=torch.int64))
    return {p: bool(f) for p, f in zip(done, flags.tolist(), strict=True)}


def collect_on_datasets(
    agent, dataset_ids: list[str], cfg: CollectorConfig, data_root=None, progress: bool = True
) -> CollectResult:
    """Run the collector on an agent with segments of the given Minari datasets, as the agent
    will see them when fine-tuned (`Agent.segment_sampler`), seeded by `cfg.seed` (and the rank,
    under torchrun: each rank draws its own batches)."""
    from eva_rl.data.segments import load_trajectories

    traj = load_trajectories(dataset_ids, data_root)
    return collect_on_trajectories(agent, traj, cfg, progress)


def collect_on_trajectories(agent, traj, cfg: CollectorConfig, progress: bool = True):
    """`collect_on_datasets` on trajectories already loaded (a training split, say)."""
    sampler = agent.segment_sampler(traj, distributed.rank_seed(cfg.seed))
    batches = iter(lambda: sampler.sample(cfg.batch_size), None)
    return collect(agent.model, batches, cfg, progress=progress and distributed.is_main())
