"""GMM-HMM acoustic models: storage, vectorized statistics, EM updates, mono/triphone training.

A model is the triple Kaldi keeps in ``final.mdl`` + ``tree``: a TransitionModel (``.tm``), a
ContextDependency (``.ctx``) and an AmDiagGmm (``.am``) from kaldi_hmm_gmm.

Where we deviate from Kaldi:
- ``final.mdl`` is an ``.npz`` archive (numpy, ``allow_pickle=False``), not Kaldi's binary
  model: the bindings cannot write or read Kaldi model files. It holds the HMM topology as Kaldi
  text, the tree as Kaldi binary bytes, the transition log-probabilities and, per pdf, the GMM's
  weights, inverse variances and means*inverse-variances (the arrays DiagGmm keeps), so a reload
  is bit-exact. ``tree`` next to it is a real Kaldi binary tree file.
- Statistics are accumulated with numpy over all frames of a pdf at once (Viterbi training:
  frames belong to the pdf of their aligned transition-id, posteriors over that pdf's
  Gaussians), not one C++ call per frame; the M-step is our own numpy code. It follows Kaldi's
  MleDiagGmmUpdate (min occupancy, weight floor, removal of low-count Gaussians) except the
  variance floor, which is relative (``var_floor`` x the global per-dimension variance of the
  statistics) instead of Kaldi's absolute 0.001.
- Alignment uses our vectorized log-likelihoods through DecodableCtc (asrkd.align); training
  graphs are built with ``reorder=False`` (Kaldi: true); no silence boosting.
- ``--num-iters`` below Kaldi's 40 (mono) / 35 (tri) compresses Kaldi's realignment and
  mixing-up schedules proportionally (TrainConfig.scaled).
- Utterances that fail to align in an iteration are left out of that iteration's statistics
  and listed in exp_dir/failed (those of the last realignment), as Kaldi's logs count them.
"""

import dataclasses
import json
import os
import sys
import time
import zipfile

import numpy as np

from asrkd.alignment import AlignmentDir
from asrkd.errors import UserError
from asrkd.jobs import single_threaded_blas
from asrkd.table import atomic_path

FORMAT = "asrkd-gmm-1"


# --------------------------------------------------------------------------------------------
# Model storage


@dataclasses.dataclass
class GmmModel:
    """A GMM-HMM: TransitionModel ``tm``, ContextDependency ``ctx``, AmDiagGmm ``am`` (or None)."""

    tm: object
    ctx: object
    am: object = None

    @property
    def num_pdfs(self):
        return self.tm.num_pdfs


def _ctx_array(ctx):
    return np.asarray(ctx.__getstate__()[0], dtype=np.int8)


def ctx_to_bytes(ctx):
    """Kaldi binary bytes of a ContextDependency (no ``\\0B`` header)."""
    return _ctx_array(ctx).tobytes()


def ctx_from_bytes(data):
    """ContextDependency from Kaldi binary bytes (with or without the ``\\0B`` header)."""
    import kaldi_hmm_gmm as khg

    if data[:2] == b"\x00B":
        data = data[2:]
    ctx = khg.ContextDependency.__new__(khg.ContextDependency)
    ctx.__setstate__((np.frombuffer(data, dtype=np.int8).tolist(),))
    return ctx


