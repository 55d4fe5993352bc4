"""Forced alignment (asrkd.align) with a monophone trained on test_gmmtrain's tiny corpus:
the alignment dir it writes, failures, and alignment over only the pdfs a graph uses."""

import os

import numpy as np

from asrkd.align import UttGraph, align, align_utterance, compile_graphs
from asrkd.alignment import AlignmentDir
from asrkd.gmm import PackedGmm, load_gmm
from asrkd.gmmdata import TrainData
from asrkd.table import read_scp


def test_align_and_failures(gmm_corpus, gmm_mono, tmp_path):
    train, _, lang = gmm_corpus
    # an utterance whose transcript needs far more frames than its audio has
    feats = dict(train.feats)
    text = dict(train.text)
    u0 = sorted(feats)[0]
    feats["999-9-0000"] = feats[u0][:10]
    text["999-9-0000"] = "DATS DATS DATS DATS DATS"
    ali_dir = str(tmp_path / "ali")
    failed = align(TrainData(feats, text), lang, gmm_mono, ali_dir)
    assert list(failed) == ["999-9-0000"]
    assert open(os.path.join(ali_dir, "failed")).read().startswith("999-9-0000 ")
    alis = AlignmentDir(ali_dir).transition_ids()
    assert sorted(alis) == sorted(train.feats)
    m = load_gmm(ali_dir)
    tid2pdf = np.asarray(m.tm.transition_id_to_pdf_array())
    pdfs = read_scp(os.path.join(ali_dir, "pdf.scp"))
    counts = np.zeros(m.num_pdfs, np.int64)
    for u, a in alis.items():
        assert len(a) == len(feats[u])
        assert np.array_equal(tid2pdf[a], pdfs[u])
        counts += np.bincount(pdfs[u], minlength=m.num_pdfs)
    stored = np.array(open(os.path.join(ali_dir, "pdf_counts")).read().split(), dtype=np.int64)
    assert np.array_equal(stored, counts)
    assert int(open(os.path.join(ali_dir, "num_pdfs")).read()) == m.num_pdfs


def test_graph_labels_and_subset_alignment_match_full(gmm_corpus, gmm_mono):
    import kaldifst

    train, _, lang = gmm_corpus
    m = load_gmm(gmm_mono)
    packed = PackedGmm(m.am)
    tid2pdf = np.asarray(m.tm.transition_id_to_pdf_array(), dtype=np.int64)
    utts = train.utts[:5]
    graphs, failed = compile_graphs(m, lang, {u: train.text[u] for u in utts})
    assert not failed
    for u in utts:
        f = graphs[u]
        labels = {a.ilabel for s in range(f.num_states) for a in kaldifst.ArcIterator(f, s)}
        g = UttGraph(f, tid2pdf)
        assert g.tids.tolist() == sorted(labels - {0})
        assert len(g.pdfs) < m.num_pdfs  # a transcript uses only some of the phones
        x = train.feats[u]
        full, _ = align_utterance(m.tm, f, packed.pdf_loglikes(x), u,
                                  disambig=lang.disambig_phones)
        sub, _ = align_utterance(m.tm, g, packed.pdf_loglikes(x, g.pdfs), u,
                                 disambig=lang.disambig_phones, tid2pdf=tid2pdf)
        assert full is not None and np.array_equal(full, sub)
