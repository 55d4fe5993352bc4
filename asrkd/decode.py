"""Decoding over HCLG with one core for GMMs, DNNs and DNN ensembles (Kaldi decode.sh).

A scorer is any callable ``utt -> np.float32 (T, num_pdfs)`` of per-pdf log-likelihoods (GMM
log-likelihoods, or a DNN's log-posteriors minus log-priors); asrkd.scorer's ``make_scorer``
makes the one a MODEL argument names. ``decode_lattice`` maps pdfs to transition-id columns and
runs asrkd.lattice's search at one acoustic scale; every other scale is read off the lattice.

The acoustic scale (= 1 / LM weight, as Kaldi's score.sh sweeps LM weights) is chosen on a dev
set: per system (a grid decode: ``decode_dir/best_acwt``, per-value WERs in
``decode_dir/acwt_<v>/wer``, reused for test with ``--acwt-from``), or one scale for several
systems (``grid_only`` decodes of dev and test, then asrkd.acwt's ``choose_acwt`` on the dev
decodes pools their errors and applies the chosen value to every decode dir).
"""

import gzip
import os
import sys
from dataclasses import dataclass

import numpy as np

from asrkd import gmm, lattice
from asrkd.acwt import (MAX_WIDEN, best_of_grid, clear_choice, continuations, fmt_acwt,
                        read_best_acwt, widened, write_choice, write_values)
from asrkd.data import DataDir
from asrkd.errors import CORRUPT, UserError, reading
from asrkd.finite import check_finite
from asrkd.graph import hclg_tree_id
from asrkd.identity import check_same, check_tree, file_id, read_id, tree_id
from asrkd.jobs import run_jobs, split_evenly
from asrkd.lang import read_symbols
from asrkd.options import check_acwts, check_decoder_options
from asrkd.score import frame_accuracy, score, write_frame_accuracy
from asrkd.scorer import check_scorer_tree, make_scorer
from asrkd.table import atomic_path, write_json, write_table

DEFAULT_GRID = (0.05, 0.067, 0.083, 0.1, 0.125)


@dataclass(frozen=True)
class Decoder:
    """The search's beams (asrkd.lattice.decode): ``beam`` and ``max_active`` bound the tokens
    kept per frame, ``lattice_beam`` the paths kept in the lattice around the best."""
    beam: float = 16.0
    lattice_beam: float = 8.0
    max_active: int = 7000


def make_decoder(graph=None, beam=16.0, lattice_beam=8.0, max_active=7000):
    """A Decoder with these beams (``graph`` is not needed; kept for callers that pass it)."""
    check_decoder_options(beam, lattice_beam, max_active)
    return Decoder(float(beam), float(lattice_beam), int(max_active))


def decode_lattice(graph, trans_model, loglikes, acwt, decoder=None, utt="utt"):
    """The lattice (asrkd.lattice.Lattice) of ``loglikes`` (T, num_pdfs) over ``graph`` (an
    asrkd.lattice.Graph), searched at acoustic scale ``acwt``; None for no frames or when no
    path survives."""
    loglikes = np.asarray(loglikes, dtype=np.float32)
    if loglikes.ndim != 2 or loglikes.shape[1] != trans_model.num_pdfs:
        raise UserError(f"{utt}: log-likelihoods of shape {loglikes.shape} but the model has "
                        f"{trans_model.num_pdfs} pdfs (model and graph do not match?)")
    check_finite(loglikes, f"{utt}: acoustic scores")
    if len(loglikes) == 0:
        return None
    d = decoder or Decoder()
    return lattice.decode(graph, loglikes[:, _tid2pdf(trans_model)], acwt, d.beam,
                          d.max_active, d.lattice_beam)


def decode_loglikes(graph, trans_model, loglikes, acwt, beam=16.0, lattice_beam=8.0,
                    max_active=7000, decoder=None, utt="utt"):
    """Best word-id sequence for ``loglikes`` (T, num_pdfs) over ``graph`` at scale ``acwt``
    (the best path of decode_lattice). Returns [] when no path survives."""
    decoder = decoder or make_decoder(graph, beam, lattice_beam, max_active)
    lat = decode_lattice(graph, trans_model, loglikes, acwt, decoder, utt)
    return lat.words(acwt) if lat is not None else []


