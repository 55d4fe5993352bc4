"""Feature transforms of Kaldi's tri2b: frame splicing, LDA and MLLT, in numpy.

Kaldi's tri2b (steps/train_lda_mllt.sh) splices +-3 frames of 13 MFCCs (91 dims), projects them
with LDA to 40 dims, with the tied states (pdfs of an alignment) as the classes, and then
estimates MLLT (a square transform that makes diagonal covariances fit better; Gopinath 1998,
the semi-tied covariances of Gales 1999) while the GMMs are retrained; the bindings we use have
neither, hence these functions.

- ``lda``: the generalized eigenproblem B v = lambda W v (between- and within-class scatter),
  solved as Kaldi's est-lda does: whiten by the Cholesky factor of W, take the eigenvectors of
  the whitened B. The rows come out so that the projected within-class covariance is the
  identity and the projected between-class covariance is diag(eigenvalues), descending.
- ``estimate_mllt``: Gales' row-by-row update of A on class statistics (counts and full
  covariances, in the space A acts on). Each row update maximises the objective given the other
  rows, so it never decreases; the objective is unchanged by scaling or permuting A's rows.

Deviations from Kaldi: statistics are per-class full covariances (Kaldi accumulates MLLT stats
per Gaussian from the current diagonal GMM during training); LDA has no ``--dim`` default and
no offset column (features are not mean-shifted here); the within-class scatter is floored
relative to its largest eigenvalue so that a rank-deficient W (constant dims) stays invertible.
"""

import numpy as np

from asrkd.errors import UserError


def splice(feats, left=3, right=3):
    """(T, D) -> (T, (left + 1 + right) * D): each frame with its neighbours, the edge frames
    repeated (Kaldi's splice-feats), oldest first."""
    x = np.asarray(feats)
    if x.ndim != 2 or not len(x):
        raise UserError(f"splice needs a (T, D) matrix with T > 0, got shape {x.shape}")
    t = np.arange(len(x))
    idx = np.clip(t[:, None] + np.arange(-left, right + 1)[None, :], 0, len(x) - 1)
    return x[idx].reshape(len(x), -1)


class ClassStats:
    """Per-class zeroth, first and second order statistics of feature vectors.

    ``count`` (C,), ``sum`` (C, D), ``sum_sq`` (C, D, D); ``add(x (N, D), labels (N,))``
    accumulates frames of any utterance (e.g. spliced features and their pdf ids).
    """

    def __init__(self, num_classes, dim):
        self.count = np.zeros(num_classes)
        self.sum = np.zeros((num_classes, dim))
        self.sum_sq = np.zeros((num_classes, dim, dim))

    def add(self, x, labels):
        x = np.asarray(x, dtype=np.float64)
        labels = np.asarray(labels)
        if x.ndim != 2 or x.shape[1] != self.sum.shape[1] or len(labels) != len(x):
            raise UserError(f"class stats of dim {self.sum.shape[1]}: got frames {x.shape} and "
                            f"{len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.count)):
            raise UserError(f"labels must be in [0, {len(self.count)}), got "
                            f"[{labels.min()}, {labels.max()}]")
        np.add.at(self.count, labels, 1.0)
        np.add.at(self.sum, labels, x)
        np.add.at(self.sum_sq, labels, x[:, :, None] * x[:, None, :])

    def means_covs(self, min_count=1):
        """(counts (K,), means (K, D), covariances (K, D, D)) of the classes seen >= min_count
        times."""
        keep = self.count >= max(min_count, 1e-10)
        n = self.count[keep]
        mu = self.sum[keep] / n[:, None]
        cov = self.sum_sq[keep] / n[:, None, None] - mu[:, :, None] * mu[:, None, :]
        return n, mu, cov


def scatter(stats):
    """(within-class W, between-class B) covariances (D, D), both normalised by the count."""
    n, mu, cov = stats.means_covs()
    if len(n) < 2:
        raise UserError("LDA needs frames of at least two classes")
    total = n.sum()
    w = np.einsum("k,kij->ij", n, cov) / total
    m = (n[:, None] * mu).sum(0) / total
    d = mu - m
    b = np.einsum("k,ki,kj->ij", n, d, d) / total
    return w, b


def lda(stats, dim, floor=1e-6):
    """LDA projection (dim, D) and all D eigenvalues (descending) from class statistics.

    ``M W M^T = I`` and ``M B M^T = diag(eigenvalues[:dim])`` for the returned M.
    """
    w, b = scatter(stats)
    big = np.linalg.eigvalsh(w).max()
    if big <= 0:
        raise UserError("LDA: the within-class scatter is zero (constant features)")
    if not 0 < dim <= len(w):
        raise UserError(f"LDA dim must be in [1, {len(w)}], got {dim}")
    # floor W's spectrum: constant or duplicated dims would make its Cholesky factor singular
    ev, u = np.linalg.eigh(w)
    w = (u * np.maximum(ev, floor * big)) @ u.T
    chol = np.linalg.cholesky(w)  # W = L L^T
    linv = np.linalg.inv(chol)
    vals, vecs = np.linalg.eigh(linv @ b @ linv.T)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    return vecs[:, :dim].T @ linv, vals


def transform_stats(stats, a):
    """Class statistics of x -> A x (A: (d, D)), as ClassStats of dim d."""
    out = ClassStats(len(stats.count), a.shape[0])
    out.count = stats.count.copy()
    out.sum = stats.sum @ a.T
    out.sum_sq = np.einsum("ij,kjl,ml->kim", a, stats.sum_sq, a)
    return out


def mllt_objective(a, counts, covs):
    """Per-frame log-likelihood gain of diagonal Gaussians in the space of A, up to a constant:
    log|det A| - (1 / 2 beta) sum_k n_k sum_i log(a_i Sigma_k a_i^T), beta = sum_k n_k."""
    beta = counts.sum()
    var = np.einsum("id,kde,ie->ki", a, covs, a)  # (K, D): the diagonal of A Sigma_k A^T
    return float(np.linalg.slogdet(a)[1] - 0.5 * (counts[:, None] * np.log(var)).sum() / beta)


def estimate_mllt(counts, covs, iters=10, a=None):
    """MLLT (D, D) from class counts (K,) and full covariances (K, D, D): Gales' semi-tied
    update, ``iters`` sweeps over the rows starting from ``a`` (default the identity). Returns
    (A, objective per sweep, the first being the start's)."""
    counts = np.asarray(counts, dtype=np.float64)
    covs = np.asarray(covs, dtype=np.float64)
    d = covs.shape[1]
    a = np.eye(d) if a is None else np.array(a, dtype=np.float64)
    beta = counts.sum()
    objf = [mllt_objective(a, counts, covs)]
    for _ in range(iters):
        for i in range(d):
            var = np.einsum("d,kde,e->k", a[i], covs, a[i])
            g = np.einsum("k,kde->de", counts / var, covs)
            # the cofactor row of a_i: det(A) times row i of A^{-T} (its scale cancels below)
            c = np.linalg.inv(a).T[i]
            gi_c = np.linalg.solve(g, c)
            a[i] = gi_c * np.sqrt(beta / (c @ gi_c))
        objf.append(mllt_objective(a, counts, covs))
    return a, objf
