"""Splicing, LDA and MLLT against cases with a known answer."""

import numpy as np
import pytest

from asrkd.errors import UserError
from asrkd.transform import (ClassStats, estimate_mllt, lda, mllt_objective, scatter, splice,
                             transform_stats)


def test_splice_repeats_the_edge_frames():
    x = np.arange(8, dtype=float).reshape(4, 2)  # frames [0 1] [2 3] [4 5] [6 7]
    s = splice(x, left=1, right=2)
    assert s.shape == (4, 8)
    assert s[0].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    assert s[3].tolist() == [4, 5, 6, 7, 6, 7, 6, 7]
    assert splice(x, 3, 3).shape == (4, 14)
    with pytest.raises(UserError):
        splice(np.zeros((0, 2)))


def _random_spd(rng, d):
    q = rng.normal(size=(d, d))
    return q @ q.T + 0.5 * np.eye(d)


def test_lda_finds_the_planted_discriminant_direction():
    """Classes whose means differ only along v, sharing a correlated within-class covariance
    W: the one discriminant direction is Fisher's W^-1 v, not v itself."""
    rng = np.random.default_rng(0)
    d, per = 6, 4000
    w_true = _random_spd(rng, d)
    v = rng.normal(size=d)
    stats = ClassStats(3, d)
    chol = np.linalg.cholesky(w_true)
    for k in range(3):
        x = 1.5 * k * v + rng.normal(size=(per, d)) @ chol.T
        stats.add(x, np.full(per, k))
    m, vals = lda(stats, dim=3)
    assert m.shape == (3, d)
    fisher = np.linalg.solve(w_true, v)
    cos = abs(m[0] @ fisher) / np.linalg.norm(m[0]) / np.linalg.norm(fisher)
    assert cos > 0.999, cos
    assert abs(m[0] @ v) / np.linalg.norm(m[0]) / np.linalg.norm(v) < cos - 0.01  # not v
    # the projected within-class covariance is I, the between-class one diagonal, descending;
    # three classes span two directions: the other eigenvalues are ~0
    w, b = scatter(stats)
    assert np.allclose(m @ w @ m.T, np.eye(3), atol=1e-8)
    assert np.allclose(m @ b @ m.T, np.diag(vals[:3]), atol=1e-8)
    assert np.all(np.diff(vals) <= 1e-12) and vals[0] > 1 and abs(vals[2]) < 0.01
    # a constant dimension (rank-deficient W) is floored, not a crash
    stats2 = ClassStats(2, 2)
    stats2.add(np.c_[rng.normal(size=100), np.ones(100)], np.arange(100) % 2)
    assert np.all(np.isfinite(lda(stats2, 1)[0]))


def _rotated_diagonal_covs(rng, d, k):
    """Covariances R D_k R^T: one rotation R, a diagonal D_k of each class."""
    r, _ = np.linalg.qr(rng.normal(size=(d, d)))
    diag = rng.uniform(0.2, 3.0, size=(k, d))
    return r, np.einsum("ij,kj,lj->kil", r, diag, r)


def _bound(counts, covs):
    """The most the MLLT objective can reach (Hadamard: sum_i log(a_i S a_i^T) >= log det(A S
    A^T)), attained exactly when every A Sigma_k A^T is diagonal."""
    return -0.5 * (counts * np.linalg.slogdet(covs)[1]).sum() / counts.sum()


def test_mllt_climbs_to_the_rotation_that_diagonalises_every_class():
    rng = np.random.default_rng(1)
    d, k = 5, 8
    r, covs = _rotated_diagonal_covs(rng, d, k)
    counts = rng.uniform(50, 500, size=k)
    a, objf = estimate_mllt(counts, covs, iters=40)
    assert np.all(np.diff(objf) >= -1e-10)        # every sweep climbs
    assert objf[0] < _bound(counts, covs) - 0.05  # the identity is far from it
    assert objf[-1] == pytest.approx(_bound(counts, covs), abs=1e-4)
    for c in covs:                                # A Sigma_k A^T diagonal
        t = a @ c @ a.T
        off = t - np.diag(np.diag(t))
        assert np.abs(off).max() < 1e-2 * np.abs(np.diag(t)).max()
    # rows of A are R's columns up to scale and order
    rows = a / np.linalg.norm(a, axis=1, keepdims=True)
    assert np.allclose(np.abs(rows @ r).max(axis=1), 1.0, atol=1e-2)


def test_mllt_objective_invariances():
    rng = np.random.default_rng(2)
    d, k = 4, 6
    _, covs = _rotated_diagonal_covs(rng, d, k)
    counts = rng.uniform(10, 100, size=k)
    a = rng.normal(size=(d, d))
    f = mllt_objective(a, counts, covs)
    # scaling and permuting rows leave the diagonal model's likelihood as it is
    assert mllt_objective(np.diag([2.0, 0.1, 5.0, 1.0]) @ a[[2, 0, 3, 1]], counts, covs) == \
        pytest.approx(f, abs=1e-10)
    # features transformed first by T: the objective of A there is that of A T here, less
    # log|det T|, so the optimum moves by exactly -log|det T|
    t = rng.normal(size=(d, d))
    covs_t = np.einsum("ij,kjl,ml->kim", t, covs, t)
    assert mllt_objective(a, counts, covs_t) == pytest.approx(
        mllt_objective(a @ t, counts, covs) - np.linalg.slogdet(t)[1], abs=1e-9)
    _, f0 = estimate_mllt(counts, covs, iters=60)
    _, f1 = estimate_mllt(counts, covs_t, iters=60)
    assert f1[-1] == pytest.approx(f0[-1] - np.linalg.slogdet(t)[1], abs=1e-4)


def test_lda_then_mllt_on_spliced_frames():
    """tri2b's chain on frames: splice, LDA on class stats, MLLT on the projected stats."""
    rng = np.random.default_rng(3)
    d, k = 3, 4
    means = rng.normal(scale=2.0, size=(k, d))
    stats = ClassStats(k, 3 * d)
    for u in range(10):
        y = np.repeat(rng.integers(k, size=40), 15)  # runs of one class, like HMM states
        x = means[y] + rng.normal(size=(len(y), d)) @ np.diag([1.0, 0.5, 2.0])
        stats.add(splice(x, 1, 1), y)
    m, _ = lda(stats, dim=4)
    proj = transform_stats(stats, m)
    n, _, covs = proj.means_covs()
    assert n.sum() == 10 * 600
    w, _ = scatter(proj)
    assert np.allclose(w, np.eye(4), atol=1e-8)
    a, objf = estimate_mllt(n, covs, iters=10)
    assert objf[-1] > objf[0] and np.all(np.diff(objf) >= -1e-10)
    assert objf[-1] <= _bound(n, covs) + 1e-9
    with pytest.raises(UserError, match="labels"):
        stats.add(np.zeros((2, 3 * d)), [0, k])
