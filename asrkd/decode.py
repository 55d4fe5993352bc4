"""Decoding over HCLG with one core for GMMs, DNNs and DNN ensembles (Kaldi decode.sh).

A scorer is any callable ``utt -> np.float32 (T, num_pdfs)`` of per-pdf log-likelihoods (GMM
log-likelihoods, or a DNN's log-posteriors minus log-priors). ``decode_loglikes`` maps pdfs to
transition-id columns, applies the acoustic scale itself (DecodableCtc does not) and runs
kaldi_hmm_gmm's LatticeFasterDecoder; we keep only its best path.

Deviations from Kaldi: no lattices are written and no LM-weight sweep is done; instead the
acoustic scale (= 1 / LM weight) is chosen on a dev set from a small grid
(``decode_dir/best_acwt``, per-value WERs in ``decode_dir/acwt_<v>/wer``) and reused for test.
Log-likelihoods are computed once per utterance and decoded for every grid value.
"""

import os
import sys

import numpy as np

from asrkd.errors import UserError
from asrkd.finite import check_finite
from asrkd.table import atomic_path, write_table

DEFAULT_GRID = (0.05, 0.067, 0.083, 0.1, 0.125)


def make_decoder(hclg, beam=16.0, lattice_beam=8.0, max_active=7000):
    import kaldi_hmm_gmm as khg

    cfg = khg.LatticeFasterDecoderConfig(beam=beam, lattice_beam=lattice_beam,
                                         max_active=max_active)
    return khg.LatticeFasterDecoder(hclg, cfg)


MIN_ACTIVE = 200  # LatticeFasterDecoderConfig's default min_active, which we do not change


def check_decoder_options(beam, lattice_beam, max_active):
    """UserError for options the C++ decoder would reject with a bare assertion."""
    if not beam > 0 or not lattice_beam > 0:
        raise UserError(f"--beam and --lattice-beam must be positive, got {beam} and "
                        f"{lattice_beam}")
    if max_active < MIN_ACTIVE:
        raise UserError(f"--max-active must be at least the decoder's min-active {MIN_ACTIVE}, "
                        f"got {max_active}")


def decode_loglikes(hclg, trans_model, loglikes, acwt, beam=16.0, lattice_beam=8.0,
                    max_active=7000, decoder=None, utt="utt"):
    """Best word-id sequence for ``loglikes`` (T, num_pdfs) over ``hclg``.

    Pass a ``decoder`` from make_decoder(hclg, ...) to reuse one across utterances.
    Returns [] when no final state is reached even with partial output allowed.
    """
    import kaldi_hmm_gmm as khg

    loglikes = np.asarray(loglikes, dtype=np.float32)
    tid2pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    if loglikes.ndim != 2 or loglikes.shape[1] != trans_model.num_pdfs:
        raise UserError(f"{utt}: log-likelihoods of shape {loglikes.shape} but the model has "
                        f"{trans_model.num_pdfs} pdfs (model and graph do not match?)")
    check_finite(loglikes, f"{utt}: acoustic scores")
    if len(loglikes) == 0:
        return []
    mat = np.ascontiguousarray(acwt * loglikes[:, tid2pdf[1:]], dtype=np.float32)
    if decoder is None:
        decoder = make_decoder(hclg, beam, lattice_beam, max_active)
    ok, _, words, _ = khg.decode_utterance_lattice_faster(decoder, khg.DecodableCtc(mat),
                                                          trans_model, utt, True)
    return list(words) if ok else []


class GmmScorer:
    """utt -> per-pdf GMM log-likelihoods (T, num_pdfs) for a feature mapping."""

    def __init__(self, model, feats):
        from asrkd.gmm import PackedGmm

        self.packed = PackedGmm(model.am)
        self.feats = feats

    def __call__(self, utt):
        x = self.feats[utt]
        if x.shape[1] != self.packed.dim:
            raise UserError(f"{utt}: {x.shape[1]}-dim features but the GMMs take "
                            f"{self.packed.dim} (MFCC + deltas: decode the *_mfcc data dir)")
        return self.packed.pdf_loglikes(x)


