"""Frame-level cross-entropy training of acoustic models on alignment pdf ids (and ensembles).

Data path: CMVN'd frames of every aligned utterance are written once into a contiguous float32
memory-mapped cache (``<cache>/feats.npy``, with ``pdf.npy`` targets and utterance offsets), so a
corpus larger than RAM streams from disk. A minibatch is a set of shuffled global frame indices;
context windows are gathered by index arithmetic, clamped to the frame's own utterance, so there
is no per-utterance Python in the inner loop. Ensemble members share one cache.

Schedule: "newbob" as in Kaldi nnet1's train_scheduler.sh, by default on the relative fall of the
validation cross-entropy (``newbob_metric="acc"``: absolute gain in validation frame accuracy): an
epoch that does not improve is rejected (weights and optimizer state go back to the best epoch);
the learning rate is halved from the first epoch whose gain is below ``start_halving_impr``;
training stops once halving and the gain is below ``end_halving_impr`` (after ``min_epochs``), or
at ``epochs``. ``halving_from_epoch`` replaces this with a fixed schedule (full rate, then halving
every epoch). ``final.pt`` is the best epoch (the last one with ``reject_worse=False``). Frame accuracy is logged either way. Validation: a deterministic 10% of speakers (the same
for every seed, so ensemble members are comparable), scored on whole utterances as in decoding.
``chunk_size > 1`` trains on shuffled runs of consecutive frames instead of single frames, so a
TDNN computes its convolutions once per run (Kaldi's chunk training).

Resume: every epoch writes ``epoch{N}.pt`` (model, optimizer, schedule, history) atomically; a
rerun continues after the last one. Each epoch's shuffling and dropout are seeded from
(seed, epoch), so an interrupted-and-resumed run ends with the same weights as an uninterrupted one.

Deviation from the paper: the paper trained with asynchronous distributed SGD on ~700M frames; here
plain minibatch SGD or Adam on one machine.
"""

import csv
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from asrkd.alignment import AlignmentDir
from asrkd.config import DictConfig
from asrkd.errors import UserError
from asrkd.identity import check_features, check_tree, feature_config
from asrkd.models import PRECISIONS, ModelConfig, autocast, build_model, load_checkpoint
from asrkd.table import atomic_path

CACHE_VERSION = 1


@dataclasses.dataclass
class TrainConfig(DictConfig):
    """Optimisation settings; stored in every checkpoint."""

    epochs: int = 8  # maximum
    min_epochs: int = 2
    batch_size: int = 256
    optimizer: str = "adam"  # or "sgd" (with momentum)
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    newbob_metric: str = "loss"  # "loss": validation CE (relative fall); "acc": frame accuracy
    start_halving_impr: float = 0.01  # (absolute gain for "acc")
    end_halving_impr: float = 0.001
    halving_factor: float = 0.5
    reject_worse: bool = True
    # > 0: a fixed schedule instead of newbob's: the learning rate halves (halving_factor) after
    # each epoch from this one on, whatever the validation says, and training runs all epochs.
    halving_from_epoch: int = 0
    valid_fraction: float = 0.1  # of speakers
    max_frames_per_epoch: int = 0  # 0: all training frames each epoch
    # > 1: minibatches of runs of consecutive frames (a TDNN shares its convolutions within a
    # run, as Kaldi's chunk training); batch["x"] is then (B, chunk + left + right, D).
    chunk_size: int = 1
    num_threads: int = 0  # 0: leave torch's setting
    tensorboard: bool = True
    device: str = "cpu"  # e.g. "cuda"; bit-identical reruns are promised on CPU only
    # "bf16": forward pass and loss under torch.autocast (bfloat16 matmuls, float32 weights and
    # optimizer); "fp32": plain float32.
    precision: str = "fp32"

    # Fields that may change between a run and its resumption.
    RESUMABLE = ("epochs", "min_epochs", "num_threads", "tensorboard", "device", "precision")

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise UserError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.batch_size < 1 or not self.lr > 0 or self.epochs < 1:  # (a NaN lr too)
            raise UserError("batch_size, lr and epochs must be positive")
        if self.chunk_size < 1:
            raise UserError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.halving_from_epoch < 0:
            raise UserError(f"halving_from_epoch must be >= 0, got {self.halving_from_epoch}")
        if self.newbob_metric not in ("loss", "acc"):
            raise UserError(f"newbob_metric must be 'loss' or 'acc', got {self.newbob_metric!r}")
        if not 0 <= self.valid_fraction < 1:
            raise UserError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                            f"{self.precision!r}")




def load_conf(path, **train_overrides):
    """YAML with optional ``model:`` and ``train:`` sections -> (ModelConfig, TrainConfig).

    ``train_overrides`` (e.g. ``num_threads=1`` from a command line) replace TrainConfig fields;
    ``None`` values are ignored.
    """
    model, train = _read_conf(path)
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    return model, dataclasses.replace(train, **overrides) if overrides else train


def _read_conf(path):
    import yaml

    if path is None:
        return ModelConfig(), TrainConfig()
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    unknown = set(d) - {"model", "train"}
    if unknown:
        raise UserError(f"{path}: unknown sections {sorted(unknown)} (expected model:, train:)")
    try:
        return (ModelConfig.from_dict(d.get("model") or {}),
                TrainConfig.from_dict(d.get("train") or {}))
    except TypeError as e:
        raise UserError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# Alignments and the frame cache


def _cache_key(data_dir, ali_dir, cmvn, unaligned="skip"):
    parts = [str(CACHE_VERSION), os.path.abspath(data_dir), os.path.abspath(ali_dir), str(cmvn)]
    if unaligned != "skip":
        parts.append(f"unaligned={unaligned}")
    for p in (os.path.join(data_dir, "feats.scp"), os.path.join(data_dir, "cmvn.scp"),
              os.path.join(ali_dir, "pdf.scp")):
        st = os.stat(p) if os.path.exists(p) else None
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}" if st else f"{p}:-")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


