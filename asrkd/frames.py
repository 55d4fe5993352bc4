"""The frame cache: CMVN'd frames and pdf targets of a data dir, memory-mapped from disk.

Shared by training (asrkd.train), distillation (asrkd.distill) and the specialists
(asrkd.specialists). CMVN'd frames of every aligned utterance are written once into a contiguous
float32 memory-mapped cache (``<cache>/feats.npy``, with ``pdf.npy`` targets and utterance
offsets), so a corpus larger than RAM streams from disk. A minibatch is a set of global frame
indices; context windows are gathered by index arithmetic, clamped to the frame's own utterance
(``FrameCache.windows``), so there is no per-utterance Python in the inner loop. Ensemble members
share one cache. Per-frame rows that go with the frames (distillation's soft targets) are written
the same way, in cache frame order (``extra_memmap``).

Also here: ``split_by_speaker``, the deterministic validation split (a fixed pseudo-random share
of speakers, the same for every seed, so ensemble members are comparable).
"""

import hashlib
import json
import mmap
import os
import shutil
import sys

import numpy as np
from tqdm import tqdm

from asrkd.alignment import AlignmentDir
from asrkd.data import DataDir
from asrkd.errors import UserError
from asrkd.features import FeatureReader

CACHE_VERSION = 1


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
# already, and handing them back would only make every batch fault its windows in again (the
# demo's largest, a distilled student's 0.5 h + 0.5 h of top-50 targets, 147 MB, released every
# batch: a tenth of its update time). Larger arrays are paged, so a bigger corpus does not grow
# the resident set past this (bench/memory.py).
RESIDENT_BYTES = 160 << 20


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
    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is not None and hasattr(m, "madvise"):
            m.madvise(mmap.MADV_DONTNEED)


class PageBudget:
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


def extra_memmap(cache, utt_ids, extra_targets, path):
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
