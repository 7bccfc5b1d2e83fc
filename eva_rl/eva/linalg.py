"""The linear algebra of the collector, apart from its hook loop: streaming statistics of a
layer's inputs (`CovarianceStats`: exact; `IncrementalSVD`: PEFT's algorithm), and the top
eigenvectors of many scatter matrices at once (`top_directions`)."""

from __future__ import annotations

import torch


class CovarianceStats:
    """Token count, sum and X^T X of a layer's inputs, shifted by the first batch's mean.

    The per-batch product runs in float32 (the expensive part: n x d^2) and is accumulated in
    float64; the shift keeps float32 from cancelling a large mean (the covariance is invariant
    to it)."""

    def __init__(self, shift: torch.Tensor):
        d, device = shift.shape[0], shift.device
        self.n = 0
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

    def total_variance(self) -> torch.Tensor:
        """The scatter's trace, without building the d x d scatter."""
        return self.gram.diagonal().sum() - self.sum.square().sum() / max(self.n, 1)


class IncrementalSVD:
    """Ross et al. incremental SVD of mean-centred inputs (the algorithm in PEFT's EVA)."""

    def __init__(self, d: int, k: int, device: torch.device):
        self.k, self.n = k, 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.sq = torch.zeros(d, dtype=torch.float64, device=device)  # sum of squared deviations
        self.components = torch.zeros(0, d, dtype=torch.float64, device=device)
        self.singular = torch.zeros(0, dtype=torch.float64, device=device)

    def total_variance(self) -> torch.Tensor:
        """Sum of squared deviations from the running mean over every input dimension."""
        return self.sq.sum()

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
        self.components, self.singular = flip_signs(vt[: self.k]), s[: self.k]

    def decompose(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.components[:k], self.singular[:k] ** 2


def refine(
    s: torch.Tensor, q: torch.Tensor, k: int, tol: float = 1e-7, max_iter: int = 30
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Block power iteration + Rayleigh-Ritz on a stack of symmetric matrices `s` (L, d, d) from
    bases `q` (L, d, p): returns the refined bases, their Ritz values and whether every top-k
    residual fell below `tol` x trace within `max_iter` iterations."""
    scale = s.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    for _ in range(max_iter):
        q, _ = torch.linalg.qr(s @ q)
        w, u = torch.linalg.eigh(q.transpose(1, 2) @ s @ q)
        w, q = w.flip(-1), q @ u.flip(-1)
        top = q[:, :, :k]
        residual = (s @ top - top * w[:, None, :k]).norm(dim=1).amax(-1) / scale
        if bool((residual < tol).all()):
            return q, w, True
    return q, w, False


def top_directions(
    scatters: torch.Tensor, bases: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top 2k eigenvectors (columns) and eigenvalues of a stack of scatter matrices of one
    width: a full `eigh` when there is no previous basis (or 2k covers the width), else the
    previous basis refined (`refine`): the same vectors for a fraction of the cost, since one
    batch changes a matrix little; `eigh` again if the refinement did not converge."""
    d = scatters.shape[-1]
    p = min(d, 2 * k)
    if bases is not None and p < d:
        basis, values, converged = refine(scatters, bases, k)
        if converged:
            return basis, values
    values, vectors = torch.linalg.eigh(scatters)
    return vectors.flip(-1)[..., :p], values.flip(-1)[..., :p]


def flip_signs(v: torch.Tensor) -> torch.Tensor:
    """Deterministic signs: the largest-magnitude entry of every row is positive."""
    idx = v.abs().argmax(dim=1)
    signs = torch.sign(v[torch.arange(v.shape[0], device=v.device), idx])
    return v * torch.where(signs == 0, 1.0, signs)[:, None]
