"""Soft targets: the teacher ensemble's tempered distributions per frame, stored top-k + rest.

Soft targets (Hinton, Vinyals & Dean 2015, sec. 2): for every frame the ensemble's
temperature-softened distribution over pdfs (``asrkd.ensemble.average_posteriors``: ``arith``
or ``geo``), computed once by ``compute_soft_targets`` and read back by ``SoftTargetStore``
(``asrkd.distill`` trains students on them).

Where we deviate from the paper: soft targets are stored sparsely: per frame the top-k
probabilities (float16, not renormalized), their pdf ids (uint16 below 65536 pdfs) and the
*rest*, the mass of the other pdfs (float32). The paper kept dense targets; with thousands of
pdfs almost all mass sits in a few of them, and dense float32 costs ``num_pdfs * 4`` bytes per
frame. ``meta.json`` records the bytes per frame of both and the mean kept (top-k) mass.

Store layout (``OUT_DIR``): ``meta.json`` (temperature, combine, topk, num_pdfs, teachers,
bytes_per_frame, dense_bytes_per_frame, num_frames, num_utts, kept_mass: mean/min of the top-k
mass per frame), ``index`` (lines ``utt shard offset num_frames``, sorted by utt), and per shard
``ids.<shard>.npy`` (F, K), ``probs.<shard>.npy`` (F, K) float16 and ``rest.<shard>.npy`` (F,)
float32 with the frames of the shard's utterances concatenated. The arrays are memory-mapped on
load; each shard is checked once when first read (finite, non-negative, ids in range, kept +
rest mass within ``SUM_TOL`` of one). A store without ``rest`` files (older asrkd) reads as rest
0.
"""

import glob
import json
import os
import sys
from collections.abc import Mapping

import numpy as np
import torch

from asrkd.data import DataDir
from asrkd.ensemble import COMBINES, Ensemble, find_teachers
from asrkd.errors import UserError
from asrkd.features import FeatureReader
from asrkd.jobs import fixed_mmap_threshold, run_jobs, split_evenly
from asrkd.table import invalidate, read_table, save_npy, write_json, write_table

# A soft-target job holds its shard's targets in memory until it writes them: ~240 bytes per
# frame at top-20 before the float16 conversion, so 100k frames is ~25 MB per job.
SHARD_FRAMES = 100_000
# Shards a store keeps mapped: reading utterances in order touches one at a time, and an
# unmapped shard's pages leave the reader's resident set (the corpus never sits in RAM).
OPEN_SHARDS = 2


def sparsify(probs, topk):
    """Each row's ``topk`` largest probabilities (0: all) and the mass of the others.

    Returns (ids (N, K), probs (N, K), rest (N,)); the kept probabilities are not renormalized,
    so ``probs.sum(-1) + rest`` is the row's total (one).
    """
    k = min(topk, probs.shape[-1]) if topk and topk > 0 else probs.shape[-1]
    vals, ids = probs.topk(k, dim=-1)
    # summed directly (not 1 - kept): a tail of 1e-6 survives float32
    rest = probs.scatter(-1, ids, 0.0).sum(dim=-1)
    return ids, vals, rest


# ---------------------------------------------------------------------------------------------
# Store


def _id_dtype(num_pdfs):
    return np.uint16 if num_pdfs < 65536 else np.int32


def bytes_per_frame(topk, num_pdfs):
    """Bytes per frame of the sparse store (float16 probs + ids) and of dense float32."""
    k = min(topk, num_pdfs) if topk and topk > 0 else num_pdfs
    return k * (2 + np.dtype(_id_dtype(num_pdfs)).itemsize), num_pdfs * 4


def _soft_targets_job(data_dir, ckpts, out_dir, shard, utts, temperature, combine, topk,
                      num_pdfs, device="cpu", precision="fp32"):
    """One shard: run the ensemble over ``utts`` and write ids/probs.<shard>.npy."""
    expected = DataDir(data_dir).utt2num_frames
    ens = Ensemble(ckpts, device=device, precision=precision)
    reader = FeatureReader(data_dir, cmvn=ens.cmvn)
    items = []
    for utt in utts:
        feats = np.asarray(reader[utt], dtype=np.float32)
        if feats.shape[0] != expected[utt]:
            raise UserError(
                f"{utt}: features have {feats.shape[0]} frames, utt2num_frames says {expected[utt]}"
            )
        ids, probs, rest = sparsify(ens.posteriors(torch.from_numpy(feats), temperature, combine),
                                    topk)
        items.append((utt, ids.numpy(), probs.numpy(), rest.numpy()))
        print(f"{utt} {feats.shape[0]}", flush=True)
    return _write_shard(out_dir, shard, items, num_pdfs)


