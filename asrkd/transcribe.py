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
from asrkd.audio import parse_channel, read_audio
from asrkd.features import check_feature_config, cmvn_transform, make_extractor
from asrkd.features import resample as resample_audio
from asrkd.models import load_checkpoint, load_model
from asrkd.options import check_options
from asrkd.scorer import make_scorer
from asrkd.table import read_table

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".sph")


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


class _ComputedFeatures(Mapping):
    """key -> CMVN'd float32 (T, D): features computed here, normalised per speaker group."""

    def __init__(self, raw, groups, cmvn):
        self.raw, self.cmvn = raw, cmvn
        self._transform = {}
        if cmvn is not None:
            for group, keys in groups.items():
                # the statistics compute-cmvn writes: float64 sums, count, sums of squares
                stats = np.zeros((2, raw[keys[0]].shape[1] + 1), dtype=np.float64)
                for k in keys:
                    x = raw[k].astype(np.float64)
                    stats[0, :-1] += x.sum(axis=0)
                    stats[1, :-1] += np.einsum("td,td->d", x, x)
                    stats[0, -1] += x.shape[0]
                t = cmvn_transform(stats, cmvn == "meanvar")
                for k in keys:
                    self._transform[k] = t

    def __getitem__(self, key):
        x = self.raw[key]
        if self.cmvn is not None:
            scale, offset = self._transform[key]
            x = x * scale + offset
        return np.asarray(x, dtype=np.float32)

    def __iter__(self):
        return iter(self.raw)

    def __len__(self):
        return len(self.raw)


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
               stdin=None, out=None, channel=None):
    """`asrkd transcribe`: decode each input and write its words, one line per input, to ``out``
    (default stdout): ``words`` for files given as such, ``utt words`` for scp entries.

    Returns {"hyps": {key: words}, "audio_s", "process_s", "rtf", "load_s", "acwt"}. The
    real-time factor counts feature extraction, the network and the search, not the loading of
    the graph and model (``load_s``). ``channel``: of multi-channel files, an index or "mix"
    (asrkd.audio.read_audio; None refuses them).
    """
    out = sys.stdout if out is None else out
    check_options(acwt=acwt, beam=beam, lattice_beam=lattice_beam, max_active=max_active)
    t_load = time.perf_counter()
    channel = parse_channel(channel)
    items, utt2spk = read_inputs(audio, stdin)
    cmvn, fc, model_acwt, feat_dim = model_info(model, feat_conf)
    if fc.kind != "fbank" or fc.dim != feat_dim:
        raise UserError(f"feature config gives {fc.kind} of dim {fc.dim} but the model takes "
                        f"{feat_dim}-dim fbank: pass --feat-conf with its training config")
    if acwt is None:
        acwt = read_best_acwt(acwt_from) if acwt_from else model_acwt
    if acwt is None:
        raise UserError(f"{model}: no acoustic scale known (no decode_*/acwt beside it): pass "
                        "--acwt or --acwt-from DEV_DECODE_DIR")
    check_options(acwt=acwt)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    hclg, tm, words = cached_graph(graph_dir)
    decoder = make_decoder(hclg, beam, lattice_beam, max_active)
    extract = make_extractor(fc)
    load_s = time.perf_counter() - t_load

    t0 = time.perf_counter()
    raw, audio_s = {}, 0.0
    for key, path, _ in items:
        try:
            x, sr = read_audio(path, channel)
        except RuntimeError as e:  # soundfile: unreadable or unknown format
            raise UserError(f"{path}: cannot read audio ({e})") from None
        if sr != fc.sample_rate:
            if not resample:
                raise UserError(f"{path}: sample rate {sr} Hz, the model's features are at "
                                f"{fc.sample_rate} Hz (drop --no-resample to resample)")
            print(f"transcribe: {path}: resampling {sr} Hz -> {fc.sample_rate} Hz",
                  file=sys.stderr)
            x = resample_audio(x, sr, fc.sample_rate)
        audio_s += len(x) / fc.sample_rate
        feats = extract(x)
        if feats.shape[0] == 0:
            raise UserError(f"{path}: too short for one frame")
        raw[key] = feats
    groups = {}
    for key, _, _ in items:  # files without a speaker: a group of their own
        groups.setdefault(utt2spk.get(key, ("utt", key)), []).append(key)
    scorer = make_scorer(model, None, feats=_ComputedFeatures(raw, groups, cmvn))
    hyps = {}
    for key, _, keyed in items:
        ids = decode_loglikes(hclg, tm, scorer(key), acwt, decoder=decoder, utt=key)
        hyps[key] = " ".join(words[i] for i in ids)
        out.write(f"{key} {hyps[key]}\n" if keyed else f"{hyps[key]}\n")
        out.flush()
    process_s = time.perf_counter() - t0
    rtf = process_s / audio_s if audio_s else float("nan")
    print(f"transcribe: {len(items)} file(s), {audio_s:.1f} s of audio in {process_s:.2f} s: "
          f"real-time factor {rtf:.3f} (acwt {acwt:g}, {num_threads} thread(s); loading the "
          f"graph and model took {load_s:.1f} s more)", file=sys.stderr)
    return {"hyps": hyps, "audio_s": audio_s, "process_s": process_s, "rtf": rtf,
            "load_s": load_s, "acwt": acwt}