def load_graph(graph_dir):
    """(HCLG StdVectorFst, TransitionModel, id -> word) of a graph dir."""
    import kaldifst

    from asrkd.gmm import load_gmm
    from asrkd.lang import read_symbols

    for f in ("HCLG.fst", "words.txt", "final.mdl"):
        if not os.path.isfile(os.path.join(graph_dir, f)):
            raise UserError(f"{graph_dir}: missing {f}; run `asrkd make-graph`")
    from asrkd.graph import hclg_tree_id
    from asrkd.identity import check_tree, tree_id

    check_tree(os.path.join(graph_dir, "HCLG.fst"), hclg_tree_id(graph_dir),
               os.path.join(graph_dir, "final.mdl"), tree_id(graph_dir))
    hclg = kaldifst.StdVectorFst.read(os.path.join(graph_dir, "HCLG.fst"))
    tm = load_gmm(graph_dir).tm
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


def _decode_job(graph_dir, scorer_key, utts, acwts, opts):
    hclg, tm, words = cached_graph(graph_dir)
    scorer = _SCORERS[scorer_key]
    decoder = make_decoder(hclg, **opts)
    out = {a: {} for a in acwts}
    for u in utts:
        ll = scorer(u)
        for a in acwts:
            ids = decode_loglikes(hclg, tm, ll, a, decoder=decoder, utt=u)
            out[a][u] = " ".join(words[i] for i in ids)
            if not ids:
                print(f"{u}: acwt {a}: no output")
    return out


def _fmt(a):
    return f"{a:g}"


def decode_data_dir(graph_dir, scorer, utts, decode_dir, acwt, nj=1, beam=16.0, lattice_beam=8.0,
                    max_active=7000, ref_text=None):
    """Decode ``utts`` with ``scorer`` over graph_dir/HCLG.fst; write decode_dir/hyp.txt.

    ``acwt``: a float, or a list of floats (grid). With a grid, every value's hypotheses go to
    decode_dir/acwt_<v>/hyp.txt and, given ``ref_text``, are scored there; the best value is
    written to decode_dir/best_acwt and its hypotheses to decode_dir/hyp.txt. With ``ref_text``
    the final hyp.txt is scored into decode_dir (wer, errors, per_utt). Returns
    {"acwt": chosen, "wer": {acwt: score dict} (empty without ref_text)}.
    """
    from asrkd.jobs import run_jobs, split_evenly
    from asrkd.score import score

    check_decoder_options(beam, lattice_beam, max_active)
    grid = [float(a) for a in (acwt if isinstance(acwt, (list, tuple)) else [acwt])]
    if not grid or not all(a > 0 for a in grid):  # (NaN too)
        raise UserError(f"acoustic scales must be positive, got {grid}")
    if len(grid) > 1 and ref_text is None:
        raise UserError("an acoustic-scale grid needs the reference text to choose from")
    utts = sorted(utts)
    if not utts:
        raise UserError("nothing to decode: no utterances")
    os.makedirs(os.path.join(decode_dir, "log"), exist_ok=True)
    cached_graph(graph_dir)  # loaded here once; the forked jobs inherit it
    key = id(scorer)
    _SCORERS[key] = scorer
    opts = {"beam": beam, "lattice_beam": lattice_beam, "max_active": max_active}
    try:
        chunks = [c for c in split_evenly(utts, max(1, min(nj, len(utts)))) if c]
        res = run_jobs(_decode_job, [(graph_dir, key, c, grid, opts) for c in chunks],
                       nj, os.path.join(decode_dir, "log"), "decode", threads_per_job=1)
    finally:
        _SCORERS.pop(key, None)
    hyps = {a: {} for a in grid}
    for r in res:
        for a in grid:
            hyps[a].update(r[a])
    results = {}
    if len(grid) == 1:
        best = grid[0]
    else:
        for a in grid:
            d = os.path.join(decode_dir, f"acwt_{_fmt(a)}")
            write_table(os.path.join(d, "hyp.txt"), hyps[a])
            results[a] = score(ref_text, os.path.join(d, "hyp.txt"), d)
        best = min(grid, key=lambda a: (results[a]["wer"], abs(a - 0.1)))
        with atomic_path(os.path.join(decode_dir, "best_acwt")) as tmp, open(tmp, "w") as f:
            f.write(f"{_fmt(best)}\n")
        with atomic_path(os.path.join(decode_dir, "acwt_wers")) as tmp, open(tmp, "w") as f:
            f.writelines(f"{_fmt(a)} {results[a]['wer']:.2f}\n" for a in grid)
        print("acwt grid: " + ", ".join(f"{_fmt(a)}: {results[a]['wer']:.2f}%" for a in grid)
              + f" -> best {_fmt(best)}", file=sys.stderr)
        if best in (min(grid), max(grid)) and len({results[a]["wer"] for a in grid}) > 1:
            print(f"decode: best acoustic scale {_fmt(best)} is at the edge of the grid; "
                  "a wider --acwt-grid may do better", file=sys.stderr)
    write_table(os.path.join(decode_dir, "hyp.txt"), hyps[best])
    with atomic_path(os.path.join(decode_dir, "acwt")) as tmp, open(tmp, "w") as f:
        f.write(f"{_fmt(best)}\n")
    if ref_text is not None:
        results[best] = score(ref_text, os.path.join(decode_dir, "hyp.txt"), decode_dir)
    return {"acwt": best, "wer": results}


