"""Transcription of audio files with a trained hybrid model: `asrkd transcribe`, files -> words.

A thin layer over asrkd.recognizer.Recognizer (model, graph, decoding options: explicit, else
the model's decode.json, else decode's defaults) that adds what files need: inputs given as
files, a ``wav.scp`` or stdin; reading each file in blocks (memory bounded by a segment, not by
the file); and speaker-group CMVN. Loose files have no speaker: each file is normalised on its
own statistics (per-utterance CMVN). A ``wav.scp`` with an ``utt2spk`` beside it is normalised
per speaker, as its data dir would be, so transcribing ``data/test/wav.scp`` gives `asrkd
decode`'s hypotheses for data/test.

Every input gets one ``key words`` line (key: the utterance id of an scp or stdin ``utt path``
line, else the path as given). A file that cannot be transcribed (missing, unreadable, refused)
gets an error line on stderr instead and the others go on; the caller sees the count. (A
single input's error is raised, a UserError, as any other error of the call.)
"""

import os
import sys
import time

from asrkd.audio import parse_channel
from asrkd.errors import UserError
from asrkd.options import check_options
from asrkd.recognizer import DEFAULT_MAX_SEGMENT, Recognizer
from asrkd.table import read_table

__all__ = ["DEFAULT_MAX_SEGMENT", "read_inputs", "transcribe"]


def read_inputs(audio, stdin=None):
    """AUDIO arguments -> [(key, path)] and utt2spk (dict, possibly empty).

    Each argument is an audio file (key: its path as given), a ``*.scp`` file of ``utt path``
    lines (key: utt; an ``utt2spk`` beside it gives the speakers), or ``-``: paths (or ``utt
    path`` lines) from ``stdin``. Whether each file exists is checked as it comes.
    """
    items, utt2spk = [], {}
    for a in audio:
        if a == "-":
            for line in (stdin if stdin is not None else sys.stdin):
                fields = line.split(maxsplit=1)
                if len(fields) == 1:
                    items.append((fields[0], fields[0]))
                elif fields:
                    items.append((fields[0], fields[1].strip()))
        elif a.endswith(".scp"):
            if not os.path.isfile(a):
                raise UserError(f"{a}: no such file")
            items += sorted(read_table(a).items())
            spk_file = os.path.join(os.path.dirname(a), "utt2spk")
            if os.path.isfile(spk_file):
                utt2spk.update(read_table(spk_file))
        else:
            items.append((a, a))
    if not items:
        raise UserError("no audio to transcribe")
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise UserError("the same file or utterance id is given twice")
    return items, utt2spk


def _note(message):
    print(f"transcribe: {message}", file=sys.stderr)


def _warn(message):
    print(f"transcribe: warning: {message}", file=sys.stderr)


class _Files:
    """Recognizer's first and second pass over files, with their errors counted:
    ``failed`` maps a key to its one-line error (also printed to stderr)."""

    def __init__(self, rec, channel, resample, strict):
        self.rec, self.channel, self.resample = rec, channel, resample
        self.strict = strict  # one input: its error is the answer (a UserError), not a count
        self.failed = {}

    def features(self, path, key=None):
        notes = {}
        if key is not None:  # the first pass: say what is done to the audio, once
            notes = {"on_resample": lambda sr: _note(
                f"{path}: resampling {sr} Hz -> {self.rec.fc.sample_rate} Hz"),
                "on_downmix": lambda c: _warn(f"{key}: {c} channels downmixed to one "
                                              "(--channel mix)")}
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such audio file")
        return self.rec.file_features(path, self.channel, self.resample, **notes)

    def scan(self, key, path, keep):
        """Recognizer.Scan of ``path``, or None (an error, printed and counted)."""
        try:
            audio_s, chunks = self.features(path, key)
            return self.rec.scan(chunks, keep, audio_s)
        except (UserError, ValueError, RuntimeError) as e:
            self.fail(key, e)
            return None

    def decode(self, key, path, scan, transform):
        """Words of ``path`` (second pass), or None (an error, printed and counted)."""
        try:
            chunks = [] if scan.feats is not None else self.features(path)[1]
            return self.rec.decode_chunks(key, chunks, scan, transform) if scan.ends else []
        except (UserError, ValueError, RuntimeError) as e:
            self.fail(key, e)
            return None

    def fail(self, key, e):
        msg = str(e) if isinstance(e, UserError) else f"{key}: {type(e).__name__}: {e}"
        if self.strict:
            raise UserError(msg) from e
        self.failed[key] = msg
        print(f"asrkd transcribe: error: {msg}", file=sys.stderr)