# Memory bounded by the model, not the corpus. A memory-mapped page that a process has touched
# counts in its resident set until unmapped, so shuffled reads over a whole cache (and writing one
# through a mapping) would make RSS grow to the cache's size. Writes therefore go through plain
# file writes, and the read side hands its pages back every RELEASE_BYTES of reads (the kernel's
# page cache keeps them, so a re-read costs a minor fault, not disk I/O).
RELEASE_BYTES = 32 << 20
# A read fault on a file mapping maps the pages around it too (Linux's fault-around, 64 KB by
# default), so a shuffled row costs that much resident memory, not its own bytes.
_FAULT_AROUND = 64 << 10
# An array no larger than this stays mapped whole: its resident pages are bounded by its size
# already, and handing them back would only make every batch fault its windows in again.
RESIDENT_BYTES = 64 << 20


class NpyRowWriter:
    """Write a .npy array of a known shape front to back, rows in order, without a memory map.

    ``write(rows)`` appends; ``skip_to(row)`` zero-fills up to ``row``; ``close()`` zero-fills
    the rest. The file loads with ``np.load(path, mmap_mode="r")`` like any other.
    """

    def __init__(self, path, dtype, shape):
        self.dtype, self.shape, self.row = np.dtype(dtype), tuple(shape), 0
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.path = os.fspath(path)
        self.f = open(path, "wb")
        np.lib.format.write_array_header_2_0(
            self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": self.shape})

    def _write(self, data):
        try:
            self.f.write(data)
        except OSError as e:  # a full disk or a file-size limit: name the file
            raise OSError(e.errno, e.strerror, self.path) from None

    def skip_to(self, row):
        while self.row < row:  # a bounded zero block at a time
            n = min(row - self.row, max(1, (8 << 20) // max(self.row_bytes, 1)))
            self._write(bytes(n * self.row_bytes))
            self.row += n

    def write(self, rows):
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.row + len(rows) > self.shape[0]:
            raise ValueError(f"rows {rows.shape} do not fit {self.shape} at row {self.row}")
        self._write(rows.tobytes())
        self.row += len(rows)

    def close(self):
        self.skip_to(self.shape[0])
        self.f.close()


def release_pages(*arrays):
    """Hand back the resident pages of memory-mapped arrays (np.load(mmap_mode=...) results)."""
    import mmap

    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is not None and hasattr(m, "madvise"):
            m.madvise(mmap.MADV_DONTNEED)


class _PageBudget:
    """Counts bytes read from memory maps; releases their pages once past RELEASE_BYTES."""

    def __init__(self, *arrays):
        self.arrays = [a for a in arrays if a is not None and a.nbytes > RESIDENT_BYTES]
        self.read = 0

    def add(self, rows, row_bytes):
        if not self.arrays:
            return
        self.read += int(rows) * (int(row_bytes) + _FAULT_AROUND * len(self.arrays))
        if self.read >= RELEASE_BYTES:
            self.release()

    def release(self):
        release_pages(*self.arrays)
        self.read = 0


class FrameCache:
    """Memory-mapped CMVN'd frames of all aligned utterances of a data dir, with pdf targets.

    ``feats`` (F, D) float32, ``pdf`` (F,) int32 (-1: no hard target, an unaligned utterance
    kept for soft targets), ``offsets`` (U + 1,) frame offsets of the utterances in ``utts``
    (sorted), ``spk`` their speakers, ``labeled`` (U,) bool; ``utt_of(idx)`` the utterance
    index of each global frame index (a search in ``offsets``: no per-frame array in RAM).
    """

    def __init__(self, cache_dir):
        self.dir = cache_dir
        with open(os.path.join(cache_dir, "meta.json")) as f:
            self.meta = json.load(f)
        self.utts = self.meta["utts"]
        self.spk = self.meta["spk"]
        self.feats = np.load(os.path.join(cache_dir, "feats.npy"), mmap_mode="r")
        self.pdf = np.load(os.path.join(cache_dir, "pdf.npy"), mmap_mode="r")
        self.offsets = np.load(os.path.join(cache_dir, "offsets.npy"))
        self.labeled = np.ones(len(self.utts), dtype=bool)
        self.labeled[self.meta.get("unlabeled", [])] = False
        self.index_dtype = np.int32 if len(self.pdf) < 2**31 else np.int64

    @property
    def dim(self):
        return self.feats.shape[1]

    def utt_of(self, idx):
        """Utterance indices (int64) of global frame indices."""
        return np.searchsorted(self.offsets, idx, side="right") - 1

    @property
    def utt_index(self):
        """(F,) int32 utterance index of every frame, built on first use (4 bytes a frame in
        RAM: training itself uses ``utt_of``)."""
        if getattr(self, "_utt_index", None) is None:
            self._utt_index = np.repeat(np.arange(len(self.utts), dtype=np.int32),
                                        np.diff(self.offsets))
        return self._utt_index

    def frames_of(self, utt_ids):
        """Global frame indices (int64) of the utterances with the given indices."""
        # int32 below 2^31 frames: the epoch's index arrays are the one per-frame cost in RAM
        if len(utt_ids) == 0:
            return np.zeros(0, dtype=self.index_dtype)
        return np.concatenate([np.arange(self.offsets[u], self.offsets[u + 1],
                                         dtype=self.index_dtype) for u in utt_ids])

    def windows(self, idx, left, right):
        """Global frame indices (N,) -> (N, left + 1 + right, D) float32, clamped per utterance."""
        u = self.utt_of(idx)
        lo, hi = self.offsets[u], self.offsets[u + 1] - 1
        win = idx[:, None].astype(np.int64) + np.arange(-left, right + 1)
        np.clip(win, lo[:, None], hi[:, None], out=win)
        return self.feats[win]


def build_frame_cache(data_dir, ali_dir, cache_root, cmvn="meanvar", unaligned="skip"):
    """Write (or reuse) the frame cache of ``data_dir`` + ``ali_dir``; return a FrameCache.

    Utterances without an alignment are skipped and counted (``unaligned="skip"``), or kept with
    pdf -1 (``"keep"``: a distillation transfer set, trained on soft targets only). A frame-count
    mismatch between features and alignment is a UserError (never cropped).
    """
    if unaligned not in ("skip", "keep"):
        raise ValueError(f"unaligned must be 'skip' or 'keep', got {unaligned!r}")
    from asrkd.data import DataDir
    from asrkd.features import FeatureReader

    ali = AlignmentDir(ali_dir).check()
    pdf_scp, num_pdfs = ali.pdf_scp, ali.num_pdfs
    reader = FeatureReader(data_dir, cmvn=cmvn)
    if unaligned == "keep" and all(u in pdf_scp for u in reader.utts):
        unaligned = "skip"  # the same cache: reuse the one plain training built
    key = _cache_key(data_dir, ali_dir, cmvn, unaligned)
    cache_dir = os.path.join(cache_root, key)
    if os.path.isfile(os.path.join(cache_dir, "meta.json")):
        return FrameCache(cache_dir)
    utt2spk = DataDir(data_dir).utt2spk
    aligned = [u for u in reader.utts if u in pdf_scp]
    utts = aligned if unaligned == "skip" else list(reader.utts)
    skipped = len(reader.utts) - len(utts)
    if not aligned:
        raise UserError(f"{ali_dir}: no utterance of {data_dir} has an alignment")
    lengths = np.array([reader.num_frames(u) for u in utts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    os.makedirs(cache_root, exist_ok=True)
    tmp = cache_dir + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_frame_cache(tmp, reader, utts, lengths, offsets, pdf_scp, num_pdfs, ali_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not leave gigabytes behind
        raise
    meta = {"data_dir": os.path.abspath(data_dir), "ali_dir": os.path.abspath(ali_dir),
            "cmvn": cmvn, "utts": utts, "spk": [utt2spk[u] for u in utts],
            "skipped_unaligned": skipped, "frames": int(offsets[-1]), "dim": reader.dim,
            "unlabeled": [i for i, u in enumerate(utts) if u not in pdf_scp]}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    try:
        os.rename(tmp, cache_dir)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return FrameCache(cache_dir)


def _write_frame_cache(tmp, reader, utts, lengths, offsets, pdf_scp, num_pdfs, ali_dir):
    dim = reader.dim
    feats = NpyRowWriter(os.path.join(tmp, "feats.npy"), np.float32, (int(offsets[-1]), dim))
    pdf = NpyRowWriter(os.path.join(tmp, "pdf.npy"), np.int32, (int(offsets[-1]),))
    for i, utt in enumerate(tqdm(utts, desc="frame cache", unit="utt", file=sys.stderr,
                                 disable=None)):
        x = reader[utt]
        if utt not in pdf_scp:  # kept (unaligned="keep"): no hard targets
            feats.write(x)
            pdf.write(np.full(len(x), -1, dtype=np.int32))
            continue
        y = np.asarray(pdf_scp[utt])
        if x.shape[0] != y.shape[0] or x.shape[0] != lengths[i]:
            raise UserError(f"{utt}: {x.shape[0]} feature frames but {y.shape[0]} aligned "
                            f"frames in {ali_dir}/pdf.scp; realign after recomputing features")
        if y.size and (y.min() < 0 or y.max() >= num_pdfs):
            raise UserError(f"{utt}: pdf ids outside [0, {num_pdfs}) in {ali_dir}/pdf.scp")
        feats.write(x)
        pdf.write(y)
    feats.close()
    pdf.close()
    np.save(os.path.join(tmp, "offsets.npy"), offsets)


def split_by_speaker(spk, valid_fraction):
    """Utterance indices (train, valid): a fixed pseudo-random ``valid_fraction`` of speakers."""
    speakers = sorted(set(spk))
    n_valid = int(round(valid_fraction * len(speakers)))
    if valid_fraction > 0 and len(speakers) >= 2:
        n_valid = min(max(n_valid, 1), len(speakers) - 1)
    else:
        n_valid = 0
    # Seed fixed (not the model's seed): every ensemble member validates on the same speakers.
    chosen = set(np.random.default_rng(12345).permutation(speakers)[:n_valid].tolist())
    valid = [i for i, s in enumerate(spk) if s in chosen]
    train = [i for i, s in enumerate(spk) if s not in chosen]
    return train, valid


def _extra_memmap(cache, utt_ids, extra_targets, path):
    """Rows of ``extra_targets[utt]`` for the given utterances, memmapped in cache frame order."""
    first = np.asarray(extra_targets[cache.utts[utt_ids[0]]])
    shape = (len(cache.pdf),) + first.shape[1:]
    arr = NpyRowWriter(path, first.dtype, shape)  # rows in frame order; others stay zero
    for u in tqdm(sorted(utt_ids), desc="extra targets", unit="utt", file=sys.stderr,
                  disable=None):
        utt = cache.utts[u]
        if utt not in extra_targets:
            raise UserError(f"{utt}: no extra (soft) targets")
        e = np.asarray(extra_targets[utt])
        n = cache.offsets[u + 1] - cache.offsets[u]
        if e.shape[0] != n or e.shape[1:] != first.shape[1:]:
            raise UserError(f"{utt}: extra targets have shape {e.shape}, expected "
                            f"({n}, {', '.join(map(str, first.shape[1:]))})")
        arr.skip_to(cache.offsets[u])
        arr.write(e)
    arr.close()
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------------------------
# Training


def _make_optimizer(model, tc):
    if tc.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum,
                           weight_decay=tc.weight_decay)


def _set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def _epoch_seed(seed, epoch):
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


def _chunk_starts(cache, frames, chunk):
    """Start frames of ``chunk``-frame pieces covering the utterances of ``frames``.

    A last piece that would overrun its utterance is moved back to end with it (a few frames are
    then seen twice per epoch), so every piece stays inside one utterance.
    """
    starts = frames[(frames - cache.offsets[cache.utt_of(frames)]) % chunk == 0]
    ends = cache.offsets[cache.utt_of(starts) + 1]
    lo = cache.offsets[cache.utt_of(starts)]
    return np.maximum(np.minimum(starts, ends - chunk), lo)


def _batches(cache, frames, model, batch_size, extra=None, device="cpu", chunk=1, world=None):
    """Minibatches of the frames in the given order (chunk > 1: ``frames`` are chunk starts).

    chunk == 1: x (N, C, D) one window per frame. chunk > 1: x (B, chunk + left + right, D), the
    frames of B pieces in order (N = B * chunk rows of y/extra), and batch["chunk"] = chunk.
    ``world`` (distributed training): ``batch_size`` is the global batch and only this rank's
    part of each one is read and yielded (it may be empty).
    """
    from asrkd.distributed import World, local_part

    world = world or World()
    left, right = model.left_context, model.right_context
    step = batch_size if chunk == 1 else max(1, batch_size // chunk)
    budget = _PageBudget(cache.feats, cache.pdf, extra)
    row_bytes = cache.feats.shape[1] * cache.feats.itemsize * (left + 1 + right)
    if extra is not None:
        row_bytes += int(np.prod(extra.shape[1:])) * extra.itemsize
    for s in range(0, len(frames), step):
        if chunk == 1:
            idx = local_part(frames[s:s + step], world)
            x = cache.windows(idx, left, right)
        else:
            starts = local_part(frames[s:s + step], world)
            u = cache.utt_of(starts)
            lo, hi = cache.offsets[u][:, None], cache.offsets[u + 1][:, None] - 1
            idx = np.clip(starts[:, None] + np.arange(chunk), lo, hi).ravel()
            win = np.clip(starts[:, None] + np.arange(-left, chunk + right), lo, hi)
            x = cache.feats[win]
        batch = {"x": torch.from_numpy(x),
                 "y": torch.from_numpy(np.asarray(cache.pdf[idx], dtype=np.int64))}
        if extra is not None:
            batch["extra"] = torch.from_numpy(np.asarray(extra[idx]))
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["frames"] = idx  # numpy, for naming the utterances of a batch that goes wrong
        budget.add(len(idx), row_bytes)
        if chunk > 1:
            batch["chunk"] = chunk
        yield batch
    budget.release()


class NonFiniteLoss(UserError):
    """A training loss went NaN/Inf: the epoch stops before any update or checkpoint from it."""

    def __init__(self, epoch, utts, exp_dir):
        if utts is None:
            where = " on the validation set"
        else:
            rows, utts = utts
            where = ("; non-finite values in the batch rows of " if rows else
                     f" in a batch of {len(utts)} utterance(s): ") + ", ".join(utts[:5]) + (
                         ", ..." if len(utts) > 5 else "")
        super().__init__(f"{exp_dir}: epoch {epoch}: the loss is NaN or Inf{where}; no "
                         "checkpoint of this epoch was written (check those utterances' "
                         "features and targets, or lower the learning rate)")


def _batch_utts(cache, batch, logits):
    """(True, utterances of the rows holding NaN/Inf inputs, targets or logits), or (False,
    all utterances of the batch) when no row does (the loss itself overflowed)."""
    n = len(batch["frames"])
    bad = np.zeros(n, dtype=bool)
    for k, v in (("x", batch["x"]), ("extra", batch.get("extra")), ("logits", logits)):
        if v is not None and torch.is_floating_point(v):
            finite = torch.isfinite(v.detach().reshape(v.shape[0], -1)).all(1).cpu().numpy()
            if k == "x" and "chunk" in batch:  # (B, chunk + context, D): B pieces of frames
                finite = np.repeat(finite, batch["chunk"])
            bad |= ~finite
    idx = batch["frames"][bad] if bad.any() else batch["frames"]
    return bool(bad.any()), [cache.utts[u] for u in np.unique(cache.utt_index[idx])]


def _forward(model, batch):
    """Logits (N, P) for a batch from ``_batches``."""
    if "chunk" in batch:
        return model.chunk_logits(batch["x"]).reshape(-1, model.config.num_pdfs)
    return model(batch["x"])


@torch.no_grad()
def _evaluate(model, cache, utt_ids, device="cpu"):
    """(CE loss, frame accuracy) on hard targets, whole utterances as in decoding."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    budget = _PageBudget(cache.feats, cache.pdf)
    for u in utt_ids:
        a, b = cache.offsets[u], cache.offsets[u + 1]
        logits = model.utterance_logits(torch.from_numpy(np.array(cache.feats[a:b])).to(device))
        y = torch.from_numpy(np.asarray(cache.pdf[a:b], dtype=np.int64)).to(device)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        n += int(b - a)
        budget.add(b - a, cache.feats.shape[1] * cache.feats.itemsize)
    budget.release()
    n = max(n, 1)
    return float(loss / n), float(correct / n)


def _evaluate_world(model, cache, utt_ids, device, world):
    """_evaluate over all ranks: each scores every world.size-th utterance, sums all-reduced."""
    from asrkd.distributed import all_reduce_sums

    if not world.distributed:
        return _evaluate(model, cache, utt_ids, device)
    mine = list(utt_ids)[world.rank::world.size]
    n = int(sum(cache.offsets[u + 1] - cache.offsets[u] for u in mine))
    loss, acc = _evaluate(model, cache, mine, device) if mine else (0.0, 0.0)
    tot_loss, tot_correct, tot_n = all_reduce_sums([loss * n, acc * n, n], world, device)
    return float(tot_loss / max(tot_n, 1)), float(tot_correct / max(tot_n, 1))


def _last_epoch_checkpoint(exp_dir):
    best = None
    for p in glob.glob(os.path.join(exp_dir, "epoch*.pt")):
        m = re.fullmatch(r"epoch(\d+)\.pt", os.path.basename(p))
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best[1] if best else None


def _load_epoch_checkpoint(path):
    """An epoch{N}.pt, with the keys resuming reads checked (a tampered file is named)."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "schedule", "history", "train_config", "seed")
               if k not in ckpt]
    if missing:
        raise UserError(f"{path}: not an epoch checkpoint (no {', '.join(missing)}); delete it "
                        "to retrain that epoch")
    return ckpt


def _check_same_run(ckpt, model_config, train_config, seed, exp_dir):
    old_tc = {k: v for k, v in ckpt["train_config"].items() if k not in TrainConfig.RESUMABLE}
    new_tc = {k: v for k, v in train_config.to_dict().items() if k not in TrainConfig.RESUMABLE}
    if ckpt["model_config"] != model_config.to_dict() or old_tc != new_tc \
            or ckpt["seed"] != seed:
        raise UserError(f"{exp_dir} holds a run with a different config or seed; "
                        "use a new exp dir (or delete its epoch*.pt)")


def _write_log(exp_dir, history):
    with atomic_path(os.path.join(exp_dir, "train_log.csv")) as tmp, open(tmp, "w") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc",
                    "seconds", "accepted"])
        for h in history:
            w.writerow([h["epoch"], f"{h['lr']:.6g}", f"{h['train_loss']:.5f}",
                        f"{h['train_acc']:.5f}", f"{h['valid_loss']:.5f}",
                        f"{h['valid_acc']:.5f}", f"{h['seconds']:.1f}", int(h["accepted"])])


def train_model(data_dir, ali_dir, exp_dir, model_config, train_config, seed, extra_targets=None,
                loss_fn=None, init_from=None, train_fraction=1.0, cache_dir=None,
                on_epoch_end=None, unlabeled=False):
    """Train one acoustic model; return the path of ``exp_dir/final.pt`` (the best epoch).

    ``model_config.feat_dim``/``num_pdfs`` are filled from the data and alignment.
    ``extra_targets[utt]``: optional np array with one row per frame (any trailing shape), batched
    as ``batch["extra"]``. ``loss_fn(logits, batch) -> scalar`` replaces cross-entropy on
    ``batch["y"]``; ``batch["x"]`` is the model input (N, C, D). ``init_from``: checkpoint whose
    weights start the training. ``train_fraction``: use that fraction of the training utterances
    (chosen by ``seed``). ``cache_dir``: where the frame cache lives (default ``exp_dir/frames``).
    ``on_epoch_end(epoch)`` is called after each epoch's checkpoint is written.
    ``unlabeled``: utterances of ``data_dir`` without an alignment are trained on too, with
    ``batch["y"] == -1`` (``loss_fn`` must handle it, e.g. distillation's soft-target term); they
    are never in the validation split.
    A finished run is not redone; an interrupted one resumes after its last epoch checkpoint.
    Under torchrun every process is one rank of a data-parallel run (asrkd.distributed):
    ``train_config.batch_size`` is then the global batch, shared out between the ranks.
    """
    from asrkd.distributed import (all_reduce_gradients, all_reduce_sums, barrier,
                                   broadcast_parameters, init_world, rank_seed)

    model_config = ModelConfig.from_dict(model_config.to_dict())  # a copy we may fill in
    os.makedirs(exp_dir, exist_ok=True)
    final = os.path.join(exp_dir, "final.pt")
    if train_config.num_threads > 0:
        torch.set_num_threads(train_config.num_threads)
    if not 0 < train_fraction <= 1:
        raise UserError(f"train_fraction must be in (0, 1], got {train_fraction}")
    world, device = init_world(train_config.device)
    # glibc's mmap threshold is left alone here (unlike the soft-target pass): a training step's
    # temporaries have the same sizes every batch, so the heap reuses them; a fixed 128 kB
    # threshold mapped and zero-filled every activation anew and made epochs 50% slower.

    ali = AlignmentDir(ali_dir).check()
    pdf_counts, num_pdfs = ali.pdf_counts, ali.num_pdfs
    cache_args = (data_dir, ali_dir, cache_dir or os.path.join(exp_dir, "frames"))
    cache_kw = {"cmvn": model_config.cmvn, "unaligned": "keep" if unlabeled else "skip"}
    if not world.is_main:  # rank 0 writes the cache; the others open it once it is there
        barrier(world)
    cache = build_frame_cache(*cache_args, **cache_kw)
    if world.is_main:
        barrier(world)
    if model_config.num_pdfs not in (0, num_pdfs):
        raise UserError(f"model config says {model_config.num_pdfs} pdfs, {ali_dir} has "
                        f"{num_pdfs}")
    if model_config.feat_dim not in (0, cache.dim):
        raise UserError(f"model config says feat_dim {model_config.feat_dim}, features have "
                        f"{cache.dim}")
    model_config.num_pdfs, model_config.feat_dim = num_pdfs, cache.dim

    # validation speakers are drawn from the labeled utterances only (the same as the teachers')
    labeled = np.flatnonzero(cache.labeled)
    train_utts, valid_utts = split_by_speaker([cache.spk[i] for i in labeled],
                                              train_config.valid_fraction)
    train_utts = sorted(labeled[train_utts].tolist()
                        + np.flatnonzero(~cache.labeled).tolist())
    valid_utts = labeled[valid_utts].tolist()
    if train_fraction < 1:
        # Labeled utterances are drawn exactly as a hard-target run of the same seed draws
        # them, so a student and its hard-target baseline share their small training set (the
        # paper's table 5); utterances with no alignment (a transfer set) by a draw of their own.
        lab = [u for u in train_utts if cache.labeled[u]]
        unlab = [u for u in train_utts if not cache.labeled[u]]
        rng = np.random.default_rng([int(seed), 7])
        n = max(1, int(round(train_fraction * len(lab)))) if lab else 0
        picked = rng.choice(lab, size=n, replace=False).tolist() if lab else []
        if unlab:
            n = max(1, int(round(train_fraction * len(unlab))))
            picked += np.random.default_rng([int(seed), 8]).choice(
                unlab, size=n, replace=False).tolist()
        train_utts = sorted(picked)
    train_frames, valid_frames = cache.frames_of(train_utts), cache.frames_of(valid_utts)
    # which utterances the model saw: its training-set frame accuracy is measured on them
    # (with --train-fraction a small subset, the paper's table 5)
    write_utt_list(os.path.join(exp_dir, "train_utts"), [cache.utts[i] for i in train_utts])
    if len(valid_frames) == 0:
        raise UserError(f"{data_dir}: too few speakers for a validation split "
                        f"(valid_fraction {train_config.valid_fraction})")
    n_unlab = int((~cache.labeled[train_utts]).sum())
    print(f"train: {len(train_utts)} utts / {len(train_frames)} frames"
          + (f" (rank {world.rank} of {world.size})" if world.distributed else "")
          + (f" ({n_unlab} utts with no hard targets)" if n_unlab else "")
          + f", valid: {len(valid_utts)} utts / {len(valid_frames)} frames, skipped (no "
          f"alignment): {cache.meta['skipped_unaligned']}", file=sys.stderr)

    torch.manual_seed(int(seed))
    model = build_model(model_config)
    model.pdf_counts.copy_(torch.from_numpy(pdf_counts))
    try:  # before the optimizer exists, so its loaded state lands on the same device
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"device {device!r}: {e}") from None
    opt = _make_optimizer(model, train_config)
    state = {"epoch": 0, "lr": train_config.lr, "halving": False, "best_acc": 0.0,
             "best_loss": 0.0, "best_score": 0.0, "best_epoch": 0, "stop": False}
    history = []

    ali_tree = ali.tree_id
    last = _last_epoch_checkpoint(exp_dir)
    if last is not None:
        ckpt = _load_epoch_checkpoint(last)
        _check_same_run(ckpt, model_config, train_config, seed, exp_dir)
        check_tree(last, ckpt.get("tree_id"), ali_dir, ali_tree)
        check_features(last, ckpt.get("feature_config"), None, data_dir)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        state, history = dict(ckpt["schedule"]), list(ckpt["history"])
        print(f"resuming after epoch {state['epoch']} ({last})", file=sys.stderr)
    elif init_from is not None:
        src = load_checkpoint(init_from)
        check_tree(init_from, src.get("tree_id"), ali_dir, ali_tree)
        try:
            model.load_state_dict(src["state_dict"])
        except RuntimeError as e:
            raise UserError(f"{init_from}: does not fit the model config: "
                            f"{str(e).splitlines()[0]}") from None
        model.pdf_counts.copy_(torch.from_numpy(pdf_counts))
    broadcast_parameters(model, world)
    if state["stop"] or state["epoch"] >= train_config.epochs:
        if not os.path.isfile(final):
            raise UserError(f"{exp_dir}: training finished but final.pt is missing")
        return final
    extra = None
    if extra_targets is not None:
        extra_path = os.path.join(exp_dir, "extra_targets.npy")
        if world.is_main:
            extra = _extra_memmap(cache, train_utts, extra_targets, extra_path)
        barrier(world)
        if not world.is_main:
            extra = np.load(extra_path, mmap_mode="r")

    writer = None
    if train_config.tensorboard and world.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(exp_dir, "tensorboard"),
                               purge_step=state["epoch"] + 1)
    loss_fn = loss_fn or (lambda logits, batch: F.cross_entropy(logits, batch["y"],
                                                                ignore_index=-1))
    common = {"pdf_counts": torch.from_numpy(pdf_counts), "train_config": train_config.to_dict(),
              "seed": int(seed), "data_dir": os.path.abspath(data_dir),
              "ali_dir": os.path.abspath(ali_dir), "tree_id": ali_tree,
              "feature_config": feature_config(data_dir), "world_size": world.size}
    try:
        while not state["stop"] and state["epoch"] < train_config.epochs:
            epoch = state["epoch"] + 1
            t0 = time.time()
            es = _epoch_seed(seed, epoch)
            torch.manual_seed(rank_seed(es, world))
            chunk = train_config.chunk_size
            units = train_frames if chunk == 1 else _chunk_starts(cache, train_frames, chunk)
            frames = np.random.default_rng(es).permutation(units)
            if train_config.max_frames_per_epoch > 0:
                frames = frames[:max(1, train_config.max_frames_per_epoch // chunk)]
            _set_lr(opt, state["lr"])
            model.train()
            tot_loss, tot_correct, tot_n, tot_labeled = 0.0, 0, 0, 0
            bar = tqdm(total=len(frames) * chunk, desc=f"epoch {epoch}", unit="frame", file=sys.stderr,
                       disable=None if world.is_main else True, unit_scale=True)
            for batch in _batches(cache, frames, model, train_config.batch_size, extra,
                                  device, chunk, world):
                n = len(batch["y"])
                opt.zero_grad(set_to_none=True)
                if n:  # a rank's part of a short last batch may be empty
                    with autocast(device, train_config.precision):
                        logits = _forward(model, batch)
                        loss = loss_fn(logits, batch)
                    if not torch.isfinite(loss.detach()).item():
                        raise NonFiniteLoss(epoch, _batch_utts(cache, batch, logits), exp_dir)
                    loss.backward()
                    tot_loss += loss.item() * n
                    tot_correct += (logits.detach().argmax(-1) == batch["y"]).sum().item()
                    tot_labeled += (batch["y"] >= 0).sum().item()
                    tot_n += n
                n_global = all_reduce_gradients(model, n, world)
                opt.step()
                bar.update(n_global)
            bar.close()
            tot_loss, tot_correct, tot_n, tot_labeled = all_reduce_sums(
                [tot_loss, tot_correct, tot_n, tot_labeled], world, device)
            train_seconds = time.time() - t0
            valid_loss, valid_acc = _evaluate_world(model, cache, valid_utts, device, world)
            if not np.isfinite(valid_loss):
                raise NonFiniteLoss(epoch, None, exp_dir)
            # Improvement: relative fall of validation CE (Kaldi nnet1) or gain in accuracy.
            if train_config.newbob_metric == "loss":
                score = -valid_loss
                impr = ((state["best_loss"] - valid_loss) / max(state["best_loss"], 1e-12)
                        if state["best_epoch"] else 1.0)
            else:
                score = valid_acc
                impr = valid_acc - state["best_acc"] if state["best_epoch"] else 1.0
            accepted = (not state["best_epoch"] or score > state["best_score"]
                        or not train_config.reject_worse)
            if accepted:
                state.update(best_acc=valid_acc, best_loss=valid_loss, best_score=score,
                             best_epoch=epoch)
            row = {"epoch": epoch, "lr": state["lr"], "train_loss": tot_loss / max(tot_n, 1),
                   "train_acc": tot_correct / max(tot_labeled, 1), "valid_loss": valid_loss,
                   "valid_acc": valid_acc, "seconds": time.time() - t0, "accepted": accepted,
                   "train_frames_per_second": tot_n / max(train_seconds, 1e-9)}
            history.append(row)
            if world.is_main:
                print(f"epoch {epoch}: lr {state['lr']:.3g} train loss {row['train_loss']:.4f} "
                      f"acc {row['train_acc']:.4f} | valid loss {valid_loss:.4f} acc "
                      f"{valid_acc:.4f}{'' if accepted else ' (rejected)'} | "
                      f"{row['seconds']:.1f}s", file=sys.stderr)
            if accepted and world.is_main:
                model.save(final, epoch=epoch, valid_acc=valid_acc, **common)
            elif train_config.reject_worse:
                best = load_checkpoint(os.path.join(exp_dir, f"epoch{state['best_epoch']}.pt"))
                model.load_state_dict(best["state_dict"])
                opt.load_state_dict(best["optimizer"])
            if train_config.halving_from_epoch > 0:
                state["halving"] = epoch >= train_config.halving_from_epoch
            else:  # newbob
                if state["halving"] and impr < train_config.end_halving_impr \
                        and epoch >= train_config.min_epochs:
                    state["stop"] = True
                if impr < train_config.start_halving_impr:
                    state["halving"] = True
            if state["halving"]:
                state["lr"] *= train_config.halving_factor
            state["epoch"] = epoch
            if world.is_main:
                model.save(os.path.join(exp_dir, f"epoch{epoch}.pt"), optimizer=opt.state_dict(),
                           schedule=dict(state), history=history, **common)
                _write_log(exp_dir, history)
            barrier(world)  # epoch{N}.pt is on disk before any rank may need it (rejection)
            if writer is not None:
                for k in ("lr", "train_loss", "train_acc", "valid_loss", "valid_acc"):
                    writer.add_scalar(k, row[k], epoch)
                writer.flush()
            if on_epoch_end is not None and world.is_main:
                on_epoch_end(epoch)
    finally:
        if writer is not None:
            writer.close()
    return final


# --------------------------------------------------------------------------------------------
# Evaluation


def frame_accuracy(model_or_scorer, data_dir, ali_dir, per_utt=False, utts=None):
    """Fraction of aligned frames whose argmax posterior is the aligned pdf.

    Accepts a model (nn.Module), checkpoint path(s) (an ensemble: mean of posteriors), or a
    scorer from ``make_scorer`` (its posteriors are used, not the prior-divided scores); any
    other callable ``utt -> (T, P)`` is taken as is. With ``per_utt`` returns
    ``(fraction, {utt: (correct, frames)})``, what a speaker bootstrap resamples. ``utts``:
    only these utterances of data_dir (e.g. a model's ``train_utts``); UserError if one is not
    in data_dir.
    """
    from asrkd.data import DataDir
    from asrkd.features import FeatureReader
    from asrkd.ensemble import Scorer
    from asrkd.models import load_model

    ali = AlignmentDir(ali_dir).check()
    pdf_scp, num_pdfs = ali.pdf_scp, ali.num_pdfs
    scorer = model_or_scorer
    if isinstance(scorer, (str, os.PathLike)):
        scorer = [scorer]
    if isinstance(scorer, (list, tuple)):
        scorer = [load_model(p) for p in scorer]
    elif isinstance(scorer, torch.nn.Module):
        scorer = [scorer.cpu().eval()]
    if isinstance(scorer, list):
        scorer = Scorer(scorer, FeatureReader(data_dir, cmvn=scorer[0].config.cmvn))
    score = scorer.log_posteriors if isinstance(scorer, Scorer) else scorer
    correct = total = 0
    counts = {}
    todo = DataDir(data_dir).utts
    if utts is not None:
        missing = sorted(set(utts) - set(todo))
        if missing:
            raise UserError(f"{data_dir}: no utterance {missing[0]} (of {len(missing)} asked "
                            "for)")
        wanted = set(utts)
        todo = [u for u in todo if u in wanted]
    for utt in todo:
        if utt not in pdf_scp:
            continue
        y = np.asarray(pdf_scp[utt])
        s = np.asarray(score(utt))
        if s.shape[1] != num_pdfs:
            # e.g. a monophone GMM against triphone alignments: different pdf sets
            raise UserError(f"the model scores {s.shape[1]} pdfs but {ali_dir} has {num_pdfs}: "
                            "frame accuracy needs alignments of the model's own tree")
        if s.shape[0] != y.shape[0]:
            raise UserError(f"{utt}: {s.shape[0]} scored frames but {y.shape[0]} aligned")
        counts[utt] = (int((s.argmax(-1) == y).sum()), len(y))
        correct += counts[utt][0]
        total += len(y)
    if total == 0:
        raise UserError(f"{ali_dir}: no aligned utterance of {data_dir}")
    return (correct / total, counts) if per_utt else correct / total


def write_utt_list(path, utts):
    """One utterance id per line."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(f"{u}\n" for u in utts)


def read_utt_list(path):
    """Utterance ids of a file with one per line (the first field of each line)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such utterance list")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip() and not line.startswith("#")]


def write_frame_accuracy(out_dir, acc, counts):
    """out_dir/frame_acc (the fraction) and frame_acc_per_utt (``utt correct frames`` lines)."""
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "frame_acc_per_utt")) as tmp, open(tmp, "w") as f:
        f.write("# utt correct frames\n")
        f.writelines(f"{u} {c} {n}\n" for u, (c, n) in sorted(counts.items()))
    with atomic_path(os.path.join(out_dir, "frame_acc")) as tmp, open(tmp, "w") as f:
        f.write(f"{acc:.6f}\n")


# --------------------------------------------------------------------------------------------
# Ensembles


def _ensemble_job(data_dir, ali_dir, model_dir, mc, tc, seed, cache_dir):
    train_model(data_dir, ali_dir, model_dir, ModelConfig.from_dict(mc), TrainConfig.from_dict(tc),
                seed, cache_dir=cache_dir)
    return os.path.join(model_dir, "final.pt")


def is_finished(exp_dir):
    """True if ``exp_dir`` holds a completed training run (final.pt and a stopping epoch)."""
    last = _last_epoch_checkpoint(exp_dir)
    if last is None or not os.path.isfile(os.path.join(exp_dir, "final.pt")):
        return False
    ckpt = _load_epoch_checkpoint(last)
    s = ckpt["schedule"]
    return bool(s["stop"] or s["epoch"] >= ckpt["train_config"]["epochs"])


def train_ensemble(data_dir, ali_dir, exp_dir, model_config, train_config, num_models=10,
                   seeds=None, nj=1, launcher="local"):
    """Train models with seeds 1..N (or ``seeds``) into ``exp_dir/model{i}/final.pt``.

    Jobs run in parallel with the CPU threads split between them; finished models are skipped,
    interrupted ones resume. All members share one frame cache in ``exp_dir/frames``.
    ``launcher`` (asrkd.jobs): "slurm[:k=v,...]" trains the unfinished members as one Slurm job
    array (one task each; the same directories and logs), "submitit-local" the same locally.
    Returns the list of final checkpoint paths.
    """
    from asrkd.jobs import parse_launcher, run_jobs

    seeds = list(seeds) if seeds else list(range(1, num_models + 1))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct, got {seeds}")
    cache_dir = os.path.join(exp_dir, "frames")
    build_frame_cache(data_dir, ali_dir, cache_dir, cmvn=model_config.cmvn)  # once, shared
    dirs = [os.path.join(exp_dir, f"model{i + 1}") for i in range(len(seeds))]
    todo = [d for d in dirs if not is_finished(d)]
    if len(todo) < len(dirs):
        print(f"{len(dirs) - len(todo)} of {len(dirs)} models already trained", file=sys.stderr)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    nj = max(1, min(nj, len(todo) or 1))
    tc = train_config.to_dict()
    tc["num_threads"] = tc["num_threads"] or max(1, cores // nj)
    kind, params = parse_launcher(launcher)
    if kind != "local":  # a task per unfinished member, threads as the scheduler grants
        tc["num_threads"] = train_config.num_threads or int(params.get("cpus_per_task", 1))
    # Finished members are passed too (they return at once) so log N is always model N's;
    # a cluster gets only the unfinished ones (a task costs a queue slot), logs still numbered N.
    ids = [i + 1 for i, d in enumerate(dirs) if kind == "local" or d in todo]
    args = [(data_dir, ali_dir, dirs[i - 1], model_config.to_dict(), tc, seeds[i - 1], cache_dir)
            for i in ids]
    if todo:
        try:
            run_jobs(_ensemble_job, args, nj, os.path.join(exp_dir, "log"), "train",
                     desc="train-ensemble", threads_per_job=tc["num_threads"],
                     launcher=launcher, job_ids=ids)
        except UserError as e:
            raise UserError(f"{e}; a rerun skips the finished members and resubmits only "
                            "the others") from None
    return [os.path.join(d, "final.pt") for d in dirs]
