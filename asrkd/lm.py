"""Interpolated modified Kneser-Ney n-gram LM (Chen & Goodman 1998), ARPA output, ARPA scorer.

The estimator follows KenLM's lmplz: adjusted counts are raw counts at the highest
order and for n-grams starting with <s>, else the number of distinct left extensions; three
discounts per order from the count-of-counts of adjusted counts; lower orders interpolated down
to a uniform distribution over the vocabulary (all words + </s>, not <s>). Because the model is
interpolated, the ARPA backoff weight of a history is exactly its interpolation weight gamma.

Deviations: where a small text makes Chen & Goodman's discount formulas undefined or out of
range (a zero count-of-count), all three discounts of that order fall back to
n1 / (n1 + 2 n2) (or 0.5) instead of failing as lmplz does. With ``vocab`` (a words.txt),
words outside it are mapped to the OOV word (``<UNK>``) before counting, and every vocabulary
word gets a unigram, so G covers the whole lang vocabulary.

``prune_entropy`` removes n-grams by relative entropy (Stolcke 1998) as SRILM's ``-prune``,
for LM text too large to use unpruned (lmplz itself prunes only by count).

N-grams are numbered per order: an n-gram is (id of its (n-1)-word prefix, last word), so keys
stay within int64 for any order.
"""

import dataclasses
import os
import time

import numpy as np

from asrkd.data import DataDir
from asrkd.errors import UserError
from asrkd.table import atomic_path

BOS, EOS = "<s>", "</s>"
_SPECIAL = {"<eps>", "#0", BOS, EOS}


def read_sentences(path, utt_ids=False):
    """Sentences (lists of words) of a text file; ``utt_ids``: drop each line's first field."""
    if not os.path.isfile(path):
        raise UserError(f"no such text file: {path}")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            w = line.split()
            if utt_ids:
                w = w[1:]
            if w:
                out.append(w)
    return out


def chapter_of(utt):
    """(speaker, chapter) of a LibriSpeech utterance id SPK-CHAPTER-UTT; None for another form."""
    parts = utt.split("-")
    return (parts[0], parts[1]) if len(parts) == 3 else None


def filter_lm_text(text_path, out_path, held_out):
    """Write text_path (``UTT-ID WORDS...`` lines) to out_path without the held-out chapters.

    ``held_out``: data dirs (test sets) whose utterances must not inform the LM. A line goes
    when its utterance is of a chapter (SPK-CHAPTER of its id) any held-out utterance is from,
    or when its words are a held-out transcript (the same sentence elsewhere: another reading of
    the book). Returns counts: lines kept, dropped by chapter, dropped as a test sentence, and
    the held-out chapters. UserError when a held-out id or an LM line has no SPK-CHAPTER-UTT id.
    """
    if not os.path.isfile(text_path):
        raise UserError(f"no such text file: {text_path}")
    chapters, sentences = set(), set()
    for d in held_out:
        data = DataDir(d)
        for utt in data.utts:
            ch = chapter_of(utt)
            if ch is None:
                raise UserError(f"{d}: utterance id {utt!r} is not SPK-CHAPTER-UTT (LibriSpeech)")
            chapters.add(ch)
        sentences |= {" ".join(w.split()) for w in data.text.values() if w.split()}
    kept = by_chapter = by_sentence = 0
    with open(text_path, encoding="utf-8") as f, atomic_path(out_path) as tmp, \
            open(tmp, "w", encoding="utf-8") as out:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            ch = chapter_of(fields[0])
            if ch is None:
                raise UserError(f"{text_path}:{n}: {fields[0]!r} is not an utterance id "
                                "SPK-CHAPTER-UTT (filtering needs the LM text's ids)")
            if ch in chapters:
                by_chapter += 1
            elif " ".join(fields[1:]) in sentences:
                by_sentence += 1
            else:
                kept += 1
                out.write(line if line.endswith("\n") else line + "\n")
    return {"kept": kept, "dropped_chapter": by_chapter, "dropped_sentence": by_sentence,
            "chapters": len(chapters)}


