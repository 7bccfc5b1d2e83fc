"""The linear algebra of the collector, apart from its hook loop: streaming statistics of a
layer's inputs (`CovarianceStats`: exact; `IncrementalSVD`: PEFT's algorithm), and the top
eigenvectors of many scatter matrices at once (`top_directions`)."""

from __future__ import annotations

import contextlib

import torch

# Refine a previous basis of p columns only when the width d >= REFINE_WIDTH * p: below that a
# full `eigh` is cheaper (measured, 2 CPU cores: d = 128, p = 32: refinement 20-37 ms for nine
# layers, eigh 8-9 ms; d = 512: refinement 16 ms for three layers, eigh 50-70 ms).
REFINE_WIDTH = 8


class CovarianceStats:
    """Token count, sum and X^T X of a layer's inputs, shifted by the first batch's mean.

    The per-batch product (the expensive part: n x d^2) runs in float32 and is accumulated in
    float64. Float32 inputs are shifted first, which keeps float32 from cancelling a large mean
    (the covariance is invariant to it). Bfloat16 inputs (the outputs of bf16 matrix products)
    are multiplied as they are by bf16 kernels with float32 accumulation, whose products of bf16
    values are exact, and shifted afterwards: the scatter's error is float32 rounding, about
    1e-7 x (1 + mean^2 / variance) relative, as for shifted float32 (tests), for a third of the
    time on CPUs with AMX."""

    def __init__(self, shift: torch.Tensor):
        d, device = shift.shape[0], shift.device
        self.n = 0
        self.shift = shift.float()
        self.sum = torch.zeros(d, dtype=torch.float64, device=device)
        self.gram = torch.zeros(d, d, dtype=torch.float64, device=device)

    def moments(self, x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Count, sum and X^T X of one batch, shifted; what `add` accumulates (and ranks sum).
        The sum is a product with a ones vector: faster than a column sum, as precise."""
        n, ones = x.shape[0], x.new_ones(x.shape[0], dtype=torch.float32)
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            x = x.float()  # bf16 values, exactly
            with _bf16_products():
                gram = x.T @ x
            total = ones @ x
            shifted = total - n * self.shift
            # sum (x - m)(x - m)^T = X^T X - m s^T - (s - n m) m^T, in place
            gram.addr_(self.shift, total, alpha=-1).addr_(shifted, self.shift, alpha=-1)
            return n, shifted.double(), gram.double()
        x = x.float() - self.shift
        return n, (ones @ x).double(), (x.T @ x).double()

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


@contextlib.contextmanager
def _bf16_products():
    """Float32 matrix products through oneDNN's bf16 kernels (AMX/AVX512-BF16) with float32
    accumulation, for this block only (torch's flag is process-wide)."""
    flags = torch.backends.mkldnn.matmul
    before = flags.fp32_precision
    flags.fp32_precision = "bf16"
    try:
        yield
    finally:
        flags.fp32_precision = before


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
        missing = self.k - vt.shape[0]  # fewer rows so far than components (a small first batch)
        if missing > 0:  # zero rows: no direction yet, never stable, no variance explained
            vt = torch.vstack([vt, vt.new_zeros(missing, vt.shape[1])])
            s = torch.cat([s, s.new_zeros(missing)])
        self.components, self.singular = flip_signs(vt[: self.k]), s[: self.k]

    def decompose(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.components[:k], self.singular[:k] ** 2


def refine(
    s: torch.Tensor, q: torch.Tensor, k: int, tol: float = 1e-7, max_iter: int = 30
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Block power iteration + Rayleigh-Ritz on a stack of symmetric matrices `s` (L, d, d) from
    bases `q` (L, d, p): returns the refined bases, their Ritz values and whether every top-k
    residual fell below `tol` x trace within `max_iter` iterations. One product with `s` per
    iteration: S Q is rotated along with Q and serves the residual and the next power step."""
    scale = s.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)
    sq = s @ q
    for _ in range(max_iter):
        q, _ = torch.linalg.qr(sq)
        sq = s @ q
        w, u = torch.linalg.eigh(q.mT @ sq)
        w, u = w.flip(-1), u.flip(-1)
        q, sq = q @ u, sq @ u
        residual = (sq[..., :k] - q[..., :k] * w[:, None, :k]).norm(dim=1).amax(-1) / scale
        if bool((residual < tol).all()):
            return q, w, True
    return q, w, False


def top_directions(
    scatters: torch.Tensor, bases: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top 2k eigenvectors (columns) and eigenvalues of a stack of scatter matrices of one
    width. Narrow matrices (d < REFINE_WIDTH x 2k): a full `eigh`. Wide ones: `refine` the
    previous basis (one batch changes a matrix little), or on the first batch a fixed random
    one: the same vectors for a fraction of the cost; `eigh` if the refinement did not converge."""
    d = scatters.shape[-1]
    p = min(d, 2 * k)
    if d >= REFINE_WIDTH * p:
        if bases is None:
            g = torch.Generator(scatters.device).manual_seed(0)
            shape, device = (*scatters.shape[:-1], p), scatters.device
            bases = torch.randn(shape, generator=g, device=device, dtype=scatters.dtype)
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
