"""Decoding: GMM mono/triphone models over a word-loop HCLG on the synthetic corpus of
test_gmmtrain, acoustic-scale grid on dev, and the one decoding core fed with arbitrary
loglikes."""

import os

import numpy as np
import pytest

from asrkd.acwt import read_best_acwt
from asrkd.decode import decode_data_dir, decode_loglikes
from asrkd.errors import UserError
from asrkd.gmm import load_gmm
from asrkd.gmmtrain import train_mono, train_tri
from asrkd.scorer import GmmScorer
from conftest import word_loop_graph
from test_gmmtrain import make_corpus


def _word_loop_graph(lang, model_dir, graph_dir):
    """graph_dir for model_dir with a uniform loop over all of lang's words as G (no LM)."""
    words = [w for w, i in lang.words.items()
             if i != 0 and not w.startswith("#") and w not in ("<s>", "</s>")]
    return word_loop_graph(lang, model_dir, words, graph_dir)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from asrkd.align import align

    root = tmp_path_factory.mktemp("dec")
    train, test, lang = make_corpus(str(root / "corpus"))
    mono = str(root / "mono")
    train_mono(train, lang, mono, num_iters=10, num_gauss=100)
    align(train, lang, mono, str(root / "ali"))
    tri = str(root / "tri")
    train_tri(train, lang, str(root / "ali"), tri, num_leaves=60, num_gauss=200, num_iters=8,
              min_count=20)
    ref = str(root / "corpus" / "text_test")
    return root, train, test, lang, mono, tri, ref


@pytest.mark.parametrize("which", ["mono", "tri"])
def test_gmm_decodes_well_above_chance(setup, which):
    root, train, test, lang, mono, tri, ref = setup
    model_dir = mono if which == "mono" else tri
    graph = _word_loop_graph(lang, model_dir, str(root / f"graph_{which}"))
    scorer = GmmScorer(load_gmm(model_dir), test.feats)
    dec = str(root / f"decode_{which}")
    res = decode_data_dir(graph, scorer, list(test.feats), dec, [0.05, 0.1], ref_text=ref)
    best = res["acwt"]
    assert best in res["grid"] and read_best_acwt(dec) == best
    assert os.path.isfile(os.path.join(dec, "acwt_0.05", "wer"))
    wer = res["wer"][best]
    # chance with 10 words in a free loop is ~90% substitutions; the data are easy
    assert wer["wer"] < 20.0, wer
    assert wer["sents"] == len(test.feats)
    hyp = open(os.path.join(dec, "hyp.txt")).read().splitlines()
    assert len(hyp) == len(test.feats)
    assert open(os.path.join(dec, "wer")).read().startswith("%WER")


def test_decode_core_on_given_loglikes(setup):
    """The DNN path: any (T, num_pdfs) matrix. Scores that make one word sequence's frames
    likely decode to it, whatever produced them."""
    root, train, test, lang, mono, tri, ref = setup
    graph = _word_loop_graph(lang, mono, str(root / "graph_core"))
    from asrkd.decode import load_graph

    hclg, tm, words = load_graph(graph)
    m = load_gmm(mono)
    u = sorted(test.feats)[0]
    ll = GmmScorer(m, test.feats)(u)
    # log-softmax over pdfs minus a flat log-prior: a "posterior" scorer, as a DNN gives
    post = ll - np.logaddexp.reduce(ll, axis=1, keepdims=True) + np.log(m.num_pdfs)
    ids = decode_loglikes(hclg, tm, post, 0.5)
    assert " ".join(words[i] for i in ids) == test.text[u]
    with pytest.raises(UserError):
        decode_loglikes(hclg, tm, ll[:, :-1], 0.1)
    assert decode_loglikes(hclg, tm, ll[:0], 0.1) == []


def test_a_best_scale_at_the_edge_widens_the_grid(setup, tmp_path):
    """Known answer: the widened grid's choice is the choice of decoding all its values at once,
    and the grid grows past an edge (here far too large scales) towards the optimum."""
    root, train, test, lang, mono, tri, ref = setup
    graph = _word_loop_graph(lang, tri, str(root / "graph_widen"))
    scorer = GmmScorer(load_gmm(tri), test.feats)
    utts = list(test.feats)
    wide = decode_data_dir(graph, scorer, utts, str(tmp_path / "w"), [0.0005, 0.001],
                           ref_text=ref)
    grid = wide["grid"]
    assert min(grid) == 0.0005 and grid[-1] > 0.001 and len(grid) > 2  # widened upwards
    assert grid == sorted(grid)
    lines = open(tmp_path / "w" / "acwt_wers").read().split("\n")
    assert [float(x.split()[0]) for x in lines if x] == pytest.approx(grid, rel=1e-3)
    edge = open(tmp_path / "w" / "acwt_edge").read().strip()
    assert edge == ("inside" if wide["acwt"] < grid[-1] else "edge")
    fixed = decode_data_dir(graph, scorer, utts, str(tmp_path / "f"), grid, ref_text=ref,
                            widen=False)
    assert fixed["grid"] == grid and fixed["acwt"] == wide["acwt"]
    assert {a: r["wer"] for a, r in fixed["wer"].items()} == \
        {a: r["wer"] for a, r in wide["wer"].items()}
    # widen=False keeps the grid as given, best at its edge
    kept = decode_data_dir(graph, scorer, utts, str(tmp_path / "k"), [0.0005, 0.001],
                           ref_text=ref,
                           widen=False)
    assert kept["grid"] == [0.0005, 0.001] and kept["acwt"] == 0.001