_TID2PDF = {}


def _tid2pdf(tm):
    """Column t - 1 of a transition-id's scores is its pdf's column (index array, cached)."""
    key = id(tm)
    if key not in _TID2PDF:
        _TID2PDF[key] = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)[1:]
    return _TID2PDF[key]


def load_graph(graph_dir):
    """(HCLG as an asrkd.lattice.Graph, TransitionModel, id -> word) of a graph dir."""
    for f in ("HCLG.fst", "words.txt", "final.mdl"):
        if not os.path.isfile(os.path.join(graph_dir, f)):
            raise UserError(f"{graph_dir}: missing {f}; run `asrkd make-graph`")
    check_tree(os.path.join(graph_dir, "HCLG.fst"), hclg_tree_id(graph_dir),
               os.path.join(graph_dir, "final.mdl"), tree_id(graph_dir))
    words_txt = os.path.join(graph_dir, "words.txt")
    check_same(os.path.join(graph_dir, "HCLG.fst"), read_id(os.path.join(graph_dir,
               "HCLG.words_id")), words_txt, file_id(words_txt), "word table",
               "the graph was built with another lang's words; rerun make-graph")
    path = os.path.join(graph_dir, "HCLG.fst")
    with reading(path, "not a whole FST", CORRUPT):
        hclg = lattice.Graph(path)
    tm = gmm.load_gmm(graph_dir).tm
    words = {i: w for w, i in read_symbols(os.path.join(graph_dir, "words.txt")).items()}
    return hclg, tm, words


_SCORERS = {}  # inherited by forked jobs: scorers (torch models) need not pickle
_GRAPHS = {}  # graph dir -> (mtime, load_graph result): read once per process, inherited by jobs


def cached_graph(graph_dir):
    """load_graph(graph_dir), read again only when HCLG.fst changes (several models decoded in
    one process share one copy)."""
    key = os.path.abspath(graph_dir)
    path = os.path.join(graph_dir, "HCLG.fst")
    mtime = os.stat(path).st_mtime_ns if os.path.isfile(path) else None
    if key not in _GRAPHS or _GRAPHS[key][0] != mtime:
        _GRAPHS[key] = (mtime, load_graph(graph_dir))
    return _GRAPHS[key][1]


def _scores_and_best(scorer, utt):
    """(the scorer's log-likelihoods of utt, its best pdf per frame: the argmax of a DNN's
    posteriors or of a GMM's log-likelihoods, as asrkd.score.frame_accuracy takes it)."""
    if hasattr(scorer, "log_posteriors"):
        lp = scorer.log_posteriors(utt)
        return scorer.pseudo_loglikes(lp), lp.argmax(-1).astype(np.int32)
    ll = scorer(utt)
    return ll, np.asarray(ll).argmax(-1).astype(np.int32)


def _decode_job(graph_dir, scorer_key, utts, decode_acwt, acwts, decoder, lat_path, keep_best):
    """Decode ``utts`` once at ``decode_acwt``; return ({acwt: {utt: words}} for every value of
    ``acwts`` (best paths of each lattice), {utt: best pdf per frame} if ``keep_best`` else
    None); lattices to ``lat_path`` (gzip text) if given."""
    graph, tm, words = cached_graph(graph_dir)
    scorer = _SCORERS[scorer_key]
    out, best = {a: {} for a in acwts}, ({} if keep_best else None)
    f = gzip.open(lat_path, "wt") if lat_path else None
    try:
        for u in utts:
            if keep_best:
                ll, best[u] = _scores_and_best(scorer, u)
            else:
                ll = scorer(u)
            lat = decode_lattice(graph, tm, ll, decode_acwt, decoder, utt=u)
            if lat is not None and f is not None:
                lattice.write_kaldi_text(f, u, lat)
            for a in acwts:
                ids = lat.words(a) if lat is not None else []
                out[a][u] = " ".join(words[i] for i in ids)
                if not ids:
                    print(f"{u}: acwt {fmt_acwt(a)}: no output")
    finally:
        if f is not None:
            f.close()
    return out, best


