"""Knowledge distillation: ensemble soft targets, the KD loss, and student training.

Soft targets (Hinton, Vinyals & Dean 2015, sec. 2): for every frame the ensemble's
temperature-softened distribution over pdfs, combined either as the arithmetic mean of the
teachers' tempered softmaxes (``arith``, the paper's choice) or as their normalized geometric
mean (``geo`` = softmax(mean_m z_m / T)).

Transfer set (paper sec. 2): utterances of the data dir that have soft targets but no alignment
(e.g. an unlabeled corpus combined with the training data) are trained on the soft term alone.

Loss (paper sec. 2 and 4): ``alpha * T^2 * CE(soft targets at T, student softmax at T)
+ (1 - alpha) * CE(hard alignment targets, student softmax at T=1)``. The T^2 factor keeps the
soft term's gradient magnitude independent of T. The paper weighted the hard term 0.5, hence
``alpha=0.5`` by default. Each term is a mean over the frames that have it: the soft CE over
every frame, the hard CE over the labelled frames only, so that a batch with transfer-set frames
keeps the weights alpha and 1 - alpha (a hard CE divided by all frames would shrink the hard
weight in proportion to the unlabelled share).

Where we deviate from the paper:
- Soft targets are stored sparsely: per frame the top-k probabilities (float16, not
  renormalized), their pdf ids (uint16 below 65536 pdfs) and the *rest*, the mass of the other
  pdfs (float32). The paper kept dense targets; with thousands of pdfs almost all mass sits in a
  few of them, and dense float32 costs ``num_pdfs * 4`` bytes per frame. ``meta.json`` records
  the bytes per frame of both and the mean kept (top-k) mass. The soft CE is
  ``-sum_k p_k log q[id_k] - rest * log(1 - sum_k q[id_k])`` with q = softmax(z/T): the exact
  cross-entropy of the teachers' distribution with the other pdfs merged into one class, so the
  student is never told that the tail has probability 0 (renormalizing the top k would).
- The soft term uses the stored (already tempered) ensemble distribution; the temperature the
  student is trained at must equal the one the targets were made at (checked).

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
import torch.nn.functional as F

from asrkd.alignment import AlignmentDir
from asrkd.errors import UserError
from asrkd.identity import check_tree
from asrkd.jobs import fixed_mmap_threshold, run_jobs, split_evenly
from asrkd.table import atomic_path, read_table, write_table

COMBINES = ("arith", "geo")

# A soft-target job holds its shard's targets in memory until it writes them: ~240 bytes per
# frame at top-20 before the float16 conversion, so 100k frames is ~25 MB per job.
SHARD_FRAMES = 100_000
# Shards a store keeps mapped: reading utterances in order touches one at a time, and an
# unmapped shard's pages leave the reader's resident set (the corpus never sits in RAM).
OPEN_SHARDS = 2


# ---------------------------------------------------------------------------------------------
# Loss


def kd_loss(logits, hard, soft_ids, soft_probs, temperature, alpha, soft_rest=None):
    """Distillation loss over a batch of frames.

    Args:
        logits: (N, P) student logits.
        hard: (N,) int64 hard pdf targets (forced alignment); -1 marks a frame with none (a
            transfer-set frame), which gets the soft term only.
        soft_ids: (N, K) int64 pdf ids of the soft targets (K may equal P for dense targets).
        soft_probs: (N, K) float soft target probabilities of those pdfs.
        temperature: T used both for the soft targets and the student's soft term.
        alpha: weight of the soft term; 0 gives plain cross-entropy on ``hard``.
        soft_rest: (N,) float mass of the pdfs outside ``soft_ids`` (None: 0, i.e. each row of
            ``soft_probs`` sums to one).
    Returns:
        scalar tensor: alpha * T^2 * (soft CE averaged over all N frames) + (1 - alpha) *
        (hard CE averaged over the frames with a hard target; 0 if there are none).
    """
    loss = logits.new_zeros(())
    if alpha < 1:
        labelled = int((hard >= 0).sum())
        if labelled:
            hard_ce = F.cross_entropy(logits, hard, ignore_index=-1, reduction="sum")
            loss = loss + (1 - alpha) * hard_ce / labelled
    if alpha > 0:
        logp = F.log_softmax(logits / temperature, dim=-1)  # (N, P)
        soft_ce = -(soft_probs * logp.gather(1, soft_ids)).sum(dim=1)  # (N,)
        if soft_rest is not None:
            # log of the student's mass outside soft_ids: logsumexp over the other pdfs
            outside = logp.scatter(1, soft_ids, float("-inf"))
            log_rest = torch.logsumexp(outside, dim=1)  # (N,), -inf if K == P
            rest = soft_rest.to(logp.dtype)
            soft_ce = soft_ce - torch.where(rest > 0, rest * log_rest, torch.zeros_like(rest))
        loss = loss + alpha * temperature**2 * soft_ce.mean()
    return loss


# ---------------------------------------------------------------------------------------------
# Combining teachers


def combine_teachers(logits, temperature, combine="arith"):
    """Ensemble distribution at temperature T from stacked teacher logits.

    Args:
        logits: (M, T, P) logits of M teachers.
    Returns:
        (T, P) probabilities: ``arith`` = mean_m softmax(z_m / T); ``geo`` =
        softmax(mean_m z_m / T), the normalized geometric mean of the tempered distributions.
    """
    if combine == "arith":
        return F.softmax(logits / temperature, dim=-1).mean(dim=0)
    if combine == "geo":
        return F.softmax(logits.mean(dim=0) / temperature, dim=-1)
    raise UserError(f"unknown combine {combine!r}; use one of {', '.join(COMBINES)}")


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


def find_teachers(teachers_dir):
    """Checkpoints TEACHERS_DIR/model*/final.pt, sorted; a UserError if there are none."""
    paths = sorted(glob.glob(os.path.join(teachers_dir, "model*", "final.pt")))
    if not paths:
        raise UserError(f"{teachers_dir}: no teacher checkpoints model*/final.pt")
    return paths


class Ensemble:
    """Teacher models evaluated together: logits (M, N, P) for a batch or utterance.

    An utterance is read, normalised and spliced once for all members
    (``asrkd.ensemble.ensemble_utterance_logits``); ``device``/``precision`` ("bf16": autocast)
    say where and how the members run.
    """

    def __init__(self, ckpt_paths, device="cpu", precision="fp32"):
        from asrkd.models import load_model

        self.paths = list(ckpt_paths)
        self.device, self.precision = device, precision
        self.models = [load_model(p).eval().to(device) for p in self.paths]
        for m in self.models:
            m.requires_grad_(False)

    @torch.no_grad()
    def utterance_logits(self, feats):
        """feats (T, D) -> (M, T, P) float32 logits (on the CPU)."""
        from asrkd.ensemble import ensemble_utterance_logits
        from asrkd.models import autocast

        with autocast(self.device, self.precision):
            return ensemble_utterance_logits(self.models, feats).float().cpu()

    @property
    def cmvn(self):
        modes = {m.config.cmvn for m in self.models}
        if len(modes) != 1:
            raise UserError(f"teachers use different CMVN modes {sorted(map(str, modes))}")
        return modes.pop()


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
    from asrkd.data import DataDir
    from asrkd.features import FeatureReader

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
        logits = ens.utterance_logits(torch.from_numpy(feats))  # (M, T, P)
        ids, probs, rest = sparsify(combine_teachers(logits, temperature, combine), topk)
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
        with atomic_path(os.path.join(out_dir, f"{name}.{shard}.npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    kept = np.concatenate([p.astype(np.float64).sum(axis=1) for _, _, p, _ in items])
    return index, (float(kept.sum()), float(kept.min()) if kept.size else 1.0, int(kept.size))


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
    _write_json(os.path.join(out_dir, "meta.json"), meta)
    return meta


def save_soft_targets(out_dir, probs_by_utt, temperature, combine="arith", topk=20, teachers=()):
    """Store dense (T, P) distributions per utterance (top-k + rest); return the meta.

    For callers that already have the distributions (and tests); the ensemble path is
    compute_soft_targets.
    """
    os.makedirs(out_dir, exist_ok=True)
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
    from asrkd.data import DataDir
    from asrkd.models import load_model

    if combine not in COMBINES:
        raise UserError(f"unknown combine {combine!r}; use one of {', '.join(COMBINES)}")
    if temperature <= 0:
        raise UserError(f"temperature must be positive, got {temperature}")
    data = DataDir(data_dir)
    if not data.has("utt2num_frames"):
        raise UserError(f"{data_dir}: missing utt2num_frames (run compute-feats first)")
    ckpts = find_teachers(teachers_dir)
    teachers = [load_model(p) for p in ckpts]
    pdfs = {int(m.config.num_pdfs) for m in teachers}
    if len(pdfs) != 1:
        raise UserError(f"teachers in {teachers_dir} disagree on the number of pdfs: "
                        f"{sorted(pdfs)}")
    num_pdfs = pdfs.pop()
    tree = _check_teachers(teachers, data_dir)
    utts = data.utts
    os.makedirs(out_dir, exist_ok=True)
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


def _check_teachers(teachers, data_dir):
    """The teachers' common tree id; UserError if they disagree or do not fit the features."""
    from asrkd.features import FeatureReader
    from asrkd.ensemble import check_members

    return check_members(teachers, data_dir, FeatureReader(data_dir, cmvn=None).dim)


