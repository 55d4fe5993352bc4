"""Transcription of audio files with a trained hybrid model: audio -> words.

The same chain as `asrkd decode` on a data dir, from raw audio: fbank features (the model's
feature config), CMVN with the model's mode, the model's priors, its acoustic scale, HCLG
decoding. Where a data dir has per-speaker CMVN stats, loose files have no speaker: each file is
normalised on its own statistics (per-utterance CMVN). A ``wav.scp`` with an ``utt2spk`` beside
it is normalised per speaker, as its data dir would be, so transcribing ``data/test/wav.scp``
gives `asrkd decode`'s hypotheses for data/test.

The acoustic scale is looked up in order: an explicit value, the ONNX model's metadata, the
model dir's decode dirs (``decode_*/acwt``, written by `asrkd decode`), a given dev decode dir's
``best_acwt``.
"""

import os
import sys
import time
from collections.abc import Mapping

import numpy as np
import torch

from asrkd.decode import cached_graph, decode_loglikes, make_decoder, read_best_acwt
from asrkd.ensemble import resolve_checkpoints
from asrkd.errors import UserError
from asrkd.export import OnnxModel, find_acwt
from asrkd.featconf import FbankConfig, load_feature_config
from asrkd.audio import parse_channel
from asrkd.features import check_feature_config, cmvn_transform, make_extractor
from asrkd.models import load_checkpoint, load_model
from asrkd.options import check_options
from asrkd.priors import resolve_priors
from asrkd.scorer import make_scorer
from asrkd.segment import Segmenter, frame_energy
from asrkd.stream import file_features
from asrkd.table import read_table

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".sph")
DEFAULT_MAX_SEGMENT = 30.0  # seconds: longer files are decoded in segments of at most this


def read_inputs(audio, stdin=None):
    """AUDIO arguments -> [(key, path, keyed)] and utt2spk (dict, possibly empty).

    Each argument is an audio file (key: its path), a ``*.scp`` file of ``utt path`` lines (key:
    utt; an ``utt2spk`` beside it gives the speakers), or ``-``: paths (or ``utt path`` lines)
    from ``stdin``. ``keyed``: the key is an utterance id (printed before the words).
    """
    items, utt2spk = [], {}
    for a in audio:
        if a == "-":
            for line in (stdin if stdin is not None else sys.stdin):
                fields = line.split(maxsplit=1)
                if len(fields) == 1:
                    items.append((fields[0], fields[0], False))
                elif fields:
                    items.append((fields[0], fields[1].strip(), True))
        elif a.endswith(".scp"):
            if not os.path.isfile(a):
                raise UserError(f"{a}: no such file")
            items += [(u, p, True) for u, p in sorted(read_table(a).items())]
            spk_file = os.path.join(os.path.dirname(a), "utt2spk")
            if os.path.isfile(spk_file):
                utt2spk.update(read_table(spk_file))
        else:
            items.append((a, a, False))
    if not items:
        raise UserError("no audio to transcribe")
    keys = [k for k, _, _ in items]
    if len(set(keys)) != len(keys):
        raise UserError("the same file or utterance id is given twice")
    for _, p, _ in items:
        if not os.path.isfile(p):
            raise UserError(f"{p}: no such audio file")
    return items, utt2spk


class _SegmentFeatures(Mapping):
    """key -> CMVN'd float32 (T, D) features of the one segment being decoded (``load``): what
    the scorer reads, so that no more than a segment's features are held."""

    def __init__(self, cmvn):
        self.cmvn, self.current = cmvn, {}

    def load(self, key, raw, transform):
        """Make ``key`` the raw features (T, D) normalised by ``transform`` (scale, offset)."""
        x = raw
        if transform is not None:
            scale, offset = transform
            x = x * scale + offset
        self.current = {key: np.asarray(x, dtype=np.float32)}

    def __getitem__(self, key):
        return self.current[key]

    def __iter__(self):
        return iter(self.current)

    def __len__(self):
        return len(self.current)


class _Scan:
    """The first pass over a file: its CMVN statistics (2, D+1) float64 as compute-cmvn writes
    them (sums and frame count, sums of squares), segment ends, seconds of audio, and its
    features when they came in one chunk and make one segment (not computed again)."""

    def __init__(self, stats, ends, audio_s, feats):
        self.stats, self.ends, self.audio_s, self.feats = stats, ends, audio_s, feats