def test_grid_needs_reference(setup, tmp_path):
    root, train, test, lang, mono, tri, ref = setup
    scorer = GmmScorer(load_gmm(mono), test.feats)
    with pytest.raises(UserError):
        decode_data_dir(str(root / "graph_mono"), scorer, list(test.feats), str(tmp_path),
                        [0.05, 0.1])


def _data_dir(path, data, text_path):
    """A Kaldi data dir holding ``data``'s features as feats.scp (+ cmvn.scp, utt2num_frames)."""
    from asrkd.data import write_data_dir
    from asrkd.features import compute_cmvn
    from asrkd.table import ArkWriter, write_table

    utts = sorted(data.feats)
    os.makedirs(path, exist_ok=True)
    wav = os.path.join(path, "dummy.wav")  # never read: features are given
    open(wav, "wb").close()
    write_data_dir(path, {u: wav for u in utts}, {u: data.text[u] for u in utts},
                   {u: u.split("-")[0] for u in utts})
    with ArkWriter(os.path.join(path, "feats.ark"), os.path.join(path, "feats.scp")) as w:
        for u in utts:
            w[u] = data.feats[u]
    write_table(os.path.join(path, "utt2num_frames"), {u: len(data.feats[u]) for u in utts})
    compute_cmvn(path)
    return path


@pytest.fixture(scope="module")
def data_dirs(setup):
    root, train, test = setup[:3]
    return (_data_dir(str(root / "data_train"), train, None),
            _data_dir(str(root / "data_test"), test, None))


def test_cli_pipeline_parallel(setup, data_dirs, monkeypatch):
    """The verbs on real data dirs (MFCC-like feats + deltas + CMVN read from disk), nj=2."""
    import asrkd.gmmtrain

    from asrkd.cli import main

    monkeypatch.setattr(asrkd.gmmtrain, "ACC_BATCH_FRAMES", 300)  # blocks enough for two jobs

    root, train, test, lang, mono, tri, ref = setup
    dtrain, dtest = data_dirs
    exp = str(root / "cli_mono")
    assert main(["train-mono", dtrain, lang.dir, exp, "--num-iters", "6", "--num-gauss", "80",
                 "--nj", "2"]) == 0
    assert os.path.isfile(os.path.join(exp, "log", "acc.1.2.log"))
    ali = str(root / "cli_ali")
    assert main(["align", dtest, lang.dir, exp, ali, "--nj", "2"]) == 0
    assert open(os.path.join(ali, "failed")).read() == ""
    graph = _word_loop_graph(lang, exp, str(root / "cli_graph"))
    dev = str(root / "cli_dev")
    assert main(["decode", graph, dtest, exp, dev, "--acwt-grid", "0.05,0.1", "--nj", "2"]) == 0
    wer = float(open(os.path.join(dev, "wer")).read().split()[1])
    assert wer < 25.0
    tst = str(root / "cli_test")
    assert main(["decode", graph, dtest, exp, tst, "--acwt-from", dev, "--ali-dir", ali]) == 0
    assert open(os.path.join(tst, "acwt")).read() == open(os.path.join(dev, "best_acwt")).read()
    assert 0.5 < float(open(os.path.join(tst, "frame_acc")).read()) <= 1.0
    per_utt = open(os.path.join(tst, "frame_acc_per_utt")).read().splitlines()[1:]
    assert len(per_utt) == len(test.feats)
    # WER on one speaker's utterances, frame accuracy on the whole (larger) test set
    sub, rest = str(root / "cli_sub"), str(root / "cli_rest")
    assert main(["subset-data-dir", "--num-speakers", "1", dtest, sub, rest]) == 0
    part = str(root / "cli_part")
    assert main(["decode", graph, sub, exp, part, "--acwt-from", dev, "--ali-dir", ali,
                 "--frame-acc-data", dtest]) == 0
    n_sub = len(open(os.path.join(sub, "utt2spk")).read().splitlines())
    assert n_sub < len(test.feats)
    assert len(open(os.path.join(part, "per_utt")).read().splitlines()) == n_sub + 1
    assert open(os.path.join(part, "frame_acc_per_utt")).read().splitlines()[1:] == per_utt
    assert open(os.path.join(part, "frame_acc")).read() == open(os.path.join(tst, "frame_acc")).read()
    assert main(["score", os.path.join(dtest, "text"), os.path.join(tst, "hyp.txt"),
                 str(root / "cli_score")]) == 0
    assert main(["decode", graph, dtest, str(root / "nope"), str(root / "x")]) == 1


