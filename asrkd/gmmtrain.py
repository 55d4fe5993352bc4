"""GMM-HMM training: Viterbi EM with realignment and mixing up, from a flat start (train_mono,
Kaldi steps/train_mono.sh) or from a monophone alignment and a triphone tree (train_tri, Kaldi
steps/train_deltas.sh).

The model and its files are asrkd.gmm, the statistics and M-step asrkd.gmmstats, the tree
asrkd.tree; realignment is asrkd.align's.

Where we deviate from Kaldi:
- Alignment uses our vectorized log-likelihoods through DecodableCtc (asrkd.align); training
  graphs are built with ``reorder=False`` (Kaldi: true); no silence boosting.
- ``--num-iters`` below Kaldi's 40 (mono) / 35 (tri) compresses Kaldi's realignment and
  mixing-up schedules proportionally (GmmTrainConfig.scaled).
- Utterances that fail to align in an iteration are left out of that iteration's statistics
  and listed in exp_dir/failed (those of the last realignment), as Kaldi's logs count them.
"""

import dataclasses
import json
import os
import sys
import time

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np

from asrkd.align import UttGraph, align_utterance, compile_graphs, write_failed
from asrkd.alignment import AlignmentDir
from asrkd.errors import UserError
from asrkd.gmm import GmmModel, PackedGmm, am_from_arrays, load_gmm, save_gmm
from asrkd.gmmdata import as_data, as_lang
from asrkd.identity import phones_id, write_id
from asrkd.gmmstats import (FIXED_SCALE, GmmStats, UpdateConfig, accumulate, flat_start_am,
                            mixup, transition_stats, update_gmm)
from asrkd.jobs import run_jobs, single_threaded_blas, split_evenly
from asrkd.table import atomic_path
from asrkd.transitions import convert_alignment, transition_tables
from asrkd.tree import accumulate_tree_stats, build_questions, build_tree, leaf_stats


# --------------------------------------------------------------------------------------------
# The EM schedule


@dataclasses.dataclass
class GmmTrainConfig:
    """Viterbi EM schedule (defaults as Kaldi's train_mono.sh; train_tri uses tri_config())."""

    num_iters: int = 40
    num_gauss: int = 1000
    max_iter_inc: int = 30
    realign_iters: tuple = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 29, 32,
                            35, 38)
    power: float = 0.25
    beam: float = 10.0
    first_beam: float = 6.0  # mono's first realignment (Kaldi: beam 6, then 10)
    retry_beam_factor: float = 4.0
    acwt: float = 0.1
    self_loop_scale: float = 0.1
    transition_scale: float = 1.0
    min_gaussian_occupancy: float = 3.0
    var_floor: float = 0.01

    def scaled(self, num_iters, num_gauss):
        """This schedule compressed to ``num_iters`` (realign list and mix-up scaled)."""
        f = num_iters / self.num_iters
        realign = tuple(sorted({max(1, int(round(i * f))) for i in self.realign_iters
                                if round(i * f) < num_iters}))
        return dataclasses.replace(self, num_iters=num_iters, num_gauss=num_gauss,
                                   realign_iters=realign,
                                   max_iter_inc=max(1, int(round(self.max_iter_inc * f))))


def mono_config(num_iters=40, num_gauss=1000):
    """Kaldi train_mono.sh: 40 iterations, realign often, mix-up until iteration 30."""
    return GmmTrainConfig().scaled(num_iters, num_gauss)


def tri_config(num_iters=35, num_gauss=10000):
    """Kaldi train_deltas.sh: 35 iterations, realign at 10/20/30, mix-up until 25, beam 10."""
    base = GmmTrainConfig(num_iters=35, max_iter_inc=25, realign_iters=(10, 20, 30),
                          first_beam=10.0, min_gaussian_occupancy=10.0)
    return base.scaled(num_iters, num_gauss)


# --------------------------------------------------------------------------------------------
# Viterbi EM


def _log(log, msg):
    print(msg, file=log, flush=True)