def model_info(model, feat_conf=None):
    """(cmvn mode, FbankConfig, acwt from the model or None, feat_dim) of MODEL."""
    if os.fspath(model).endswith(".onnx"):
        m = OnnxModel(model)
        fc = load_feature_config(feat_conf) if feat_conf else m.feature_config
        return m.cmvn, fc, m.acwt, m.feat_dim
    if os.path.isfile(os.path.join(model, "final.mdl")):
        raise UserError(f"{model}: a GMM dir; transcribe runs DNN models (final.pt, a dir of "
                        "model*/final.pt, or an .onnx file)")
    ckpt = resolve_checkpoints(model)[0]
    cfg = load_model(ckpt).config
    fc = load_feature_config(feat_conf) if feat_conf else FbankConfig()
    # the checkpoint names its training data dir: recompute one of its utterances to be sure
    check_feature_config(fc, load_checkpoint(ckpt).get("data_dir"))
    return cfg.cmvn, fc, find_acwt(model), cfg.feat_dim


def transcribe(model, graph_dir, audio, acwt=None, acwt_from=None, feat_conf=None,
               resample=True, beam=16.0, lattice_beam=8.0, max_active=7000, num_threads=1,
               stdin=None, out=None, channel=None, max_segment=DEFAULT_MAX_SEGMENT,
               priors="auto"):
    """`asrkd transcribe`: decode each input and write its words, one line per input, to ``out``
    (default stdout): ``words`` for files given as such, ``utt words`` for scp entries.

    Files are processed one at a time, each read in blocks twice: once for its CMVN statistics
    (of its speaker group: every member first) and its segment ends (a file longer than
    ``max_segment`` seconds is cut at low-energy frames, asrkd.segment), then for its features,
    one segment at a time scored and decoded as an utterance; the words of its segments are
    joined in order. Memory is bounded by a segment, the model and the graph.

    Returns {"hyps": {key: words}, "segments": {key: [segment end frames]}, "audio_s",
    "process_s", "rtf", "load_s", "acwt"}. The real-time factor counts feature extraction (both
    passes), the network and the search, not the loading of the graph and model (``load_s``).
    ``channel``: of multi-channel files, an index or "mix" (asrkd.audio.read_audio; None
    refuses them). ``priors``: "counts", "posterior" or "auto" (asrkd.priors.resolve_priors:
    the model's own mean posterior where `asrkd adjust-priors` wrote it, as the recipe decodes).
    """
    out = sys.stdout if out is None else out
    check_options(acwt=acwt, beam=beam, lattice_beam=lattice_beam, max_active=max_active,
                  max_segment=max_segment)
    t_load = time.perf_counter()
    channel = parse_channel(channel)
    items, utt2spk = read_inputs(audio, stdin)
    run = _Run(model, graph_dir, acwt, acwt_from, feat_conf, beam, lattice_beam, max_active,
               priors)
    run.set_input(channel, resample, max_segment)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    load_s = time.perf_counter() - t_load

    t0 = time.perf_counter()
    groups, group_of = {}, {}
    for key, _, _ in items:  # files without a speaker: a group of their own
        g = utt2spk.get(key, ("utt", key))
        groups.setdefault(g, []).append(key)
        group_of[key] = g
    paths = {key: path for key, path, _ in items}
    scans, transforms, hyps, segments, audio_s = {}, {}, {}, {}, 0.0
    for key, path, keyed in items:
        g = group_of[key]
        if g not in transforms:
            members = groups[g]
            for k in members:
                scans[k] = run.scan(paths[k], keep=len(members) == 1)
            stats = sum(scans[k].stats for k in members)
            transforms[g] = None if run.cmvn is None else cmvn_transform(
                stats, run.cmvn == "meanvar")
        scan = scans.pop(key)
        words = run.decode_file(key, path, scan, transforms[g])
        hyps[key], segments[key] = " ".join(words), scan.ends
        audio_s += scan.audio_s
        out.write(f"{key} {hyps[key]}\n" if keyed else f"{hyps[key]}\n")
        out.flush()
    process_s = time.perf_counter() - t0
    rtf = process_s / audio_s if audio_s else float("nan")
    n_seg = sum(len(e) for e in segments.values())
    print(f"transcribe: {len(items)} file(s) in {n_seg} segment(s), {audio_s:.1f} s of audio in "
          f"{process_s:.2f} s: real-time factor {rtf:.3f} (acwt {run.acwt:g}, priors "
          f"{run.priors}, {num_threads} "
          f"thread(s); loading the graph and model took {load_s:.1f} s more)", file=sys.stderr)
    return {"hyps": hyps, "segments": segments, "audio_s": audio_s, "process_s": process_s,
            "rtf": rtf, "load_s": load_s, "acwt": run.acwt}


