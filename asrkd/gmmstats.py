"""Viterbi statistics of GMMs and the updates made from them: Kaldi's gmm-acc-stats-ali
(accumulate, transition_stats), gmm-est (update_gmm, mixup) and gmm-init-mono (flat_start_am).

Where we deviate from Kaldi:
- Statistics are accumulated with numpy over all frames of a pdf at once (Viterbi training:
  frames belong to the pdf of their aligned transition-id, posteriors over that pdf's
  Gaussians), not one C++ call per frame; the M-step is our own numpy code. It follows Kaldi's
  MleDiagGmmUpdate (min occupancy, weight floor, removal of low-count Gaussians) except the
  variance floor, which is relative (``var_floor`` x the global per-dimension variance of the
  statistics) instead of Kaldi's absolute 0.001.
- Sums of statistics over jobs are taken in fixed point (GmmStats.to_fixed), so they do not
  depend on how the work was split.
"""

import dataclasses

import numpy as np

from asrkd.errors import UserError
from asrkd.gmm import am_from_arrays, am_to_arrays


@dataclasses.dataclass
class GmmStats:
    """Viterbi-EM sufficient statistics per Gaussian (float64) plus totals."""

    occ: np.ndarray  # (G,)
    x: np.ndarray  # (G, D)
    xx: np.ndarray  # (G, D)
    loglike: float = 0.0
    frames: int = 0

    @classmethod
    def zeros(cls, num_gauss, dim):
        return cls(np.zeros(num_gauss), np.zeros((num_gauss, dim)), np.zeros((num_gauss, dim)))

    def add(self, other):
        self.occ += other.occ
        self.x += other.x
        self.xx += other.xx
        self.loglike += other.loglike
        self.frames += other.frames
        return self

    def pdf_occs(self, packed):
        return np.bincount(packed.gauss2pdf, weights=self.occ, minlength=packed.num_pdfs)

    def to_fixed(self):
        """The statistics in fixed point (int64 multiples of 1 / FIXED_SCALE): sums of them are
        exact, so they do not depend on how the blocks were grouped into jobs."""
        def fix(a):
            return np.rint(np.asarray(a, dtype=np.float64) * FIXED_SCALE).astype(np.int64)

        return GmmStats(fix(self.occ), fix(self.x), fix(self.xx),
                        int(round(self.loglike * FIXED_SCALE)), self.frames)

    def from_fixed(self):
        """Float64 statistics back from to_fixed()'s."""
        return GmmStats(self.occ / FIXED_SCALE, self.x / FIXED_SCALE, self.xx / FIXED_SCALE,
                        self.loglike / FIXED_SCALE, self.frames)


# Resolution of summed statistics: 2^-20 (1e-6) of a frame's occupancy, far below what an EM
# update resolves, with int64 room for 2^43 (8.8e12) in any sum (x^2 of a 1000 h corpus of CMVN'd
# MFCCs stays below 1e12).
FIXED_SCALE = float(2 ** 20)