def write_tree(ctx, path):
    """Write ``ctx`` as a Kaldi binary ``tree`` file (``\\0B`` + ContextDependency), atomically;
    the same bytes as Kaldi's own writer."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"\x00B" + ctx_to_bytes(ctx))


def read_tree(path):
    """Read a Kaldi binary tree file written by write_tree (or Kaldi's build-tree)."""
    if not os.path.exists(path):
        raise UserError(f"tree file {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\x00BContextDependency"):
        raise UserError(f"{path} is not a Kaldi binary tree file")
    return ctx_from_bytes(data)


def make_transition_model(ctx, topo, log_probs=None, non_self_loop_log_probs=None):
    """TransitionModel for (ctx, topo); with stored log-probs it reproduces a trained one."""
    import kaldi_hmm_gmm as khg

    tm = khg.TransitionModel(ctx, topo)
    if log_probs is None:
        return tm
    st = list(tm.__getstate__())
    if len(st[6]) != len(log_probs):
        raise UserError("stored transition probabilities do not match the topology and tree")
    st[6] = [float(x) for x in np.asarray(log_probs, dtype=np.float32)]
    st[7] = [float(x) for x in np.asarray(non_self_loop_log_probs, dtype=np.float32)]
    out = khg.TransitionModel.__new__(khg.TransitionModel)
    out.__setstate__(tuple(st))
    return out


def am_from_arrays(weights, inv_vars, means_invvars):
    """AmDiagGmm from per-pdf lists of (k,), (k, D), (k, D) float32 arrays (gconsts computed)."""
    import kaldi_hmm_gmm as khg

    state = []
    for w, iv, mi in zip(weights, inv_vars, means_invvars):
        state += [np.ascontiguousarray(w, dtype=np.float32),
                  np.ascontiguousarray(iv, dtype=np.float32),
                  np.ascontiguousarray(mi, dtype=np.float32)]
    am = khg.AmDiagGmm.__new__(khg.AmDiagGmm)
    am.__setstate__(tuple(state))
    return am


def am_to_arrays(am):
    st = am.__getstate__()
    return list(st[0::3]), list(st[1::3]), list(st[2::3])


def save_model(model, model_dir):
    """Write ``model_dir/final.mdl`` (npz, see module docstring) and ``model_dir/tree``."""
    os.makedirs(model_dir, exist_ok=True)
    arrays = {
        "format": np.array(FORMAT),
        "topo": np.array(str(model.tm.topo)),
        "ctx": _ctx_array(model.ctx),
        "log_probs": np.asarray(model.tm.log_probs, dtype=np.float32),
        "non_self_loop_log_probs": np.asarray(model.tm.non_self_loop_log_probs, np.float32),
    }
    if model.am is not None:
        w, iv, mi = am_to_arrays(model.am)
        arrays["gmm_sizes"] = np.array([len(x) for x in w], dtype=np.int64)
        arrays["gmm_weights"] = np.concatenate(w).astype(np.float32)
        arrays["gmm_inv_vars"] = np.concatenate(iv).astype(np.float32)
        arrays["gmm_means_invvars"] = np.concatenate(mi).astype(np.float32)
    path = os.path.join(model_dir, "final.mdl")
    _check_arrays(path, arrays)  # a model with NaN parameters is never written
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_tree(model.ctx, os.path.join(model_dir, "tree"))


def load_model(model_dir):
    """Load ``model_dir/final.mdl`` -> GmmModel (``.am`` None for a model without GMMs)."""
    import kaldi_hmm_gmm as khg

    path = os.path.join(model_dir, "final.mdl") if os.path.isdir(model_dir) else model_dir
    if not os.path.isfile(path):
        raise UserError(f"{model_dir}: no final.mdl")
    try:
        z = dict(np.load(path, allow_pickle=False))  # reads every array: a truncation shows here
        if str(z["format"]) != FORMAT:
            raise ValueError
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile):
        raise UserError(f"{path}: not an asrkd GMM model ({FORMAT}), or truncated") from None
    _check_arrays(path, z)
    topo = khg.HmmTopology()
    topo.read(str(z["topo"]))
    ctx = ctx_from_bytes(np.asarray(z["ctx"], dtype=np.int8).tobytes())
    tm = make_transition_model(ctx, topo, z["log_probs"], z["non_self_loop_log_probs"])
    am = None
    if "gmm_sizes" in z:
        ends = np.cumsum(z["gmm_sizes"])[:-1]
        am = am_from_arrays(np.split(z["gmm_weights"], ends), np.split(z["gmm_inv_vars"], ends),
                            np.split(z["gmm_means_invvars"], ends))
    return GmmModel(tm, ctx, am)


_MODEL_KEYS = ("topo", "ctx", "log_probs", "non_self_loop_log_probs")
_GMM_KEYS = ("gmm_sizes", "gmm_weights", "gmm_inv_vars", "gmm_means_invvars")