class _Run:
    """What transcription holds for all files: features config and extractor, CMVN mode,
    acoustic scale, graph, decoder and scorer, and the segment limit."""

    def __init__(self, model, graph_dir, acwt, acwt_from, feat_conf, beam, lattice_beam,
                 max_active, priors="auto"):
        self.cmvn, self.fc, model_acwt, feat_dim = model_info(model, feat_conf)
        fc = self.fc
        if fc.kind != "fbank" or fc.dim != feat_dim:
            raise UserError(f"feature config gives {fc.kind} of dim {fc.dim} but the model "
                            f"takes {feat_dim}-dim fbank: pass --feat-conf with its training "
                            "config")
        if acwt is None:
            acwt = read_best_acwt(acwt_from) if acwt_from else model_acwt
        if acwt is None:
            raise UserError(f"{model}: no acoustic scale known (no decode_*/acwt beside it): "
                            "pass --acwt or --acwt-from DEV_DECODE_DIR")
        check_options(acwt=acwt)
        self.acwt = acwt
        self.hclg, self.tm, self.words = cached_graph(graph_dir)
        self.decoder = make_decoder(self.hclg, beam, lattice_beam, max_active)
        self.extract = make_extractor(fc)
        self.feats = _SegmentFeatures(self.cmvn)
        self.priors = resolve_priors(model, priors)
        self.scorer = make_scorer(model, None, feats=self.feats, priors=self.priors)

    def set_input(self, channel, resample, max_segment):
        """How files are read: ``channel``, whether to resample, the segment limit (seconds)."""
        self.channel, self.resample = channel, resample
        self.max_frames = int(round(max_segment * 1000.0 / self.fc.frame_shift_ms))
        # a file of up to max_segment seconds is one block: its features are those of one call
        self.block_s = max_segment + 2 * self.fc.frame_length_ms / 1000.0

    def features(self, path, on_resample=None):
        """(seconds, iterator of raw feature chunks (t, D)) of ``path``, block by block."""
        return file_features(path, self.fc, self.extract, self.channel, self.resample,
                             self.block_s, on_resample)

    def scan(self, path, keep):
        """_Scan of ``path`` (``keep``: hold its features if they are one chunk and segment)."""
        def note(sr):
            print(f"transcribe: {path}: resampling {sr} Hz -> {self.fc.sample_rate} Hz",
                  file=sys.stderr)

        audio_s, chunks = self.features(path, note)
        stats, segmenter, held, n = None, Segmenter(self.max_frames), [], 0
        for x in chunks:
            if stats is None:
                stats = np.zeros((2, x.shape[1] + 1), dtype=np.float64)
            x64 = x.astype(np.float64)
            stats[0, :-1] += x64.sum(axis=0)
            stats[1, :-1] += np.einsum("td,td->d", x64, x64)
            stats[0, -1] += x.shape[0]
            segmenter.push(frame_energy(x, self.fc))
            n += len(x)
            held = [x] if keep and held == [] and n <= self.max_frames else None
        if n == 0:
            raise UserError(f"{path}: too short for one frame")
        return _Scan(stats, segmenter.finish(), audio_s, held[0] if held else None)

    def decode_file(self, key, path, scan, transform):
        """The words of ``path``: its segments (scan.ends) decoded one at a time, in order."""
        chunks = iter([scan.feats]) if scan.feats is not None else self.features(path)[1]
        pending, start, words = None, 0, []
        ends = iter(scan.ends)
        end = next(ends)
        for x in chunks:
            pending = x if pending is None else np.concatenate([pending, x])
            while end is not None and len(pending) >= end - start:
                seg, pending = pending[:end - start], pending[end - start:]
                words += self.decode_segment(key, seg, transform)
                start, end = end, next(ends, None)
        if end is not None:  # the file changed between the passes
            raise UserError(f"{path}: {start + len(pending)} frames on reading it again, "
                            f"{scan.ends[-1]} the first time")
        return words

    def decode_segment(self, key, raw, transform):
        """Words of one segment's raw features (T, D), decoded as an utterance."""
        self.feats.load(key, raw, transform)
        ids = decode_loglikes(self.hclg, self.tm, self.scorer(key), self.acwt,
                              decoder=self.decoder, utt=key)
        return [self.words[i] for i in ids]