def read_vocab(words_txt):
    """The LM vocabulary of a words.txt: all words but <eps>, #n, <s>, </s>."""
    if not os.path.isfile(words_txt):
        raise UserError(f"no such vocabulary file: {words_txt}")
    with open(words_txt, encoding="utf-8") as f:
        words = [line.split()[0] for line in f if line.strip()]
    return [w for w in words if w not in _SPECIAL and not w.startswith("#")]


@dataclasses.dataclass
class _Order:
    """The n-grams of one order n >= 2 (arrays aligned by n-gram index)."""

    prefix: np.ndarray  # (K,) index of the (n-1)-word prefix in order n-1 (word id for n=2)
    word: np.ndarray  # (K,) last word id
    suffix: np.ndarray  # (K,) index of the (n-1)-word suffix in order n-1
    count: np.ndarray  # (K,) raw count


def _count(sentences, word_index, order):
    """Word ids per position, then unique n-grams per order (hierarchical ids)."""
    lens = np.fromiter((len(s) + 2 for s in sentences), dtype=np.int64, count=len(sentences))
    bos, eos = word_index[BOS], word_index[EOS]
    toks = np.empty(int(lens.sum()), dtype=np.int64)
    pos = np.arange(len(toks)) - np.repeat(np.cumsum(lens) - lens, lens)  # position in sentence
    toks[:] = [i for s in sentences for i in (bos, *(word_index[w] for w in s), eos)]
    V = len(word_index)
    uni_counts = np.bincount(toks, minlength=V)
    orders = {}
    gid = toks  # id of the (n-1)-gram ending at each position (-1: not a full n-gram)
    for n in range(2, order + 1):
        valid = np.zeros(len(toks), dtype=bool)
        valid[1:] = pos[1:] >= n - 1
        keys = np.full(len(toks), -1, dtype=np.int64)
        keys[1:] = gid[:-1] * V + toks[1:]
        keys = np.where(valid, keys, -1)
        uniq, first, inv, cnt = np.unique(keys[valid], return_index=True, return_inverse=True,
                                          return_counts=True)
        where = np.flatnonzero(valid)
        orders[n] = _Order(prefix=uniq // V, word=uniq % V, suffix=gid[where[first]], count=cnt)
        new_gid = np.full(len(toks), -1, dtype=np.int64)
        new_gid[where] = inv.ravel()
        gid = new_gid
    return uni_counts, orders


def _discounts(adj):
    """Modified KN discounts (D1, D2, D3+) from the count-of-counts of adjusted counts."""
    n1, n2, n3, n4 = (int(np.sum(adj == k)) for k in (1, 2, 3, 4))
    if n1 > 0 and n2 > 0 and n3 > 0 and n4 > 0:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(0 < di < k + 1 for k, di in enumerate(d)):
            return d
    y = n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.5
    return (y, y, y)


class NgramLM:
    """An ARPA-style backoff LM in memory: log10 probs and backoff weights keyed by word tuples."""

    def __init__(self, order, logprob, backoff):
        self.order = order
        self.logprob = logprob  # {(w1, ..., wn): log10 p(wn | w1..wn-1)}
        self.backoff = backoff  # {(w1, ..., wk): log10 bow}
        self.vocab = {k[0] for k in logprob if len(k) == 1}

    @classmethod
    def read_arpa(cls, path):
        logprob, backoff, order, n = {}, {}, 0, 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line == "\\data\\" or line.startswith("ngram "):
                    if line.startswith("ngram "):
                        order = max(order, int(line[6:].split("=")[0]))
                    continue
                if line.startswith("\\"):
                    if line.endswith("-grams:"):
                        n = int(line[1:].split("-")[0])
                    continue
                parts = line.split()
                key = tuple(parts[1:1 + n])
                logprob[key] = float(parts[0])
                if len(parts) > n + 1:
                    backoff[key] = float(parts[n + 1])
        return cls(order, logprob, backoff)

    def score_word(self, history, word):
        """log10 p(word | history) with Katz-style backoff through the stored weights."""
        h = tuple(history[-(self.order - 1):]) if self.order > 1 else ()
        bow = 0.0
        while True:
            p = self.logprob.get(h + (word,))
            if p is not None:
                return p + bow
            if not h:
                return None
            bow += self.backoff.get(h, 0.0)
            h = h[1:]


def perplexity(lm, sentences, unk="<UNK>"):
    """Perplexity of ``lm`` (an NgramLM or an ARPA path) on sentences (lists of words).

    Words outside the LM vocabulary are OOVs: mapped to ``unk`` and scored if the LM has it,
    else skipped (SRILM's convention). </s> is scored; ppl = 10 ** (-logprob / (words + sents)).
    Returns a dict: ppl, logprob, words, sentences, oovs, oov_rate (of words, before mapping).
    """
    if not isinstance(lm, NgramLM):
        lm = NgramLM.read_arpa(lm)
    has_unk = unk in lm.vocab
    total, n_scored, n_words, n_oov = 0.0, 0, 0, 0
    for s in sentences:
        hist = [BOS]
        for w in list(s) + [EOS]:
            if w != EOS:
                n_words += 1
            if w not in lm.vocab:
                n_oov += 1
                if not has_unk:
                    hist = [BOS]  # as SRILM: the context is broken at a skipped OOV
                    continue
                w = unk
            p = lm.score_word(hist, w)
            total += p
            n_scored += 1
            hist.append(w)
    return {"ppl": 10.0 ** (-total / max(n_scored, 1)), "logprob": total, "words": n_words,
            "sentences": len(sentences), "oovs": n_oov, "oov_rate": n_oov / max(n_words, 1)}


def estimate(sentences, order=3, vocab=None, unk="<UNK>"):
    """Interpolated modified KN estimate -> NgramLM. ``vocab``: words kept (others -> ``unk``)."""
    if order < 1:
        raise UserError(f"LM order must be >= 1, got {order}")
    if not sentences:
        raise UserError("no sentences to estimate an LM from")
    if vocab is not None:
        keep = set(vocab) | {unk}
        sentences = [[w if w in keep else unk for w in s] for s in sentences]
        words = sorted(keep)
    else:
        words = sorted({w for s in sentences for w in s} - {BOS, EOS})
    names = [BOS, EOS] + words
    index = {w: i for i, w in enumerate(names)}
    V = len(names)
    uni_counts, orders = _count(sentences, index, order)

    # adjusted counts: left-extension counts except at the top order and for n-grams after <s>
    starts_bos = {1: np.arange(V) == 0}
    adj = {}
    for n in range(2, order + 1):
        starts_bos[n] = starts_bos[n - 1][orders[n].prefix]
    for n in range(1, order + 1):
        raw = uni_counts if n == 1 else orders[n].count
        if n == order:
            adj[n] = raw.copy()
        else:
            ext = np.bincount(orders[n + 1].suffix, minlength=len(raw))
            adj[n] = np.where(starts_bos[n], raw, ext)
    adj[1][0] = 0  # <s> is never predicted

    probs, gammas, disc = {}, {}, {}
    for n in range(1, order + 1):
        a = adj[n]
        d = _discounts(a[a > 0] if n > 1 else a[1:][a[1:] > 0])
        disc[n] = d
        dvec = np.select([a == 1, a == 2, a >= 3], list(d), 0.0)
        if n == 1:
            total = a.sum()
            gamma0 = (d[0] * np.sum(a == 1) + d[1] * np.sum(a == 2) + d[2] * np.sum(a >= 3)) / total
            p = (a - dvec) / total + gamma0 / (V - 1)
            p[0] = 0.0
            probs[1] = p
        else:
            o = orders[n]
            H = len(probs[n - 1])
            total = np.bincount(o.prefix, weights=a, minlength=H)
            nk = [np.bincount(o.prefix, weights=(a == 1) if k == 0 else (a == 2) if k == 1 else (a >= 3),
                              minlength=H) for k in range(3)]
            with np.errstate(divide="ignore", invalid="ignore"):
                g = np.where(total > 0, (d[0] * nk[0] + d[1] * nk[1] + d[2] * nk[2]) / total, 0.0)
            gammas[n - 1] = g
            probs[n] = (a - dvec) / total[o.prefix] + g[o.prefix] * probs[n - 1][o.suffix]
    # back to word tuples
    logprob, backoff = {}, {}
    keys = {1: [(w,) for w in names]}
    for n in range(2, order + 1):
        prev = keys[n - 1]
        keys[n] = [prev[p] + (names[w],) for p, w in zip(orders[n].prefix.tolist(), orders[n].word.tolist())]
    for n in range(1, order + 1):
        with np.errstate(divide="ignore"):
            lp = np.log10(probs[n])
        lp[np.isneginf(lp)] = -99.0
        logprob.update(zip(keys[n], lp.tolist()))
        if n in gammas:
            g = gammas[n]
            has = np.flatnonzero(g > 0)
            bl = np.log10(g[has]).tolist()
            backoff.update((keys[n][i], b) for i, b in zip(has.tolist(), bl))
    lm = NgramLM(order, logprob, backoff)
    lm.discounts = disc
    lm.counts = {n: len(keys[n]) for n in keys}
    return lm


def _history_prob(lm, h):
    """p(h) under ``lm``, by the chain rule (a history starting with <s> is given <s>)."""
    words, hist = (list(h[1:]), [BOS]) if h and h[0] == BOS else (list(h), [])
    logp = 0.0
    for w in words:
        p = lm.score_word(hist, w) if hist else lm.logprob.get((w,))
        if p is None:
            return 0.0
        logp += p
        hist.append(w)
    return 10.0 ** logp


def _backoff_weight(lm, h, words):
    """log10 bow(h) normalising p(. | h) when ``words`` are h's explicit n-grams, or None when
    nothing is backed off to (the explicit n-grams hold all the mass)."""
    num = 1.0 - sum(10.0 ** lm.logprob[h + (w,)] for w in words)
    den = 1.0 - sum(10.0 ** lm.score_word(list(h[1:]), w) for w in words)
    if num <= 1e-12 or den <= 1e-12:
        return None
    return float(np.log10(num / den))


def prune_entropy(lm, threshold):
    """Relative-entropy pruning (Stolcke 1998, SRILM's ``-prune``) of an NgramLM -> new NgramLM.

    An explicit n-gram (h, w), n >= 2, is removed when backing off instead (to bow'(h) p(w|h'),
    with bow' renormalising h) raises the model's perplexity by less than ``threshold``
    (relative: 10 ** D - 1 with D = p(h) KL(p(.|h) || p'(.|h)), log10), each n-gram judged
    against the unpruned model. N-grams that a kept longer one needs (its prefix as history, its
    suffix as backoff target) are kept. The kept n-grams keep their probabilities; the backoff
    weights are recomputed, lowest order first, so every history stays normalised.
    """
    if threshold < 0:
        raise UserError(f"pruning threshold must be >= 0, got {threshold}")
    if threshold == 0 or lm.order < 2:
        return lm
    children = {}
    for k in lm.logprob:
        if len(k) >= 2:
            children.setdefault(k[:-1], []).append(k[-1])
    keep = set(lm.logprob)
    log10 = np.log10
    for n in range(lm.order, 1, -1):
        needed = set()
        for k in keep:
            if len(k) == n + 1:
                needed.add(k[:-1])
                needed.add(k[1:])
        for h, ws in children.items():
            if len(h) != n - 1:
                continue
            hp = {w: 10.0 ** lm.logprob[h + (w,)] for w in ws}
            bp = {w: 10.0 ** lm.score_word(list(h[1:]), w) for w in ws}
            num, den = 1.0 - sum(hp.values()), 1.0 - sum(bp.values())
            if num <= 1e-12 or den <= 1e-12:
                continue  # nothing backs off from h: no backoff weight to renormalise with
            ph = _history_prob(lm, h)
            for w in ws:
                k = h + (w,)
                if k in needed:
                    continue
                new_bow = (num + hp[w]) / (den + bp[w])
                d = -ph * (hp[w] * (log10(bp[w]) + log10(new_bow) - log10(hp[w]))
                           + num * (log10(new_bow) - log10(num / den)))
                if 10.0 ** d - 1.0 < threshold:
                    keep.discard(k)
    pruned = NgramLM(lm.order, {k: v for k, v in lm.logprob.items() if k in keep}, {})
    kept_children = {}
    for k in pruned.logprob:
        if len(k) >= 2:
            kept_children.setdefault(k[:-1], []).append(k[-1])
    for n in range(1, lm.order):
        for h, ws in kept_children.items():
            if len(h) == n:
                b = _backoff_weight(pruned, h, ws)
                if b is not None:
                    pruned.backoff[h] = b
    pruned.counts = {n: sum(1 for k in pruned.logprob if len(k) == n)
                     for n in range(1, lm.order + 1)}
    pruned.discounts = getattr(lm, "discounts", {})
    return pruned


def write_arpa(lm, path):
    by_order = {n: [] for n in range(1, lm.order + 1)}
    for k in lm.logprob:
        by_order[len(k)].append(k)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n in by_order:
            f.write(f"ngram {n}={len(by_order[n])}\n")
        for n, keys in by_order.items():
            f.write(f"\n\\{n}-grams:\n")
            lines = []
            for k in keys:
                b = lm.backoff.get(k)
                ws = " ".join(k)
                lines.append(f"{lm.logprob[k]:.6f}\t{ws}\t{b:.6f}\n" if b is not None
                             else f"{lm.logprob[k]:.6f}\t{ws}\n")
            f.write("".join(lines))
        f.write("\n\\end\\\n")


def train_lm(text_paths, arpa_path, order=3, dev_text=None, vocab_path=None, utt_ids=False,
             unk="<UNK>", dev_utt_ids=True, prune=0.0):
    """Estimate an interpolated modified KN LM from text files, write ARPA, report dev ppl.

    ``utt_ids``: the training texts start each line with an utterance id (dropped).
    ``dev_text`` is by default a Kaldi ``text`` file (a data dir's, with utterance ids); pass
    ``dev_utt_ids=False`` for plain sentences. ``prune`` > 0: entropy pruning at that threshold
    (prune_entropy; e.g. 1e-7 as LibriSpeech's 3-gram.pruned.1e-7, 1e-8 milder).

    Returns a dict of numbers (n-gram counts, discounts, and dev ppl/OOV rate if ``dev_text``).
    """
    t0 = time.time()
    sentences = [s for p in text_paths for s in read_sentences(p, utt_ids)]
    vocab = read_vocab(vocab_path) if vocab_path else None
    lm = estimate(sentences, order=order, vocab=vocab, unk=unk)
    if prune > 0:
        full = dict(lm.counts)
        lm = prune_entropy(lm, prune)
        print(f"train-lm: entropy pruning at {prune:g} kept n-grams "
              + " ".join(f"{n}:{lm.counts[n]}/{full[n]}" for n in full))
    write_arpa(lm, arpa_path)
    info = {"sentences": len(sentences), "ngrams": lm.counts,
            "discounts": {n: [round(x, 4) for x in d] for n, d in lm.discounts.items()},
            "seconds": round(time.time() - t0, 1)}
    print(f"train-lm: {len(sentences)} sentences, order {order}, n-grams "
          + " ".join(f"{n}:{c}" for n, c in lm.counts.items()) + f" -> {arpa_path} "
          f"({info['seconds']} s)")
    if dev_text:
        dev = read_sentences(dev_text, dev_utt_ids)
        r = perplexity(NgramLM.read_arpa(arpa_path), dev, unk=unk)
        info["dev"] = r
        print(f"train-lm: dev {dev_text}: ppl {r['ppl']:.1f}, OOV rate {100 * r['oov_rate']:.2f}% "
              f"({r['oovs']}/{r['words']} words, {r['sentences']} sentences)")
    return info
