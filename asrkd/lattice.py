"""Lattices: generation over HCLG, rescoring at any acoustic / LM scale, n-best, CTM, Kaldi I/O.

The search (asrkd/latgen.c, called through ctypes) is Kaldi's LatticeFasterDecoder in outline:
token passing with ``beam`` and ``max_active``, a link kept for every arc between surviving
tokens, the links pruned at the end to those on a path within ``lattice_beam`` of the best. A
:class:`Lattice` is state-level (Kaldi's "raw" lattice, not determinized): arcs carry a
transition-id, a word, a graph cost and an acoustic cost (-log-likelihood, unscaled, as Kaldi
writes lattices). The best path at acoustic scale ``acwt`` and LM weight ``lmwt`` minimises
``lmwt * graph + acwt * ac`` (Kaldi's score.sh with LMWT = 1/acwt). Decoding at one scale and
rescoring at another gives the full decode's result whenever that path survives the lattice
beam, which is how an acoustic-scale grid costs one decode.

Lattices are written as Kaldi compact lattices in text form (``lat.N.gz``: each raw arc becomes
one compact arc ``src dst word graph,ac,tid``), which Kaldi's lattice tools read.
"""

import ctypes
import gzip
import hashlib
import importlib.util
import math
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass

import kaldifst
import numpy as np

from asrkd.errors import UserError

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "latgen.c")
_FST_MAGIC = 2125659606
_LIB = None


def _build_lib():
    """Path of the compiled search: the extension `pip install` built, else one compiled now
    from latgen.c into ~/.cache/asrkd (keyed by the source's hash; needs a C compiler)."""
    spec = importlib.util.find_spec("asrkd._latgen")
    if spec is not None and spec.origin and os.path.isfile(spec.origin):
        return spec.origin
    with open(_SRC, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:12]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "asrkd")
    path = os.path.join(cache, f"latgen-{digest}.so")
    if not os.path.isfile(path):
        os.makedirs(cache, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        cc = os.environ.get("CC", "cc")
        try:
            subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, _SRC, "-lm"], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            os.unlink(tmp)
            msg = getattr(e, "stderr", "") or str(e)
            raise UserError(f"cannot build the lattice decoder from {_SRC} with {cc} (install a "
                            f"C compiler, or reinstall asrkd with one): {msg}") from None
        os.replace(tmp, path)
    return path


def _lib():
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(_build_lib())
        P = ctypes.c_void_p
        i64, i32, f32 = ctypes.c_int64, ctypes.c_int32, ctypes.c_float
        lib.fst_parse.restype = i64
        lib.fst_parse.argtypes = [P, i64, i64, i64, P, P, P]
        lib.latgen_decode.restype = P
        lib.latgen_decode.argtypes = [i64, P, P, P, P, i32, P, i32, i32, f32, i32, f32]
        lib.lat_free.argtypes = [P]
        lib.lat_num_states.restype = i64
        lib.lat_num_states.argtypes = [P]
        lib.lat_num_arcs.restype = i64
        lib.lat_num_arcs.argtypes = [P]
        lib.lat_copy.argtypes = [P] * 9
        lib.lat_best_path.restype = i64
        lib.lat_best_path.argtypes = [i64, i64, P, P, P, P, P, f32, f32, P, P]
        lib.lat_arc_post.restype = ctypes.c_double
        lib.lat_arc_post.argtypes = [i64, i64, P, P, P, P, P, f32, f32, P]
        lib.lat_words_cost.restype = ctypes.c_double
        lib.lat_words_cost.argtypes = [i64, i64, P, P, P, P, P, P, f32, f32, P, i32, P, P]
        _LIB = lib
    return _LIB


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p)