SUM_TOL = 0.01  # kept + rest mass of a stored frame must be within this of one (float16 probs)


def check_soft_targets(ids, probs, rest, num_pdfs, where):
    """UserError naming ``where`` unless the targets are a valid distribution per frame.

    ids (F, K) in [0, num_pdfs), probs (F, K) and rest (F,) finite and non-negative, and
    ``probs.sum(1) + rest`` within SUM_TOL of one.
    """
    ids, probs, rest = np.asarray(ids), np.asarray(probs), np.asarray(rest)
    if ids.shape != probs.shape or ids.ndim != 2 or rest.shape != ids.shape[:1]:
        raise UserError(f"{where}: ids {ids.shape}, probs {probs.shape} and rest {rest.shape} "
                        "do not match")
    if not ids.size:
        return
    if ids.min() < 0 or ids.max() >= num_pdfs:
        raise UserError(f"{where}: pdf ids outside [0, {num_pdfs}) (min {int(ids.min())}, "
                        f"max {int(ids.max())})")
    p32 = probs.astype(np.float32)
    for name, arr in (("probabilities", p32), ("rest masses", rest)):
        bad = ~np.isfinite(arr)
        if bad.any():
            frame = int(np.argwhere(bad)[0][0])
            raise UserError(f"{where}: {int(bad.sum())} non-finite {name} (first at frame {frame})")
        if (arr < 0).any():
            frame = int(np.argwhere(arr < 0)[0][0])
            raise UserError(f"{where}: negative {name} (first at frame {frame})")
    total = p32.sum(axis=1) + rest
    off = np.abs(total - 1.0) > SUM_TOL
    if off.any():
        frame = int(np.argmax(off))
        raise UserError(f"{where}: {int(off.sum())} frames whose probabilities sum to "
                        f"{total[frame]:.4f}, not 1 (first at frame {frame})")


def _write_shard(out_dir, shard, items, num_pdfs):
    """Write [(utt, ids (T, K), probs (T, K), rest (T,))] as one shard; return its index
    entries [(utt, shard, offset, frames)] and the shard's kept mass (sum, min, frames)."""
    index, offset = [], 0
    for utt, ids, probs, rest in items:
        check_soft_targets(ids, probs, rest, num_pdfs, f"soft targets of {utt}")
        index.append((utt, shard, offset, ids.shape[0]))
        offset += ids.shape[0]
    if not items:
        return index, (0.0, 1.0, 0)
    arrays = {
        "ids": np.concatenate([i for _, i, _, _ in items]).astype(_id_dtype(num_pdfs)),
        "probs": np.concatenate([p for _, _, p, _ in items]).astype(np.float16),
        "rest": np.concatenate([r for _, _, _, r in items]).astype(np.float32),
    }
    for name, arr in arrays.items():
        save_npy(os.path.join(out_dir, f"{name}.{shard}.npy"), arr)
    kept = np.concatenate([p.astype(np.float64).sum(axis=1) for _, _, p, _ in items])
    return index, (float(kept.sum()), float(kept.min()) if kept.size else 1.0, int(kept.size))


def _start_store(out_dir):
    """Make ``out_dir`` and invalidate a store already there: without meta.json and index (the
    files written last) a killed overwrite never reads as whole."""
    os.makedirs(out_dir, exist_ok=True)
    invalidate(os.path.join(out_dir, "meta.json"), os.path.join(out_dir, "index"))


def _finish_store(out_dir, shards, num_pdfs, temperature, combine, topk, teachers, data_dir=None,
                  tree_id=None):
    """Write index + meta.json for the _write_shard results ``shards``; return the meta."""
    index = {utt: [shard, off, n] for idx, _ in shards for utt, shard, off, n in idx}
    kept_sum = sum(k[0] for _, k in shards)
    kept_frames = sum(k[2] for _, k in shards)
    write_table(os.path.join(out_dir, "index"), index)
    k = min(topk, num_pdfs) if topk and topk > 0 else num_pdfs
    bpf, dense = bytes_per_frame(topk, num_pdfs)
    meta = {
        "temperature": float(temperature),
        "combine": combine,
        "topk": int(k),
        "num_pdfs": int(num_pdfs),
        "teachers": [os.path.abspath(p) for p in teachers],
        "bytes_per_frame": int(bpf),
        "dense_bytes_per_frame": int(dense),
        "num_utts": len(index),
        "num_frames": int(sum(v[2] for v in index.values())),
        # the share of the teachers' mass in the stored top k (the rest is stored as one number)
        "kept_mass": {"mean": kept_sum / kept_frames if kept_frames else 1.0,
                      "min": min((k[1] for _, k in shards if k[2]), default=1.0)},
        "data_dir": os.path.abspath(data_dir) if data_dir else None,
        "tree_id": tree_id,  # asrkd.identity: the teachers' tree, checked against alignments
    }
    write_json(os.path.join(out_dir, "meta.json"), meta)
    return meta


