"""GMM-HMM: vectorized statistics, model storage, mono/triphone training and alignment on a tiny
synthetic corpus (words as sequences of phone-state-specific Gaussian feature segments)."""

import os

import numpy as np
import pytest

from asrkd.alignment import AlignmentDir
from asrkd.errors import UserError
from asrkd.gmm import (GmmModel, GmmStats, PackedGmm, TrainData, accumulate, am_from_arrays,
                       load_model, save_model, train_mono, train_tri)
from asrkd.lang import prepare_lang

PHONES = ["AA", "B", "D", "IY", "K", "S", "T", "UW", "M", "N"]
WORDS = {"BAD": "B AA D", "SEE": "S IY", "TOO": "T UW", "KIT": "K IY T", "MAN": "M AA N",
         "NOON": "N UW N", "DATS": "D AA T S", "SUM": "S UW M", "BIN": "B IY N", "TAK": "T AA K"}


def _utterance(rng, means, words, dim, noise):
    segs = [("SIL", s) for s in range(3)]
    for w in words:
        for p in WORDS[w].split():
            segs += [(p, s) for s in range(3)]
    segs += [("SIL", s) for s in range(3)]
    # a phone's middle depends on its left neighbour a little: something for the tree to find
    x = [means[k] + noise * rng.normal(size=(rng.integers(2, 6), dim)) for k in segs]
    return np.concatenate(x).astype(np.float32)


