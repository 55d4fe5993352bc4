"""Kaldi data directories.

A data dir holds one utterance per line in each of: ``wav.scp`` (utt -> audio file path),
``text`` (utt -> upper-case words), ``utt2spk``, ``spk2utt``, ``utt2dur`` (seconds), and after
the feature stage ``feats.scp``, ``utt2num_frames`` and ``cmvn.scp`` (per speaker). All files
are sorted by key (byte order, as Kaldi's ``LC_ALL=C sort``).

``prepare_librispeech`` builds a data dir from a LibriSpeech subset, ``validate_data_dir``
checks one (other stages call it before they trust a dir), ``subset_data_dir`` splits by
speaker and ``copy_data_dir`` copies metadata.

Deviations from Kaldi:
- ``wav.scp`` holds plain absolute file paths (FLAC or WAV, read with soundfile), never shell
  pipelines.
- Preparation does not stop at the first bad utterance (Kaldi's scripts die or, worse,
  silently drop lines in ``fix_data_dir.sh``): each unusable utterance is left out and listed
  with its reason in ``DATA_DIR/log/rejected.txt``; see REJECT_REASONS.
- The validator also requires every utterance id to start with its speaker id (Kaldi only
  warns), because sorting by utterance must keep speakers contiguous.
"""

import contextlib
import dataclasses
import os
import shutil
import sys

import numpy as np
import soundfile

from asrkd.errors import DataDirError, UserError
from asrkd.featconf import (FEATURE_CONFIG, config_from_dict, feature_config, feature_dim,
                            num_frames)
from asrkd.table import load_mat, read_table, write_table

# Files that describe utterances (copied by copy_data_dir); features are per-directory.
META_FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur")


class DataDir:
    """Read access to a Kaldi data dir. Tables are loaded on first use."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DataDirError(f"{self.path}: not a directory")
        self._cache = {}

    def file(self, name):
        return os.path.join(self.path, name)

    def has(self, name):
        return os.path.isfile(self.file(name))

    def table(self, name, multi=False):
        key = (name, multi)
        if key not in self._cache:
            if not self.has(name):
                raise DataDirError(f"{self.path}: missing {name}")
            try:
                self._cache[key] = read_table(self.file(name), multi=multi)
            except ValueError as e:
                raise DataDirError(str(e)) from None
        return self._cache[key]

    @property
    def utts(self):
        """Utterance ids in sorted order (from utt2spk)."""
        return list(self.table("utt2spk"))

    @property
    def text(self):
        return self.table("text")

    @property
    def utt2spk(self):
        return self.table("utt2spk")

    @property
    def spk2utt(self):
        return self.table("spk2utt", multi=True)

    @property
    def wav(self):
        return self.table("wav.scp")

    @property
    def utt2dur(self):
        return {k: float(v) for k, v in self.table("utt2dur").items()}

    @property
    def utt2num_frames(self):
        return {k: int(v) for k, v in self.table("utt2num_frames").items()}

    def __len__(self):
        return len(self.utt2spk)

    def __repr__(self):
        return f"DataDir({self.path!r})"


def spk2utt_from_utt2spk(utt2spk):
    spk2utt = {}
    for utt, spk in sorted(utt2spk.items()):
        spk2utt.setdefault(spk, []).append(utt)
    return spk2utt


def write_data_dir(path, wav, text, utt2spk, utt2dur=None):
    """Write a data dir's metadata tables (sorted; spk2utt derived from utt2spk)."""
    os.makedirs(path, exist_ok=True)
    write_table(os.path.join(path, "wav.scp"), wav)
    write_table(os.path.join(path, "text"), text)
    write_table(os.path.join(path, "utt2spk"), utt2spk)
    write_table(os.path.join(path, "spk2utt"), spk2utt_from_utt2spk(utt2spk))
    if utt2dur is not None:
        write_table(os.path.join(path, "utt2dur"), {k: f"{v:.3f}" for k, v in utt2dur.items()})


