"""The collector's linear algebra against exact references: streaming covariance vs the batch
covariance (float32 and bfloat16 inputs), the incremental SVD vs an SVD of everything,
refinement vs eigh (from a nearby and from a random basis), and the eigh fallback when
refinement does not converge."""

import torch

from eva_rl.eva.linalg import (
    REFINE_WIDTH,
    CovarianceStats,
    IncrementalSVD,
    flip_signs,
    refine,
    top_directions,
)


def test_streaming_covariance_equals_the_covariance_of_all_inputs():
    torch.manual_seed(0)
    chunks = [torch.randn(50, 6) * torch.arange(1, 7) + 100.0 for _ in range(4)]
    stats = CovarianceStats(chunks[0].mean(0))
    for x in chunks:
        stats.add(*stats.moments(x))
    everything = torch.cat(chunks).double()
    centred = everything - everything.mean(0)
    torch.testing.assert_close(stats.scatter(), centred.T @ centred, rtol=1e-6, atol=1e-4)
    assert stats.n == 200
    total = centred.square().sum()  # the explained-variance denominator
    torch.testing.assert_close(stats.total_variance(), total, rtol=1e-6, atol=1e-4)


def test_bf16_inputs_give_the_exact_covariance_of_their_values():
    """bf16 inputs take bf16 products with float32 accumulation and a shift afterwards: the
    scatter still equals the float64 one of the same values (a mean of 3 std: the shift matters)."""
    torch.manual_seed(4)
    chunks = [
        (torch.randn(300, 64) * torch.linspace(0.5, 2, 64) + 3.0).bfloat16() for _ in range(3)
    ]
    stats = CovarianceStats(chunks[0].float().mean(0))
    for x in chunks:
        stats.add(*stats.moments(x))
    everything = torch.cat(chunks).double()
    centred = everything - everything.mean(0)
    exact = centred.T @ centred
    torch.testing.assert_close(stats.scatter(), exact, rtol=0, atol=2e-6 * exact.abs().max())
    # fp32 accumulation of 900 products in the order the machine's bf16 kernel takes (AMX on a
    # Xeon: 1e-7; an AVX2 fallback: 1.4e-6); the fp32 values themselves would be off by ~1e-3
    torch.testing.assert_close(stats.total_variance(), exact.trace(), rtol=1e-5, atol=0)


def test_incremental_svd_keeping_every_direction_is_the_svd_of_everything():
    torch.manual_seed(1)
    chunks = [torch.randn(30, 5) for _ in range(3)]
    svd = IncrementalSVD(5, 5, torch.device("cpu"))
    for x in chunks:
        svd.update(x)
    everything = torch.cat(chunks).double()
    _, s, vt = torch.linalg.svd(everything - everything.mean(0), full_matrices=False)
    components, variances = svd.decompose(5)
    torch.testing.assert_close(variances, s**2)
    torch.testing.assert_close(components, flip_signs(vt))  # signs too: the collector keeps them
    torch.testing.assert_close(svd.total_variance(), (s**2).sum())


def test_incremental_svd_after_a_batch_smaller_than_its_components():
    """2 inputs, 4 components: the missing ones are zero rows (no direction, no variance) of
    the full shape the convergence check compares, and the next batch completes them: the
    first batch's centred inputs (rank 1) fit in 4, so the result is still exact."""
    torch.manual_seed(2)
    chunks = [torch.randn(2, 6), torch.randn(20, 6)]
    svd = IncrementalSVD(6, 4, torch.device("cpu"))
    svd.update(chunks[0])
    components, variances = svd.decompose(4)
    assert components.shape == (4, 6) and not components[2:].any()  # 2 rows: 2 directions
    assert variances[1:].abs().max() < 1e-20  # 2 centred inputs span one
    svd.update(chunks[1])
    everything = torch.cat(chunks).double()
    _, s, vt = torch.linalg.svd(everything - everything.mean(0), full_matrices=False)
    components, variances = svd.decompose(4)
    torch.testing.assert_close(variances, s[:4] ** 2)
    torch.testing.assert_close(components, flip_signs(vt[:4]))


def planted(d=12, top=(9.0, 5.0, 3.0)):
    """A scatter matrix with known top eigenvectors (the first coordinate axes)."""
    values = torch.cat([torch.tensor(top), torch.linspace(0.5, 0.1, d - len(top))]).double()
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    return q @ torch.diag(values) @ q.T, q


def test_refinement_from_a_nearby_basis_finds_eighs_vectors():
    torch.manual_seed(2)
    s, q = planted()
    start = q[:, :6] + 0.05 * torch.randn(12, 6, dtype=torch.float64)
    basis, values, converged = refine(s[None], start[None], k=3)
    assert converged
    torch.testing.assert_close(values[0, :3], torch.tensor([9.0, 5.0, 3.0], dtype=torch.float64))
    cos = (basis[0, :, :3] * q[:, :3]).sum(0).abs()
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))


def test_top_directions_of_wide_matrices_start_from_a_random_basis():
    torch.manual_seed(5)
    d = REFINE_WIDTH * 6  # wide enough for refinement with 2k = 6
    s, q = planted(d)
    basis, values = top_directions(s[None], None, k=3)
    torch.testing.assert_close(values[0, :3], torch.tensor([9.0, 5.0, 3.0], dtype=torch.float64))
    cos = (basis[0, :, :3] * q[:, :3]).sum(0).abs()
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64))


def test_top_directions_fall_back_to_eigh_when_refinement_does_not_converge():
    torch.manual_seed(3)
    d = REFINE_WIDTH * 6
    values = torch.linspace(2.0, 1.9, d).double()  # a flat spectrum: power iteration crawls
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    s = q @ torch.diag(values) @ q.T
    start = torch.randn(1, d, 6, dtype=torch.float64)
    _, _, converged = refine(s[None], start, k=3)
    assert not converged
    basis, found = top_directions(s[None], start, k=3)
    exact_values, exact_vectors = torch.linalg.eigh(s)
    torch.testing.assert_close(found[0], exact_values.flip(-1)[:6])
    torch.testing.assert_close(basis[0], exact_vectors.flip(-1)[:, :6])
