"""The collector: principal directions of every adapted layer's inputs on downstream data.

Forward pre-hooks record each target layer's input on the valid tokens of a batch (the DT's
per-timestep attention mask expanded to its interleaved return/state/action tokens). Two methods:

- `covariance` (default): exact streaming statistics (token count, sum, X^T X accumulated in
  float64); after each batch the top eigenvectors of each layer's centred scatter matrix are
  refined from the previous batch's, batched over layers of equal width (see `_refresh`). They
  are the top right-singular vectors of all centred inputs seen so far; a batch costs one matrix
  product per layer and a few small ones, instead of an SVD of the stacked inputs.
- `incremental-svd`: the Ross et al. (2008) incremental SVD that PEFT's EVA uses (exact SVD of
  `[S * V; X - batch_mean; mean_correction]` each batch), kept for comparison.

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

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm import tqdm
from transformers.pytorch_utils import Conv1D

from eva_rl import distributed
from eva_rl.errors import UserError
from eva_rl.eva.ranks import allocate_ranks
from eva_rl.runtime import autocast, resolve_precision

TOKEN_TYPES = ("return", "state", "action")  # order of the DT's interleaved tokens


@dataclass
class CollectorConfig:
    rank: int = 8  # nominal LoRA rank r; the budget is r x number of layers
    rho: float = 2.0  # components kept per layer: round(rho * r)
    tau: float = 0.99  # cosine threshold for convergence
    whiten: bool = False  # divide components by sqrt of their singular values (as PEFT)
    max_batches: int = 100  # cap: stop (with a warning) even if not every layer converged
    batch_size: int = 64
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    token_types: list[str] = field(default_factory=lambda: list(TOKEN_TYPES))
    method: Literal["covariance", "incremental-svd"] = "covariance"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # of the forward passes; the statistics stay fp32/fp64

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"unknown precision {self.precision!r}; use auto, bf16 or fp32")
        if self.rank < 1:
            raise UserError(f"rank must be >= 1, got {self.rank}")
        if self.rho < 1.0:
            raise UserError(f"rho must be >= 1 (1 = no redistribution), got {self.rho}")
        if not 0.0 < self.tau <= 1.0:
            raise UserError(f"tau must be in (0, 1], got {self.tau}")
        if self.max_batches < 2 or self.batch_size < 1:
            raise UserError("max_batches must be >= 2 (convergence compares batches), batch >= 1")
        bad = [t for t in self.token_types if t not in TOKEN_TYPES]
        if bad or not self.token_types:
            raise UserError(f"token_types must be a non-empty subset of {list(TOKEN_TYPES)}")

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
    shares_with: str | None = None  # the layer whose identical inputs it reuses


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
    return (attention_mask.bool()[:, :, None] & keep).reshape(attention_mask.shape[0], -1)


def target_layers(model: torch.nn.Module, target_modules: list[str]) -> dict[str, torch.nn.Module]:
    """Linear/Conv1D modules whose last name part is one of `target_modules` (PEFT's rule)."""
    found = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D)) and name.rsplit(".", 1)[-1] in target_modules
    }
    if not found:
        raise UserError(f"no Linear/Conv1D module matches target_modules={target_modules}")
    return found