def _check_arrays(path, z):
    """UserError naming the first missing, inconsistent or non-finite array of a final.mdl."""
    from asrkd.finite import check_finite

    has_gmm = any(k in z for k in _GMM_KEYS)
    for k in _MODEL_KEYS + (_GMM_KEYS if has_gmm else ()):
        if k not in z:
            raise UserError(f"{path}: no {k!r} array (damaged or incomplete model)")
    for k in ("log_probs", "non_self_loop_log_probs") + _GMM_KEYS[1:] * has_gmm:
        check_finite(z[k], f"{path}: {k}")
    if has_gmm:
        sizes = z["gmm_sizes"]
        n = int(sizes.sum()) if sizes.size and sizes.min() >= 1 else -1
        rows = {k: z[k].shape[0] if z[k].ndim else -1 for k in _GMM_KEYS[1:]}
        dims = {z[k].shape[1] for k in _GMM_KEYS[2:] if z[k].ndim == 2}
        if n < 0 or set(rows.values()) != {n} or len(dims) != 1 or z["gmm_weights"].ndim != 1:
            raise UserError(f"{path}: GMM arrays disagree ({sizes.size} pdfs, {n} Gaussians "
                            f"by gmm_sizes; rows {rows})")
        if z["gmm_weights"].min() <= 0 or z["gmm_inv_vars"].min() <= 0:
            raise UserError(f"{path}: GMM weights and inverse variances must be positive")


# --------------------------------------------------------------------------------------------
# Vectorized likelihoods and statistics