def make_corpus(root, n_utts=80, n_test=20, dim=13, seed=0, noise=0.6):
    """Synthetic corpus: (train TrainData, test TrainData, Lang). Each (phone, HMM state) has
    its own mean; utterances are SIL + 2-4 random words + SIL."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    lex = os.path.join(root, "lexicon.txt")
    with open(lex, "w") as f:
        f.writelines(f"{w} {p}\n" for w, p in WORDS.items())
    means = {(p, s): rng.normal(0, 2, dim) for p in PHONES + ["SIL"] for s in range(3)}
    sets = []
    for name, n in (("train", n_utts), ("test", n_test)):
        feats, text = {}, {}
        for i in range(n):
            utt = f"{100 + i % 3}-{1 if name == 'train' else 2}-{i:04d}"
            ws = [str(w) for w in rng.choice(sorted(WORDS), size=rng.integers(2, 5))]
            feats[utt] = _utterance(rng, means, ws, dim, noise)
            text[utt] = " ".join(ws)
        with open(os.path.join(root, f"text_{name}"), "w") as f:
            f.writelines(f"{u} {text[u]}\n" for u in sorted(text))
        sets.append(TrainData(feats, text))
    lang = prepare_lang(os.path.join(root, "lang"), [os.path.join(root, "text_train")],
                        lexicon_path=lex)
    return sets[0], sets[1], lang


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def mono(corpus, tmp_path_factory):
    train, _, lang = corpus
    d = str(tmp_path_factory.mktemp("mono"))
    train_mono(train, lang, d, num_iters=10, num_gauss=100)
    return d


def test_monophone_training_is_repeatable(corpus, mono, tmp_path):
    """A second run in the same process (the C rand() state has moved on) gives the same model:
    a recipe killed mid-stage and rerun must reach the same numbers."""
    import ctypes

    train, _, lang = corpus
    ctypes.CDLL(None).rand()  # disturb the state Kaldi's Gaussian splitting draws from
    again = str(tmp_path / "mono2")
    train_mono(train, lang, again, num_iters=10, num_gauss=100)
    a, b = np.load(os.path.join(mono, "final.mdl")), np.load(os.path.join(again, "final.mdl"))
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k


def _random_am(rng, num_pdfs, dim, max_gauss=4):
    w, iv, mi = [], [], []
    for _ in range(num_pdfs):
        k = int(rng.integers(1, max_gauss + 1))
        ww = rng.random(k) + 0.1
        w.append(ww / ww.sum())
        iv.append(1.0 / (0.5 + rng.random((k, dim))))
        mi.append(rng.normal(size=(k, dim)) * iv[-1])
    return am_from_arrays(w, iv, mi)


def test_vectorized_stats_equal_binding_accumulation():
    import kaldi_hmm_gmm as khg

    rng = np.random.default_rng(1)
    dim, num_pdfs = 6, 5
    am = _random_am(rng, num_pdfs, dim)
    x = rng.normal(size=(300, dim)).astype(np.float32)
    pdfs = rng.integers(0, num_pdfs, size=300)
    stats = accumulate(PackedGmm(am), x, pdfs)

    acc = khg.AccumAmDiagGmm()
    acc.init(am, khg.str_to_gmm_flags("mvw"))
    tot = sum(acc.accumulate_for_gmm(am, x[t], int(pdfs[t]), 1.0) for t in range(len(x)))
    packed = PackedGmm(am)
    for p in range(num_pdfs):
        a = acc.get_acc(p)
        g = slice(packed.offsets[p], packed.offsets[p + 1])
        np.testing.assert_allclose(stats.occ[g], a.occupancy, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.x[g], a.mean_accumulator, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stats.xx[g], a.variance_accumulator, rtol=1e-4, atol=1e-4)
    assert stats.loglike == pytest.approx(tot, rel=1e-5)
    assert stats.frames == 300
    # per-pdf log-likelihoods used for alignment/decoding agree with the binding's
    ll = packed.pdf_loglikes(x[:20])
    for t in range(20):
        for p in range(num_pdfs):
            assert ll[t, p] == pytest.approx(am.log_likelihood(p, x[t]), abs=2e-3)


def test_model_reload_bit_exact(mono, tmp_path):
    m = load_model(mono)
    save_model(m, str(tmp_path))
    m2 = load_model(str(tmp_path))
    assert str(m2.tm) == str(m.tm)
    assert np.array_equal(np.asarray(m2.tm.log_probs), np.asarray(m.tm.log_probs))
    s1, s2 = m.am.__getstate__(), m2.am.__getstate__()
    assert len(s1) == len(s2) and all(np.array_equal(a, b) for a, b in zip(s1, s2))
    assert all(np.array_equal(m.am.get_pdf(p).gconsts, m2.am.get_pdf(p).gconsts)
               for p in range(m.am.num_pdfs))
    assert m2.ctx.__getstate__() == m.ctx.__getstate__()
    with open(os.path.join(mono, "final.mdl"), "rb") as a, \
            open(os.path.join(tmp_path, "final.mdl"), "rb") as b:
        assert a.read() == b.read()
    # the tree file is Kaldi binary
    with open(os.path.join(mono, "tree"), "rb") as f:
        assert f.read(20).startswith(b"\0BContextDependency")


def test_load_rejects_non_model(tmp_path):
    (tmp_path / "final.mdl").write_bytes(b"not a model")
    with pytest.raises(UserError):
        load_model(str(tmp_path))
    with pytest.raises(UserError):
        load_model(str(tmp_path / "nope"))


def test_mono_training_improves_likelihood(mono):
    lines = open(os.path.join(mono, "log", "train.log")).read().splitlines()
    ll = [float(line.split("loglike/frame ")[1].split()[0]) for line in lines]
    assert len(ll) == 10
    assert ll[-1] > ll[0] + 5  # flat start -> trained
    # close to the generating noise entropy: 13 * 0.5 * log(2 pi e 0.36) = -11.8
    assert ll[-1] > -13.0
    m = load_model(mono)
    assert 90 <= m.am.num_gauss <= 110
    assert open(os.path.join(mono, "failed")).read() == ""


def test_align_and_failures(corpus, mono, tmp_path):
    from asrkd.align import align

    train, _, lang = corpus
    # an utterance whose transcript needs far more frames than its audio has
    feats = dict(train.feats)
    text = dict(train.text)
    u0 = sorted(feats)[0]
    feats["999-9-0000"] = feats[u0][:10]
    text["999-9-0000"] = "DATS DATS DATS DATS DATS"
    ali_dir = str(tmp_path / "ali")
    failed = align(TrainData(feats, text), lang, mono, ali_dir)
    assert list(failed) == ["999-9-0000"]
    assert open(os.path.join(ali_dir, "failed")).read().startswith("999-9-0000 ")
    alis = AlignmentDir(ali_dir).transition_ids()
    assert sorted(alis) == sorted(train.feats)
    m = load_model(ali_dir)
    tid2pdf = np.asarray(m.tm.transition_id_to_pdf_array())
    from asrkd.table import read_scp

    pdfs = read_scp(os.path.join(ali_dir, "pdf.scp"))
    counts = np.zeros(m.num_pdfs, np.int64)
    for u, a in alis.items():
        assert len(a) == len(feats[u])
        assert np.array_equal(tid2pdf[a], pdfs[u])
        counts += np.bincount(pdfs[u], minlength=m.num_pdfs)
    stored = np.array(open(os.path.join(ali_dir, "pdf_counts")).read().split(), dtype=np.int64)
    assert np.array_equal(stored, counts)
    assert int(open(os.path.join(ali_dir, "num_pdfs")).read()) == m.num_pdfs


@pytest.fixture(scope="module")
def tri(corpus, mono, tmp_path_factory):
    from asrkd.align import align

    train, _, lang = corpus
    ali_dir = str(tmp_path_factory.mktemp("mono_ali"))
    align(train, lang, mono, ali_dir)
    d = str(tmp_path_factory.mktemp("tri"))
    train_tri(train, lang, ali_dir, d, num_leaves=60, num_gauss=200, num_iters=8, min_count=20)
    return d


def test_tri_training(tri):
    m = load_model(tri)
    assert m.ctx.context_width == 3
    assert m.num_pdfs == 60
    lines = open(os.path.join(tri, "log", "train.log")).read().splitlines()
    assert all(" 0 failed" in line for line in lines)
    assert float(lines[-1].split("loglike/frame ")[1].split()[0]) > -13.0


def test_stats_add():
    a = GmmStats.zeros(2, 3)
    b = GmmStats(np.ones(2), np.ones((2, 3)), np.ones((2, 3)), 1.5, 4)
    a.add(b).add(b)
    assert a.frames == 8 and a.loglike == 3.0 and a.occ.tolist() == [2.0, 2.0]
    assert isinstance(GmmModel(None, None).am, type(None))


def test_pdf_subset_loglikes_equal_full():
    rng = np.random.default_rng(3)
    am = _random_am(rng, 12, 5, max_gauss=7)
    packed = PackedGmm(am)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    full = packed.pdf_loglikes(x)
    assert full.shape == (40, 12)
    for p in range(12):
        assert full[3, p] == pytest.approx(am.log_likelihood(p, x[3]), abs=2e-3)
    sub = np.array([7, 2, 11, 2, 0])
    np.testing.assert_allclose(packed.pdf_loglikes(x, sub), full[:, sub], rtol=1e-6)


def test_graph_labels_and_subset_alignment_match_full(corpus, mono):
    import kaldifst

    from asrkd.align import UttGraph, align_utterance, compile_graphs

    train, _, lang = corpus
    m = load_model(mono)
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


def test_mono_parallel_jobs_give_the_same_bytes(corpus, tmp_path, monkeypatch):
    # nj > 1: forked jobs share the parent's features, graphs and model; statistics are summed
    # in fixed point over blocks fixed by the data, so the job count changes nothing
    import asrkd.gmm as gmm

    monkeypatch.setattr(gmm, "ACC_BATCH_FRAMES", 500)  # many blocks: nj splits them differently
    train, _, lang = corpus
    assert len(gmm.acc_blocks(TrainData(dict(train.feats), train.text), sorted(train.feats))) > 3
    logs, models = [], []
    for nj in (1, 2, 3):
        d = str(tmp_path / f"nj{nj}")
        train_mono(TrainData(dict(train.feats), train.text), lang, d, num_iters=4, num_gauss=60,
                   nj=nj)
        logs.append([line.split("loglike/frame ")[1].split()[0]
                     for line in open(os.path.join(d, "log", "train.log"))])
        with np.load(os.path.join(d, "final.mdl")) as z:
            models.append({k: z[k] for k in z.files})
    assert logs[0] == logs[1] == logs[2]
    for m in models[1:]:
        assert m.keys() == models[0].keys()
        for k in m:
            assert np.array_equal(m[k], models[0][k]), k


def test_fixed_point_stats_sum_exactly():
    rng = np.random.default_rng(0)
    parts = [GmmStats(rng.random(3) * 1e3, rng.normal(size=(3, 2)) * 50,
                      rng.random((3, 2)) * 1e4, float(rng.normal() * 1e5), 100) for _ in range(6)]
    fixed = [p.to_fixed() for p in parts]
    a = GmmStats.zeros(3, 2).to_fixed()
    for f in fixed:
        a.add(f)
    b = GmmStats.zeros(3, 2).to_fixed()
    for f in fixed[3:] + fixed[:3]:  # another grouping and order: the same integers
        b.add(f)
    assert np.array_equal(a.occ, b.occ) and np.array_equal(a.xx, b.xx) and a.loglike == b.loglike
    want = sum(p.xx for p in parts)
    np.testing.assert_allclose(a.from_fixed().xx, want, rtol=0, atol=6 * 2.0 ** -20)
    assert a.from_fixed().frames == 600