def read_best_acwt(decode_dir):
    path = os.path.join(decode_dir, "best_acwt")
    if not os.path.isfile(path):
        raise UserError(f"{decode_dir}: no best_acwt (decode the dev set with a grid first)")
    with open(path) as f:
        return float(f.read().split()[0])


def make_scorer(model, data_dir, feats=None, device="cpu", precision="fp32"):
    """Scorer for MODEL (a GMM model dir with final.mdl, DNN checkpoint(s)/an ensemble dir, or an
    .onnx file from export-onnx, run by onnxruntime) on data_dir: GMMs read MFCC + deltas + mean
    CMVN, DNNs fbank + mean/var CMVN (run on ``device``, "bf16" ``precision``: under
    autocast)."""
    from asrkd.features import FeatureReader

    models = model if isinstance(model, (list, tuple)) else [model]
    if len(models) == 1 and os.path.isfile(os.path.join(models[0], "specialists.json")):
        # a generalist + specialists dir (train-specialists)
        from asrkd.specialists.scorer import make_scorer as make_specialist_scorer

        return make_specialist_scorer(models[0], data_dir, feats)
    if len(models) == 1 and os.path.isfile(os.path.join(models[0], "final.mdl")):
        from asrkd.gmm import load_gmm
        from asrkd.identity import tree_id

        m = load_gmm(models[0])
        if m.am is None:
            raise UserError(f"{models[0]}: model has no GMMs")
        scorer = GmmScorer(m, feats if feats is not None else
                           FeatureReader(data_dir, cmvn="mean", deltas=2))
        scorer.tree_id, scorer.source = tree_id(models[0]), models[0]
        return scorer
    if len(models) == 1 and os.fspath(models[0]).endswith(".onnx"):
        from asrkd.export import onnx_scorer

        return onnx_scorer(models[0], data_dir, feats)
    ckpts = _dnn_checkpoints(models)
    from asrkd import models as dnn

    if feats is None:
        # the checkpoints know their features' CMVN mode (the paper's: mean and variance)
        feats = FeatureReader(data_dir, cmvn=dnn.load_model(ckpts[0]).config.cmvn)
    return dnn.make_scorer(ckpts, feats, device=device, precision=precision)


def _dnn_checkpoints(models):
    """DNN checkpoint paths of MODEL arguments (files, dirs with final.pt, ensemble dirs)."""
    ckpts = []
    for m in models:
        if os.path.isdir(m):
            found = sorted(os.path.join(m, d, "final.pt") for d in os.listdir(m)
                           if os.path.isfile(os.path.join(m, d, "final.pt")))
            if os.path.isfile(os.path.join(m, "final.pt")):
                found = [os.path.join(m, "final.pt")]
            if not found:
                raise UserError(f"{m}: neither a GMM dir (final.mdl) nor DNN checkpoints "
                                "(final.pt or */final.pt)")
            ckpts += found
        elif os.path.isfile(m):
            ckpts.append(m)
        else:
            raise UserError(f"{m}: no such model file or directory")
    return ckpts