class Graph:
    """A decoding graph (HCLG.fst, OpenFst binary VectorFst) as arrays for the search:
    arc_start (S + 1,) int64, arcs (A, 4) int32 (OpenFst's arc: ilabel, olabel, weight's
    float32 bits, next state; ilabel/olabel/next/weight are views of its columns), final (S,)
    float32 (inf: not final), start, has_eps (S,) uint8 (1: the state has an epsilon arc)."""

    def __init__(self, path):
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size < 64:
            raise UserError(f"{path}: not an OpenFst binary FST (too short)")
        pos, hdr = _read_header(raw, path)
        # OpenFst leaves the header's arc count at 0: the body is 12 bytes a state, 16 an arc
        self.start, ns = hdr["start"], hdr["numstates"]
        na = (raw.size - pos - 12 * ns) // 16
        if na < 0:
            raise UserError(f"{path}: not a whole FST (truncated: {ns} states announced); "
                            "run make-graph again")
        self.arc_start = np.empty(ns + 1, dtype=np.int64)
        self.arcs = np.empty((na, 4), dtype=np.int32)  # OpenFst's order: in, out, weight, next
        self.ilabel, self.olabel, self.next = self.arcs[:, 0], self.arcs[:, 1], self.arcs[:, 3]
        self.weight = self.arcs[:, 2].view(np.float32)
        self.final = np.empty(ns, dtype=np.float32)
        body = raw[pos:]
        n = _lib().fst_parse(_p(body), body.size, ns, na, _p(self.arc_start), _p(self.arcs),
                             _p(self.final))
        if n < 0:
            raise UserError(f"{path}: not a whole FST (truncated or corrupt: {ns} states, "
                            f"{na} arcs announced); run make-graph again")
        self.num_states, self.num_arcs = ns, na
        # states with an epsilon arc: the search's within-frame pass visits only these
        src = np.repeat(np.arange(ns, dtype=np.int32), np.diff(self.arc_start))
        self.has_eps = np.zeros(ns, dtype=np.uint8)
        self.has_eps[src[self.ilabel == 0]] = 1


def _read_header(raw, path):
    """OpenFst's FstHeader of a VectorFst with standard (tropical float) arcs."""
    def i32(o):
        return struct.unpack_from("<i", raw, o)[0], o + 4

    def string(o):
        n, o = i32(o)
        return bytes(raw[o:o + n]).decode("ascii", "replace"), o + n

    try:
        magic, o = i32(0)
        if magic != _FST_MAGIC:
            raise UserError(f"{path}: not an OpenFst binary FST")
        fst_type, o = string(o)
        arc_type, o = string(o)
        version, o = i32(o)
        flags, o = i32(o)
        _props, start, ns, na = struct.unpack_from("<Qqqq", raw, o)
        o += 32
    except struct.error:
        raise UserError(f"{path}: truncated FST header") from None
    if fst_type != "vector" or arc_type != "standard":
        raise UserError(f"{path}: a {fst_type} FST of {arc_type} arcs; the decoder reads "
                        "vector FSTs of standard arcs (HCLG.fst as make-graph writes it)")
    if flags & 3:
        raise UserError(f"{path}: FSTs with embedded symbol tables are not read here")
    return o, {"start": start, "numstates": ns, "numarcs": na, "version": version}