class PackedGmm:
    """All Gaussians of an AmDiagGmm as flat arrays, grouped by pdf, for matrix-product scoring.

    Kaldi's per-Gaussian log-likelihood ``gconst + x.(mean*ivar) - 0.5 x^2.ivar`` becomes one
    (T, D) x (D, G) product per term.
    """

    def __init__(self, am):
        w, iv, mi = am_to_arrays(am)
        self.sizes = np.array([len(x) for x in w], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.gauss2pdf = np.repeat(np.arange(len(w)), self.sizes)
        self.weights = np.concatenate(w).astype(np.float64)
        self.inv_vars = np.concatenate(iv).astype(np.float64)  # (G, D)
        self.means_invvars = np.concatenate(mi).astype(np.float64)  # (G, D)
        # Kaldi's DiagGmm::ComputeGconsts, for all Gaussians at once
        self.gconsts = (np.log(self.weights) - 0.5 * self.inv_vars.shape[1] * np.log(2 * np.pi)
                        + 0.5 * np.log(self.inv_vars).sum(1)
                        - 0.5 * (self.means_invvars ** 2 / self.inv_vars).sum(1))
        self.num_pdfs = len(w)
        self.dim = self.inv_vars.shape[1]
        self.w2 = np.concatenate([self.means_invvars, -0.5 * self.inv_vars], axis=1)  # (G, 2D)
        self.w2_32 = self.w2.astype(np.float32)
        self._w32 = None

    @property
    def means(self):
        return self.means_invvars / self.inv_vars

    @property
    def vars(self):
        return 1.0 / self.inv_vars

    def gauss_loglikes(self, x, gauss=slice(None)):
        """(N, D) frames -> (N, G') float64 log-likelihoods of the selected Gaussians."""
        x = np.asarray(x, dtype=np.float64)
        return (self.gconsts[gauss] + x @ self.means_invvars[gauss].T
                - 0.5 * (x * x) @ self.inv_vars[gauss].T)

    def _layout(self, pdfs):
        """Gaussian rows of ``pdfs`` in "rank-major" order for the log-sum over mixtures.

        Pdfs are sorted by mixture size (descending), so the pdfs having a k-th Gaussian are a
        prefix of that order; block k holds the k-th Gaussians of that prefix. The log-sum is
        then a few contiguous numpy operations per mixture rank instead of a reduceat over
        irregular groups (which was most of the alignment time). Returns (rows, prefix lengths
        per rank, order): row j of the result is pdf ``pdfs[order[j]]``.
        """
        sizes = self.sizes[pdfs]
        order = np.argsort(-sizes, kind="stable")
        ss, starts = sizes[order], self.offsets[pdfs][order]
        counts = [int(np.count_nonzero(ss > k)) for k in range(int(ss[0]) if len(ss) else 0)]
        rows = np.concatenate([starts[:n] + k for k, n in enumerate(counts)]) if counts \
            else np.zeros(0, dtype=np.int64)
        return rows, counts, order

    def pdf_loglikes(self, x, pdfs=None):
        """(T, D) frames -> (T, P') float32 per-pdf log-likelihoods (log-sum over mixture
        components) of ``pdfs`` (default all, P' = num_pdfs) in the given order."""
        if self._w32 is None:
            # float32 products: 2x faster and plenty for decoding/alignment
            self._w32 = (self.w2.astype(np.float32), self.gconsts.astype(np.float32)[:, None])
            self._full = self._layout(np.arange(self.num_pdfs))
        w2, gc = self._w32
        if pdfs is None:
            rows, counts, order = self._full
        else:
            pdfs = np.asarray(pdfs, dtype=np.int64)
            rows, counts, order = self._layout(pdfs)
        x = np.asarray(x, dtype=np.float32)
        dim, n = self.dim, len(order)
        if x.ndim != 2 or x.shape[1] != dim:
            raise UserError(f"features of shape {x.shape} but the GMMs take {dim} dims "
                            "(MFCC + deltas: the *_mfcc data dir)")
        xs = np.empty((len(x), 2 * dim), dtype=np.float32)
        xs[:, :dim] = x
        np.multiply(x, x, out=xs[:, dim:])
        # Gaussians as rows (G', T): each rank block is a contiguous slab
        ll = w2[rows] @ xs.T
        ll += gc[rows]
        m = ll[:n].copy()
        pos = n
        for c in counts[1:]:
            np.maximum(m[:c], ll[pos:pos + c], out=m[:c])
            pos += c
        s = np.zeros_like(m)
        pos = 0
        for c in counts:
            blk = ll[pos:pos + c]
            blk -= m[:c]
            np.exp(blk, out=blk)
            s[:c] += blk
            pos += c
        np.log(s, out=s)
        s += m
        out = np.empty((len(x), n), dtype=np.float32)
        out[:, order] = s.T
        return out


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


# --------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class TrainConfig:
    """Viterbi EM schedule (defaults as Kaldi's train_mono.sh; train_tri uses tri_config())."""

    num_iters: int = 40
    num_gauss: int = 1000
    max_iter_inc: int = 30
    realign_iters: tuple = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29, 32,
                            35, 38)
    power: float = 0.25
    beam: float = 10.0
    first_beam: float = 6.0  # mono's first realignment (Kaldi: beam 6, then 10)
    retry_beam_factor: float = 4.0
    acwt: float = 0.1
    self_loop_scale: float = 0.1
    transition_scale: float = 1.0
    min_gaussian_occupancy: float = 3.0
    var_floor: float = 0.01

    def scaled(self, num_iters, num_gauss):
        """This schedule compressed to ``num_iters`` (realign list and mix-up scaled)."""
        f = num_iters / self.num_iters
        realign = tuple(sorted({max(1, int(round(i * f))) for i in self.realign_iters
                                if round(i * f) < num_iters}))
        return dataclasses.replace(self, num_iters=num_iters, num_gauss=num_gauss,
                                   realign_iters=realign,
                                   max_iter_inc=max(1, int(round(self.max_iter_inc * f))))


def mono_config(num_iters=40, num_gauss=1000):
    """Kaldi train_mono.sh: 40 iterations, realign often, mix-up until iteration 30."""
    return TrainConfig().scaled(num_iters, num_gauss)


def tri_config(num_iters=35, num_gauss=10000):
    """Kaldi train_deltas.sh: 35 iterations, realign at 10/20/30, mix-up until 25, beam 10."""
    base = TrainConfig(num_iters=35, max_iter_inc=25, realign_iters=(10, 20, 30), first_beam=10.0,
                       min_gaussian_occupancy=10.0)
    return base.scaled(num_iters, num_gauss)