def accumulate(packed, feats, pdfs, stats=None):
    """Add Viterbi statistics of frames ``feats`` (N, D) aligned to ``pdfs`` (N,) to ``stats``.

    Frames are sorted by pdf; per pdf, one product of [x, x^2] (n, 2D) with the pdf's
    [mean*ivar, -ivar/2] (k, 2D) gives all its Gaussians' log-likelihoods, their softmax the
    posteriors, and one more product the first- and second-order statistics together. Equals
    Kaldi's AccumAmDiagGmm::AccumulateForGmm summed over frames. Pass many utterances' frames
    at once: the cost per pdf present is a few numpy calls.
    """
    if stats is None:
        stats = GmmStats.zeros(len(packed.gauss2pdf), packed.dim)
    pdfs = np.asarray(pdfs, dtype=np.int64)
    if len(feats) != len(pdfs):
        raise ValueError(f"{len(feats)} frames but {len(pdfs)} alignment entries")
    if len(pdfs) == 0:
        return stats
    dim = packed.dim
    feats = np.asarray(feats, dtype=np.float32)
    # radix sort on 16-bit keys when they fit (much faster than sorting int64)
    keys = pdfs.astype(np.int16) if packed.num_pdfs < 2 ** 15 else pdfs
    order = np.argsort(keys, kind="stable")
    sp = pdfs[order]
    # float32 products (as Kaldi's BaseFloat likelihoods), float64 accumulators; each pdf's
    # frames are gathered inside the loop so the working set stays in cache, and Gaussians
    # are rows (k, n) so that reductions over them run along contiguous memory
    w2, gconsts = packed.w2_32, packed.gconsts
    gc32 = gconsts.astype(np.float32)[:, None]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sp)) + 1])
    offsets, g2p = packed.offsets, packed.gauss2pdf
    occ, sx, loglike = stats.occ, np.zeros((len(gconsts), 2 * dim)), 0.0
    for s, e in _blocks(starts, len(sp)):
        # a block: consecutive pdfs (in sorted order) with few frames each, or one pdf;
        # Gaussians of other pdfs than a frame's own are masked out
        p0, p1 = int(sp[s]), int(sp[e - 1])
        g0, g1 = offsets[p0], offsets[p1 + 1]
        xs = np.empty((e - s, 2 * dim), dtype=np.float32)  # (n, 2D) = [x, x^2]
        np.take(feats, order[s:e], axis=0, out=xs[:, :dim])
        np.multiply(xs[:, :dim], xs[:, :dim], out=xs[:, dim:])
        if g1 - g0 == 1:
            loglike += float((w2[g0] @ xs.T).sum(dtype=np.float64)) + (e - s) * gconsts[g0]
            occ[g0] += e - s
            sx[g0] += xs.sum(axis=0, dtype=np.float64)
            continue
        ll = w2[g0:g1] @ xs.T
        ll += gc32[g0:g1]  # (k, n)
        if p0 != p1:
            ll[g2p[g0:g1, None] != sp[None, s:e]] = -np.inf
        m = ll.max(axis=0)
        ll -= m
        post = np.exp(ll, out=ll)
        tot = post.sum(axis=0)
        post /= tot
        loglike += m.sum(dtype=np.float64) + np.log(tot).sum(dtype=np.float64)
        occ[g0:g1] += post.sum(axis=1, dtype=np.float64)
        sx[g0:g1] += post @ xs  # (k, 2D)
    stats.x += sx[:, :dim]
    stats.xx += sx[:, dim:]
    stats.loglike += float(loglike)
    stats.frames += len(pdfs)
    return stats


ACC_BLOCK_FRAMES = 256  # pdfs with fewer frames are batched into one masked product


def _blocks(starts, n):
    """(start, end) frame ranges over pdf runs ``starts`` (sorted frames, n in all): runs are
    merged until a block has ACC_BLOCK_FRAMES frames, so that pdfs with few frames (triphone
    leaves) do not each cost a round of numpy calls."""
    ends = np.append(starts[1:], n)
    out, s0 = [], None
    for s, e in zip(starts.tolist(), ends.tolist()):
        if s0 is None:
            s0 = s
        if e - s0 >= ACC_BLOCK_FRAMES:
            out.append((s0, e))
            s0 = None
    if s0 is not None:
        out.append((s0, n))
    return out


def transition_stats(tm, alignments):
    """Kaldi's transition-id counts (index = transition-id) from an iterable of alignments."""
    n = tm.num_transition_ids + 1
    out = np.zeros(n, dtype=np.float64)
    for ali in alignments:
        out += np.bincount(np.asarray(ali, dtype=np.int64), minlength=n)
    return out


@dataclasses.dataclass
class UpdateConfig:
    min_gaussian_occupancy: float = 10.0
    min_gaussian_weight: float = 1.0e-5
    var_floor: float = 0.01  # x global variance per dimension (Kaldi: absolute 0.001)
    remove_low_count_gaussians: bool = True


