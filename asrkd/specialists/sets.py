"""Confusable pdf sets (Hinton, Vinyals & Dean 2015, section 5): which pdfs the generalist
confuses, found by clustering the covariance of its predicted distributions.

The covariance over training frames (P x P, accumulated in batches, ``CovarianceAccumulator``,
``generalist_covariance``) is clustered by on-line k-means on its columns (``online_kmeans``):
pdfs that are predicted together fall in one set. Overlap (the paper's sets overlapped): the K
sets come from ``clusterings`` k-means runs with different seeds (``confusable_sets``), so with 2
runs every pdf is in up to 2 sets. ``sets_markdown`` shows the sets with their phones and HMM
states (``pdf_states``).

Where we deviate from the paper: k-means runs on the covariance columns scaled to unit length
(otherwise the columns of rare pdfs, near zero, form one set whatever they are confused with).
"""

import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from asrkd.errors import UserError
from asrkd.gmm import load_gmm
from asrkd.jobs import split_evenly
from asrkd.lang import read_symbols
from asrkd.transitions import transition_tables


class CovarianceAccumulator:
    """Covariance over frames of predicted distributions, accumulated batch by batch.

    ``add(probs)`` takes (N, P) rows; ``covariance()`` returns (P, P) float64, the population
    covariance sum_n (p_n - mean)(p_n - mean)^T / N. Batch products run in float32 (fast) and are
    summed in float64.
    """

    def __init__(self, num_pdfs):
        self.n = 0
        self.sum = np.zeros(num_pdfs)
        self.outer = np.zeros((num_pdfs, num_pdfs))

    def add(self, probs):
        p = torch.as_tensor(probs, dtype=torch.float32)
        self.n += p.shape[0]
        self.sum += p.sum(0).double().cpu().numpy()
        self.outer += (p.T @ p).double().cpu().numpy()

    @property
    def mean(self):
        return self.sum / max(self.n, 1)

    def covariance(self):
        if self.n == 0:
            raise UserError("covariance of no frames")
        m = self.mean
        return self.outer / self.n - np.outer(m, m)


def online_kmeans(points, k, seed=0, epochs=10, max_size=0, restarts=4):
    """On-line (MacQueen) k-means of the rows of ``points`` (n, d) into ``k`` clusters.

    Centroids start from greedy k-means++ seeding; each epoch visits the points in a random order
    and moves the nearest centroid towards each by 1 / (its visits this epoch + 1). Of
    ``restarts`` runs (seeds drawn from ``seed``) the one with the least squared distance to the
    centroids is kept. The final assignment is to the nearest centroid; with ``max_size`` > 0 a
    cluster keeps only its ``max_size`` nearest points and the others get -1 (in no set: never
    forced into a cluster they are not near). Returns labels (n,) int64.
    """
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise UserError(f"cannot make {k} clusters of {n} points")
    best = None
    for r in range(max(1, restarts)):
        cent = _online_kmeans_run(x, k, np.random.default_rng([seed, r]), epochs)
        dist = ((x ** 2).sum(1)[:, None] - 2 * x @ cent.T + (cent ** 2).sum(1)[None])  # (n, k)
        inertia = dist.min(1).sum()
        if best is None or inertia < best[0]:
            best = (inertia, dist)
    dist = best[1]
    nearest = dist.argmin(1).astype(np.int64)
    if max_size <= 0 or np.bincount(nearest, minlength=k).max() <= max_size:
        return nearest
    labels = np.full(n, -1, dtype=np.int64)
    for j in range(k):  # each cluster keeps its max_size nearest members
        members = np.flatnonzero(nearest == j)
        keep = members[np.argsort(dist[members, j], kind="stable")[:max_size]]
        labels[keep] = j
    return labels