def copy_data_dir(src, dst):
    """Copy a data dir's utterance metadata (not features or CMVN) to ``dst``."""
    os.makedirs(dst, exist_ok=True)
    # Features of an earlier dst would not match the new metadata.
    for stale in FEATURE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(dst, stale))
    for name in META_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


# --------------------------------------------------------------------------------------------
# LibriSpeech -> data dir

# Per-utterance rejection reasons written to DATA_DIR/log/rejected.txt (first field).
REJECT_REASONS = {
    "no-audio": "transcript line without an audio file",
    "no-transcript": "audio file without a transcript line",
    "unreadable-audio": "audio file cannot be opened as audio",
    "corrupt-audio": "audio stops decoding partway (truncated or damaged file)",
    "nonfinite-audio": "audio holds NaN or Inf samples",
    "empty-audio": "audio file has 0 samples",
    "silent-audio": "every sample is 0 (digital silence): no speech to align with a transcript",
    "too-short": "audio shorter than one 25 ms frame",
    "wrong-sample-rate": "sample rate differs from --sample-rate",
    "empty-transcript": "transcript line has no words",
    "duplicate-utt": "utterance id occurs more than once (all copies dropped)",
    "bad-utt-id": "utterance id does not match its <spk>/<chap> directory",
}

_MIN_SAMPLES_SECONDS = 0.025  # one Kaldi frame; shorter audio yields no features at all


@dataclasses.dataclass
class PrepResult:
    """What ``prepare_librispeech`` kept and rejected (rejected: utt -> (reason, detail))."""

    kept: int
    rejected: dict

    def counts(self):
        out = {}
        for reason, _ in self.rejected.values():
            out[reason] = out.get(reason, 0) + 1
        return dict(sorted(out.items()))

    def summary(self):
        line = f"{self.kept} kept, {len(self.rejected)} rejected"
        if self.rejected:
            line += " (" + ", ".join(f"{r}: {n}" for r, n in self.counts().items()) + ")"
        return line


def _find_chapters(corpus_dir):
    """Yield (spk, chap, chapter_dir) for every <spk>/<chap>/ directory of a subset."""
    for spk in sorted(os.listdir(corpus_dir)):
        spk_dir = os.path.join(corpus_dir, spk)
        if not os.path.isdir(spk_dir):
            continue
        for chap in sorted(os.listdir(spk_dir)):
            chap_dir = os.path.join(spk_dir, chap)
            if os.path.isdir(chap_dir):
                yield spk, chap, chap_dir


def _decode_audio(audio):
    """Decode a whole file in blocks: (samples, None), or (samples so far, (reason, detail)) if
    it stops decoding partway, holds NaN/Inf or only zeros (a header alone says none of it)."""
    n, bad, sound = 0, 0, False
    try:
        with soundfile.SoundFile(audio) as f:
            is_float = f.subtype in ("FLOAT", "DOUBLE")
            while True:
                block = f.read(1 << 16, dtype="float32" if is_float else "int16", always_2d=True)
                if is_float:
                    bad += block.size - int(np.count_nonzero(np.isfinite(block)))
                sound = sound or bool(block.any())
                n += len(block)
                if len(block) < 1 << 16:
                    break
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        return n, ("corrupt-audio", f"decoding fails after {n} samples: "
                   + (str(e).splitlines()[0] if str(e) else type(e).__name__))
    if bad:
        return n, ("nonfinite-audio", f"{bad} NaN/Inf samples")
    if n and not sound:
        return n, ("silent-audio", f"{n} samples, all 0")
    return n, None


def _reject(rejected, utt, reason, detail=""):
    """Record an utterance's first rejection reason."""
    rejected.setdefault(utt, (reason, detail))