def em_iteration(model, data, lang, blocks, alis, realign, beam, retry_beam, config, graphs):
    """One pass over ``blocks`` (lists of utterances, see acc_blocks): optional realignment,
    then statistics, accumulated per block and summed in fixed point (GmmStats.to_fixed), so
    the total is the same bytes however the blocks are split into jobs. Returns (fixed stats,
    tstats, alis, failed). ``graphs`` caches training graphs (asrkd.align.UttGraph) by
    utterance, filled on demand; they depend only on the tree, so one cache serves a whole
    run_em."""
    packed = PackedGmm(model.am)
    tid2pdf = np.asarray(model.tm.transition_id_to_pdf_array(), dtype=np.int64)
    total = GmmStats.zeros(len(packed.gauss2pdf), packed.dim).to_fixed()
    new_alis, failed = {}, {}
    utts = [u for b in blocks for u in b]
    if realign:
        failed.update(fill_graphs(graphs, model, lang, data, utts))
    for block in blocks:
        buf = []
        for u in block:
            if u in failed:
                continue
            x = data.feats[u]
            if realign:
                g = graphs[u]
                ll = packed.pdf_loglikes(x, g.pdfs)
                ali, reason = align_utterance(model.tm, g, ll, u, beam, retry_beam,
                                              config.acwt, config.transition_scale,
                                              config.self_loop_scale, lang.disambig_phones,
                                              tid2pdf=tid2pdf)
                if ali is None:
                    failed[u] = reason
                    continue
            else:
                ali = alis.get(u)
                if ali is None:
                    continue
            new_alis[u] = np.asarray(ali, dtype=np.int32)
            buf.append((x, tid2pdf[new_alis[u]]))
        stats = GmmStats.zeros(len(packed.gauss2pdf), packed.dim)
        _flush(packed, buf, stats)
        total.add(stats.to_fixed())
    tstats = transition_stats(model.tm, new_alis.values())
    return total, tstats, new_alis, failed


def acc_blocks(data, utts, frames=None):
    """``utts`` cut into consecutive blocks of at least ``frames`` (ACC_BATCH_FRAMES) frames:
    the unit of accumulation, fixed by the data alone (not by the number of jobs)."""
    frames = frames or ACC_BATCH_FRAMES
    blocks, cur, n = [], [], 0
    for u in utts:
        cur.append(u)
        n += len(data.feats[u])
        if n >= frames:
            blocks.append(cur)
            cur, n = [], 0
    if cur:
        blocks.append(cur)
    return blocks


def fill_graphs(graphs, model, lang, data, utts):
    """Compile the training graphs of ``utts`` missing from ``graphs`` (utt -> UttGraph, or
    a reason string for a transcript without a graph); returns {utt: reason} of ``utts``
    without a graph."""
    need = [u for u in utts if u not in graphs]
    if need:
        tid2pdf = np.asarray(model.tm.transition_id_to_pdf_array(), dtype=np.int64)
        g, bad = compile_graphs(model, lang, {u: data.text[u] for u in need})
        graphs.update({u: UttGraph(f, tid2pdf) for u, f in g.items()})
        graphs.update(bad)
    return {u: graphs[u] for u in utts if isinstance(graphs[u], str)}


# Frames per accumulate() call (amortizes its per-pdf loop) and per block of run_em's jobs:
# small enough that a monophone subset still makes a block per job.
ACC_BATCH_FRAMES = 20000


def _flush(packed, buf, stats):
    if buf:
        accumulate(packed, np.concatenate([b[0] for b in buf]),
                   np.concatenate([b[1] for b in buf]), stats)
        buf.clear()


# State that run_em's forked jobs inherit (features in memory, compiled graphs, the model)
# instead of re-reading and re-compiling them in every job of every iteration.
_FORK_STATE = {}


def _em_job(blocks, alis, realign, beam, retry_beam, config):
    model, data, lang, graphs = _FORK_STATE["em"]
    stats, tstats, alis, failed = em_iteration(model, data, lang, blocks, alis, realign, beam,
                                               retry_beam, config, graphs)
    print(f"{len(alis)} utterances, {len(failed)} failed, avg loglike "
          f"{stats.loglike / FIXED_SCALE / max(stats.frames, 1):.4f} over {stats.frames} frames")
    return stats, tstats, alis, failed


def _feats_job(utts):
    feats = _FORK_STATE["feats"]
    return {u: feats[u] for u in utts}


def preload_features(data, utts, nj=1, log_dir=None):
    """Replace ``data.feats`` by an in-memory dict over ``utts`` (read by ``nj`` jobs): EM
    reads every utterance 25-40 times, and MFCC + deltas + CMVN once is enough."""
    if isinstance(data.feats, dict):
        return data
    utts = [u for u in utts if u in data.feats]
    if nj > 1 and log_dir:
        feats = {}
        _FORK_STATE["feats"] = data.feats
        try:
            for r in run_jobs(_feats_job, [(c,) for c in split_evenly(utts, nj)], nj,
                              log_dir, "feats", desc="load features"):
                feats.update(r)
        finally:
            _FORK_STATE.pop("feats", None)
    else:
        feats = {u: data.feats[u] for u in utts}
    data.feats = feats
    return data