class CovarianceStats:
    """Token count, sum and X^T X of a layer's inputs, shifted by the first batch's mean.

    The per-batch product runs in float32 (the expensive part: n x d^2) and is accumulated in
    float64; the shift keeps float32 from cancelling a large mean (the covariance is invariant
    to it)."""

    def __init__(self, shift: torch.Tensor):
        d, device = shift.shape[0], shift.device
        self.n = 0
        self.basis: torch.Tensor | None = None  # (d, 2k) Ritz vectors of the last decomposition
        self.shift = shift.float()
        self.sum = torch.zeros(d, dtype=torch.float64, device=device)
        self.gram = torch.zeros(d, d, dtype=torch.float64, device=device)

    def moments(self, x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Count, sum and X^T X of one batch, shifted; what `add` accumulates (and ranks sum)."""
        x = x.float() - self.shift
        # shifted data: a float32 sum of one batch is exact enough
        return x.shape[0], x.sum(0).double(), (x.T @ x).double()

    def add(self, n: int, total: torch.Tensor, gram: torch.Tensor) -> None:
        self.n += n
        self.sum += total
        self.gram += gram

    def scatter(self) -> torch.Tensor:
        """Centred scatter matrix sum_i (x_i - mean)(x_i - mean)^T."""
        return self.gram - torch.outer(self.sum, self.sum) / max(self.n, 1)


class IncrementalSVD:
    """Ross et al. incremental SVD of mean-centred inputs (the algorithm in PEFT's EVA)."""

    def __init__(self, d: int, k: int, device: torch.device):
        self.k, self.n = k, 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.sq = torch.zeros(d, dtype=torch.float64, device=device)  # sum of squared deviations
        self.components = torch.zeros(0, d, dtype=torch.float64, device=device)
        self.singular = torch.zeros(0, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        n_new, n_old = x.shape[0], self.n
        total = n_old + n_new
        batch_mean = x.mean(0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        if n_old == 0:
            stacked = centred
        else:
            correction = ((n_old * n_new / total) ** 0.5) * (self.mean - batch_mean)
            stacked = torch.vstack([self.singular[:, None] * self.components, centred, correction])
        self.sq += (centred**2).sum(0) + delta**2 * n_old * n_new / total
        self.mean += delta * n_new / total
        self.n = total
        _, s, vt = torch.linalg.svd(stacked, full_matrices=False)
        self.components, self.singular = _flip(vt[: self.k]), s[: self.k]

    def decompose(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.components[:k], self.singular[:k] ** 2


def _refine(s: torch.Tensor, q: torch.Tensor, k: int, tol: float = 1e-7, max_iter: int = 30):
    """Block power iteration + Rayleigh-Ritz on a stack of symmetric matrices `s` (L, d, d) from
    bases `q` (L, d, p), until every top-k residual is below `tol` x trace."""
    scale = s.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    for _ in range(max_iter):
        q, _ = torch.linalg.qr(s @ q)
        w, u = torch.linalg.eigh(q.transpose(1, 2) @ s @ q)
        w, q = w.flip(-1), q @ u.flip(-1)
        top = q[:, :, :k]
        residual = (s @ top - top * w[:, None, :k]).norm(dim=1).amax(-1) / scale
        if bool((residual < tol).all()):
            break
    return q, w


def _flip(v: torch.Tensor) -> torch.Tensor:
    """Deterministic signs: the largest-magnitude entry of every row is positive."""
    idx = v.abs().argmax(dim=1)
    signs = torch.sign(v[torch.arange(v.shape[0], device=v.device), idx])
    return v * torch.where(signs == 0, 1.0, signs)[:, None]


def collect(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    cfg: CollectorConfig,
    progress: bool = True,
) -> CollectResult:
    """Record target-layer inputs over `batches` until convergence or the cap (module docstring).
    Under torchrun each rank passes its own shard's batches and gets the same result."""
    started = time.perf_counter()
    if distributed.active() and cfg.method != "covariance":
        raise UserError(f"method {cfg.method!r} runs in one process; use method=covariance")
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    layers = target_layers(model, cfg.target_modules)
    names = list(layers)
    k = cfg.components
    budget = cfg.rank * len(names)
    primary: dict[str, str] = {}  # layer -> the layer whose stats it uses (itself if unique)
    stats: dict[str, CovarianceStats | IncrementalSVD] = {}
    state: dict = {"mask": None, "first": {}, "moments": {}}
    recording: set[str] = set(names)

    def record(name: str, x: torch.Tensor) -> None:
        """Covariance layers keep the batch's moments (summed over ranks after the forward);
        incremental-SVD layers update at once."""
        if isinstance(stats[name], CovarianceStats):
            state["moments"][name] = stats[name].moments(x)
        else:
            stats[name].update(x)

    def hook(name):
        def pre_hook(_module, args):
            if name in recording:
                x = args[0][state["mask"]]
                if state["first"] is not None:
                    state["first"][name] = x.clone()
                else:
                    record(name, x)

        return pre_hook

    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    prev: dict[str, torch.Tensor] = {}
    comp_ok = {n: torch.zeros(k, dtype=torch.bool) for n in names}
    converged_at: dict[str, int | None] = dict.fromkeys(names)
    current: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = tqdm(total=cfg.max_batches, desc="collect", unit="batch", disable=not progress)
    batch_index = 0
    try:
        for batch_index in range(1, cfg.max_batches + 1):
            batch = next(batches)
            state["mask"] = token_mask(batch["attention_mask"], cfg.token_types)
            with torch.no_grad(), autocast(device, precision):
                model(**batch, return_dict=True)
            if state["first"] is not None:
                first, state["first"] = state["first"], None
                _setup_stats(first, primary, stats, k, cfg.method)
                recording = {n for n in names if primary[n] == n}
                for n in recording:
                    record(n, first[n])
            _add_moments(stats, state["moments"])
            state["moments"] = {}
            _refresh(stats, recording, current, k)
            for n in recording:
                comps = current[n][0]
                if n in prev:
                    sim = torch.nn.functional.cosine_similarity(comps, prev[n], dim=1)
                    comp_ok[n] = (sim >= cfg.tau).cpu()
                prev[n] = comps
            ratios = {n: _ratios(stats[primary[n]], current[primary[n]][1]) for n in names}
            ranks = allocate_ranks(ratios, budget)
            group_rank = {p: max(ranks[n] for n in names if primary[n] == p) for p in stats}
            done = {p: bool(comp_ok[p][: group_rank[p]].all()) and p in prev for p in stats}
            done = _agree(done)
            for p in stats:
                if done[p] and p in recording:
                    converged_at[p] = batch_index
                elif not done[p]:
                    converged_at[p] = None
            recording = {p for p in stats if not done[p]}
            bar.update(1)
            bar.set_postfix(converged=f"{len(stats) - len(recording)}/{len(stats)}")
            if not recording:
                break
    finally:
        bar.close()
        for h in handles:
            h.remove()
        model.train(was_training)
    if recording:
        warnings.warn(
            f"collector hit max_batches={cfg.max_batches} before convergence (tau={cfg.tau}); "
            f"not converged: {', '.join(sorted(recording))}. Results use the data seen so far.",
            stacklevel=2,
        )
    result_layers = {}
    for n in names:
        p = primary[n]
        comps, evals = current[p]
        r = ranks[n]
        out = comps[:r].clone()
        if cfg.whiten:  # PEFT divides by sqrt(singular value) = eigenvalue ** 0.25
            out = out / evals[:r].clamp_min(1e-24).pow(0.25)[:, None]
        result_layers[n] = LayerResult(
            components=out.float().cpu(),
            rank=r,
            ratios=[float(v) for v in ratios[n]],
            converged_at=converged_at[p],
            tokens=stats[p].n,
            shares_with=None if p == n else p,
        )
    return CollectResult(
        layers=distributed.broadcast_object(result_layers),  # rank 0's, bit for bit, everywhere
        budget=budget,
        batches=batch_index,
        seconds=time.perf_counter() - started,
        device=str(device),
        converged=not recording,
        precision=precision,
    )


def _setup_stats(first, primary, stats, k, method) -> None:
    """On the first batch: find layers with identical inputs (on every rank), and start each
    unique layer's statistics, shifted by the first batch's mean over all ranks."""
    names = list(first)
    same = torch.tensor(
        [
            [first[a].shape == first[b].shape and torch.equal(first[a], first[b]) for b in names]
            for a in names
        ],
        dtype=torch.int64,
        device=next(iter(first.values())).device,
    )
    same = distributed.all_reduce_sum_(same) == distributed.world_size()
    for i, n in enumerate(names):
        primary[n] = next((p for j, p in enumerate(names[:i]) if same[i, j] and p in stats), n)
        if primary[n] != n:
            continue
        x = first[n]
        if method == "covariance":
            count = x.new_tensor([x.shape[0]], dtype=torch.float64)
            moments = distributed.all_reduce_sum_(torch.cat([x.sum(0).double(), count]))
            stats[n] = CovarianceStats((moments[:-1] / moments[-1]).float())
        else:
            stats[n] = IncrementalSVD(x.shape[1], k, x.device)


def _add_moments(stats, moments: dict[str, tuple[int, torch.Tensor, torch.Tensor]]) -> None:
    """Add this batch's moments to the statistics, summed over ranks first: one all-reduce of
    count, sum and the upper triangle of X^T X for every recording layer."""
    if not moments:
        return
    if distributed.active():
        names = sorted(moments)
        parts = []
        for n in names:
            count, total, gram = moments[n]
            upper = torch.triu_indices(*gram.shape, device=gram.device)
            parts += [total.new_tensor([count]), total, gram[upper[0], upper[1]]]
        flat = distributed.all_reduce_sum_(torch.cat(parts))
        offset = 0
        for n in names:
            d = moments[n][1].shape[0]
            count = int(flat[offset].round())
            total = flat[offset + 1 : offset + 1 + d]
            upper = torch.triu_indices(d, d, device=flat.device)
            gram = torch.zeros(d, d, dtype=flat.dtype, device=flat.device)
            gram[upper[0], upper[1]] = flat[offset + 1 + d : offset + 1 + d + upper.shape[1]]
            gram = gram + gram.triu(1).T
            moments[n] = (count, total, gram)
            offset += 1 + d + upper.shape[1]
    for n, (count, total, gram) in moments.items():
        stats[n].add(count, total, gram)


def _agree(done: dict[str, bool]) -> dict[str, bool]:
    """Rank 0's convergence decisions, so every rank records (and stops) in step."""
    if not distributed.active():
        return done
    flags = distributed.broadcast_(torch.tensor([done[p] for p in done], dtype=torch.int64))
    return {p: bool(f) for p, f in zip(done, flags.tolist(), strict=True)}


def _refresh(stats, recording, current, k) -> None:
    """Recompute the top-k directions of every layer that recorded this batch.

    Covariance layers of equal width are handled as one batch: a full `eigh` the first time;
    afterwards the previous 2k-dimensional Ritz basis is refined by block power iteration
    (`_refine`) to a residual below 1e-7 of the trace: the same vectors as `eigh` for a fraction
    of its cost, since one batch changes the matrix little."""
    groups: dict[tuple[int, bool], list[str]] = {}
    for n in sorted(recording):
        st = stats[n]
        if isinstance(st, IncrementalSVD):
            current[n] = st.decompose(k)
        else:
            groups.setdefault((st.sum.shape[0], st.basis is None), []).append(n)
    for (d, fresh), names in groups.items():
        s = torch.stack([stats[n].scatter() for n in names])
        p = min(d, 2 * k)
        if fresh or p == d:
            evals, evecs = torch.linalg.eigh(s)
            basis, vals = evecs.flip(-1)[..., :p], evals.flip(-1)[..., :p]
        else:
            basis, vals = _refine(s, torch.stack([stats[n].basis for n in names]), k)
        for i, n in enumerate(names):
            stats[n].basis = basis[i]
            current[n] = (_flip(basis[i, :, :k].T.contiguous()), vals[i, :k].clamp_min(0))


def _ratios(stats, evals: torch.Tensor) -> torch.Tensor:
    """Explained-variance ratios: component variance / total variance of the layer's inputs."""
    total = stats.scatter().trace() if isinstance(stats, CovarianceStats) else stats.sq.sum()
    return (evals / total.clamp_min(1e-30)).cpu()


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
