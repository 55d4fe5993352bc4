"""GMM-HMM acoustic models: the model, its files and its vectorized scoring.

A model is the triple Kaldi keeps in ``final.mdl`` + ``tree``: a TransitionModel (``.tm``), a
ContextDependency (``.ctx``) and an AmDiagGmm (``.am``) from kaldi_hmm_gmm. Training is in
asrkd.gmmtrain, its statistics and updates in asrkd.gmmstats.

Where we deviate from Kaldi:
- ``final.mdl`` is an ``.npz`` archive (numpy, ``allow_pickle=False``), not Kaldi's binary
  model: the bindings cannot write or read Kaldi model files. It holds the HMM topology as Kaldi
  text, the tree as Kaldi binary bytes, the transition log-probabilities and, per pdf, the GMM's
  weights, inverse variances and means*inverse-variances (the arrays DiagGmm keeps), so a reload
  is bit-exact. ``tree`` next to it is a real Kaldi binary tree file.
- Log-likelihoods are computed with numpy for all Gaussians at once (PackedGmm), not one C++
  call per frame and pdf.
"""

import dataclasses
import os
import zipfile

import kaldi_hmm_gmm as khg
import numpy as np

from asrkd.errors import UserError
from asrkd.finite import check_finite
from asrkd.table import atomic_path

FORMAT = "asrkd-gmm-1"


# --------------------------------------------------------------------------------------------
# The model and its files


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


def save_gmm(model, model_dir):
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


def load_gmm(model_dir):
    """Load ``model_dir/final.mdl`` -> GmmModel (``.am`` None for a model without GMMs)."""
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
# Vectorized likelihoods


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
