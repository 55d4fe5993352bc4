"""Lattices (asrkd.lattice): the search against Kaldi's LatticeFasterDecoder, rescoring at
another scale against a full decode at that scale, posteriors and best paths on hand-built
lattices with known answers, and Kaldi text I/O."""

import io
import math
import os

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
import pytest

from asrkd import lattice
from asrkd.decode import decode_lattice, load_graph, make_decoder
from asrkd.gmm import load_gmm
from asrkd.gmmtrain import train_mono
from asrkd.scorer import GmmScorer
from conftest import word_loop_graph
from test_gmmtrain import make_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lat")
    train, test, lang = make_corpus(str(root / "corpus"))
    mono = str(root / "mono")
    train_mono(train, lang, mono, num_iters=6, num_gauss=80)
    words = [w for w, i in lang.words.items()
             if i != 0 and not w.startswith("#") and w not in ("<s>", "</s>")]
    graph = word_loop_graph(lang, mono, words, str(root / "graph"))
    scorer = GmmScorer(load_gmm(mono), test.feats)
    utts = sorted(test.feats)[:6]
    return graph, {u: scorer(u) for u in utts}, scorer


def _kaldi_words(graph_dir, tm, ll, acwt):
    hclg = kaldifst.StdVectorFst.read(f"{graph_dir}/HCLG.fst")
    tid2pdf = np.asarray(tm.transition_id_to_pdf_array())
    dec = khg.LatticeFasterDecoder(hclg, khg.LatticeFasterDecoderConfig(beam=20.0,
                                                                        max_active=20000))
    mat = np.ascontiguousarray(acwt * ll[:, tid2pdf[1:]], dtype=np.float32)
    ok, _, words, _ = khg.decode_utterance_lattice_faster(dec, khg.DecodableCtc(mat), tm, "u",
                                                          True)
    return list(words) if ok else []


def test_search_finds_kaldis_best_path(setup):
    graph_dir, lls, scorer = setup
    g, tm, _ = load_graph(graph_dir)
    dec = make_decoder(None, beam=20.0, lattice_beam=8.0, max_active=20000)
    for u, ll in lls.items():
        lat = decode_lattice(g, tm, ll, 0.1, dec, u)
        assert lat.words(0.1) == _kaldi_words(graph_dir, tm, ll, 0.1), u
        assert len(lat.words(0.1)) > 0


def test_rescoring_equals_a_full_decode_at_each_scale(setup):
    """Searched once at 0.1 with a wide lattice beam, the best path at 0.03 to 2 is the full
    decode's at that scale, cost included. (At 0.003 the full decode's one-word path is
    outside the lattice: what a lattice beam means. The hand-built lattice below shows the
    best path moving with the scale.)"""
    graph_dir, lls, scorer = setup
    g, tm, _ = load_graph(graph_dir)
    dec = make_decoder(None, beam=30.0, lattice_beam=30.0, max_active=20000)
    changed = 0
    for u, ll in lls.items():
        lat = decode_lattice(g, tm, ll, 0.1, dec, u)
        for a in (0.03, 0.3, 2.0, 0.003):
            full = decode_lattice(g, tm, ll, a, dec, u)
            if a == 0.003:
                break
            assert lat.words(a) == full.words(a), (u, a)
            _, c1 = lat.best_path(a)
            _, c2 = full.best_path(a)
            assert c1 == pytest.approx(c2, rel=1e-5, abs=1e-3)
        changed += full.words(0.003) != lat.words(0.003)
    assert changed > 0  # the edge of the lattice is real on these data


def _two_paths():
    """0 -a-> 1 -> 2 (final) and 0 -b-> 2: path A graph 1, ac 10 (one frame each arc); path
    B graph 4, ac 4 on one arc."""
    arr = np.array
    return lattice.Lattice(
        src=arr([0, 0, 1], np.int32), dst=arr([1, 2, 2], np.int32),
        ilabel=arr([1, 2, 3], np.int32), olabel=arr([5, 6, 0], np.int32),
        graph=arr([1.0, 4.0, 0.0], np.float32), ac=arr([5.0, 4.0, 5.0], np.float32),
        final=arr([np.inf, np.inf, 0.5], np.float32), state_frame=arr([0, 1, 2], np.int32))


def test_best_path_and_posteriors_known_answer():
    lat = _two_paths()
    # cost A = 1 + 10 a, B = 4 + 4 a: A wins below a = 0.5, B above
    assert lat.words(0.4) == [5] and lat.words(0.6) == [6]
    arcs, cost = lat.best_path(0.4)
    assert list(arcs) == [0, 2] and cost == pytest.approx(1 + 10 * 0.4 + 0.5)
    post = lat.arc_posteriors(0.4)
    ca, cb = 1 + 10 * 0.4, 4 + 4 * 0.4
    pa = math.exp(-ca) / (math.exp(-ca) + math.exp(-cb))
    assert post == pytest.approx([pa, 1 - pa, pa], rel=1e-5)


