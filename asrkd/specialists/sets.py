"""Confusable pdf sets (Hinton, Vinyals & Dean 2015, section 5): which pdfs the generalist
confuses.

One pass of the generalist over training frames (``generalist_statistics``) accumulates two P x P
matrices: its soft confusion matrix (``ConfusionAccumulator``: row y sums its predicted
distributions on frames aligned to pdf y) and the covariance of its predicted distributions
(``CovarianceAccumulator``, the paper's statistic). Two ways to make K sets of them:

- ``confusion_sets`` (the default): greedy growth on the symmetrised confusion mass. Each set
  starts from the pair of pdfs the generalist confuses most that no earlier set holds together,
  and takes the pdf most confused with its members until it holds ``set_size`` pdfs; the
  confusions it then holds are not counted again. Every set is a subset of at most ``set_size``
  pdfs (``default_set_size``: about P / K, never more than half the pdfs; the paper's were ~300
  of 15,000 classes each), and sets may overlap, as the paper's did.
- ``confusable_sets``: on-line k-means on the covariance columns (``online_kmeans``), K sets
  from ``clusterings`` k-means runs with different seeds, bounded by ``set_size_max``. Unbounded,
  it made degenerate sets (K = 4 on 500 pdfs: 15, 485, 9 and 491 pdfs).

``confusion_share`` is the share of the generalist's confusion mass (off-diagonal) a set holds;
``sets_markdown`` shows the sets with it, their phones and HMM states (``pdf_states``).

Where we deviate from the paper: the paper clustered the covariance; here the default works on
the confusion matrix against the alignment's labels (what the generalist gets wrong, not what it
predicts together), grown greedily to a fixed size. k-means runs on the covariance columns scaled
to unit length (otherwise the columns of rare pdfs, near zero, form one set whatever they are
confused with).
"""

import math
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

    def add(self, probs, labels=None):
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


class ConfusionAccumulator:
    """The generalist's soft confusion matrix over frames, accumulated batch by batch.

    ``add(probs, labels)`` takes (N, P) predicted distributions and (N,) aligned pdfs;
    ``confusion`` (P, P) float64: row y is the sum of the distributions on frames of pdf y
    (its off-diagonal entries: the mass the generalist gives to the wrong pdfs).
    """

    def __init__(self, num_pdfs):
        self.n = 0
        self.confusion = np.zeros((num_pdfs, num_pdfs))

    def add(self, probs, labels=None):
        p = torch.as_tensor(probs, dtype=torch.float64)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        m = torch.zeros(self.confusion.shape, dtype=torch.float64)
        m.index_add_(0, y, p)
        self.confusion += m.numpy()
        self.n += p.shape[0]


def default_set_size(num_pdfs, num_sets):
    """pdfs per set when none is given: ceil(P / K) (K sets cover about P pdfs, as the paper's
    61 sets of ~300 covered its 15,000 classes), at least 2, at most half the pdfs."""
    return max(2, min(num_pdfs // 2, math.ceil(num_pdfs / max(num_sets, 1))))


def confusion_sets(confusion, num_sets, set_size):
    """K sets of at most ``set_size`` pdfs by greedy growth on the symmetrised confusion mass
    W = C + C^T (diagonal 0) of a (P, P) confusion matrix C (module docstring).

    A set starts from the largest remaining entry of W (a pair) and adds, one at a time, the pdf
    with the largest sum of W to its members, while that sum is positive; then W is zeroed
    between its members (the next set targets other confusions). Fewer than K sets when no
    confusion is left. Returns a list of {"pdfs": sorted int list, "clustering": 0}.
    """
    c = np.asarray(confusion, dtype=np.float64)
    w = c + c.T
    np.fill_diagonal(w, 0.0)
    sets = []
    for _ in range(num_sets):
        if w.max() <= 0:
            break
        i, j = np.unravel_index(int(np.argmax(w)), w.shape)
        members = [int(i), int(j)]
        gain = w[:, i] + w[:, j]
        inside = np.zeros(len(w), dtype=bool)
        inside[members] = True
        while len(members) < set_size:
            cand = np.where(inside, -np.inf, gain)
            k = int(np.argmax(cand))
            if not cand[k] > 0:
                break
            members.append(k)
            inside[k] = True
            gain += w[:, k]
        ids = np.asarray(members)
        w[np.ix_(ids, ids)] = 0.0
        sets.append({"pdfs": sorted(members), "clustering": 0})
    return sets


def confusion_share(confusion, pdfs):
    """The share of the confusion matrix's off-diagonal mass whose (aligned, predicted) pdfs are
    both in ``pdfs``."""
    c = np.asarray(confusion, dtype=np.float64)
    total = c.sum() - np.trace(c)
    ids = np.asarray(pdfs, dtype=np.int64)
    inner = c[np.ix_(ids, ids)]
    return float((inner.sum() - np.trace(inner)) / total) if total > 0 else 0.0


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


def generalist_statistics(model, cache, frames, batch_size=4096):
    """One pass of the model over the given frames of a FrameCache: (CovarianceAccumulator,
    ConfusionAccumulator) of its posteriors (against the cache's aligned pdfs)."""
    cov = CovarianceAccumulator(model.config.num_pdfs)
    conf = ConfusionAccumulator(model.config.num_pdfs)
    left, right = model.left_context, model.right_context
    model.eval()
    with torch.no_grad():
        for s in tqdm(range(0, len(frames), batch_size), desc="confusions", unit="batch",
                      file=sys.stderr, disable=None):
            batch = frames[s:s + batch_size]
            x = torch.from_numpy(cache.windows(batch, left, right))
            p = torch.softmax(model(x), 1)
            cov.add(p)
            conf.add(p, np.asarray(cache.pdf[batch], dtype=np.int64))
    return cov, conf


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


def sets_markdown(sets, states=None, frame_share=None, confusion=None):
    """A readable table of the sets: size, share of training frames, share of the generalist's
    confusion mass (``confusion``: its (P, P) confusion matrix), phones and states."""
    lines = ["| set | clustering | pdfs | train frames % | confusion held % | "
             "phones/states (pdfs) |", "|---:|---:|---:|---:|---:|---|"]
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
        held = (f"{100 * confusion_share(confusion, s['pdfs']):.1f}" if confusion is not None
                else "-")
        lines.append(f"| {m} | {s['clustering'] + 1} | {len(s['pdfs'])} | {share} | {held} | "
                     f"{desc} |")
    return "\n".join(lines) + "\n"
