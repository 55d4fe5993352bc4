import os

import kaldifst
import pytest

from asrkd.errors import UserError
from asrkd.lang import Lang, prepare_lang, strip_stress


@pytest.fixture(scope="module")
def lang(tmp_path_factory):
    d = tmp_path_factory.mktemp("lang")
    (d / "text").write_text("s1-1-1 HELLO WORLD\ns1-1-2 READ THE BOOK ZZXQ\ns1-1-3 QQWV THE\n")
    (d / "lm.txt").write_text("THE RED BOOK XYZZY\n")
    return prepare_lang(str(d / "lang"), [str(d / "text")], vocab_texts=[str(d / "lm.txt")])


def _decode_phones(fst, lang, phones):
    """Word ids L maps the phone sequence to (None if L rejects it)."""
    acc = kaldifst.make_linear_acceptor([lang.phones[p] for p in phones])
    kaldifst.arcsort(fst, sort_type="ilabel")
    out = kaldifst.compose(acc, fst)
    if out.num_states == 0:
        return None
    ok, _, olabels, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(out))
    assert ok
    return olabels


def test_stress_removed():
    assert strip_stress(["HH", "AH0", "L", "OW1", "ER2"]) == ["HH", "AH", "L", "OW", "ER"]


def test_symbol_tables(lang):
    assert lang.phones["<eps>"] == 0 and lang.words["<eps>"] == 0
    assert [p for p in lang.phones if not p.startswith("#") and p != "<eps>"].__len__() == 41
    assert all(not any(c.isdigit() for c in p) for p in lang.phones if not p.startswith("#"))
    names = list(lang.words)
    assert names[-3:] == ["#0", "<s>", "</s>"]
    assert lang.silence_phones == [lang.phones["SIL"], lang.phones["SPN"]]
    assert set(lang.disambig_phones) == {i for p, i in lang.phones.items() if p.startswith("#")}
    assert lang.phones["#0"] in lang.disambig_phones
    assert len(lang.nonsilence_phones) == 39
    assert lang.topo.phones == sorted(lang.silence_phones + lang.nonsilence_phones)
    # RED comes only from the LM vocabulary text; XYZZY is not in CMUdict and is no OOV of training
    assert "RED" in lang.words and "XYZZY" not in lang.words


def test_oov_reported_and_mapped(lang):
    oovs = open(f"{lang.dir}/oov_words.txt").read().split()
    assert oovs == ["QQWV", "1", "ZZXQ", "1"]
    assert lang.oov == "<UNK>" and lang.lexicon["<UNK>"] == [["SPN"]]
    assert "ZZXQ" not in lang.words
    assert lang.text_to_word_ids("HELLO ZZXQ") == [lang.words["HELLO"], lang.words["<UNK>"]]
    assert lang.lexicon["HELLO"] == [["HH", "AH", "L", "OW"], ["HH", "EH", "L", "OW"]]


def test_L_accepts_pronunciations(lang):
    L = lang.L_fst()
    w = lang.words
    assert _decode_phones(L, lang, ["HH", "AH", "L", "OW", "SIL", "W", "ER", "L", "D"]) == [
        w["HELLO"], w["WORLD"]]
    assert _decode_phones(L, lang, ["SIL", "DH", "IY", "B", "UH", "K", "SPN"]) == [
        w["THE"], w["BOOK"], w["<UNK>"]]
    assert _decode_phones(L, lang, ["HH", "AH", "L"]) is None


def test_L_disambig(lang):
    Ld = lang.L_disambig_fst()
    # READ has two prons: R EH D is also RED's, so both homophones get a #n
    d = open(f"{lang.dir}/lexicon_disambig.txt").read().splitlines()
    assert "READ R EH D #1" in d and "RED R EH D #2" in d
    w, p = lang.words, lang.phones
    acc_phones = ["R", "EH", "D", "#2", "SIL", "#" + str(len(lang.disambig_phones) - 1), "#0"]
    assert _decode_phones(Ld, lang, acc_phones) == [w["RED"], w["#0"]]
    assert _decode_phones(Ld, lang, ["R", "EH", "D"]) is None  # the #n is required
    assert p["#0"] in lang.disambig_phones


def test_bad_input(tmp_path):
    with pytest.raises(UserError):
        prepare_lang(str(tmp_path / "l"), [str(tmp_path / "missing")])
    with pytest.raises(UserError):
        Lang(str(tmp_path))


def test_own_lexicon(tmp_path):
    (tmp_path / "text").write_text("u-1-1 FOO BAR\n")
    (tmp_path / "lex").write_text("FOO F UW1\nBAR B AA1 R\nBAR B AA0 R\n")
    lang = prepare_lang(str(tmp_path / "l"), [str(tmp_path / "text")], lexicon_path=str(tmp_path / "lex"))
    assert lang.lexicon["BAR"] == [["B", "AA", "R"]]
    assert len(lang.nonsilence_phones) == 5


def test_vocab_size_keeps_most_frequent_lm_words(tmp_path):
    (tmp_path / "text").write_text("s1-1-1 HELLO\n")
    (tmp_path / "lm.txt").write_text("THE BOOK THE\nTHE RED BOOK SHEEP\n")
    lang = prepare_lang(str(tmp_path / "lang"), [str(tmp_path / "text")],
                        vocab_texts=[str(tmp_path / "lm.txt")], vocab_size=2)
    # THE (3) and BOOK (2) kept; RED and SHEEP (1 each) cut; training-text words always kept
    assert {"THE", "BOOK", "HELLO"} <= set(lang.words)
    assert "RED" not in lang.words and "SHEEP" not in lang.words


def test_librispeech_lexicon_format(tmp_path):
    """librispeech-lexicon.txt's layout: WORD<tab>PH1 PH2 ... with stress digits, apostrophes in
    words, alternative pronunciations on lines of their own (some equal once destressed)."""
    (tmp_path / "text").write_text("s1-1-1 A'S READ ABBOTT\ns1-1-2 READ A\n")
    (tmp_path / "librispeech-lexicon.txt").write_text(
        "A\tAH0\nA\tEY1\nA'S\tEY1 Z\nABBOTT\tAE1 B AH0 T\nREAD\tR EH1 D\nREAD\tR IY1 D\n"
        "READ\tR IY0 D\nZYGOTE\tZ AY1 G OW2 T\n")
    lang = prepare_lang(str(tmp_path / "l"), [str(tmp_path / "text")],
                        lexicon_path=str(tmp_path / "librispeech-lexicon.txt"))
    assert lang.lexicon["A'S"] == [["EY", "Z"]]
    assert lang.lexicon["READ"] == [["R", "EH", "D"], ["R", "IY", "D"]]
    assert lang.lexicon["A"] == [["AH"], ["EY"]]
    assert "A'S" in lang.words and "ZYGOTE" not in lang.words  # vocabulary: the text's words
    phones = [line.split()[0] for line in open(os.path.join(lang.dir, "phones.txt"))]
    assert not any(p[-1].isdigit() for p in phones if not p.startswith("#"))
    assert {"AH", "EY", "Z", "AE", "B", "T", "R", "EH", "IY", "D"} <= set(phones)
    assert os.path.getsize(os.path.join(lang.dir, "L.fst")) > 0
    # a word of the lexicon without a pronunciation is a one-line error
    (tmp_path / "bad.txt").write_text("A\tAH0\nB\n")
    with pytest.raises(UserError, match="no pronunciation"):
        prepare_lang(str(tmp_path / "l2"), [str(tmp_path / "text")],
                     lexicon_path=str(tmp_path / "bad.txt"))