def _transcript_files(corpus_dir):
    """[(spk, chap, chapter_dir, transcript path)] of a subset dir; a UserError naming a subset
    when ``corpus_dir`` is a LibriSpeech root (or anything else) instead."""
    if not os.path.isdir(corpus_dir):
        raise UserError(f"{corpus_dir}: no such directory")
    chapters = list(_find_chapters(corpus_dir))
    trans_files = [
        (spk, chap, d, os.path.join(d, f"{spk}-{chap}.trans.txt")) for spk, chap, d in chapters
    ]
    if not any(os.path.isfile(t) for *_, t in trans_files):
        hint = ""
        subsets = [s for s in sorted(os.listdir(corpus_dir)) if "-" in s
                   and os.path.isdir(os.path.join(corpus_dir, s))]
        if subsets:
            hint = f" (did you mean a subset such as {os.path.join(corpus_dir, subsets[0])}?)"
        raise UserError(
            f"{corpus_dir}: not a LibriSpeech subset: no <spk>/<chap>/<spk>-<chap>.trans.txt"
            + hint
        )
    return trans_files


def _read_chapters(trans_files, rejected):
    """Transcript lines and audio files of every chapter: (utt -> (words, audio path), ids
    seen twice, audio paths present). Ids that do not match their chapter and audio without a
    transcript go into ``rejected``."""
    seen = {}  # utt -> (words, audio path or None)
    dups = set()
    audio_seen = set()
    for spk, chap, chap_dir, trans in trans_files:
        prefix = f"{spk}-{chap}-"
        lines = []
        if os.path.isfile(trans):
            with open(trans, encoding="utf-8", errors="replace") as f:
                lines = [ln.split(maxsplit=1) for ln in f if ln.strip()]
        for parts in lines:
            utt = parts[0]
            words = " ".join(parts[1].split()).upper() if len(parts) > 1 else ""
            if utt in seen:
                dups.add(utt)
                continue
            audio = os.path.join(chap_dir, utt + ".flac")
            seen[utt] = (words, audio)
            if not utt.startswith(prefix) or not utt[len(prefix):]:
                _reject(rejected, utt, "bad-utt-id", f"expected {prefix}<n> in {trans}")
        for name in sorted(os.listdir(chap_dir)):
            if not name.endswith(".flac"):
                continue
            utt = name[: -len(".flac")]
            audio_seen.add(os.path.join(chap_dir, name))
            if utt not in seen:
                _reject(rejected, utt, "no-transcript", os.path.join(chap_dir, name))
    return seen, dups, audio_seen


def _audio_duration(audio, sample_rate):
    """(seconds, None) for a usable audio file, (None, (reason, detail)) for one to reject."""
    try:
        info = soundfile.info(audio)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        return None, ("unreadable-audio", str(e).splitlines()[0] if str(e) else audio)
    n, problem = _decode_audio(audio)
    known = info.frames < 2**62  # 2**62 and up: the header gives no length
    # (libsndfile also fails at the end of a sample-less stream: that one is empty-audio)
    if problem is not None and (n > 0 or (known and info.frames > 0)):
        return None, problem
    if known and n != info.frames:
        return None, ("corrupt-audio", f"header says {info.frames} samples, {n} decode")
    if n <= 0:
        return None, ("empty-audio", "")
    if info.samplerate != sample_rate:
        return None, ("wrong-sample-rate", f"{info.samplerate} Hz, expected {sample_rate}")
    if n < _MIN_SAMPLES_SECONDS * sample_rate:
        return None, ("too-short", f"{n} samples")
    return n / info.samplerate, None