def save_soft_targets(out_dir, probs_by_utt, temperature, combine="arith", topk=20, teachers=()):
    """Store dense (T, P) distributions per utterance (top-k + rest); return the meta.

    For callers that already have the distributions (and tests); the ensemble path is
    compute_soft_targets.
    """
    _start_store(out_dir)
    items, num_pdfs = [], None
    for utt in sorted(probs_by_utt):
        probs = torch.as_tensor(np.asarray(probs_by_utt[utt], dtype=np.float32))
        num_pdfs = probs.shape[-1]
        ids, vals, rest = sparsify(probs, topk)
        items.append((utt, ids.numpy(), vals.numpy(), rest.numpy()))
    if num_pdfs is None:
        raise UserError("no soft targets to store")
    shards = [_write_shard(out_dir, 1, items, num_pdfs)]
    return _finish_store(out_dir, shards, num_pdfs, temperature, combine, topk, teachers)


def compute_soft_targets(data_dir, teachers_dir, out_dir, temperature=1.0, combine="arith",
                         topk=20, nj=1, device="cpu", precision="fp32",
                         max_shard_frames=SHARD_FRAMES):
    """Compute and store the ensemble soft targets of every utterance in ``data_dir``.

    ``device``/``precision``: where the teachers run ("cuda"; "bf16" autocast). A shard holds
    at most about ``max_shard_frames`` frames (its job's memory), so memory does not grow
    with the corpus. Returns the meta dict (also written to ``out_dir/meta.json``).
    """
    if combine not in COMBINES:
        raise UserError(f"unknown combine {combine!r}; use one of {', '.join(COMBINES)}")
    if temperature <= 0:
        raise UserError(f"temperature must be positive, got {temperature}")
    data = DataDir(data_dir)
    if not data.has("utt2num_frames"):
        raise UserError(f"{data_dir}: missing utt2num_frames (run compute-feats first)")
    ckpts = find_teachers(teachers_dir)
    teachers = Ensemble(ckpts)
    pdfs = {int(m.config.num_pdfs) for m in teachers.models}
    if len(pdfs) != 1:
        raise UserError(f"teachers in {teachers_dir} disagree on the number of pdfs: "
                        f"{sorted(pdfs)}")
    num_pdfs = pdfs.pop()
    tree = teachers.check(data_dir)
    utts = data.utts
    _start_store(out_dir)
    # More shards than workers so the progress bar moves; each shard reloads the (small) models.
    nshards = max(1, min(len(utts), max(4 * max(1, nj),
                                        _num_shards(data.utt2num_frames, max_shard_frames))))
    job_args = [
        (data_dir, ckpts, out_dir, i + 1, chunk, temperature, combine, topk, num_pdfs, device,
         precision)
        for i, chunk in enumerate(split_evenly(utts, nshards))
        if chunk
    ]
    fixed_mmap_threshold()  # inherited by the forked jobs
    shards = run_jobs(_soft_targets_job, job_args, nj, os.path.join(out_dir, "log"),
                      "soft_targets", desc="soft targets", threads_per_job=1)
    meta = _finish_store(out_dir, shards, num_pdfs, temperature, combine, topk, ckpts,
                         data_dir=data_dir, tree_id=tree)
    print(f"soft targets: {meta['num_frames']} frames, top-{meta['topk']} keeps "
          f"{100 * meta['kept_mass']['mean']:.2f}% of the mass on average (min "
          f"{100 * meta['kept_mass']['min']:.2f}%); the rest is stored per frame", file=sys.stderr)
    return meta


