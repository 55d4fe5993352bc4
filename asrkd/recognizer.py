"""Recognizer: a trained hybrid model and its decoding graph, ready to turn waveforms into words.

The chain is `asrkd decode`'s on a data dir, from raw audio: fbank features (the model's feature
config), CMVN with the model's mode, the model's priors, its acoustic scale, HCLG decoding. A
waveform has no speaker: it is normalised on its own statistics (per-utterance CMVN). A waveform
longer than ``max_segment`` seconds is decoded in segments cut at low-energy frames
(asrkd.segment) and their words joined.

Decoding options come, in order, from an explicit argument, the model's ``decode.json``
(asrkd.decodeconf: written by `asrkd decode` when it chose the scale on a dev grid, so a model
decodes as its recipe did), and decode's defaults. The acoustic scale, where neither gives it:
the ONNX model's metadata, then the model dir's decode dirs (``decode_*/acwt``).

Example::

    import soundfile
    from asrkd import Recognizer

    rec = Recognizer("exp/distill")          # graph, beams, scale and priors from decode.json
    x, sr = soundfile.read("a.flac")
    print(rec.transcribe(x, sr).text)
"""

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from asrkd.acwt import read_best_acwt
from asrkd.decode import cached_graph, decode_lattice, make_decoder
from asrkd.decodeconf import (DEFAULT_BEAM, DEFAULT_LATTICE_BEAM, DEFAULT_MAX_ACTIVE,
                              read_decode_config)
from asrkd.ensemble import resolve_checkpoints
from asrkd.errors import UserError
from asrkd.export import OnnxModel, find_acwt
from asrkd.featconf import FbankConfig, load_feature_config
from asrkd.features import check_feature_config, cmvn_transform, make_extractor
from asrkd.finite import check_finite
from asrkd.lang import read_symbols
from asrkd.models import load_checkpoint, load_model
from asrkd.options import check_options
from asrkd.priors import resolve_priors
from asrkd.scorer import make_scorer
from asrkd.segment import Segmenter, frame_energy
from asrkd.stream import file_features, frame_blocks, resample_blocks

DEFAULT_MAX_SEGMENT = 30.0  # seconds: longer audio is decoded in segments of at most this
MIN_AUDIO_S = 0.1  # shorter audio gets a warning: too short to hold a word


@dataclass
class Result:
    """What a Recognizer found in one waveform.

    ``words``: the best path's words; ``times``: per word (start, end) seconds, silence
    (SIL) at its ends excluded; ``confidence``: per word, 0..1, the lattice posterior of the
    word near its time (asrkd.lattice.Lattice.ctm);
    ``audio_s``: seconds of audio; ``segments``: end frames of the segments decoded;
    ``warnings``: what was odd about the input or output (also passed to ``on_warning``).
    """

    words: list
    times: list | None = None
    confidence: list | None = None
    audio_s: float = 0.0
    segments: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def text(self):
        return " ".join(self.words)


class _SegmentFeatures(Mapping):
    """key -> CMVN'd float32 (T, D) features of the one segment being decoded (``load``): what
    the scorer reads, so that no more than a segment's features are held."""

    def __init__(self):
        self.current = {}

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


@dataclass
class Scan:
    """The first pass over an input: its CMVN statistics (2, D+1) float64 as compute-cmvn
    writes them (sums and frame count, sums of squares; None without a frame), segment end
    frames, seconds of audio, and its features when they came in one chunk and make one segment
    (not computed again)."""

    stats: np.ndarray | None
    ends: list
    audio_s: float
    feats: np.ndarray | None


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


def _pick(explicit, remembered, default):
    return explicit if explicit is not None else (
        remembered if remembered is not None else default)