def prepare_librispeech(corpus_dir, data_dir, sample_rate=16000):
    """Turn a LibriSpeech subset dir (``<spk>/<chap>/<spk>-<chap>-<utt>.flac`` plus
    ``<spk>-<chap>.trans.txt``) into a Kaldi data dir; return a PrepResult.

    Every file is decoded to its end, one block at a time: a truncated file's header still
    gives its full length, and a header says nothing of NaN samples. Utterances that cannot be
    used are left out and listed in ``data_dir/log/rejected.txt`` as ``utt reason [detail]``.
    Features or CMVN left in ``data_dir`` by an earlier run are removed, since they would no
    longer match.
    """
    corpus_dir = os.path.abspath(os.fspath(corpus_dir))
    trans_files = _transcript_files(corpus_dir)
    rejected = {}
    seen, dups, audio_seen = _read_chapters(trans_files, rejected)

    wav, text, utt2spk, utt2dur = {}, {}, {}, {}
    for utt in dups:
        rejected[utt] = ("duplicate-utt", "")
    for utt, (words, audio) in sorted(seen.items()):
        if utt in rejected:
            continue
        if audio not in audio_seen:
            _reject(rejected, utt, "no-audio", audio)
            continue
        if not words:
            _reject(rejected, utt, "empty-transcript")
            continue
        seconds, problem = _audio_duration(audio, sample_rate)
        if problem is not None:
            _reject(rejected, utt, *problem)
            continue
        wav[utt] = audio
        text[utt] = words
        utt2spk[utt] = utt.split("-")[0]
        utt2dur[utt] = seconds

    data_dir = os.fspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    for stale in FEATURE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(data_dir, stale))
    write_data_dir(data_dir, wav, text, utt2spk, utt2dur)
    write_table(
        os.path.join(data_dir, "log", "rejected.txt"),
        {u: (r + (" " + d if d else "")) for u, (r, d) in rejected.items()},
    )
    if not wav:
        raise UserError(f"{corpus_dir}: no usable utterances ({PrepResult(0, rejected).summary()})")
    return PrepResult(len(wav), rejected)


# --------------------------------------------------------------------------------------------
# Validation

FEATURE_FILES = ("feats.scp", "utt2num_frames", "cmvn.scp", FEATURE_CONFIG)
UTT_FILES = ("wav.scp", "text", "utt2spk", "utt2dur", "feats.scp", "utt2num_frames")


def _check_sorted(path):
    prev = None
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            key = line.split(maxsplit=1)[0]
            if prev is not None and key <= prev:
                what = "duplicate key" if key == prev else "not sorted"
                raise DataDirError(f"{path}:{n}: {what} ({key.decode(errors='replace')!r} "
                                   f"after {prev.decode(errors='replace')!r}); sort with LC_ALL=C")
            prev = key


def validate_data_dir(path, need=("wav.scp", "text", "utt2spk", "spk2utt"), check_audio=True):
    """Check a data dir and return it as a DataDir; raise DataDirError on the first problem.

    Checks: the files in ``need`` exist; every table present is sorted with unique keys; all
    per-utterance tables cover the same utterances; spk2utt is the inverse of utt2spk; each
    utterance id starts with its speaker id (Kaldi's sorting convention); wav.scp paths are
    absolute paths of existing files (unless ``check_audio=False``, for stages that only read
    features); utt2dur / utt2num_frames are positive numbers; feats.scp frame counts equal
    utt2num_frames; cmvn.scp covers exactly the speakers, with 2 x (dim + 1) stats whose frame
    count is the speaker's total. The feature values themselves (NaN/Inf) are a pass over all
    the features, left to asrkd.features.check_feature_values (``validate-data-dir --values``).
    """
    d = DataDir(path)
    for name in need:
        if not d.has(name):
            raise DataDirError(f"{d.path}: missing {name}")
    for name in (*UTT_FILES, "spk2utt", "cmvn.scp"):
        if d.has(name):
            _check_sorted(d.file(name))
    if not d.has("utt2spk"):
        raise DataDirError(f"{d.path}: missing utt2spk")
    utt2spk = d.utt2spk
    if not utt2spk:
        raise DataDirError(f"{d.path}: utt2spk is empty")
    _check_speakers(d, utt2spk)
    _check_same_utterances(d, set(utt2spk))
    if d.has("spk2utt"):
        _check_spk2utt(d, utt2spk)
    _check_entries(d, check_audio)
    dim = _check_feats(d) if d.has("feats.scp") else None
    if d.has("cmvn.scp"):
        _check_cmvn(d, utt2spk, dim)
    return d


def _check_speakers(d, utt2spk):
    for utt, spk in utt2spk.items():
        if not spk or len(spk.split()) != 1:
            raise DataDirError(f"{d.file('utt2spk')}: {utt}: bad speaker {spk!r}")
        if not utt.startswith(spk):
            raise DataDirError(f"{d.file('utt2spk')}: utterance {utt} does not start with its "
                               f"speaker id {spk}")