class TrainData:
    """Features (utt -> (T, D) float32) and transcripts (utt -> word string) of a training set.

    ``from_dir`` reads MFCC + deltas(2) + per-speaker mean CMVN through asrkd.features.
    """

    def __init__(self, feats, text, path=None):
        self.feats, self.text, self.path = feats, text, path

    @classmethod
    def from_dir(cls, data_dir, deltas=2, cmvn="mean"):
        from asrkd.data import DataDir
        from asrkd.features import FeatureReader

        d = DataDir(data_dir)
        return cls(FeatureReader(data_dir, cmvn=cmvn, deltas=deltas), d.text, data_dir)

    @property
    def utts(self):
        return sorted(u for u in self.text if u in self.feats)

    def report_unusable(self, what):
        """Print (never silently drop) utterances lacking features or a transcript."""
        no_feats = sorted(u for u in self.text if u not in self.feats)
        no_text = sorted(u for u in self.feats if u not in self.text)
        for n, why in ((no_feats, "features"), (no_text, "a transcript")):
            if n:
                print(f"{what}: {len(n)} utterances have no {why} and are skipped (first: {n[0]})",
                      file=sys.stderr)


def as_data(data):
    return data if isinstance(data, TrainData) else TrainData.from_dir(data)


def as_lang(lang):
    if isinstance(lang, (str, os.PathLike)):
        from asrkd.lang import Lang

        return Lang(lang)
    return lang


def _log(log, msg):
    print(msg, file=log, flush=True)


def em_iteration(model, data, lang, blocks, alis, realign, beam, retry_beam, config, graphs):
    """One pass over ``blocks`` (lists of utterances, see acc_blocks): optional realignment,
    then statistics, accumulated per block and summed in fixed point (GmmStats.to_fixed), so
    the total is the same bytes however the blocks are split into jobs. Returns (fixed stats,
    tstats, alis, failed). ``graphs`` caches training graphs (asrkd.align.UttGraph) by
    utterance, filled on demand; they depend only on the tree, so one cache serves a whole
    run_em."""
    from asrkd.align import align_utterance

    packed = PackedGmm(model.am)
    tid2pdf = np.asarray(model.tm.transition_id_to_pdf_array(), dtype=np.int64)
    total = GmmStats.zeros(len(packed.gauss2pdf), packed.dim).to_fixed()
    new_alis, failed = {}, {}
    utts = [u for b in blocks for u in b]
    if realign:
        failed.update(fill_graphs(graphs, model, lang, data, utts))
    for block in blocks:
        buf = []
        for u in block:
            if u in failed:
                continue
            x = data.feats[u]
            if realign:
                g = graphs[u]
                ll = packed.pdf_loglikes(x, g.pdfs)
                ali, reason = align_utterance(model.tm, g, ll, u, beam, retry_beam,
                                              config.acwt, config.transition_scale,
                                              config.self_loop_scale, lang.disambig_phones,
                                              tid2pdf=tid2pdf)
                if ali is None:
                    failed[u] = reason
                    continue
            else:
                ali = alis.get(u)
                if ali is None:
                    continue
            new_alis[u] = np.asarray(ali, dtype=np.int32)
            buf.append((x, tid2pdf[new_alis[u]]))
        stats = GmmStats.zeros(len(packed.gauss2pdf), packed.dim)
        _flush(packed, buf, stats)
        total.add(stats.to_fixed())
    tstats = transition_stats(model.tm, new_alis.values())
    return total, tstats, new_alis, failed


def acc_blocks(data, utts, frames=None):
    """``utts`` cut into consecutive blocks of at least ``frames`` (ACC_BATCH_FRAMES) frames:
    the unit of accumulation, fixed by the data alone (not by the number of jobs)."""
    frames = frames or ACC_BATCH_FRAMES
    blocks, cur, n = [], [], 0
    for u in utts:
        cur.append(u)
        n += len(data.feats[u])
        if n >= frames:
            blocks.append(cur)
            cur, n = [], 0
    if cur:
        blocks.append(cur)
    return blocks


def fill_graphs(graphs, model, lang, data, utts):
    """Compile the training graphs of ``utts`` missing from ``graphs`` (utt -> UttGraph, or
    a reason string for a transcript without a graph); returns {utt: reason} of ``utts``
    without a graph."""
    from asrkd.align import UttGraph, compile_graphs

    need = [u for u in utts if u not in graphs]
    if need:
        tid2pdf = np.asarray(model.tm.transition_id_to_pdf_array(), dtype=np.int64)
        g, bad = compile_graphs(model, lang, {u: data.text[u] for u in need})
        graphs.update({u: UttGraph(f, tid2pdf) for u, f in g.items()})
        graphs.update(bad)
    return {u: graphs[u] for u in utts if isinstance(graphs[u], str)}


