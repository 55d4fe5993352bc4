import os
import struct
import subprocess
import sys

import kaldi_hmm_gmm as khg
import kaldifst
import numpy as np
import pytest

from asrkd.graph import arpa_to_G, compile_hclg, compose_LG, make_graph
from asrkd.lang import prepare_lang
from asrkd.lm import train_lm

SENTS = ["HELLO WORLD", "READ THE BOOK", "THE WORLD IS A BOOK", "THE BOOK", "A RED BOOK"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    (d / "text").write_text("".join(f"u-1-{i} {s}\n" for i, s in enumerate(SENTS)))
    (d / "lm.txt").write_text("".join(s + "\n" for s in SENTS))
    lang = prepare_lang(str(d / "lang"), [str(d / "text")])
    train_lm([str(d / "lm.txt")], str(d / "lm.arpa"), order=3, vocab_path=str(d / "lang/words.txt"))
    G = arpa_to_G(str(d / "lm.arpa"), str(d / "lang/words.txt"), str(d / "G.fst"))
    return d, lang, G


def _monophone(lang):
    topo = lang.topo
    ctx = khg.monophone_context_dependency(lang.all_phones, topo.get_phone_to_num_pdf_classes())
    return ctx, khg.TransitionModel(ctx, topo)


def _tok(s):
    return s.encode() + b" "


def _i32(v):
    return b"\x04" + struct.pack("<i", v)


def _table(key, entries):
    return (_tok("TE") + _i32(key) + b"\xfc" + struct.pack("<I", len(entries)) + _tok("(")
            + b"".join(_tok("NULL") if e is None else e for e in entries) + _tok(")"))


def _triphone(lang):
    """A hand-made N=3, P=1 tree (Kaldi binary EventMap): every speech-phone state's pdf depends
    on whether the left (class 0, 1) or right (class 2) neighbour is in the first half of phones."""
    topo = lang.topo
    ncls = topo.get_phone_to_num_pdf_classes()
    half = sorted(lang.all_phones)[: len(lang.all_phones) // 2]
    leaf = iter(range(10**6))
    per_phone = [None] * (max(lang.all_phones) + 1)
    for ph in lang.all_phones:
        states = []
        for c in range(ncls[ph]):
            if ph in lang.silence_phones:
                states.append(_tok("CE") + _i32(next(leaf)))
                continue
            key = 0 if c < 2 else 2
            states.append(_tok("SE") + _i32(key) + b"\x04" + struct.pack(f"<i{len(half)}i", len(half), *half)
                          + _tok("{") + _tok("CE") + _i32(next(leaf)) + _tok("CE") + _i32(next(leaf))
                          + _tok("}"))
        per_phone[ph] = _table(-1, states)
    data = (_tok("ContextDependency") + _i32(3) + _i32(1) + _tok("ToPdf") + _table(1, per_phone)
            + _tok("EndContextDependency"))
    ctx = khg.ContextDependency.__new__(khg.ContextDependency)
    ctx.__setstate__((np.frombuffer(data, dtype=np.int8).tolist(),))
    return ctx, khg.TransitionModel(ctx, topo)


def _pdf_frames(lang, ctx, phones, frames_per_state=2):
    ids = [lang.phones[p] for p in phones]
    N, P = ctx.context_width, ctx.central_position
    ncls = lang.topo.get_phone_to_num_pdf_classes()
    out = []
    for i, ph in enumerate(ids):
        window = [ids[j] if 0 <= j < len(ids) else 0 for j in range(i - P, i - P + N)]
        for c in range(ncls[ph]):
            ok, pdf = ctx.compute(window, c)
            assert ok
            out += [pdf] * frames_per_state
    return out


def _decode(hclg, tm, pdfs):
    ll = np.full((len(pdfs), tm.num_pdfs), -10.0, dtype=np.float32)
    ll[np.arange(len(pdfs)), pdfs] = 0.0
    tid2pdf = np.asarray(tm.transition_id_to_pdf_array())
    dec = khg.LatticeFasterDecoder(hclg, khg.LatticeFasterDecoderConfig(beam=16.0))
    ok, ali, words, _ = khg.decode_utterance_lattice_faster(
        dec, khg.DecodableCtc(ll[:, tid2pdf[1:]]), tm, "u", False)
    assert ok and len(ali) == len(pdfs)
    return words


def _check_labels(hclg, lang, tm):
    assert hclg.num_states > 0
    ilabels, olabels = set(), set()
    for s in range(hclg.num_states):
        for a in kaldifst.ArcIterator(hclg, s):
            ilabels.add(a.ilabel)
            olabels.add(a.olabel)
    assert max(ilabels) <= tm.num_transition_ids and min(ilabels) >= 0
    real_words = {i for w, i in lang.words.items() if not w.startswith("#") and w not in ("<s>", "</s>")}
    assert olabels <= real_words and len(olabels) > 3


@pytest.mark.parametrize("kind", ["mono", "tri"])
def test_hclg_decodes_known_sequence(setup, kind):
    _, lang, G = setup
    ctx, tm = _monophone(lang) if kind == "mono" else _triphone(lang)
    hclg = compile_hclg(lang, ctx, tm, G)
    _check_labels(hclg, lang, tm)
    w = lang.words
    cases = {
        ("SIL", "R", "IY", "D", "DH", "AH", "B", "UH", "K", "SIL"): ["READ", "THE", "BOOK"],
        ("AH", "B", "UH", "K", "SIL", "R", "EH", "D", "B", "UH", "K"): ["A", "BOOK", "RED", "BOOK"],
        ("SIL", "HH", "EH", "L", "OW", "W", "ER", "L", "D", "SIL"): ["HELLO", "WORLD"],
    }
    for phones, words in cases.items():
        assert _decode(hclg, tm, _pdf_frames(lang, ctx, phones)) == [w[x] for x in words]


def test_make_graph_end_to_end(setup, tmp_path):
    gmm = pytest.importorskip("asrkd.gmm")
    d, lang, _ = setup
    ctx, tm = _monophone(lang)
    gmm.save_gmm(gmm.GmmModel(tm=tm, ctx=ctx, am=None), str(tmp_path / "mono"))
    out = make_graph(lang.dir, str(tmp_path / "mono"), str(tmp_path / "graph"), str(d / "lm.arpa"))
    for f in ("HCLG.fst", "G.fst", "words.txt", "final.mdl", "tree"):
        assert os.path.isfile(os.path.join(out, f))
    hclg = kaldifst.StdVectorFst.read(os.path.join(out, "HCLG.fst"))
    _check_labels(hclg, lang, tm)
    assert _decode(hclg, tm, _pdf_frames(lang, ctx, ["DH", "AH", "B", "UH", "K"])) == [
        lang.words["THE"], lang.words["BOOK"]]


def test_G_has_backoff_disambig(setup):
    _, lang, G = setup
    ilabels = {a.ilabel for s in range(G.num_states) for a in kaldifst.ArcIterator(G, s)}
    assert lang.words["#0"] in ilabels
    assert lang.words["<s>"] not in ilabels and lang.words["</s>"] not in ilabels
    assert compose_LG(lang, G).num_states > 0


def test_kaldilm_import_order_guard():
    # importing kaldilm after kaldifst/kaldi_hmm_gmm must return; the reverse order is known to
    # hang, which is why graph.py runs kaldilm in a subprocess
    code = "import kaldifst, kaldi_hmm_gmm, asrkd.graph, asrkd.lang, asrkd.lm; import kaldilm"
    r = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_make_graph_rebuilds_for_another_tree_and_decode_checks_it(setup, tmp_path):
    """An HCLG newer than a second model's files is still the first model's graph: make-graph
    rebuilds it, and a graph dir whose final.mdl is not the HCLG's tree is refused."""
    import shutil

    from asrkd.decode import load_graph
    from asrkd.errors import UserError
    from asrkd.gmm import GmmModel, save_gmm
    from asrkd.identity import tree_id

    d, lang, _ = setup
    graph = str(tmp_path / "graph")
    for name, (ctx, tm) in (("mono", _monophone(lang)), ("tri", _triphone(lang))):
        save_gmm(GmmModel(tm=tm, ctx=ctx, am=None), str(tmp_path / name))
    for f in ("final.mdl", "tree"):  # tri's files are older than the mono graph to come
        os.utime(tmp_path / "tri" / f, (1e9, 1e9))
    make_graph(lang.dir, str(tmp_path / "mono"), graph, str(d / "lm.arpa"))
    assert open(os.path.join(graph, "HCLG.tree_id")).read().strip() == tree_id(graph)
    mono_hclg = open(os.path.join(graph, "HCLG.fst"), "rb").read()
    make_graph(lang.dir, str(tmp_path / "tri"), graph, str(d / "lm.arpa"))
    assert open(os.path.join(graph, "HCLG.fst"), "rb").read() != mono_hclg
    assert open(os.path.join(graph, "HCLG.tree_id")).read().strip() == tree_id(
        str(tmp_path / "tri")) != tree_id(str(tmp_path / "mono"))
    load_graph(graph)
    shutil.copyfile(tmp_path / "mono" / "final.mdl", os.path.join(graph, "final.mdl"))
    with pytest.raises(UserError, match=r"HCLG.fst \(tree [0-9a-f]+\) and .*final.mdl \(tree "):
        load_graph(graph)


def test_gzipped_arpa_gives_the_same_G(setup, tmp_path):
    """A .arpa.gz (as LibriSpeech ships its LMs) is read without unpacking it first."""
    import gzip
    import shutil

    from asrkd.graph import arpa_to_G

    d, lang, _ = setup
    with open(d / "lm.arpa", "rb") as src, gzip.open(tmp_path / "lm.arpa.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    words = os.path.join(lang.dir, "words.txt")
    arpa_to_G(str(d / "lm.arpa"), words, str(tmp_path / "G_plain.fst"))
    arpa_to_G(str(tmp_path / "lm.arpa.gz"), words, str(tmp_path / "G_gz.fst"))
    assert (tmp_path / "G_plain.fst").read_bytes() == (tmp_path / "G_gz.fst").read_bytes()
    assert os.path.getsize(tmp_path / "G_gz.fst") > 100


def test_make_graph_checks_the_phone_set_and_decode_the_word_table(setup, tmp_path):
    """A lang with a phone the model was not trained on (its phones renumbered) is refused by
    make-graph; a graph dir holding another lang's words.txt is refused by decoding."""
    import shutil

    from asrkd.decode import load_graph
    from asrkd.errors import UserError
    from asrkd.gmm import GmmModel, save_gmm
    from asrkd.identity import phones_id, write_id
    from asrkd.lang import read_symbols

    d, lang, _ = setup
    ctx, tm = _monophone(lang)
    model = str(tmp_path / "mono")
    save_gmm(GmmModel(tm=tm, ctx=ctx, am=None), model)
    write_id(os.path.join(model, "phones_id"), phones_id(lang.phones))  # as training does
    graph = make_graph(lang.dir, model, str(tmp_path / "graph"), str(d / "lm.arpa"))
    load_graph(graph)
    # another lexicon: a phone ZZ the model lacks, the phones after it renumbered
    other = str(tmp_path / "lang_zz")
    shutil.copytree(lang.dir, other)
    phones = read_symbols(os.path.join(lang.dir, "phones.txt"))
    names = [p for p, _ in sorted(phones.items(), key=lambda kv: kv[1])]
    names.insert(names.index("SPN") + 1, "ZZ")
    with open(os.path.join(other, "phones.txt"), "w") as f:
        f.writelines(f"{p} {i}\n" for i, p in enumerate(names))
    with pytest.raises(UserError, match=r"the phones of .*lang_zz \(phone set [0-9a-f]+\) and "
                                        r"those .*mono was trained on \(phone set [0-9a-f]+\) "
                                        r"differ: prepare the lang with the lexicon and phones"):
        make_graph(other, model, str(tmp_path / "graph_zz"), str(d / "lm.arpa"))
    # another lang's word table in the graph dir: every output word would be wrong
    words = read_symbols(os.path.join(graph, "words.txt"))
    shuffled = sorted(words, key=lambda w: (w.startswith("#") or w.startswith("<"), w[::-1]))
    with open(os.path.join(graph, "words.txt"), "w") as f:
        f.writelines(f"{w} {i}\n" for i, w in enumerate(shuffled))
    with pytest.raises(UserError, match=r"HCLG.fst \(word table [0-9a-f]+\) and .*words.txt "
                                        r"\(word table [0-9a-f]+\) differ: the graph was built "
                                        r"with another lang's words; rerun make-graph"):
        load_graph(graph)