def test_kaldi_text_round_trip(setup):
    graph_dir, lls, scorer = setup
    g, tm, _ = load_graph(graph_dir)
    u, ll = next(iter(lls.items()))
    lat = decode_lattice(g, tm, ll, 0.1, make_decoder(None, 16.0, 6.0, 7000), u)
    f = io.StringIO()
    lattice.write_kaldi_text(f, u, lat)
    lattice.write_kaldi_text(f, "second", _two_paths())
    text = f.getvalue()
    assert text.startswith(f"{u}\n0\t") and "\n\nsecond\n" in text
    back = dict(lattice.read_kaldi_text(io.StringIO(text)))
    assert list(back) == [u, "second"]
    for a in (0.05, 0.1, 0.2):
        assert back[u].words(a) == lat.words(a)
        assert back[u].best_path(a)[1] == pytest.approx(lat.best_path(a)[1], rel=1e-4)
    assert np.array_equal(back[u].state_frame[back[u].dst], lat.state_frame[lat.dst])
    assert back["second"].words(0.6) == [6]


def _three_paths():
    """_two_paths plus a second alignment of word 5 (graph 2, ac 6 on its first arc)."""
    arr = np.array
    return lattice.Lattice(
        src=arr([0, 0, 0, 1], np.int32), dst=arr([1, 1, 2, 2], np.int32),
        ilabel=arr([1, 4, 2, 3], np.int32), olabel=arr([5, 5, 6, 0], np.int32),
        graph=arr([1.0, 2.0, 4.0, 0.0], np.float32), ac=arr([5.0, 6.0, 4.0, 5.0], np.float32),
        final=arr([np.inf, np.inf, 0.5], np.float32), state_frame=arr([0, 1, 2], np.int32))


def test_nbest_distinct_word_sequences_with_their_costs():
    lat = _three_paths()
    nb = lat.nbest(5, 0.4)
    assert [seq for seq, *_ in nb] == [[5], [6]]  # word 5's two alignments are one entry
    (s5, c5, g5, a5), (s6, c6, g6, a6) = nb
    assert (c5, g5, a5) == pytest.approx((1 + 0.5 + 0.4 * 10, 1.5, 10.0))
    assert (c6, g6, a6) == pytest.approx((4 + 0.5 + 0.4 * 4, 4.5, 4.0))
    assert lat.words_cost([6, 5], 0.4)[0] == math.inf


def test_ctm_times_and_confidence():
    lat = _three_paths()
    post = lat.arc_posteriors(0.4)
    ((w, start, dur, conf),) = lat.ctm(0.4, frame_shift=0.01)
    assert w == 5 and start == 0.0 and dur == pytest.approx(0.02)
    assert conf == pytest.approx(post[0] + post[1], rel=1e-5)  # both alignments of word 5
    # silence at the end of the word's span is not the word: transition-id 3 is phone 1 (SIL)
    ((_, start, dur, _),) = lat.ctm(0.4, phone_of=lambda t: 1 if t == 3 else 2, silence={1})
    assert start == 0.0 and dur == pytest.approx(0.01)


def test_ctm_confidence_counts_an_alignment_labelled_in_the_silence_before():
    """Word 5 twice: the best path A (cost 4 at acwt 1) has silence at frame 0 and its label
    at frame 1; B (cost 5) carries the label at frame 0. The word's confidence is both
    (1.0), not A's share alone (what a window from the best path's own label would give)."""
    arr = np.array
    lat = lattice.Lattice(
        src=arr([0, 0, 1, 2, 3, 4], np.int32), dst=arr([1, 2, 3, 4, 5, 5], np.int32),
        ilabel=arr([3, 1, 1, 2, 2, 2], np.int32), olabel=arr([0, 5, 5, 0, 0, 0], np.int32),
        graph=arr([0, 1, 1, 0, 0, 0], np.float32), ac=arr([1, 2, 1, 1, 1, 1], np.float32),
        final=arr([np.inf] * 5 + [0.0], np.float32), state_frame=arr([0, 1, 1, 2, 2, 3], np.int32))
    assert lat.words(1.0) == [5] and list(lat.best_path(1.0)[0]) == [0, 2, 4]
    post = lat.arc_posteriors(1.0)
    assert post[2] == pytest.approx(math.exp(-4) / (math.exp(-4) + math.exp(-5)), rel=1e-5)
    ((w, start, dur, conf),) = lat.ctm(1.0, phone_of=lambda t: 1 if t == 3 else 2, silence={1})
    assert w == 5 and start == pytest.approx(0.01) and dur == pytest.approx(0.02)
    assert conf == pytest.approx(1.0, rel=1e-5)