# Frames per accumulate() call (amortizes its per-pdf loop) and per block of run_em's jobs:
# small enough that a monophone subset still makes a block per job.
ACC_BATCH_FRAMES = 20000


def _flush(packed, buf, stats):
    if buf:
        accumulate(packed, np.concatenate([b[0] for b in buf]),
                   np.concatenate([b[1] for b in buf]), stats)
        buf.clear()


# State that run_em's forked jobs inherit (features in memory, compiled graphs, the model)
# instead of re-reading and re-compiling them in every job of every iteration.
_FORK_STATE = {}


def _em_job(blocks, alis, realign, beam, retry_beam, config):
    model, data, lang, graphs = _FORK_STATE["em"]
    stats, tstats, alis, failed = em_iteration(model, data, lang, blocks, alis, realign, beam,
                                               retry_beam, config, graphs)
    print(f"{len(alis)} utterances, {len(failed)} failed, avg loglike "
          f"{stats.loglike / FIXED_SCALE / max(stats.frames, 1):.4f} over {stats.frames} frames")
    return stats, tstats, alis, failed


def _feats_job(utts):
    feats = _FORK_STATE["feats"]
    return {u: feats[u] for u in utts}


def preload_features(data, utts, nj=1, log_dir=None):
    """Replace ``data.feats`` by an in-memory dict over ``utts`` (read by ``nj`` jobs): EM
    reads every utterance 25-40 times, and MFCC + deltas + CMVN once is enough."""
    from asrkd.jobs import run_jobs, split_evenly

    if isinstance(data.feats, dict):
        return data
    utts = [u for u in utts if u in data.feats]
    if nj > 1 and log_dir:
        feats = {}
        _FORK_STATE["feats"] = data.feats
        try:
            for r in run_jobs(_feats_job, [(c,) for c in split_evenly(utts, nj)], nj,
                              log_dir, "feats", desc="load features"):
                feats.update(r)
        finally:
            _FORK_STATE.pop("feats", None)
    else:
        feats = {u: data.feats[u] for u in utts}
    data.feats = feats
    return data