def test_cli_decode_dnn_ensemble(setup, data_dirs):
    """MODEL as a dir of model*/final.pt: the DNN scorer path (random weights: plumbing only)."""
    import torch

    from asrkd.cli import main
    from asrkd.models import ModelConfig, build_model

    root, train, test, lang, mono, tri, ref = setup
    dtrain, dtest = data_dirs
    m = load_gmm(mono)
    ens = root / "ens"
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = ModelConfig(feat_dim=13, num_pdfs=m.num_pdfs, left_context=2, right_context=2,
                          hidden_dims=[32])
        net = build_model(cfg)
        # uneven priors: the best pdf of the posteriors is not that of the scaled scores
        net.pdf_counts.copy_(torch.arange(1, m.num_pdfs + 1) ** 3)
        os.makedirs(ens / f"model{seed}")
        net.save(str(ens / f"model{seed}" / "final.pt"))
    graph = _word_loop_graph(lang, mono, str(root / "graph_dnn"))
    out = str(root / "dec_dnn")
    assert main(["decode", graph, dtest, str(ens), out, "--acwt", "0.1", "--nj", "2"]) == 0
    assert len(open(os.path.join(out, "hyp.txt")).read().splitlines()) == len(test.feats)
    assert os.path.isfile(os.path.join(out, "wer"))
    # frame accuracy from the decode's own forward pass = a separate pass (frame-accuracy)
    from asrkd.align import align

    ali = str(root / "dnn_ali")
    align(test, lang, mono, ali)
    fa, sep = str(root / "dec_dnn_fa"), str(root / "fa_sep")
    assert main(["decode", graph, dtest, str(ens), fa, "--acwt", "0.1", "--nj", "2",
                 "--ali-dir", ali]) == 0
    assert main(["frame-accuracy", dtest, ali, str(ens), sep]) == 0
    per_utt = open(os.path.join(fa, "frame_acc_per_utt")).read()
    assert len(per_utt.splitlines()) == len(test.feats) + 1
    assert per_utt == open(os.path.join(sep, "frame_acc_per_utt")).read()
    # several models in one run (--also): each gets what a run of its own would give
    one, two = str(root / "dec_m1"), str(root / "dec_m2")
    assert main(["decode", graph, dtest, str(ens / "model1"), one, "--acwt", "0.1",
                 "--also", str(ens / "model2"), two]) == 0
    alone = str(root / "dec_m2_alone")
    assert main(["decode", graph, dtest, str(ens / "model2"), alone, "--acwt", "0.1"]) == 0
    assert open(os.path.join(two, "hyp.txt")).read() == \
        open(os.path.join(alone, "hyp.txt")).read()
    assert os.path.isfile(os.path.join(one, "wer"))
    assert main(["decode", graph, dtest, str(ens / "model1"), one, "--acwt", "0.1",
                 "--also", str(ens / "model2"), one]) == 1  # one dir for two models
    # each system at its own dev-tuned scale: '{model}' in --acwt-from
    for name, a in (("model1", "0.05"), ("model2", "0.2")):
        os.makedirs(ens / name / "decode_dev")
        (ens / name / "decode_dev" / "best_acwt").write_text(a + "\n")
    assert main(["decode", graph, dtest, str(ens / "model1"), one, "--acwt-from",
                 "{model}/decode_dev", "--also", str(ens / "model2"), two]) == 0
    assert open(os.path.join(one, "acwt")).read() == "0.05\n"
    assert open(os.path.join(two, "acwt")).read() == "0.2\n"


def test_mono_on_tiny_speech(tiny_data, tmp_path):
    """A short monophone run on the synthetic espeak corpus: dev aligns and decodes far better
    than chance over a word loop of the dev vocabulary."""
    from asrkd.align import align
    from asrkd.data import DataDir
    from asrkd.scorer import make_scorer
    from asrkd.lang import prepare_lang

    lang = prepare_lang(str(tmp_path / "lang"), [os.path.join(tiny_data["train"], "text"),
                                                 os.path.join(tiny_data["dev"], "text")])
    mono = str(tmp_path / "mono")
    train_mono(tiny_data["train_mfcc"], lang.dir, mono, num_iters=12, num_gauss=300, nj=2)
    failed = align(tiny_data["dev_mfcc"], lang.dir, mono, str(tmp_path / "ali_dev"))
    dev = DataDir(tiny_data["dev_mfcc"])
    assert len(failed) < len(dev.utts)
    # uniform loop over the dev words: small graph, chance WER ~100%
    graph = word_loop_graph(lang, mono, {w for t in dev.text.values() for w in t.split()},
                            str(tmp_path / "graph"))
    res = decode_data_dir(graph, make_scorer(mono, tiny_data["dev_mfcc"]), dev.utts,
                          str(tmp_path / "decode"), [0.05, 0.1], ref_text=dev.file("text"))
    assert res["wer"][res["acwt"]]["wer"] < 75.0, res