def _online_kmeans_run(x, k, rng, epochs):
    """One seeding + on-line k-means run; returns the centroids (k, d)."""
    n = len(x)
    # greedy k-means++ seeding: of a few candidates drawn with probability ~ squared distance
    # to the nearest seed, keep the one that leaves the smallest total (plain k-means++ often
    # puts two seeds in one cluster, which the updates then never separate)
    cent = [x[rng.integers(n)]]
    d2 = ((x - cent[0]) ** 2).sum(1)
    for _ in range(1, k):
        if d2.sum() <= 0:
            cand = rng.integers(n, size=1)
        else:
            cand = rng.choice(n, size=2 + int(np.log(k)), p=d2 / d2.sum())
        new = np.minimum(d2[None], ((x[None] - x[cand][:, None]) ** 2).sum(2))  # (c, n)
        best = int(np.argmin(new.sum(1)))
        cent.append(x[cand[best]].copy())
        d2 = new[best]
    cent = np.array(cent)
    for _ in range(epochs):
        visits = np.ones(k)
        for i in rng.permutation(n):
            j = int(np.argmin(((cent - x[i]) ** 2).sum(1)))
            visits[j] += 1
            cent[j] += (x[i] - cent[j]) / visits[j]
    return cent


def confusable_sets(cov, num_sets, clusterings=2, set_size_max=0, seed=0, epochs=10):
    """K confusable pdf sets from a (P, P) covariance: ``clusterings`` k-means runs on its
    unit-length columns with seeds seed, seed + 1, ..., the K sets split evenly between them.

    Returns a list of dicts {"pdfs": sorted int list, "clustering": r}, empty sets dropped.
    """
    cov = np.asarray(cov, dtype=np.float64)
    cols = cov / np.maximum(np.linalg.norm(cov, axis=0), 1e-12)[None]
    points = cols.T  # one point per pdf (its column)
    sets = []
    for r, chunk in enumerate(split_evenly(range(num_sets), clusterings)):
        k = len(chunk)
        if k < 1:
            continue
        labels = online_kmeans(points, min(k, len(points)), seed=seed + r, epochs=epochs,
                               max_size=set_size_max)
        for j in range(k):
            pdfs = np.flatnonzero(labels == j)
            if len(pdfs):
                sets.append({"pdfs": pdfs.tolist(), "clustering": r})
    return sets


def generalist_covariance(model, cache, frames, batch_size=4096):
    """CovarianceAccumulator of the model's posteriors over the given frames of a FrameCache."""
    acc = CovarianceAccumulator(model.config.num_pdfs)
    left, right = model.left_context, model.right_context
    with torch.no_grad():
        for s in tqdm(range(0, len(frames), batch_size), desc="covariance", unit="batch",
                      file=sys.stderr, disable=None):
            x = torch.from_numpy(cache.windows(frames[s:s + batch_size], left, right))
            acc.add(torch.softmax(model(x), 1))
    return acc


def pdf_states(ali_dir, lang_dir=None):
    """pdf -> sorted ["PHONE/state", ...] from ali_dir/final.mdl (and lang_dir/phones.txt for
    the names; phone ids without it). None if ali_dir has no final.mdl."""
    if not os.path.isfile(os.path.join(ali_dir, "final.mdl")):
        return None
    names = {}
    if lang_dir is not None:
        names = {i: p for p, i in read_symbols(os.path.join(lang_dir, "phones.txt")).items()}
    out = {}
    for phone, state, fwd, loop in transition_tables(load_gmm(ali_dir).tm).tuples:
        for pdf in {fwd, loop}:
            out.setdefault(pdf, set()).add(f"{names.get(phone, phone)}/{state}")
    return {p: sorted(v) for p, v in out.items()}


def sets_markdown(sets, states=None, frame_share=None):
    """A readable table of the sets: size, share of training frames, phones and states."""
    lines = ["| set | clustering | pdfs | train frames % | phones/states (pdfs) |",
             "|---:|---:|---:|---:|---|"]
    for m, s in enumerate(sets, 1):
        desc = ""
        if states is not None:
            count = {}
            for p in s["pdfs"]:
                for ps in states.get(p, [f"pdf{p}"]):
                    count[ps] = count.get(ps, 0) + 1
            desc = ", ".join(f"{k} ({v})" for k, v in
                             sorted(count.items(), key=lambda kv: (-kv[1], kv[0])))
        else:
            desc = "pdfs " + " ".join(map(str, s["pdfs"][:50])) + (" ..." if len(s["pdfs"]) > 50
                                                                    else "")
        share = f"{100 * frame_share[m - 1]:.1f}" if frame_share is not None else "-"
        lines.append(f"| {m} | {s['clustering'] + 1} | {len(s['pdfs'])} | {share} | {desc} |")
    return "\n".join(lines) + "\n"