def run_em(model, data, lang, exp_dir, config, alis, nj=1, start_iter=0, graphs=None):
    """Viterbi EM from ``model`` and initial alignments ``alis`` (utt -> transition-ids) on the
    schedule ``config``; logs each iteration to exp_dir/log/train.log. ``graphs`` is a
    training-graph cache (see em_iteration) to reuse. With nj > 1 each iteration forks ``nj``
    jobs that inherit the model, features and graphs. Returns (model, alis, failed)."""
    import kaldi_hmm_gmm as khg
    from asrkd.jobs import run_jobs, split_evenly

    log_dir = os.path.join(exp_dir, "log")
    os.makedirs(log_dir, exist_ok=True)
    utts = data.utts
    preload_features(data, utts, nj, log_dir)
    blocks = acc_blocks(data, utts)
    num_gauss = model.am.num_gauss
    inc = max(0, (config.num_gauss - num_gauss) // max(config.max_iter_inc, 1))
    failed = {}
    summary = open(os.path.join(log_dir, "train.log"), "w" if start_iter == 0 else "a")
    graphs = {} if graphs is None else graphs
    for it in range(start_iter, config.num_iters):
        t0 = time.time()
        realign = it in config.realign_iters
        beam = config.first_beam if (realign and it == min(config.realign_iters)) else config.beam
        retry = beam * config.retry_beam_factor
        if nj <= 1:
            stats, tstats, alis_new, failed_it = em_iteration(
                model, data, lang, blocks, alis, realign, beam, retry, config, graphs)
        else:
            if realign:
                # compiled once here (the jobs' caches die with them), inherited by every
                # later iteration's jobs
                fill_graphs(graphs, model, lang, data, utts)
            _FORK_STATE["em"] = (model, data, lang, graphs)
            chunks = [c for c in split_evenly(blocks, nj) if c]
            try:
                res = run_jobs(_em_job, [(c, {u: alis[u] for b in c for u in b if u in alis},
                                          realign, beam, retry, config) for c in chunks],
                               nj, log_dir, f"acc.{it}", desc=f"iter {it}")
            finally:
                _FORK_STATE.pop("em", None)
            stats, tstats, alis_new, failed_it = res[0]
            for r in res[1:]:
                stats.add(r[0])
                tstats += r[1]
                alis_new.update(r[2])
                failed_it.update(r[3])
        if realign:
            alis = alis_new
            failed = failed_it
        stats = stats.from_fixed()
        packed = PackedGmm(model.am)
        am = update_gmm(packed, stats, UpdateConfig(
            min_gaussian_occupancy=config.min_gaussian_occupancy, var_floor=config.var_floor))
        model.tm.mle_update(tstats, khg.MleTransitionUpdateConfig())
        if it <= config.max_iter_inc:
            num_gauss = min(config.num_gauss, num_gauss + inc) if it < config.max_iter_inc \
                else config.num_gauss
            am = mixup(am, stats.pdf_occs(packed), num_gauss, power=config.power, seed=it)
        model.am = am
        _log(summary, f"iter {it}: {'realign ' if realign else ''}avg loglike/frame "
                      f"{stats.loglike / max(stats.frames, 1):.4f} over {stats.frames} frames, "
                      f"{len(failed)} failed, {am.num_gauss} gaussians, {time.time() - t0:.1f}s")
    summary.close()
    return model, alis, failed


def equal_alignments(model, lang, data, utts, seed=0, graphs=None):
    """Kaldi align-equal-compiled: a random path of the training graph with exactly T frames.
    ``graphs``: a training-graph cache (see em_iteration) to fill and reuse."""
    import kaldifst

    graphs = {} if graphs is None else graphs
    failed = fill_graphs(graphs, model, lang, data, utts)
    alis = {}
    for i, u in enumerate(utts):
        if u in failed:
            continue
        n = len(data.feats[u])
        ok, path = kaldifst.equal_align(graphs[u].fst, n, seed + i)
        if not ok:
            failed[u] = "equal-align: transcript needs more frames than the audio has"
            continue
        ok, ilabels, _, _ = kaldifst.get_linear_symbol_sequence(path)
        if not ok or len(ilabels) != n:
            failed[u] = "equal-align: no path of the right length"
            continue
        alis[u] = np.asarray(ilabels, dtype=np.int32)
    return alis, failed


def write_failed(path, failed):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for u in sorted(failed):
            f.write(f"{u} {failed[u]}\n")


def _report_failed(failed, n, what):
    if failed:
        print(f"{what}: {len(failed)} of {n} utterances failed to align and were excluded "
              f"(first: {sorted(failed)[0]} {failed[sorted(failed)[0]]})", file=sys.stderr)


@single_threaded_blas()
def train_mono(data_dir, lang_dir, exp_dir, num_iters=40, num_gauss=1000, nj=1, config=None,
               max_init_utts=1000):
    """Monophone GMM-HMM from a flat start (Kaldi steps/train_mono.sh); writes exp_dir/final.mdl,
    tree, failed, log/. ``data_dir``/``lang_dir`` may also be TrainData / Lang-like objects.
    Returns the GmmModel."""
    import kaldi_hmm_gmm as khg

    data, lang = as_data(data_dir), as_lang(lang_dir)
    config = config or mono_config(num_iters, num_gauss)
    topo = lang.topo
    phones = list(topo.phones)
    ctx = khg.monophone_context_dependency(phones, topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx, topo)
    data.report_unusable("train-mono")
    utts = data.utts
    if not utts:
        raise UserError(f"{data.path}: no utterances with both features and text")
    preload_features(data, utts, nj, os.path.join(exp_dir, "log"))
    am = flat_start_am(tm.num_pdfs, (data.feats[u] for u in utts[:max_init_utts]))
    model = GmmModel(tm, ctx, am)
    graphs = {}
    alis, failed = equal_alignments(model, lang, data, utts, graphs=graphs)
    _report_failed(failed, len(utts), "equal alignment")
    # iteration 0 uses the equal alignments (Kaldi: gmm-acc-stats-ali on them)
    model, alis, failed2 = run_em(model, data, lang, exp_dir, config, alis, nj=nj,
                                  graphs=graphs)
    failed = failed2 or failed
    save_model(model, exp_dir)
    write_failed(os.path.join(exp_dir, "failed"), failed)
    _report_failed(failed, len(utts), "train-mono")
    _write_info(exp_dir, model, config, len(utts), failed)
    return model


def _write_info(exp_dir, model, config, n, failed):
    info = {"num_pdfs": model.num_pdfs, "num_gauss": model.am.num_gauss, "utts": n,
            "failed": len(failed), "config": dataclasses.asdict(config)}
    with atomic_path(os.path.join(exp_dir, "info.json")) as tmp, open(tmp, "w") as f:
        json.dump(info, f, indent=1)


@single_threaded_blas()
def train_tri(data_dir, lang_dir, ali_dir, exp_dir, num_leaves=2000, num_gauss=10000, nj=1,
              num_iters=35, config=None, min_count=100.0):
    """Triphone GMM-HMM (Kaldi steps/train_deltas.sh) from the alignments in ``ali_dir``.

    Tree statistics, questions and tree come from asrkd.tree, the conversion of the alignments
    to the new tree from asrkd.transitions; GMMs start as one Gaussian per leaf from the leaf
    statistics (gmm-init-model), then Viterbi EM with realignment and mixing up to
    ``num_gauss``. Returns the GmmModel; writes exp_dir/final.mdl, tree, failed, log/."""
    import kaldi_hmm_gmm as khg

    from asrkd import transitions, tree as treelib

    data, lang = as_data(data_dir), as_lang(lang_dir)
    config = config or tri_config(num_iters, num_gauss)
    data.report_unusable("train-tri")
    preload_features(data, data.utts, nj, os.path.join(exp_dir, "log"))
    old = load_model(ali_dir)
    alis = AlignmentDir(ali_dir).transition_ids(data.utts)
    if len(alis) < len(data.utts):
        print(f"train-tri: {len(data.utts) - len(alis)} utterances have no alignment in "
              f"{ali_dir} (failed there) and start unaligned", file=sys.stderr)
    if not alis:
        raise UserError(f"{ali_dir}: no alignments for the utterances of {data.path}")
    log_dir = os.path.join(exp_dir, "log")
    os.makedirs(log_dir, exist_ok=True)
    t0 = time.time()
    stats = treelib.accumulate_tree_stats(data.feats, alis, old.tm)
    questions = treelib.build_questions(stats, lang.nonsilence_phones, lang.silence_phones)
    ctx, info = treelib.build_tree(stats, questions, lang.topo, num_leaves, min_count=min_count,
                                   return_info=True)
    tm = khg.TransitionModel(ctx, lang.topo)
    counts, means, variances = treelib.leaf_stats(stats, ctx)
    iv = 1.0 / variances
    am = am_from_arrays([np.ones(1)] * len(means), [v[None] for v in iv],
                        [(m * v)[None] for m, v in zip(means, iv)])
    ot, nt = transitions.transition_tables(old.tm), transitions.transition_tables(tm)
    new_alis = {u: transitions.convert_alignment(a, old.tm, tm, ctx, ot, nt)
                for u, a in alis.items()}
    with open(os.path.join(log_dir, "tree.log"), "w") as f:
        _log(f, f"tree: {ctx.num_pdfs} leaves (asked {num_leaves}), objf "
                f"{info['objf_before']:.1f} -> {info['objf_after']:.1f}, "
                f"{len(questions)} questions, {len(alis)} alignments, {time.time() - t0:.1f}s")
    model = GmmModel(tm, ctx, am)
    model, new_alis, failed = run_em(model, data, lang, exp_dir, config, new_alis, nj=nj)
    save_model(model, exp_dir)
    write_failed(os.path.join(exp_dir, "failed"), failed)
    _report_failed(failed, len(data.utts), "train-tri")
    _write_info(exp_dir, model, config, len(data.utts), failed)
    return model