def test_nbest_and_ctm_on_a_decoded_lattice(setup):
    graph_dir, lls, scorer = setup
    g, tm, _ = load_graph(graph_dir)
    u, ll = next(iter(lls.items()))
    lat = decode_lattice(g, tm, ll, 0.1, make_decoder(None, 20.0, 20.0, 7000), u)
    nb = lat.nbest(4, 0.1)
    assert nb[0][0] == lat.words(0.1) and nb[0][1] == pytest.approx(lat.best_path(0.1)[1])
    assert len({tuple(s) for s, *_ in nb}) == len(nb) > 1
    assert all(a[1] <= b[1] for a, b in zip(nb, nb[1:]))
    ctm = lat.ctm(0.1, phone_of=tm.transition_id_to_phone, silence={1})
    assert [w for w, *_ in ctm] == lat.words(0.1)
    ends = [s + d for _, s, d, _ in ctm]
    assert all(e <= s2 + 1e-9 for e, (_, s2, _, _) in zip(ends, ctm[1:]))
    assert ends[-1] <= len(ll) * 0.01 + 1e-9 and all(0 < c <= 1 for *_, c in ctm)


def _arpa(path, probs):
    """A unigram ARPA of {word: log10 p} (with </s> and <s>)."""
    with open(path, "w") as f:
        f.write(f"\\data\\\nngram 1={len(probs)}\n\n\\1-grams:\n")
        f.writelines(f"{p} {w}\n" for w, p in probs.items())
        f.write("\n\\end\\\n")


def test_lm_rescore_hand_checked(tmp_path, monkeypatch):
    """_three_paths at acwt 0.4: word 5 ('a') costs 5.5, word 6 ('b') 6.1 with the graph's LM.
    The old LM gave p(a) = p(b); the new one makes b 100x likelier: b's cost drops by ln 100
    relative to a's, so b wins; with the old LM as the new one nothing changes."""
    from asrkd import latdir

    lat = _three_paths()
    monkeypatch.setattr(latdir, "read_lattices", lambda d, desc=None: iter([("u1", lat)]))
    monkeypatch.setattr(latdir, "_words", lambda g: {5: "a", 6: "b"})
    old, new = tmp_path / "old.arpa", tmp_path / "new.arpa"
    _arpa(old, {"a": -1.0, "b": -1.0, "</s>": -0.5, "<s>": -99})
    _arpa(new, {"a": -2.0, "b": 0.0, "</s>": -0.5, "<s>": -99})
    assert latdir.lm_cost(latdir.NgramLM.read_arpa(str(new)), ["b"]) == pytest.approx(
        0.5 * math.log(10))
    res = latdir.lm_rescore("g", "d", str(old), str(new), str(tmp_path / "r"), n=5, acwt=0.4)
    assert res["changed"] == 1 and open(tmp_path / "r" / "hyp.txt").read() == "u1 b\n"
    res = latdir.lm_rescore("g", "d", str(old), str(old), str(tmp_path / "s"), n=5, acwt=0.4)
    assert res["changed"] == 0 and open(tmp_path / "s" / "hyp.txt").read() == "u1 a\n"


def test_decode_writes_lattices_the_verbs_read(setup, tmp_path, capsys):
    """decode --write-lattices, then lattice-ctm and lattice-nbest through the CLI: the CTM's
    words and the first of each n-best list are the decode's hypotheses."""
    from asrkd.cli import main
    from asrkd.decode import decode_data_dir

    graph_dir, lls, scorer = setup
    utts = sorted(lls)
    dec = str(tmp_path / "dec")
    decode_data_dir(graph_dir, scorer, utts, dec, 0.1, nj=2, write_lattices=True)
    assert {"lat.1.gz", "lat.2.gz", "lat_acwt"} <= set(os.listdir(dec))
    hyp = dict(line.split(" ", 1) for line in open(os.path.join(dec, "hyp.txt")).read()
               .splitlines())
    capsys.readouterr()
    assert main(["lattice-ctm", graph_dir, dec]) in (0, None)
    lines = [x.split() for x in capsys.readouterr().out.splitlines()]
    for u in utts:
        assert " ".join(x[4] for x in lines if x[0] == u) == hyp[u].strip()
    assert all(x[1] == "1" and float(x[3]) > 0 and 0 < float(x[5]) <= 1 for x in lines)
    assert main(["lattice-nbest", graph_dir, dec, "--n", "3"]) in (0, None)
    lines = [x.split(" ", 3) for x in capsys.readouterr().out.splitlines()]
    for u in utts:
        assert [x[3] for x in lines if x[0] == f"{u}-1"] == [hyp[u].strip()]
    # a reader that stopped (`| head`: here one that closed before the first line): the verb
    # ends quietly with 141, as a shell tool killed by SIGPIPE, not with a traceback
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "asrkd", "lattice-nbest", graph_dir, dec],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 141 and "Traceback" not in err, err