def _check_same_utterances(d, utts):
    """Every per-utterance table present lists exactly the utterances of utt2spk."""
    for name in UTT_FILES:
        if name == "utt2spk" or not d.has(name):
            continue
        keys = set(d.table(name))
        if keys != utts:
            extra, missing = sorted(keys - utts), sorted(utts - keys)
            msg = []
            if missing:
                msg.append(f"lacks {len(missing)} utterances of utt2spk (e.g. {missing[0]})")
            if extra:
                msg.append(f"has {len(extra)} utterances not in utt2spk (e.g. {extra[0]})")
            raise DataDirError(f"{d.file(name)}: " + "; ".join(msg))


def _check_spk2utt(d, utt2spk):
    expect = spk2utt_from_utt2spk(utt2spk)
    got = d.spk2utt
    if got != expect:
        bad = next((s for s in sorted(set(got) | set(expect)) if got.get(s) != expect.get(s)))
        raise DataDirError(f"{d.file('spk2utt')}: speaker {bad} disagrees with utt2spk "
                           "(regenerate spk2utt from utt2spk)")


def _check_entries(d, check_audio):
    """Non-empty transcripts, existing audio files, positive durations and frame counts."""
    if d.has("text"):
        for utt, words in d.text.items():
            if not words.strip():
                raise DataDirError(f"{d.file('text')}: {utt}: empty transcript")
    if d.has("wav.scp") and check_audio:
        for utt, p in d.wav.items():
            if not os.path.isabs(p) or not os.path.isfile(p):
                raise DataDirError(f"{d.file('wav.scp')}: {utt}: {p!r} is not an absolute path "
                                   "to an existing file")
    for name, conv in (("utt2dur", float), ("utt2num_frames", int)):
        if d.has(name):
            for utt, v in d.table(name).items():
                try:
                    ok = conv(v) > 0
                except ValueError:
                    ok = False
                if not ok:
                    raise DataDirError(f"{d.file(name)}: {utt}: bad value {v!r}")


def _check_feats(d):
    """feats.scp's matrices (from their headers) against feat_config.yaml and utt2num_frames;
    returns the feature dim."""
    shapes = {u: matrix_shape(spec) for u, spec in d.table("feats.scp").items()}
    dims = {s[1] for s in shapes.values()}
    if len(dims) != 1:
        raise DataDirError(f"{d.file('feats.scp')}: features have several dims {sorted(dims)}")
    (dim,) = dims
    if d.has(FEATURE_CONFIG):
        want = feature_dim(feature_config(d.path))
        if want != dim:
            raise DataDirError(f"{d.file('feats.scp')}: features have dim {dim} but "
                               f"feat_config.yaml describes {want}-dim ones; rerun "
                               "compute-feats")
    if d.has("utt2num_frames"):
        n = d.utt2num_frames
        for utt, (t, _) in shapes.items():
            if t != n[utt]:
                raise DataDirError(f"{d.file('feats.scp')}: {utt} has {t} frames, "
                                   f"utt2num_frames says {n[utt]}")
    if d.has("utt2dur") and d.has(FEATURE_CONFIG):
        _check_durations(d, {u: t for u, (t, _) in shapes.items()},
                         config_from_dict(feature_config(d.path)))
    return dim


def _check_durations(d, frames, config):
    """Each utterance's feature frames against its utt2dur (as prepare-data measured the audio):
    features of audio that changed since then disagree by more than the rounding of utt2dur."""
    dur = d.utt2dur
    for utt in sorted(frames):
        want = num_frames(int(round(dur[utt] * config.sample_rate)), config)
        if abs(frames[utt] - want) > 2:
            raise DataDirError(f"{d.file('feats.scp')}: {utt} has {frames[utt]} frames but "
                               f"utt2dur says {dur[utt]:g} s ({want} frames): its audio "
                               "changed after prepare-data; rerun prepare-data and compute-feats")


