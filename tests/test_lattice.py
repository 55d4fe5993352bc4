"""Lattices (asrkd.lattice): the search against Kaldi's LatticeFasterDecoder, rescoring at
another scale against a full decode at that scale, posteriors and best paths on hand-built
lattices with known answers, and Kaldi text I/O."""

import io
import math

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
    return graph, {u: scorer(u) for u in utts}


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
    graph_dir, lls = setup
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
    graph_dir, lls = setup
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
    graph_dir, lls = setup
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