def transcribe(model, graph_dir, audio, acwt=None, acwt_from=None, feat_conf=None,
               resample=True, beam=None, lattice_beam=None, max_active=None, num_threads=1,
               stdin=None, out=None, channel=None, max_segment=DEFAULT_MAX_SEGMENT,
               priors=None):
    """`asrkd transcribe`: decode each input and write ``key words`` to ``out`` (default stdout).

    ``graph_dir`` and the decoding options (None) default to the model's decode.json, else to
    decode's defaults (asrkd.recognizer.Recognizer). Files are processed one at a time, each
    read in blocks twice: once for its CMVN statistics (of its speaker group: every member
    first) and its segment ends (a file longer than ``max_segment`` seconds is cut at
    low-energy frames, asrkd.segment), then for its features, one segment at a time scored and
    decoded as an utterance; the words of its segments are joined in order. Memory is bounded
    by a segment, the model and the graph.

    Returns {"hyps": {key: words}, "segments": {key: [segment end frames]}, "failed": {key:
    error}, "warnings": {key: [warning]}, "audio_s", "process_s", "rtf", "load_s", "acwt"}. The
    real-time factor counts feature extraction (both passes), the network and the search, not
    the loading of the graph and model (``load_s``). ``channel``: of multi-channel files, an
    index or "mix" (asrkd.audio.read_audio; None refuses them). ``priors``: "counts",
    "posterior" or "auto" (asrkd.priors.resolve_priors).
    """
    out = sys.stdout if out is None else out
    check_options(acwt=acwt, beam=beam, lattice_beam=lattice_beam, max_active=max_active,
                  max_segment=max_segment)
    t_load = time.perf_counter()
    channel = parse_channel(channel)
    items, utt2spk = read_inputs(audio, stdin)
    rec = Recognizer(model, graph_dir, acwt=acwt, acwt_from=acwt_from, beam=beam,
                     lattice_beam=lattice_beam, max_active=max_active, priors=priors,
                     feat_conf=feat_conf, max_segment=max_segment, num_threads=num_threads,
                     on_warning=_warn)
    files = _Files(rec, channel, resample, strict=len(items) == 1)
    load_s = time.perf_counter() - t_load

    t0 = time.perf_counter()
    groups, group_of = {}, {}
    for key, _ in items:  # files without a speaker: a group of their own
        g = utt2spk.get(key, ("utt", key))
        groups.setdefault(g, []).append(key)
        group_of[key] = g
    paths = dict(items)
    scans, transforms, hyps, segments, notes, audio_s = {}, {}, {}, {}, {}, 0.0
    for key, path in items:
        g = group_of[key]
        if g not in transforms:  # the group's first member: scan them all, for their CMVN
            members = groups[g]
            for k in members:
                scans[k] = files.scan(k, paths[k], keep=len(members) == 1)
            stats = [s.stats for s in map(scans.get, members) if s and s.stats is not None]
            transforms[g] = rec.transform(sum(stats) if stats else None)
        scan = scans.pop(key)
        words = None if scan is None else files.decode(key, path, scan, transforms[g])
        if words is None:
            continue
        res = rec.result(words, scan, key)
        hyps[key], segments[key], notes[key] = res.text, res.segments, res.warnings
        audio_s += scan.audio_s
        out.write(f"{key} {hyps[key]}\n")
        out.flush()
    process_s = time.perf_counter() - t0
    rtf = process_s / audio_s if audio_s else float("nan")
    if hyps:
        n_seg = sum(len(e) for e in segments.values())
        failed = f" ({len(files.failed)} failed)" if files.failed else ""
        print(f"transcribe: {len(hyps)} file(s) in {n_seg} segment(s){failed}, {audio_s:.1f} s "
              f"of audio in {process_s:.2f} s: real-time factor {rtf:.3f} (acwt {rec.acwt:g}, "
              f"beam {rec.beam:g}, max-active {rec.max_active}, priors {rec.priors}, "
              f"{num_threads} thread(s); loading the graph and model took {load_s:.1f} s more)",
              file=sys.stderr)
    return {"hyps": hyps, "segments": segments, "failed": files.failed, "warnings": notes,
            "audio_s": audio_s, "process_s": process_s, "rtf": rtf, "load_s": load_s,
            "acwt": rec.acwt}