def _check_cmvn(d, utt2spk, dim):
    """cmvn.scp: one 2 x (dim + 1) stats matrix per speaker, counting the speaker's frames."""
    spks = set(spk2utt_from_utt2spk(utt2spk))
    cmvn = d.table("cmvn.scp")
    if set(cmvn) != spks:
        raise DataDirError(f"{d.file('cmvn.scp')}: speakers differ from utt2spk "
                           f"({len(cmvn)} vs {len(spks)}); rerun compute-cmvn")
    frames = d.utt2num_frames if d.has("utt2num_frames") else None
    per_spk = {}
    if frames is not None:
        for utt, spk in utt2spk.items():
            per_spk[spk] = per_spk.get(spk, 0) + frames[utt]
    for spk, spec in cmvn.items():
        stats = load_mat(spec)
        if stats.ndim != 2 or stats.shape[0] != 2 or (dim and stats.shape[1] != dim + 1):
            raise DataDirError(f"{d.file('cmvn.scp')}: {spk}: stats shape {stats.shape}, "
                               f"expected (2, {dim + 1 if dim else 'dim+1'})")
        if frames is not None and round(stats[0, -1]) != per_spk[spk]:
            raise DataDirError(f"{d.file('cmvn.scp')}: {spk}: frame count {stats[0, -1]:g} "
                               f"!= {per_spk[spk]} frames in feats; rerun compute-cmvn")


def matrix_shape(spec):
    """(rows, cols) of a Kaldi binary matrix ``ark_path:offset`` read from its header only."""
    path, _, off = spec.rpartition(":")
    if not path or not off.isdigit():
        raise DataDirError(f"bad scp entry {spec!r} (expected ark_path:offset)")
    try:
        with open(path, "rb") as f:
            f.seek(int(off))
            head = f.read(15)
    except OSError as e:
        raise DataDirError(f"cannot read {spec}: {e.strerror}") from None
    # "\0B" then "FM " / "DM ", then two (size byte 4, int32) pairs.
    if len(head) != 15 or head[:2] != b"\0B" or head[2:5] not in (b"FM ", b"DM "):
        return load_mat(spec).shape
    rows = int.from_bytes(head[6:10], "little", signed=True)
    cols = int.from_bytes(head[11:15], "little", signed=True)
    return rows, cols


# --------------------------------------------------------------------------------------------
# Splitting

def subset_data_dir(src, out1, out2, num_speakers=None, fraction=None):
    """Split ``src`` by speaker: the first ``num_speakers`` speakers (or ``fraction`` of them,
    rounded, at least one and at most all but one) in sorted order go to ``out1``, the rest to
    ``out2``. Deterministic. Features (feats.scp, utt2num_frames) and per-speaker CMVN are
    subset too when present: a split by speaker leaves each speaker's CMVN stats valid, so the
    subsets need no recomputation. Returns (speakers in out1, speakers in out2).
    """
    d = validate_data_dir(src, need=("wav.scp", "text", "utt2spk", "spk2utt"))
    spks = sorted(d.spk2utt)
    if (num_speakers is None) == (fraction is None):
        raise UserError("give exactly one of --num-speakers or --fraction")
    if num_speakers is not None:
        n = int(num_speakers)
    else:
        if not 0.0 < fraction < 1.0:
            raise UserError(f"--fraction must be in (0, 1), got {fraction}")
        n = min(max(1, round(fraction * len(spks))), len(spks) - 1)
    if not 0 < n < len(spks):
        raise UserError(f"{d.path} has {len(spks)} speakers; cannot put {n} in the first "
                        "subset and leave some for the second")
    groups = (set(spks[:n]), set(spks[n:]))
    for out, group in zip((out1, out2), groups):
        keep = {u for u, s in d.utt2spk.items() if s in group}
        tables = {}
        for name in ("wav.scp", "text", "utt2spk", "utt2dur", "utt2num_frames"):
            if d.has(name):
                tables[name] = {u: v for u, v in d.table(name).items() if u in keep}
        if d.has("cmvn.scp"):
            tables["cmvn.scp"] = {k: v for k, v in d.table("cmvn.scp").items() if k in group}
        os.makedirs(out, exist_ok=True)
        for stale in FEATURE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, stale))
        if d.has("feats.scp") and d.has("feat_config.yaml"):
            shutil.copyfile(d.file("feat_config.yaml"), os.path.join(out, "feat_config.yaml"))
        # feats.scp last: its presence is what later stages trust
        if d.has("feats.scp"):
            tables["feats.scp"] = {u: v for u, v in d.table("feats.scp").items() if u in keep}
        for name, t in tables.items():
            write_table(os.path.join(out, name), t)
        write_table(os.path.join(out, "spk2utt"), spk2utt_from_utt2spk(tables["utt2spk"]))
    return sorted(groups[0]), sorted(groups[1])