def test_one_scale_for_several_systems(setup, tmp_path):
    """Known answer: grid-only decodes choose nothing; choose_acwt picks the value of least
    summed dev errors (here two systems whose own optima differ), and applying it makes each
    decode dir's hypotheses those of that value, the same as a decode at that fixed scale."""
    from asrkd.acwt import apply_acwt, choose_acwt, read_acwt_values

    root, train, test, lang, mono, tri, ref = setup
    utts = list(test.feats)
    systems = {}
    for which, model_dir in (("mono", mono), ("tri", tri)):
        graph = _word_loop_graph(lang, model_dir, str(root / f"graph_pool_{which}"))
        scorer = GmmScorer(load_gmm(model_dir), test.feats)
        d = str(tmp_path / which)
        res = decode_data_dir(graph, scorer, utts, d, [0.0005, 0.001, 0.002], ref_text=ref,
                              grid_only=True)
        assert res["acwt"] is None and not os.path.exists(os.path.join(d, "hyp.txt"))
        assert len(res["grid"]) == 3 + 8  # the grid and every value widening may try
        systems[which] = (graph, scorer, d, read_acwt_values(d))
    tables = [t for *_, t in systems.values()]
    common = sorted(set(tables[0]) & set(tables[1]))
    errors = {a: tables[0][a][0] + tables[1][a][0] for a in common}
    expect = min(common, key=lambda a: (errors[a], abs(a - 0.1)))
    out = str(tmp_path / "pooled")
    res = choose_acwt(out, [d for _, _, d, _ in systems.values()])
    assert res["acwt"] == expect and read_best_acwt(out) == pytest.approx(expect, rel=1e-4)
    words = tables[0][expect][1] + tables[1][expect][1]
    assert res["wers"][expect] == pytest.approx(100.0 * errors[expect] / words)
    for which, (graph, scorer, d, _) in systems.items():
        acwt = apply_acwt(out, d)
        assert acwt == pytest.approx(expect, rel=1e-4)
        assert float(open(os.path.join(d, "acwt")).read()) == pytest.approx(expect, rel=1e-4)
        hyp = open(os.path.join(d, "hyp.txt")).read()
        fixed = decode_data_dir(graph, scorer, utts, str(tmp_path / f"fixed_{which}"), expect,
                                ref_text=ref)
        assert fixed["acwt"] == expect
        if expect == sorted(common)[len(common) // 2]:  # searched at that very scale
            assert hyp == open(tmp_path / f"fixed_{which}" / "hyp.txt").read()
        assert open(os.path.join(d, "wer")).read() == \
            open(os.path.join(d, f"acwt_{expect:g}", "wer")).read()
    with pytest.raises(UserError, match="no acwt_values"):
        choose_acwt(out, [str(tmp_path)])


def test_a_system_chooses_its_own_scale_into_its_dev_dir(setup, tmp_path):
    """choose-acwt with a system's own dev dir as OUT: its choice stays there (best_acwt,
    acwt_wers, acwt_edge) after the dir itself gets the scale; the test dir gets the same."""
    from asrkd.cli import main
    from asrkd.acwt import read_acwt_values

    root, train, test, lang, mono, tri, ref = setup
    graph = _word_loop_graph(lang, tri, str(root / "graph_own"))
    scorer = GmmScorer(load_gmm(tri), test.feats)
    dev, tst = str(tmp_path / "dev"), str(tmp_path / "test")
    for d in (dev, tst):
        decode_data_dir(graph, scorer, list(test.feats), d, [0.0005, 0.001, 0.002],
                        ref_text=ref, grid_only=True)
    vals = read_acwt_values(dev)
    best = min(vals, key=lambda a: (vals[a][0], abs(a - 0.1)))
    assert main(["choose-acwt", dev, dev, "--apply", tst]) == 0
    assert read_best_acwt(dev) == pytest.approx(best, rel=1e-4)
    for d in (dev, tst):
        assert float(open(os.path.join(d, "acwt")).read()) == pytest.approx(best, rel=1e-4)
        assert os.path.isfile(os.path.join(d, "hyp.txt"))
    assert os.path.isfile(os.path.join(dev, "acwt_wers"))
    assert open(os.path.join(dev, "acwt_edge")).read().strip() in ("inside", "edge")