def _num_shards(utt2num_frames, max_shard_frames):
    total = sum(int(n) for n in utt2num_frames.values())
    return -(-total // max(1, int(max_shard_frames)))


def _write_json(path, obj):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


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
            from asrkd.data import DataDir

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


# ---------------------------------------------------------------------------------------------
# Student training


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


class StoredKDLoss:
    """loss_fn for train_model: KD loss with soft targets from batch["extra"] (packed)."""

    def __init__(self, temperature, alpha, topk):
        self.temperature, self.alpha, self.topk = temperature, alpha, topk

    def __call__(self, logits, batch):
        extra = batch["extra"]  # (N, 2K + 1)
        k = self.topk
        ids = extra[:, :k].long()
        probs = extra[:, k:2 * k].to(logits.dtype)
        rest = extra[:, 2 * k].to(logits.dtype)
        return kd_loss(logits, batch["y"], ids, probs, self.temperature, self.alpha, rest)


class OnTheFlyKDLoss:
    """loss_fn for train_model: the teachers are run on batch["x"] (no stored targets).

    batch["x"] holds the student's windows (N, C, D) of ``left + 1 + right`` frames; each teacher
    sees the centred sub-window of its own context, so a teacher may not need more context than
    the student has.
    """

    def __init__(self, ensemble, temperature, alpha, combine="arith", topk=0,
                 student_context=None):
        self.ens, self.temperature, self.alpha = ensemble, temperature, alpha
        self.combine, self.topk = combine, topk
        self.crops = []
        for m, path in zip(ensemble.models, ensemble.paths):
            lt, rt = m.config.left_context, m.config.right_context
            if student_context is None:
                self.crops.append(None)
                continue
            ls, rs = student_context
            if lt > ls or rt > rs:
                raise UserError(
                    f"teacher {path} needs context -{lt}..+{rt} but the student has -{ls}..+{rs}; "
                    "store soft targets with `asrkd soft-targets` instead"
                )
            self.crops.append((ls - lt, ls + 1 + rt))

    @torch.no_grad()
    def teacher_logits(self, x):
        """x (N, C, D) student windows -> (M, N, P) teacher logits."""
        out = []
        for m, crop in zip(self.ens.models, self.crops):
            out.append(m(x if crop is None else x[:, crop[0]:crop[1]]))
        return torch.stack(out)

    def __call__(self, logits, batch):
        teacher = self.teacher_logits(batch["x"])
        probs = combine_teachers(teacher, self.temperature, self.combine)
        ids, probs, rest = sparsify(probs, self.topk)
        return kd_loss(logits, batch["y"], ids, probs, self.temperature, self.alpha, rest)


def distill(data_dir, ali_dir, soft_dir, exp_dir, model_config, train_config, temperature=None,
            alpha=0.5, seed=0, teachers_dir=None, combine="arith", topk=0, train_fraction=1.0,
            init_from=None, cache_dir=None):
    """Train a student on soft (ensemble) and hard (alignment) targets; return its checkpoint.

    Exactly one of ``soft_dir`` (stored targets; ``temperature`` defaults to theirs and must
    match) and ``teachers_dir`` (ensemble run on the fly on each batch; ``combine``/``topk``
    apply, topk=0 keeps the dense distribution) is given. Utterances of ``data_dir`` with no
    alignment in ``ali_dir`` form the transfer set: soft targets only, never validated on.
    """
    from asrkd.data import DataDir
    from asrkd.train import train_model

    if (soft_dir is None) == (teachers_dir is None):
        raise UserError("give exactly one of a soft-target dir and a teachers dir")
    if not 0 <= alpha <= 1:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
    ali = AlignmentDir(ali_dir)
    num_pdfs = ali.num_pdfs if ali.has_num_pdfs else None
    info = {"alpha": alpha, "seed": seed, "train_fraction": train_fraction}
    if soft_dir is not None:
        utt2nf = DataDir(data_dir).utt2num_frames
        store = SoftTargetStore(soft_dir, utt2num_frames=utt2nf)
        if temperature is None:
            temperature = store.temperature
        elif abs(temperature - store.temperature) > 1e-6:
            raise UserError(
                f"--temperature {temperature} differs from the soft targets' "
                f"{store.temperature} ({soft_dir}/meta.json)"
            )
        if num_pdfs is not None and store.num_pdfs != num_pdfs:
            raise UserError(f"soft targets have {store.num_pdfs} pdfs, {ali_dir} has {num_pdfs}")
        check_tree(f"the soft targets {soft_dir}", store.meta.get("tree_id"), ali_dir,
                   ali.tree_id)
        extra = PackedTargets(store)
        loss_fn = StoredKDLoss(temperature, alpha, store.topk)
        info.update(soft_dir=os.path.abspath(soft_dir), soft_meta=store.meta)
    else:
        temperature = 1.0 if temperature is None else temperature
        if temperature <= 0:
            raise UserError(f"temperature must be positive, got {temperature}")
        from asrkd.distributed import init_world

        _, device = init_world(train_config.device)  # this rank's GPU under torchrun
        ens = Ensemble(find_teachers(teachers_dir), device=device,
                       precision=train_config.precision)
        _check_teachers(ens.models, data_dir)
        check_tree(ens.models[0].source, ens.models[0].tree_id, ali_dir, ali.tree_id)
        if ens.cmvn != model_config.cmvn:
            raise UserError(f"teachers use cmvn={ens.cmvn!r}, the student {model_config.cmvn!r}")
        extra = None
        context = (model_config.left_context, model_config.right_context)
        loss_fn = OnTheFlyKDLoss(ens, temperature, alpha, combine, topk, student_context=context)
        info.update(teachers=ens.paths, combine=combine, topk=topk)
    info["temperature"] = float(temperature)
    data = DataDir(data_dir)
    aligned = ali.pdf_scp
    unlab = [u for u in data.utts if u not in aligned]
    nf = data.utt2num_frames if data.has("utt2num_frames") else {}
    info["transfer_utts"] = len(unlab)
    info["transfer_frames"] = int(sum(nf.get(u, 0) for u in unlab))
    if unlab:
        print(f"distill: {len(unlab)} utterances of {data_dir} have no alignment: soft targets "
              f"only ({info['transfer_frames']} frames)", file=sys.stderr)
    os.makedirs(exp_dir, exist_ok=True)
    _write_json(os.path.join(exp_dir, "distill.json"), info)
    return train_model(data_dir, ali_dir, exp_dir, model_config, train_config, seed,
                       extra_targets=extra, loss_fn=loss_fn, init_from=init_from,
                       train_fraction=train_fraction, cache_dir=cache_dir, unlabeled=True)