def run_em(model, data, lang, exp_dir, config, alis, nj=1, start_iter=0, graphs=None):
    """Viterbi EM from ``model`` and initial alignments ``alis`` (utt -> transition-ids) on the
    schedule ``config``; logs each iteration to exp_dir/log/train.log. ``graphs`` is a
    training-graph cache (see em_iteration) to reuse. With nj > 1 each iteration forks ``nj``
    jobs that inherit the model, features and graphs. Returns (model, alis, failed)."""
    log_dir = os.path.join(exp_dir, "log")
    os.makedirs(log_dir, exist_ok=True)
    utts = data.utts
    preload_features(data, utts, nj, log_dir)
    blocks = acc_blocks(data, utts)
    num_gauss = model.am.num_gauss
    inc = max(0, (config.num_gauss - num_gauss) // max(config.max_iter_inc, 1))
    failed = {}
    summary = open(os.path.join(log_dir, "train.log"), "w" if start_iter == 0 else "a")
    graphs = {} if graphs is None else graphs
    for it in range(start_iter, config.num_iters):
        t0 = time.time()
        realign = it in config.realign_iters
        beam = config.first_beam if (realign and it == min(config.realign_iters)) else config.beam
        retry = beam * config.retry_beam_factor
        if nj <= 1:
            stats, tstats, alis_new, failed_it = em_iteration(
                model, data, lang, blocks, alis, realign, beam, retry, config, graphs)
        else:
            if realign:
                # compiled once here (the jobs' caches die with them), inherited by every
                # later iteration's jobs
                fill_graphs(graphs, model, lang, data, utts)
            _FORK_STATE["em"] = (model, data, lang, graphs)
            chunks = [c for c in split_evenly(blocks, nj) if c]
            try:
                res = run_jobs(_em_job, [(c, {u: alis[u] for b in c for u in b if u in alis},
                                          realign, beam, retry, config) for c in chunks],
                               nj, log_dir, f"acc.{it}", desc=f"iter {it}")
            finally:
                _FORK_STATE.pop("em", None)
            stats, tstats, alis_new, failed_it = res[0]
            for r in res[1:]:
                stats.add(r[0])
                tstats += r[1]
                alis_new.update(r[2])
                failed_it.update(r[3])
        if realign:
            alis = alis_new
            failed = failed_it
        stats = stats.from_fixed()
        packed = PackedGmm(model.am)
        am = update_gmm(packed, stats, UpdateConfig(
            min_gaussian_occupancy=config.min_gaussian_occupancy, var_floor=config.var_floor))
        model.tm.mle_update(tstats, khg.MleTransitionUpdateConfig())
        if it <= config.max_iter_inc:
            num_gauss = min(config.num_gauss, num_gauss + inc) if it < config.max_iter_inc \
                else config.num_gauss
            am = mixup(am, stats.pdf_occs(packed), num_gauss, power=config.power, seed=it)
        model.am = am
        _log(summary, f"iter {it}: {'realign ' if realign else ''}avg loglike/frame "
                      f"{stats.loglike / max(stats.frames, 1):.4f} over {stats.frames} frames, "
                      f"{len(failed)} failed, {am.num_gauss} gaussians, {time.time() - t0:.1f}s")
    summary.close()
    return model, alis, failed


def equal_alignments(model, lang, data, utts, seed=0, graphs=None):
    """Kaldi align-equal-compiled: a random path of the training graph with exactly T frames.
    ``graphs``: a training-graph cache (see em_iteration) to fill and reuse."""
    graphs = {} if graphs is None else graphs
    failed = fill_graphs(graphs, model, lang, data, utts)
    alis = {}
    for i, u in enumerate(utts):
        if u in failed:
            continue
        n = len(data.feats[u])
        ok, path = kaldifst.equal_align(graphs[u].fst, n, seed + i)
        if not ok:
            failed[u] = "equal-align: transcript needs more frames than the audio has"
            continue
        ok, ilabels, _, _ = kaldifst.get_linear_symbol_sequence(path)
        if not ok or len(ilabels) != n:
            failed[u] = "equal-align: no path of the right length"
            continue
        alis[u] = np.asarray(ilabels, dtype=np.int32)
    return alis, failed


# --------------------------------------------------------------------------------------------
# Monophone and triphone training


def _report_failed(failed, n, what):
    if failed:
        print(f"{what}: {len(failed)} of {n} utterances failed to align and were excluded "
              f"(first: {sorted(failed)[0]} {failed[sorted(failed)[0]]})", file=sys.stderr)


@single_threaded_blas()
def train_mono(data_dir, lang_dir, exp_dir, num_iters=40, num_gauss=1000, nj=1, config=None,
               max_init_utts=1000):
    """Monophone GMM-HMM from a flat start (Kaldi steps/train_mono.sh); writes exp_dir/final.mdl,
    tree, failed, log/. ``data_dir``/``lang_dir`` may also be TrainData / Lang-like objects.
    Returns the GmmModel."""
    data, lang = as_data(data_dir), as_lang(lang_dir)
    config = config or mono_config(num_iters, num_gauss)
    topo = lang.topo
    phones = list(topo.phones)
    ctx = khg.monophone_context_dependency(phones, topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx, topo)
    data.report_unusable("train-mono")
    utts = data.utts
    if not utts:
        raise UserError(f"{data.path}: no utterances with both features and text")
    preload_features(data, utts, nj, os.path.join(exp_dir, "log"))
    am = flat_start_am(tm.num_pdfs, (data.feats[u] for u in utts[:max_init_utts]))
    model = GmmModel(tm, ctx, am)
    graphs = {}
    alis, failed = equal_alignments(model, lang, data, utts, graphs=graphs)
    _report_failed(failed, len(utts), "equal alignment")
    # iteration 0 uses the equal alignments (Kaldi: gmm-acc-stats-ali on them)
    model, alis, failed2 = run_em(model, data, lang, exp_dir, config, alis, nj=nj,
                                  graphs=graphs)
    failed = failed2 or failed
    save_gmm(model, exp_dir)
    write_id(os.path.join(exp_dir, "phones_id"), phones_id(lang.phones))  # asrkd.identity
    write_failed(os.path.join(exp_dir, "failed"), failed)
    _report_failed(failed, len(utts), "train-mono")
    _write_info(exp_dir, model, config, len(utts), failed)
    return model


def _write_info(exp_dir, model, config, n, failed):
    info = {"num_pdfs": model.num_pdfs, "num_gauss": model.am.num_gauss, "utts": n,
            "failed": len(failed), "config": dataclasses.asdict(config)}
    with atomic_path(os.path.join(exp_dir, "info.json")) as tmp, open(tmp, "w") as f:
        json.dump(info, f, indent=1)


@single_threaded_blas()
def train_tri(data_dir, lang_dir, ali_dir, exp_dir, num_leaves=2000, num_gauss=10000, nj=1,
              num_iters=35, config=None, min_count=100.0):
    """Triphone GMM-HMM (Kaldi steps/train_deltas.sh) from the alignments in ``ali_dir``.

    Tree statistics, questions and tree come from asrkd.tree, the conversion of the alignments
    to the new tree from asrkd.transitions; GMMs start as one Gaussian per leaf from the leaf
    statistics (gmm-init-model), then Viterbi EM with realignment and mixing up to
    ``num_gauss``. Returns the GmmModel; writes exp_dir/final.mdl, tree, failed, log/."""
    data, lang = as_data(data_dir), as_lang(lang_dir)
    config = config or tri_config(num_iters, num_gauss)
    data.report_unusable("train-tri")
    preload_features(data, data.utts, nj, os.path.join(exp_dir, "log"))
    old = load_gmm(ali_dir)
    alis = AlignmentDir(ali_dir).transition_ids(data.utts)
    if len(alis) < len(data.utts):
        print(f"train-tri: {len(data.utts) - len(alis)} utterances have no alignment in "
              f"{ali_dir} (failed there) and start unaligned", file=sys.stderr)
    if not alis:
        raise UserError(f"{ali_dir}: no alignments for the utterances of {data.path}")
    log_dir = os.path.join(exp_dir, "log")
    os.makedirs(log_dir, exist_ok=True)
    t0 = time.time()
    stats = accumulate_tree_stats(data.feats, alis, old.tm)
    questions = build_questions(stats, lang.nonsilence_phones, lang.silence_phones)
    ctx, info = build_tree(stats, questions, lang.topo, num_leaves, min_count=min_count,
                           return_info=True)
    tm = khg.TransitionModel(ctx, lang.topo)
    counts, means, variances = leaf_stats(stats, ctx)
    iv = 1.0 / variances
    am = am_from_arrays([np.ones(1)] * len(means), [v[None] for v in iv],
                        [(m * v)[None] for m, v in zip(means, iv)])
    ot, nt = transition_tables(old.tm), transition_tables(tm)
    new_alis = {u: convert_alignment(a, old.tm, tm, ctx, ot, nt) for u, a in alis.items()}
    with open(os.path.join(log_dir, "tree.log"), "w") as f:
        _log(f, f"tree: {ctx.num_pdfs} leaves (asked {num_leaves}), objf "
                f"{info['objf_before']:.1f} -> {info['objf_after']:.1f}, "
                f"{len(questions)} questions, {len(alis)} alignments, {time.time() - t0:.1f}s")
    model = GmmModel(tm, ctx, am)
    model, new_alis, failed = run_em(model, data, lang, exp_dir, config, new_alis, nj=nj)
    save_gmm(model, exp_dir)
    write_id(os.path.join(exp_dir, "phones_id"), phones_id(lang.phones))  # asrkd.identity
    write_failed(os.path.join(exp_dir, "failed"), failed)
    _report_failed(failed, len(data.utts), "train-tri")
    _write_info(exp_dir, model, config, len(data.utts), failed)
    return model