class Recognizer:
    """MODEL (a DNN dir holding final.pt, an ensemble dir of model*/final.pt, a checkpoint or
    an .onnx file) and a graph dir, loaded once; ``transcribe(waveform, sample_rate)``.

    ``graph_dir``: default the one MODEL's decode.json names. Overrides (None: decode.json's,
    else decode's defaults): ``acwt`` (or ``acwt_from``, a dev decode dir's best_acwt),
    ``beam``, ``lattice_beam``, ``max_active``, ``priors`` ("counts", "posterior" or "auto").
    ``feat_conf``: the YAML feature config the model was trained with. ``max_segment``: seconds
    decoded as one utterance. ``num_threads``: torch threads (None: leave torch's setting).
    ``on_warning(message)``: called for each warning (default: ``warnings.warn``).
    """

    def __init__(self, model, graph_dir=None, *, acwt=None, acwt_from=None, beam=None,
                 lattice_beam=None, max_active=None, priors=None, feat_conf=None,
                 max_segment=DEFAULT_MAX_SEGMENT, num_threads=None, on_warning=None):
        check_options(acwt=acwt, beam=beam, lattice_beam=lattice_beam, max_active=max_active,
                      max_segment=max_segment)
        conf = read_decode_config(model)
        self.decode_config = conf
        self.graph_dir = _pick(graph_dir, conf and conf.graph_dir, None)
        if self.graph_dir is None:
            raise UserError(f"{model}: no graph dir given and no decode.json naming one (`asrkd "
                            "decode` writes it when it tunes the scale on a dev set)")
        self.beam = _pick(beam, conf and conf.beam, DEFAULT_BEAM)
        self.lattice_beam = _pick(lattice_beam, conf and conf.lattice_beam, DEFAULT_LATTICE_BEAM)
        self.max_active = _pick(max_active, conf and conf.max_active, DEFAULT_MAX_ACTIVE)
        check_options(beam=self.beam, lattice_beam=self.lattice_beam, max_active=self.max_active)
        self.cmvn, self.fc, model_acwt, feat_dim = model_info(model, feat_conf)
        fc = self.fc
        if fc.kind != "fbank" or fc.dim != feat_dim:
            raise UserError(f"feature config gives {fc.kind} of dim {fc.dim} but the model "
                            f"takes {feat_dim}-dim fbank: pass --feat-conf with its training "
                            "config")
        if acwt is None and acwt_from:
            acwt = read_best_acwt(acwt_from)
        acwt = _pick(acwt, conf and conf.acwt, model_acwt)
        if acwt is None:
            raise UserError(f"{model}: no acoustic scale known (no decode.json or decode_*/acwt "
                            "beside it): pass --acwt or --acwt-from DEV_DECODE_DIR")
        check_options(acwt=acwt)
        self.acwt = acwt
        self.hclg, self.tm, self.words = cached_graph(self.graph_dir)
        self.decoder = make_decoder(self.hclg, self.beam, self.lattice_beam, self.max_active)
        phones_txt = os.path.join(self.graph_dir, "phones.txt")
        phones = read_symbols(phones_txt) if os.path.isfile(phones_txt) else {}
        self.silence = {phones[p] for p in ("SIL", "sil") if p in phones}
        self.extract = make_extractor(fc)
        self.feats = _SegmentFeatures()
        self.priors = resolve_priors(model, _pick(priors, conf and conf.priors, "auto"))
        self.scorer = make_scorer(model, None, feats=self.feats, priors=self.priors)
        self.max_frames = int(round(max_segment * 1000.0 / fc.frame_shift_ms))
        # audio of up to max_segment seconds is one block: its features are those of one call
        self.block_s = max_segment + 2 * fc.frame_length_ms / 1000.0
        self.on_warning = on_warning
        if num_threads is not None and num_threads > 0:
            torch.set_num_threads(num_threads)

    # -- the Python API ---------------------------------------------------------------------

    def transcribe(self, waveform, sample_rate):
        """Result of one waveform: float samples in [-1, 1] (as soundfile reads them), (N,) or
        (N, C) (C > 1 channels are averaged, with a warning), at any sample rate (resampled to
        the model's). Normalised on its own CMVN statistics."""
        x = np.asarray(waveform, dtype=np.float32)
        notes = []
        if x.ndim == 2 and x.shape[1] > 1:
            notes.append(f"{x.shape[1]} channels: downmixed to one (their mean)")
            x = x.mean(axis=1, dtype=np.float32)
        elif x.ndim == 2:
            x = x[:, 0]
        if x.ndim != 1:
            raise UserError(f"a waveform is (samples,) or (samples, channels), got {x.shape}")
        check_finite(x, "waveform")
        chunks = list(self.array_features(x * np.float32(32768.0), int(sample_rate)))
        scan = self.scan(chunks, keep=True, audio_s=len(x) / float(sample_rate))
        transform = self.transform(scan.stats)
        items = self.decode_chunks("utt", chunks, scan, transform) if scan.ends else []
        return self.result(items, scan, "waveform", notes)

    def transcribe_batch(self, items):
        """[Result] of [(waveform, sample_rate)], each as ``transcribe`` (its own CMVN)."""
        return [self.transcribe(w, sr) for w, sr in items]

    # -- the pieces `asrkd transcribe` puts together over files ------------------------------

    def array_features(self, samples, sample_rate):
        """Iterator of float32 (t, D) feature chunks of float32 samples in int16 range, in
        blocks of ``block_s`` seconds (asrkd.stream: as a file of the same samples)."""
        block = max(1, int(round(self.block_s * sample_rate)))
        blocks = (samples[i:i + block] for i in range(0, len(samples), block))
        if sample_rate != self.fc.sample_rate:
            blocks = resample_blocks(blocks, sample_rate, self.fc.sample_rate)
        return frame_blocks(blocks, self.extract, self.fc)

    def file_features(self, path, channel=None, resample=True, on_resample=None,
                      on_downmix=None):
        """(seconds, iterator of raw feature chunks (t, D)) of audio file ``path``, read block
        by block (asrkd.stream.file_features)."""
        return file_features(path, self.fc, self.extract, channel, resample, self.block_s,
                             on_resample, on_downmix)

    def scan(self, chunks, keep, audio_s):
        """Scan of feature chunks (``keep``: hold the features if they are one chunk and one
        segment)."""
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
        ends = segmenter.finish() if n else []
        return Scan(stats, ends, audio_s, held[0] if held else None)

    def transform(self, stats):
        """CMVN (scale, offset) of summed Scan statistics (None: no CMVN, or no frame)."""
        if self.cmvn is None or stats is None:
            return None
        return cmvn_transform(stats, self.cmvn == "meanvar")

    def decode_chunks(self, key, chunks, scan, transform):
        """The (word, start s, end s, confidence) of an input whose raw feature chunks are
        ``chunks`` (scan.feats instead where held): its segments (scan.ends) decoded one at a
        time, in order."""
        if scan.feats is not None:
            chunks = [scan.feats]
        pending, start, words = None, 0, []
        ends = iter(scan.ends)
        end = next(ends)
        for x in chunks:
            pending = x if pending is None else np.concatenate([pending, x])
            while end is not None and len(pending) >= end - start:
                seg, pending = pending[:end - start], pending[end - start:]
                words += self.decode_segment(key, seg, transform, start)
                start, end = end, next(ends, None)
        if end is not None:  # a file that changed between the passes
            got = start + (0 if pending is None else len(pending))
            raise UserError(f"{key}: {got} frames on reading it again, {scan.ends[-1]} the "
                            "first time")
        return words

    def decode_segment(self, key, raw, transform, offset=0):
        """(word, start s, end s, confidence) of one segment's raw features (T, D), decoded as
        an utterance; times counted from frame ``offset``."""
        self.feats.load(key, raw, transform)
        lat = decode_lattice(self.hclg, self.tm, self.scorer(key), self.acwt,
                             decoder=self.decoder, utt=key)
        if lat is None:
            return []
        shift = self.fc.frame_shift_ms / 1000.0
        return [(self.words[w], round(offset * shift + s, 3), round(offset * shift + s + d, 3), c)
                for w, s, d, c in lat.ctm(self.acwt, 1.0, self.tm.transition_id_to_phone,
                                          self.silence, shift)]

    def result(self, items, scan, what, notes=()):
        """Result of an input's (word, start, end, confidence) items, with warnings for a too-short input and an empty
        output (and ``notes`` before them), each also passed to on_warning."""
        notes = list(notes)
        if not scan.ends:
            notes.append(f"{scan.audio_s:.3f} s of audio: too short for one frame")
        elif scan.audio_s < MIN_AUDIO_S:
            notes.append(f"{scan.audio_s:.3f} s of audio: too short for a word")
        if not items and scan.audio_s >= MIN_AUDIO_S:
            notes.append("no words recognised (silence, or no path through the graph)")
        for n in notes:
            self.warn(f"{what}: {n}")
        return Result(words=[w for w, *_ in items], times=[(b, e) for _, b, e, _ in items],
                      confidence=[c for *_, c in items], audio_s=scan.audio_s,
                      segments=list(scan.ends), warnings=notes)

    def warn(self, message):
        if self.on_warning is not None:
            self.on_warning(message)
        else:
            warnings.warn(message, stacklevel=4)  # the caller of transcribe()