def _num_shards(utt2num_frames, max_shard_frames):
    total = sum(int(n) for n in utt2num_frames.values())
    return -(-total // max(1, int(max_shard_frames)))



class SoftTargetStore(Mapping):
    """Read a soft-target dir: ``store[utt] -> (ids (T, K) int64, probs (T, K) float32)``;
    ``store.rest(utt)`` -> (T,) float32, the mass outside the top k.

    With ``utt2num_frames`` (a dict, or a data dir path), every utterance's frame count is
    checked against it up front and a mismatch or a missing utterance is a UserError.
    """

    def __init__(self, soft_dir, utt2num_frames=None):
        self.dir = os.fspath(soft_dir)
        meta_path = os.path.join(self.dir, "meta.json")
        if not os.path.isfile(meta_path):
            if glob.glob(os.path.join(self.dir, "ids.*.npy")):
                raise UserError(f"{self.dir}: an unfinished soft-target store (no meta.json: "
                                "its writing was interrupted); run soft-targets again")
            raise UserError(f"{self.dir}: not a soft-target dir (no meta.json)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.index = {
            u: (int(s), int(o), int(n))
            for u, (s, o, n) in read_table(os.path.join(self.dir, "index"), multi=True).items()
        }
        self._shards, self._checked = {}, set()
        if utt2num_frames is not None:
            self.check_frames(utt2num_frames)

    @property
    def temperature(self):
        return self.meta["temperature"]

    @property
    def topk(self):
        return self.meta["topk"]

    @property
    def num_pdfs(self):
        return self.meta["num_pdfs"]

    def check_frames(self, utt2num_frames, utts=None):
        """UserError unless each utt (default: all of utt2num_frames) is stored with its length."""
        if isinstance(utt2num_frames, (str, os.PathLike)):
            utt2num_frames = DataDir(utt2num_frames).utt2num_frames
        for utt in utt2num_frames if utts is None else utts:
            if utt not in self.index:
                raise UserError(f"{self.dir}: no soft targets for {utt}")
            n = self.index[utt][2]
            if n != utt2num_frames[utt]:
                raise UserError(
                    f"{self.dir}: {utt} has {n} frames of soft targets, "
                    f"utt2num_frames says {utt2num_frames[utt]}"
                )

    @property
    def kept_mass(self):
        """Mean share of the teachers' mass in the stored top k (None for older stores)."""
        return (self.meta.get("kept_mass") or {}).get("mean")

    def _shard(self, shard):
        """(ids, probs, rest) of a shard, memory-mapped, checked in full on first use."""
        if shard not in self._shards:
            while len(self._shards) >= OPEN_SHARDS:  # the oldest first (dicts keep order)
                self._shards.pop(next(iter(self._shards)))
            arrays = []
            for name in ("ids", "probs", "rest"):
                path = os.path.join(self.dir, f"{name}.{shard}.npy")
                if name == "rest" and not os.path.isfile(path):
                    arrays.append(None)  # written before the rest term existed: renormalized
                    continue
                try:
                    arrays.append(np.load(path, mmap_mode="r"))
                except FileNotFoundError:
                    raise UserError(f"{path}: missing (soft-target shard {shard})") from None
                except ValueError as e:
                    raise UserError(f"{path}: not a readable .npy array ({e})") from None
            ids, probs, rest = arrays
            if rest is None:
                rest = np.zeros(len(ids), dtype=np.float32)
            if shard not in self._checked:  # once: an evicted shard may be mapped again
                check_soft_targets(ids, probs, rest, self.num_pdfs,
                                   f"{self.dir}: shard {shard}")
                self._checked.add(shard)
            self._shards[shard] = (ids, probs, rest)
        return self._shards[shard]

    def _slice(self, utt):
        shard, off, n = self.index[utt]
        arrays = [a[off:off + n] for a in self._shard(shard)]
        if any(a.shape[0] != n for a in arrays):
            raise UserError(f"{self.dir}: shard {shard} is truncated at {utt}")
        return arrays

    def __getitem__(self, utt):
        ids, probs, _ = self._slice(utt)
        return ids.astype(np.int64), probs.astype(np.float32)

    def rest(self, utt):
        """(T,) float32 mass of the pdfs outside ``store[utt]``'s ids."""
        return np.array(self._slice(utt)[2], dtype=np.float32)  # a copy: writable

    def __iter__(self):
        return iter(self.index)

    def __len__(self):
        return len(self.index)


class PackedTargets(Mapping):
    """``store[utt]`` packed as one float32 (T, 2K + 1) array [ids | probs | rest] for
    train_model's batching.

    Pdf ids are exact in float32 up to 2^24.
    """

    def __init__(self, store):
        self.store = store

    def __getitem__(self, utt):
        ids, probs = self.store[utt]
        rest = self.store.rest(utt)[:, None]
        return np.concatenate([ids.astype(np.float32), probs, rest], axis=1)

    def __iter__(self):
        return iter(self.store)

    def __len__(self):
        return len(self.store)