@dataclass
class Lattice:
    """A state-level lattice. States 0..N-1 in topological order (0 the start), arcs sorted by
    source: src, dst, ilabel (transition-id, 0 for epsilon), olabel (word id, 0 for none)
    (A,) int32; graph, ac (A,) float32 costs (ac unscaled: -log-likelihood); final (N,) float32
    graph cost of ending there (inf: not final); state_frame (N,) int32 frames consumed before
    the state."""
    src: np.ndarray
    dst: np.ndarray
    ilabel: np.ndarray
    olabel: np.ndarray
    graph: np.ndarray
    ac: np.ndarray
    final: np.ndarray
    state_frame: np.ndarray

    @property
    def num_states(self):
        return len(self.final)

    def best_path(self, acwt, lmwt=1.0):
        """Indices (into the arcs) of the best path under lmwt * graph + acwt * ac, and its
        cost; ([], inf) when no final state is reachable."""
        path = np.empty(max(1, len(self.src)), dtype=np.int64)
        cost = ctypes.c_double(math.inf)
        n = _lib().lat_best_path(self.num_states, len(self.src), _p(self.src), _p(self.dst),
                                 _p(self.graph), _p(self.ac), _p(self.final), lmwt, acwt,
                                 _p(path), ctypes.byref(cost))
        return (path[:n], cost.value) if n >= 0 else (path[:0], math.inf)

    def words(self, acwt, lmwt=1.0):
        """Word ids of the best path."""
        arcs, _ = self.best_path(acwt, lmwt)
        return [int(w) for w in self.olabel[arcs] if w]

    def arc_posteriors(self, acwt, lmwt=1.0):
        """(A,) float32 posterior of each arc, by forward-backward under the scaled costs."""
        post = np.zeros(len(self.src), dtype=np.float32)
        _lib().lat_arc_post(self.num_states, len(self.src), _p(self.src), _p(self.dst),
                            _p(self.graph), _p(self.ac), _p(self.final), lmwt, acwt, _p(post))
        return post


    def words_cost(self, words, acwt, lmwt=1.0):
        """(scaled cost, graph cost, acoustic cost) of the best path whose words are exactly
        ``words`` (ids); (inf, inf, inf) when the lattice has none."""
        w = np.asarray(words, dtype=np.int32)
        g, a = ctypes.c_double(math.inf), ctypes.c_double(math.inf)
        c = _lib().lat_words_cost(self.num_states, len(self.src), _p(self.src), _p(self.dst),
                                  _p(self.olabel), _p(self.graph), _p(self.ac), _p(self.final),
                                  lmwt, acwt, _p(w), len(w), ctypes.byref(g), ctypes.byref(a))
        return c, g.value, a.value

    def nbest(self, n, acwt, lmwt=1.0):
        """The ``n`` best distinct word sequences: [(word ids, scaled cost, graph cost,
        acoustic cost)], best first (Kaldi's lattice-to-nbest on a word-determinized lattice:
        a word sequence's cost is that of its best path)."""
        fst = kaldifst.StdVectorFst()
        for _ in range(self.num_states):
            fst.add_state()
        fst.start = 0
        cost = lmwt * self.graph.astype(np.float64) + acwt * self.ac.astype(np.float64)
        for s, d, o, c in zip(self.src.tolist(), self.dst.tolist(), self.olabel.tolist(),
                              cost.tolist()):
            fst.add_arc(s, kaldifst.StdArc(o, o, c, d))
        for s in np.flatnonzero(np.isfinite(self.final)).tolist():
            fst.set_final(s, float(lmwt * self.final[s]))
        kaldifst.rmepsilon(fst)
        det = kaldifst.determinize(fst)
        paths = kaldifst.shortest_path(det, n=n)
        out = []
        for seq in _linear_paths(paths):
            out.append((seq,) + self.words_cost(seq, acwt, lmwt))
        return sorted(out, key=lambda x: x[1])

    def ctm(self, acwt, lmwt=1.0, phone_of=None, silence=(), frame_shift=0.01):
        """The best path's words as [(word id, start s, duration s, confidence)].

        A word's span is from its label to the next word's label, less the frames of
        ``silence`` phones (``phone_of``: transition-id -> phone id) at either end. Its
        confidence is the lattice posterior (arc_posteriors) of that word's label on any arc
        whose frame lies in the word's bin: from halfway between the previous best-path
        word's label frame and its own to halfway to the next one's (the first bin open to
        the left, the last to the right), so that other alignments of the same word, whose
        labels fall a few frames earlier or later (in silence, say), count too; at most 1
        (a sausage bin in outline, not Kaldi's MBR confidence)."""
        arcs, _ = self.best_path(acwt, lmwt)
        post = self.arc_posteriors(acwt, lmwt)
        frame_of_arc = self.state_frame[self.src]
        labels = [i for i, e in enumerate(arcs.tolist()) if self.olabel[e]]
        at = [float(frame_of_arc[arcs[i]]) for i in labels]
        edges = [-np.inf] + [(a + b) / 2 for a, b in zip(at, at[1:])] + [np.inf]
        out = []
        for j, i in enumerate(labels):
            end_i = labels[j + 1] if j + 1 < len(labels) else len(arcs)
            seg = arcs[i:end_i]
            frames = [(int(frame_of_arc[e]), int(self.ilabel[e])) for e in seg.tolist()
                      if self.ilabel[e]]
            speech = [f for f, t in frames
                      if phone_of is None or phone_of(t) not in silence]
            if not speech:
                speech = [f for f, _ in frames] or [int(frame_of_arc[seg[0]])]
            start, end = min(speech), max(speech) + 1
            w = int(self.olabel[arcs[i]])
            near = (self.olabel == w) & (frame_of_arc >= edges[j]) & (frame_of_arc < edges[j + 1])
            conf = min(1.0, float(post[near].sum()))
            out.append((w, start * frame_shift, (end - start) * frame_shift, conf))
        return out


def _linear_paths(fst):
    """Output label sequences of the paths of a shortest_path result (paths leave the start
    state by distinct arcs and are linear after it)."""
    out = []
    start = fst.start
    if start < 0:
        return out
    for arc in kaldifst.ArcIterator(fst, start):
        seq, s = [], arc.nextstate
        if arc.olabel:
            seq.append(arc.olabel)
        while True:
            nxt = list(kaldifst.ArcIterator(fst, s))
            if not nxt:
                break
            if nxt[0].olabel:
                seq.append(nxt[0].olabel)
            s = nxt[0].nextstate
        out.append(seq)
    if not out and math.isfinite(float(fst.final(start).value)):
        out.append([])
    return out