# --------------------------------------------------------------------------------------------
# Combining

def combine_data_dirs(out, srcs):
    """Merge several data dirs (e.g. LibriSpeech train-clean-100 and -360) into ``out``, as
    Kaldi's ``utils/combine_data.sh``. An utterance id in two sources is an error (not a silent
    overwrite). Features (feats.scp, utt2num_frames) are carried when every source has them, and
    per-speaker CMVN when every source has it and no speaker is in two sources (stats of a split
    speaker would need summing: compute CMVN on ``out`` then). Returns the number of utterances.
    """
    if not srcs:
        raise UserError("combine-data-dirs needs at least one source dir")
    tables = {name: {} for name in META_FILES if name != "spk2utt"}
    feats = {name: {} for name in ("feats.scp", "utt2num_frames", "cmvn.scp")}
    spk_src = {}
    feat_configs = {}  # source -> its feat_config.yaml (None: it records none)
    for src in srcs:
        d = validate_data_dir(src, need=("wav.scp", "text", "utt2spk", "spk2utt"),
                              check_audio=False)
        if d.has("feats.scp"):
            feat_configs[src] = feature_config(src)
        for name, merged in tables.items():
            if name == "utt2dur" and not d.has(name):
                continue
            for utt, value in d.table(name).items():
                if name == "wav.scp" and utt in merged:
                    raise UserError(f"utterance {utt} is in more than one source ({src})")
                merged[utt] = value
        for name in list(feats):
            if feats[name] is not None and d.has(name):
                feats[name].update(d.table(name))
            else:
                feats[name] = None
        for spk in d.spk2utt:
            if spk_src.setdefault(spk, src) != src and feats["cmvn.scp"] is not None:
                print(f"combine-data-dirs: speaker {spk} is in {spk_src[spk]} and {src}: "
                      "CMVN not carried (run compute-cmvn on the output)", file=sys.stderr)
                feats["cmvn.scp"] = None
    if os.path.abspath(out) in {os.path.abspath(s) for s in srcs}:
        raise UserError(f"{out}: the output must not be one of the sources")
    utt2dur = tables["utt2dur"]
    if len(utt2dur) != len(tables["wav.scp"]):
        utt2dur = None  # only some sources had durations: write none rather than a partial table
    else:
        utt2dur = {k: float(v) for k, v in utt2dur.items()}
    if os.path.isdir(out):
        for stale in FEATURE_FILES + ("utt2dur",):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, stale))
    write_data_dir(out, tables["wav.scp"], tables["text"], tables["utt2spk"], utt2dur)
    if feats["feats.scp"] is not None and feats["utt2num_frames"] is not None:
        configs = [(src, c) for src, c in feat_configs.items() if c is not None]
        for src, c in configs[1:]:
            if c != configs[0][1]:
                raise UserError(f"{configs[0][0]} and {src} hold features computed with "
                                "different configs (feat_config.yaml); they cannot be combined")
        # carried only when every source records it (one that does not may differ)
        if configs and len(configs) == len(feat_configs):
            shutil.copyfile(os.path.join(configs[0][0], "feat_config.yaml"),
                            os.path.join(out, "feat_config.yaml"))
        # feats.scp last: its presence is what later stages trust
        for name in ("utt2num_frames", "cmvn.scp", "feats.scp"):
            if feats[name] is not None:
                write_table(os.path.join(out, name), feats[name])
    return len(tables["wav.scp"])