def check_scorer_tree(scorer, graph_dir, ali_dir=None):
    """UserError unless the scorer's model has the tree of the graph (and of the alignments)."""
    from asrkd.identity import check_tree, tree_id

    for other in (graph_dir, ali_dir):
        if other is not None and getattr(scorer, "tree_id", None) is not None:
            check_tree(scorer.source, scorer.tree_id, other, tree_id(other))


def decode(graph_dir, data_dir, model, decode_dir, acwt=None, acwt_grid=DEFAULT_GRID,
           acwt_from=None, nj=1, beam=16.0, lattice_beam=8.0, max_active=7000, ali_dir=None,
           frame_acc_data=None, device="cpu", precision="fp32"):
    """`asrkd decode`: decode data_dir and score against data_dir/text.

    Acoustic scale: ``acwt`` if given, else the best of ``acwt_from``'s dev decode (a
    ``{model}`` in it is replaced by ``model``: each system its own dev-tuned scale), else the
    best of ``acwt_grid`` on this data dir. With ``ali_dir`` also writes decode_dir/frame_acc
    and frame_acc_per_utt (asrkd.score.frame_accuracy of the scorer) on ``frame_acc_data``
    (default data_dir; ali_dir aligns it): frame accuracy needs only a forward pass, so it can
    be measured on a larger set than the one decoded for WER."""
    from asrkd.data import DataDir

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
    scorer = make_scorer(model, data_dir, device=device, precision=precision)
    check_scorer_tree(scorer, graph_dir, ali_dir)
    utts = data.utts
    ref = data.file("text") if data.has("text") else None
    res = decode_data_dir(graph_dir, scorer, utts, decode_dir,
                          acwt if acwt is not None else list(acwt_grid), nj=nj, beam=beam,
                          lattice_beam=lattice_beam, max_active=max_active, ref_text=ref)
    if ref is not None:
        w = res["wer"][res["acwt"]]
        print(f"decode: {decode_dir}: %WER {w['wer']:.2f} ({w['words']} words, acwt "
              f"{_fmt(res['acwt'])})", file=sys.stderr)
    if ali_dir is not None:
        from asrkd.score import frame_accuracy, write_frame_accuracy

        fa_data = data_dir if frame_acc_data is None else frame_acc_data
        fa_scorer = scorer if frame_acc_data is None else make_scorer(model, fa_data)
        res["frame_acc"], counts = frame_accuracy(fa_scorer, fa_data, ali_dir, per_utt=True)
        write_frame_accuracy(decode_dir, res["frame_acc"], counts)
        print(f"decode: {decode_dir}: frame accuracy {100 * res['frame_acc']:.2f}% "
              f"against {ali_dir} ({len(counts)} utterances)", file=sys.stderr)
    return res


def measure_frame_accuracy(model, data_dir, ali_dir, out_dir, utts=None):
    """`asrkd frame-accuracy`: out_dir/frame_acc and frame_acc_per_utt of MODEL on data_dir
    against ali_dir, with no decoding (a forward pass); ``utts``: only these utterances.

    out_dir is laid out as a decode dir's frame-accuracy files, so `asrkd report` reads it as
    ``MODEL/decode_<set>`` (e.g. a training set, which is too large to decode)."""
    from asrkd.score import frame_accuracy, write_frame_accuracy

    scorer = make_scorer(model, data_dir)
    check_scorer_tree(scorer, ali_dir)  # pdf ids of another tree would score as noise
    acc, counts = frame_accuracy(scorer, data_dir, ali_dir, per_utt=True, utts=utts)
    write_frame_accuracy(out_dir, acc, counts)
    print(f"frame-accuracy: {out_dir}: {100 * acc:.2f}% against {ali_dir} ({len(counts)} "
          "utterances)", file=sys.stderr)
    return acc