def decode(graph, scores, acwt, beam=16.0, max_active=7000, lattice_beam=8.0):
    """The lattice of ``scores`` (T, num_transition_ids) float32 log-likelihoods (column i is
    transition-id i + 1) over ``graph`` (a Graph), searched at acoustic scale ``acwt``. None
    when no token survives (beam too narrow for the scores)."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    t, ncols = scores.shape
    scaled = np.ascontiguousarray(scores * np.float32(acwt))
    lib = _lib()
    handle = lib.latgen_decode(graph.num_states, _p(graph.arc_start), _p(graph.arcs),
                               _p(graph.final), _p(graph.has_eps), graph.start, _p(scaled),
                               t, ncols, beam,
                               max_active, lattice_beam)
    if not handle:
        return None
    try:
        ns, na = lib.lat_num_states(handle), lib.lat_num_arcs(handle)
        arr = {k: np.empty(na, dtype=np.int32) for k in ("src", "dst", "ilabel", "olabel")}
        arr.update(graph_=np.empty(na, dtype=np.float32), ac=np.empty(na, dtype=np.float32))
        final = np.empty(ns, dtype=np.float32)
        frames = np.empty(ns, dtype=np.int32)
        lib.lat_copy(handle, _p(arr["src"]), _p(arr["dst"]), _p(arr["ilabel"]),
                     _p(arr["olabel"]), _p(arr["graph_"]), _p(arr["ac"]), _p(final),
                     _p(frames))
    finally:
        lib.lat_free(handle)
    return Lattice(arr["src"], arr["dst"], arr["ilabel"], arr["olabel"], arr["graph_"],
                   arr["ac"] / np.float32(acwt), final, frames)


def write_kaldi_text(f, key, lat):
    """One lattice as a Kaldi text compact lattice (the acoustic cost unscaled)."""
    f.write(f"{key}\n")
    for s, d, i, o, g, a in zip(lat.src.tolist(), lat.dst.tolist(), lat.ilabel.tolist(),
                                lat.olabel.tolist(), lat.graph.tolist(), lat.ac.tolist()):
        f.write(f"{s}\t{d}\t{o}\t{g:.6g},{a:.6g},{i if i else ''}\n")
    for s in np.flatnonzero(np.isfinite(lat.final)).tolist():
        f.write(f"{s}\t{float(lat.final[s]):.6g},0,\n")
    f.write("\n")


def read_kaldi_text(f):
    """Yields (key, Lattice) from Kaldi text compact lattices whose arcs carry at most one
    transition-id each (as write_kaldi_text writes them); state_frame counted from the arcs."""
    key, arcs, finals = None, [], {}
    for line in f:
        line = line.strip()
        if key is None:
            if line:
                key, arcs, finals = line.split()[0], [], {}
            continue
        if not line:
            yield key, _from_arcs(key, arcs, finals)
            key = None
            continue
        parts = line.split()
        if len(parts) == 2:
            finals[int(parts[0])] = float(parts[1].split(",")[0])
            continue
        g, a, tids = parts[3].split(",") if len(parts) > 3 else ("0", "0", "")
        if "_" in tids:
            raise UserError(f"{key}: an arc with several transition-ids; only lattices with "
                            "one per arc (as asrkd writes them) are read")
        arcs.append((int(parts[0]), int(parts[1]), int(tids) if tids else 0, int(parts[2]),
                     float(g), float(a)))
    if key is not None:
        yield key, _from_arcs(key, arcs, finals)


def _from_arcs(key, arcs, finals):
    ns = 1 + max([max(s, d) for s, d, *_ in arcs] + list(finals) + [0])
    a = np.array(arcs, dtype=np.float64).reshape(-1, 6)
    order = np.argsort(a[:, 0], kind="stable")
    a = a[order]
    final = np.full(ns, np.inf, dtype=np.float32)
    for s, c in finals.items():
        final[s] = c
    frames = np.zeros(ns, dtype=np.int32)
    src, dst, il = a[:, 0].astype(np.int32), a[:, 1].astype(np.int32), a[:, 2].astype(np.int32)
    if np.any(dst <= src):
        raise UserError(f"{key}: lattice states not in topological order")
    for s, d, i in zip(src.tolist(), dst.tolist(), il.tolist()):
        frames[d] = frames[s] + (1 if i else 0)
    return Lattice(src, dst, il, a[:, 3].astype(np.int32), a[:, 4].astype(np.float32),
                   a[:, 5].astype(np.float32), final, frames)


def open_lattice_ark(path, mode="rt"):
    return gzip.open(path, mode) if path.endswith(".gz") else open(path, mode)
