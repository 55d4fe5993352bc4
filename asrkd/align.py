"""Forced alignment of a data dir with a GMM-HMM (Kaldi steps/align_si.sh).

Training graphs come from kaldi_hmm_gmm's TrainingGraphCompiler without transition
probabilities (as Kaldi's compile-train-graphs); they are added at alignment time with the
model's current probabilities, and are built with ``reorder=False`` (Kaldi: true) so that a
phone's last frame carries its exit transition. Frame scores are our vectorized GMM
log-likelihoods fed through DecodableCtc (columns = transition-ids), scaled by the acoustic
scale ourselves.

Utterances that cannot be aligned (no path at beam 10 nor at the retry beam 40, an empty
transcript, a transcript needing more frames than the audio has) are written to ``failed``
with the reason and printed; they are never silently dropped.

``align`` writes the alignment dir that asrkd.alignment.AlignmentDir reads; GMM training
(asrkd.gmmtrain) realigns with ``compile_graphs`` and ``align_utterance``.
"""

import os
import re
import shutil
import sys

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np

from asrkd.errors import UserError
from asrkd.gmm import PackedGmm, load_gmm
from asrkd.gmmdata import TrainData, as_data, as_lang
from asrkd.jobs import run_jobs, single_threaded_blas, split_evenly
from asrkd.table import ArkWriter, atomic_path


def compile_graphs(model, lang, texts):
    """utt -> training graph (StdVectorFst) for utt -> word string; returns (graphs, failed)."""
    # reorder=False: a phone's frames end with its exit transition, which the phone
    # segmentation of asrkd.transitions (tree stats, convert-ali) relies on; Kaldi's default
    # reorders self-loops
    opts = khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0,
                                            reorder=False)
    gc = khg.TrainingGraphCompiler(model.tm, model.ctx, lang.L_fst(),
                                   list(lang.disambig_phones), opts)
    graphs, failed = {}, {}
    for u, words in texts.items():
        ids = lang.text_to_word_ids(words)
        if not ids:
            failed[u] = "empty transcript"
            continue
        g = gc.compile_graph_from_text(ids)
        if g.num_states == 0:
            failed[u] = "empty training graph (words not in the lexicon?)"
            continue
        graphs[u] = g
    return graphs, failed


_ARC_RE = re.compile(r"^[ \t]*\d+[ \t]+\d+[ \t]+(\d+)[ \t]", re.M)


def graph_input_labels(graph):
    """Sorted distinct non-epsilon input labels (transition-ids) of ``graph``, np.int64.

    Read from the FST's text form: one regex over it is ~7x faster than iterating the arcs
    from Python."""
    labels = np.unique(np.array(_ARC_RE.findall(graph.to_str()), dtype=np.int64))
    return labels[labels > 0]


class UttGraph:
    """A training graph with what alignment needs of it: its transition-ids ``tids``, their
    distinct pdfs ``pdfs`` and, per transition-id, the column of its pdf in ``pdfs``.

    Only these pdfs' log-likelihoods are ever looked up by the Viterbi search (as Kaldi's
    decodable computes likelihoods lazily), so only they are computed."""

    def __init__(self, graph, tid2pdf):
        self.fst = graph
        self.tids = graph_input_labels(graph)
        self.pdfs, self.cols = np.unique(tid2pdf[self.tids], return_inverse=True)


def align_utterance(tm, graph, pdf_loglikes, utt, beam=10.0, retry_beam=40.0, acwt=0.1,
                    transition_scale=1.0, self_loop_scale=0.1, disambig=(), tid2pdf=None):
    """Viterbi-align one utterance: (transition-ids np.int32 (T,), None) or (None, reason).

    ``graph`` is a StdVectorFst with ``pdf_loglikes`` (T, num_pdfs), or a UttGraph with
    ``pdf_loglikes`` (T, len(graph.pdfs)) holding only the columns of ``graph.pdfs``."""
    if tid2pdf is None:
        tid2pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)
    if isinstance(graph, UttGraph):
        # transition-ids absent from the graph are never looked up: their columns stay 0
        mat = np.zeros((len(pdf_loglikes), len(tid2pdf) - 1), dtype=np.float32)
        mat[:, graph.tids - 1] = pdf_loglikes[:, graph.cols]
        mat *= acwt
        graph = graph.fst
    else:
        mat = np.ascontiguousarray(acwt * pdf_loglikes[:, tid2pdf[1:]], dtype=np.float32)
    fst = kaldifst.StdVectorFst(graph)  # deep copy, the cached graph stays probability-free
    khg.add_transition_probs(tm, list(disambig), transition_scale, self_loop_scale, fst)
    decodable = khg.DecodableCtc(mat)
    cfg = khg.AlignConfig(beam=beam, retry_beam=retry_beam)
    num_done, num_err, _, _, _, ali, _ = khg.align_utterance_wrapper(
        cfg, utt, acwt, fst, decodable, 0, 0, 0, 0.0, 0)
    if num_done != 1 or len(ali) != len(pdf_loglikes):
        return None, f"no-path: no alignment within beam {beam} nor retry beam {retry_beam}"
    return np.asarray(ali, dtype=np.int32), None