def decode_data_dir(graph_dir, scorer, utts, decode_dir, acwt, nj=1, beam=16.0, lattice_beam=8.0,
                    max_active=7000, ref_text=None, widen=True, write_lattices=False,
                    grid_only=False, keep_best=False):
    """Decode ``utts`` with ``scorer`` over graph_dir/HCLG.fst; write decode_dir/hyp.txt.

    Each utterance is searched once, at ``acwt`` (a grid: its middle value), into a lattice
    (asrkd.lattice); every acoustic scale is then that lattice's best path at the scale, as
    Kaldi's score.sh sweeps LM weights. ``write_lattices``: keep them as decode_dir/lat.N.gz
    (Kaldi text compact lattices, acoustic costs unscaled; decode_dir/lat_acwt says at which
    scale they were searched).

    ``acwt``: a float, or a list of floats (grid). With a grid, every value's hypotheses go to
    decode_dir/acwt_<v>/hyp.txt and, given ``ref_text``, are scored there; the best value is
    written to decode_dir/best_acwt and its hypotheses to decode_dir/hyp.txt. A grid whose best
    value is one of its edges is widened (``widen``): the next value beyond that edge, at the
    ratio of the edge to its neighbour, is tried too (from the same lattices), until the best is
    inside the grid (at most MAX_WIDEN more values; decode_dir/acwt_wers lists every value
    tried, and decode_dir/acwt_edge says "edge" when the best is still an edge, "inside"
    otherwise). With ``ref_text`` the final hyp.txt is scored into decode_dir (wer, errors,
    per_utt). Returns {"acwt": chosen, "wer": {acwt: score dict} (empty without ref_text),
    "grid": values tried, "decode_acwt": the scale searched at}.

    ``grid_only``: choose nothing here. Every value of the grid and every value widening may
    try is written and (given ``ref_text``) scored in decode_dir/acwt_<v>/, listed in
    decode_dir/acwt_values ("value WER errors words"); no hyp.txt until ``apply_acwt`` (a scale
    chosen elsewhere, e.g. on dev by ``choose_acwt``). Returns "acwt": None.

    ``keep_best``: the result's "best_pdfs" is {utt: the best pdf of each frame} from the same
    forward pass (asrkd.score.frame_accuracy takes it: no second pass for frame accuracy).
    """
    decoder = make_decoder(None, beam, lattice_beam, max_active)
    grid = [float(a) for a in (acwt if isinstance(acwt, (list, tuple)) else [acwt])]
    check_acwts(grid)
    if len(grid) > 1 and ref_text is None:
        raise UserError("an acoustic-scale grid needs the reference text to choose from")
    utts = sorted(utts)
    if not utts:
        raise UserError("nothing to decode: no utterances")
    os.makedirs(os.path.join(decode_dir, "log"), exist_ok=True)
    cached_graph(graph_dir)  # loaded here once; the forked jobs inherit it
    key = id(scorer)
    _SCORERS[key] = scorer
    decode_acwt = sorted(grid)[len(grid) // 2]
    values = grid + (continuations(grid) if widen and len(grid) > 1 else [])
    chunks = [c for c in split_evenly(utts, max(1, min(nj, len(utts)))) if c]
    lat_paths = [os.path.join(decode_dir, f"lat.{i}.gz") if write_lattices else None
                 for i in range(1, len(chunks) + 1)]
    try:
        res = run_jobs(_decode_job, [(graph_dir, key, c, decode_acwt, values, decoder, p,
                                      keep_best) for c, p in zip(chunks, lat_paths)],
                       nj, os.path.join(decode_dir, "log"), "decode", threads_per_job=1)
    finally:
        _SCORERS.pop(key, None)
    hyps, results = {a: {} for a in values}, {}
    best_pdfs = {} if keep_best else None
    for r, b in res:
        for a in values:
            hyps[a].update(r[a])
        if keep_best:
            best_pdfs.update(b)
    if write_lattices:
        with atomic_path(os.path.join(decode_dir, "lat_acwt")) as tmp, open(tmp, "w") as f:
            f.write(f"{fmt_acwt(decode_acwt)}\n")

    def scored(a):  # acwt_<a>/hyp.txt, and its scores given the reference
        d = os.path.join(decode_dir, f"acwt_{fmt_acwt(a)}")
        write_table(os.path.join(d, "hyp.txt"), hyps[a])
        if ref_text is not None:
            results[a] = score(ref_text, os.path.join(d, "hyp.txt"), d)

    if grid_only:
        clear_choice(decode_dir)
        values = sorted(values)
        for a in values:
            scored(a)
        if ref_text is not None:
            write_values(decode_dir, values, results)
        return {"acwt": None, "wer": results, "grid": values, "decode_acwt": decode_acwt,
                "best_pdfs": best_pdfs}
    best = grid[0]
    if len(grid) > 1:
        best = _choose_widening(grid, values, results, scored, widen, decode_dir, decode_acwt)
    write_table(os.path.join(decode_dir, "hyp.txt"), hyps[best])
    with atomic_path(os.path.join(decode_dir, "acwt")) as tmp, open(tmp, "w") as f:
        f.write(f"{fmt_acwt(best)}\n")
    if ref_text is not None:
        results[best] = score(ref_text, os.path.join(decode_dir, "hyp.txt"), decode_dir)
    return {"acwt": best, "wer": results, "grid": grid, "decode_acwt": decode_acwt,
            "best_pdfs": best_pdfs}


def _choose_widening(grid, values, results, scored, widen, decode_dir, decode_acwt):
    """The best of ``grid`` (scored by ``scored(a)`` into ``results``), the grid widened past an
    edge while the best is there (up to MAX_WIDEN values of ``values``; ``grid`` grows in
    place); the choice written to decode_dir (best_acwt, acwt_wers, acwt_edge)."""
    for a in grid:
        scored(a)
    best = best_of_grid(grid, results)
    for _ in range(MAX_WIDEN if widen else 0):
        nxt = widened(grid, best)
        if nxt is None or len({results[a]["wer"] for a in grid}) == 1:
            break
        nxt = min(values, key=lambda v: abs(v - nxt))  # the same value, as computed
        print(f"decode: best acoustic scale {fmt_acwt(best)} is at the edge of the grid; "
              f"trying {fmt_acwt(nxt)}", file=sys.stderr)
        grid.append(nxt)
        scored(nxt)
        best = best_of_grid(grid, results)
    grid.sort()
    edge = best in (grid[0], grid[-1]) and len({results[a]["wer"] for a in grid}) > 1
    write_choice(decode_dir, best, {a: results[a]["wer"] for a in grid}, edge)
    print("acwt grid: " + ", ".join(f"{fmt_acwt(a)}: {results[a]['wer']:.2f}%" for a in grid)
          + f" -> best {fmt_acwt(best)} (lattices searched at {fmt_acwt(decode_acwt)})",
          file=sys.stderr)
    if edge:
        print(f"decode: best acoustic scale {fmt_acwt(best)} is still at the edge of the grid "
              f"{fmt_acwt(grid[0])}-{fmt_acwt(grid[-1])}", file=sys.stderr)
    return best


def decode(graph_dir, data_dir, model, decode_dir, acwt=None, acwt_grid=DEFAULT_GRID,
           acwt_from=None, nj=1, beam=16.0, lattice_beam=8.0, max_active=7000, ali_dir=None,
           frame_acc_data=None, device="cpu", precision="fp32", widen=True, priors="counts",
           write_lattices=False, grid_only=False):
    """`asrkd decode`: decode data_dir and score against data_dir/text.

    Acoustic scale: ``acwt`` if given, else the best of ``acwt_from``'s dev decode (a
    ``{model}`` in it is replaced by ``model``: each system its own dev-tuned scale), else the
    best of ``acwt_grid`` on this data dir. With ``ali_dir`` also writes decode_dir/frame_acc
    and frame_acc_per_utt (asrkd.score.frame_accuracy of the scorer) on ``frame_acc_data``
    (default data_dir; ali_dir aligns it): frame accuracy needs only a forward pass, so it can
    be measured on a larger set than the one decoded for WER. ``widen``: see decode_data_dir;
    ``priors``: "counts" or "posterior" (asrkd.scorer.make_scorer); ``grid_only``: score every
    value of the grid (and of its widening) and choose none (decode_data_dir, choose_acwt)."""
    if grid_only and (acwt is not None or acwt_from is not None):
        raise UserError("--grid-only decodes a grid: not with --acwt or --acwt-from")
    check_decoder_options(beam, lattice_beam, max_active)
    data = DataDir(data_dir)
    if frame_acc_data is not None and ali_dir is None:
        raise UserError("--frame-acc-data needs --ali-dir (the alignments of that data dir)")
    if acwt is None and acwt_from is not None:
        if "{model}" in acwt_from:
            if not isinstance(model, (str, os.PathLike)):
                raise UserError("--acwt-from with {model} needs one model per decode")
            acwt_from = acwt_from.replace("{model}", os.fspath(model).rstrip("/"))
        acwt = read_best_acwt(acwt_from)
    if str(device).startswith("cuda") and nj > 1:
        raise UserError("decode --device cuda runs the network in forked jobs: use --nj 1")
    scorer = make_scorer(model, data_dir, device=device, precision=precision, priors=priors)
    check_scorer_tree(scorer, graph_dir, ali_dir)
    utts = data.utts
    ref = data.file("text") if data.has("text") else None
    res = decode_data_dir(graph_dir, scorer, utts, decode_dir,
                          acwt if acwt is not None else list(acwt_grid), nj=nj, beam=beam,
                          lattice_beam=lattice_beam, max_active=max_active, ref_text=ref,
                          widen=widen, write_lattices=write_lattices, grid_only=grid_only,
                          keep_best=ali_dir is not None and frame_acc_data is None)
    # what was searched, so that a scale chosen later (choose_acwt) can be recorded for MODEL
    write_json(os.path.join(decode_dir, "decoder.json"),
               {"model": os.path.abspath(model) if isinstance(model, (str, os.PathLike))
                else None, "graph_dir": os.path.abspath(graph_dir), "beam": beam,
                "lattice_beam": lattice_beam, "max_active": max_active})
    if hasattr(scorer, "log_prior"):  # a hybrid DNN: what its posteriors were divided by
        with atomic_path(os.path.join(decode_dir, "priors")) as tmp, open(tmp, "w") as f:
            f.write(f"{priors}\n")
    if grid_only:
        print(f"decode: {decode_dir}: {len(res['grid'])} acoustic scales "
              f"{fmt_acwt(res['grid'][0])}-{fmt_acwt(res['grid'][-1])} written; none chosen "
              "(asrkd choose-acwt)", file=sys.stderr)
    elif ref is not None:
        w = res["wer"][res["acwt"]]
        print(f"decode: {decode_dir}: %WER {w['wer']:.2f} ({w['words']} words, acwt "
              f"{fmt_acwt(res['acwt'])})", file=sys.stderr)
    if ali_dir is not None:
        fa_data = data_dir if frame_acc_data is None else frame_acc_data
        # the decode's own forward pass, or one over the larger set
        fa_scorer = res["best_pdfs"] if frame_acc_data is None else make_scorer(model, fa_data)
        unscored = []
        res["frame_acc"], counts = frame_accuracy(fa_scorer, fa_data, ali_dir, per_utt=True,
                                                  unscored=unscored)
        write_frame_accuracy(decode_dir, res["frame_acc"], counts, unscored)
        print(f"decode: {decode_dir}: frame accuracy {100 * res['frame_acc']:.2f}% "
              f"against {ali_dir} ({len(counts)} utterances{_unscored(unscored)})",
              file=sys.stderr)
    return res


def measure_frame_accuracy(model, data_dir, ali_dir, out_dir, utts=None):
    """`asrkd frame-accuracy`: out_dir/frame_acc and frame_acc_per_utt of MODEL on data_dir
    against ali_dir, with no decoding (a forward pass); ``utts``: only these utterances.

    out_dir is laid out as a decode dir's frame-accuracy files, so `asrkd report` reads it as
    ``MODEL/decode_<set>`` (e.g. a training set, which is too large to decode)."""
    scorer = make_scorer(model, data_dir)
    check_scorer_tree(scorer, ali_dir)  # pdf ids of another tree would score as noise
    unscored = []
    acc, counts = frame_accuracy(scorer, data_dir, ali_dir, per_utt=True, utts=utts,
                                 unscored=unscored)
    write_frame_accuracy(out_dir, acc, counts, unscored)
    print(f"frame-accuracy: {out_dir}: {100 * acc:.2f}% against {ali_dir} ({len(counts)} "
          f"utterances{_unscored(unscored)})", file=sys.stderr)
    return acc


def _unscored(unscored):
    return f"; {len(unscored)} without alignment not scored" if unscored else ""