def update_gmm(packed, stats, config=UpdateConfig()):
    """M-step: new AmDiagGmm from Viterbi statistics (pdfs without data keep their GMMs)."""
    tot = stats.occ.sum()
    if tot <= 0:
        raise UserError("no statistics to update the GMMs from")
    gmean = stats.x.sum(0) / tot
    gvar = np.maximum(stats.xx.sum(0) / tot - gmean ** 2, 1e-10)
    floor = config.var_floor * gvar
    all_means, all_vars = packed.means, packed.vars
    weights, inv_vars, means_invvars = [], [], []
    for p in range(packed.num_pdfs):
        g = np.arange(packed.offsets[p], packed.offsets[p + 1])
        occ = stats.occ[g]
        old_mean, old_var = all_means[g], all_vars[g]
        if occ.sum() <= 0:
            weights.append(packed.weights[g])
            inv_vars.append(packed.inv_vars[g])
            means_invvars.append(packed.means_invvars[g])
            continue
        ok = occ >= config.min_gaussian_occupancy
        safe = np.maximum(occ, 1e-20)[:, None]
        mean = np.where(ok[:, None], stats.x[g] / safe, old_mean)
        var = np.where(ok[:, None], stats.xx[g] / safe - mean ** 2, old_var)
        var = np.maximum(var, floor)
        w = occ / occ.sum()
        keep = np.ones(len(g), dtype=bool)
        if config.remove_low_count_gaussians and len(g) > 1:
            keep = ok.copy()
            if not keep.any():
                keep[np.argmax(occ)] = True
        w = np.maximum(w[keep], config.min_gaussian_weight)
        w /= w.sum()
        iv = 1.0 / var[keep]
        weights.append(w)
        inv_vars.append(iv)
        means_invvars.append(mean[keep] * iv)
    return am_from_arrays(weights, inv_vars, means_invvars)


def mixup(am, pdf_occs, target, power=0.2, perturb=0.01, min_count=20.0, seed=0):
    """Split Gaussians (Kaldi gmm-est --mix-up) up to ``target`` in total, by occupancy^power;
    returns the new AmDiagGmm.

    Kaldi's split chooses how many Gaussians each pdf gets and which ones to split; it is called
    with no perturbation, and each copy of a split Gaussian is then moved by ``perturb`` standard
    deviations in a random direction drawn here from ``seed`` and the Gaussian counts (Kaldi's own
    draw cannot be seeded from Python, so reruns would differ).
    """
    if target <= am.num_gauss:
        return am
    before = am.num_gauss
    am.split_by_count(np.asarray(pdf_occs, dtype=np.float32), int(target), 0.0, power, min_count)
    weights, inv_vars, means_invvars = am_to_arrays(am)
    rng = np.random.default_rng([int(seed), before, int(target)])
    for iv, mi in zip(inv_vars, means_invvars):
        # copies of a split Gaussian are identical; all but the first of each group move
        _, first, group = np.unique(np.concatenate([iv, mi], axis=1), axis=0,
                                    return_index=True, return_inverse=True)
        group = np.asarray(group).ravel()
        move = first[group] != np.arange(len(group))
        if move.any():
            std = iv[move] ** -0.5
            mi[move] = (mi[move] / iv[move] + perturb * std * rng.standard_normal(std.shape)) \
                * iv[move]
    return am_from_arrays(weights, inv_vars, means_invvars)


def flat_start_am(num_pdfs, feats_iter):
    """One Gaussian per pdf at the global mean and variance of the features (gmm-init-mono)."""
    n, s, ss = 0, 0.0, 0.0
    for x in feats_iter:
        x = np.asarray(x, dtype=np.float64)
        n += len(x)
        s = s + x.sum(0)
        ss = ss + (x * x).sum(0)
    if n == 0:
        raise UserError("no features to initialise the GMMs from")
    mean = s / n
    var = np.maximum(ss / n - mean ** 2, 1e-6)
    iv = (1.0 / var)[None]
    return am_from_arrays([np.ones(1)] * num_pdfs, [iv] * num_pdfs,
                          [(mean * iv[0])[None]] * num_pdfs)