def write_failed(path, failed):
    """Write ``path``: one line ``utt reason`` per utterance that failed to align, sorted."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for u in sorted(failed):
            f.write(f"{u} {failed[u]}\n")


def _align_job(model_dir, data, lang, utts, ali_ark, pdf_ark, beam, retry_beam, acwt):
    model = load_gmm(model_dir)
    data, lang = as_data(data), as_lang(lang)
    packed = PackedGmm(model.am)
    tid2pdf = np.asarray(model.tm.transition_id_to_pdf_array(), dtype=np.int64)
    texts = {u: data.text[u] for u in utts if u in data.text}
    failed = {u: "no transcript" for u in utts if u not in data.text}
    for u in utts:
        if u not in data.feats and u not in failed:
            failed[u] = "no features"
    graphs, bad = compile_graphs(model, lang, {u: t for u, t in texts.items()
                                               if u not in failed})
    failed.update(bad)
    counts = np.zeros(model.tm.num_pdfs, dtype=np.int64)
    n_ok = 0
    with ArkWriter(ali_ark, ali_ark[:-4] + ".scp") as wa, \
            ArkWriter(pdf_ark, pdf_ark[:-4] + ".scp") as wp:
        for u in utts:
            if u in failed:
                continue
            g = UttGraph(graphs.pop(u), tid2pdf)
            ll = packed.pdf_loglikes(data.feats[u], g.pdfs)
            ali, reason = align_utterance(model.tm, g, ll, u, beam, retry_beam, acwt,
                                          disambig=lang.disambig_phones, tid2pdf=tid2pdf)
            if ali is None:
                failed[u] = reason
                print(f"{u}: {reason}")
                continue
            pdf = tid2pdf[ali].astype(np.int32)
            wa[u] = ali
            wp[u] = pdf
            counts += np.bincount(pdf, minlength=len(counts))
            n_ok += 1
    print(f"aligned {n_ok}, failed {len(failed)}")
    return counts, failed


def align(data_dir, lang_dir, model_dir, ali_dir, nj=1, beam=10.0, retry_beam=40.0, acwt=0.1):
    """Align every utterance of ``data_dir`` with the GMM in ``model_dir``; writes ali_dir/
    {ali.scp, pdf.scp (+ .N.ark), pdf_counts, num_pdfs, final.mdl, tree, failed, log/}.
    ``data_dir``/``lang_dir`` may be TrainData / Lang-like objects (then nj is 1).
    Returns the dict of failed utterances (utt -> reason)."""
    if not 0 < beam <= retry_beam or not acwt > 0:
        raise UserError(f"need 0 < --beam <= --retry-beam and a positive acoustic scale, got "
                        f"beam {beam}, retry beam {retry_beam}, acwt {acwt}")
    with single_threaded_blas():
        return _align(data_dir, lang_dir, model_dir, ali_dir, nj, beam, retry_beam, acwt)


def _align(data_dir, lang_dir, model_dir, ali_dir, nj, beam, retry_beam, acwt):
    model = load_gmm(model_dir)
    if model.am is None:
        raise UserError(f"{model_dir}: model has no GMMs to align with")
    os.makedirs(os.path.join(ali_dir, "log"), exist_ok=True)
    in_process = isinstance(data_dir, TrainData) or not isinstance(lang_dir, (str, os.PathLike))
    data = as_data(data_dir)
    utts = sorted(set(data.text) | set(data.feats))
    nj = 1 if in_process else max(1, min(nj, len(utts)))
    chunks = split_evenly(utts, nj)
    args = [(model_dir, data if in_process else data_dir, lang_dir, c,
             os.path.join(ali_dir, f"ali.{j + 1}.ark"), os.path.join(ali_dir, f"pdf.{j + 1}.ark"),
             beam, retry_beam, acwt) for j, c in enumerate(chunks)]
    res = run_jobs(_align_job, args, nj, os.path.join(ali_dir, "log"), "align")
    counts = np.zeros(model.tm.num_pdfs, dtype=np.int64)
    failed = {}
    for c, f in res:
        counts += c
        failed.update(f)
    for name in ("ali", "pdf"):
        lines = []
        for j in range(nj):
            with open(os.path.join(ali_dir, f"{name}.{j + 1}.scp")) as f:
                lines += f.readlines()
        with atomic_path(os.path.join(ali_dir, f"{name}.scp")) as tmp, open(tmp, "w") as f:
            f.writelines(sorted(lines))
    with atomic_path(os.path.join(ali_dir, "pdf_counts")) as tmp, open(tmp, "w") as f:
        f.write(" ".join(str(int(c)) for c in counts) + "\n")
    with atomic_path(os.path.join(ali_dir, "num_pdfs")) as tmp, open(tmp, "w") as f:
        f.write(f"{model.tm.num_pdfs}\n")
    write_failed(os.path.join(ali_dir, "failed"), failed)
    if os.path.abspath(model_dir) != os.path.abspath(ali_dir):
        for name in ("final.mdl", "tree"):
            shutil.copyfile(os.path.join(model_dir, name), os.path.join(ali_dir, name))
    n_ok = len(utts) - len(failed)
    msg = f"align: {n_ok} of {len(utts)} utterances aligned"
    if failed:
        reasons = {}
        for r in failed.values():
            reasons[r.split(":")[0]] = reasons.get(r.split(":")[0], 0) + 1
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        msg += (f"; {len(failed)} failed and excluded ({why}), "
                f"see {os.path.join(ali_dir, 'failed')}")
    print(msg, file=sys.stderr)
    if n_ok == 0:
        raise UserError(f"align: no utterance of {len(utts)} could be aligned")
    return failed
