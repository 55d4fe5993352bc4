import collections
import random

import numpy as np
import pytest

from asrkd.errors import UserError
from asrkd.lm import NgramLM, _discounts, estimate, perplexity, prune_entropy, train_lm, write_arpa


def _corpus(n=300, seed=0, nwords=6):
    rng = random.Random(seed)
    words = ["A", "B", "C", "D", "E", "F"] + [f"W{i}" for i in range(nwords - 6)]
    zipf = [1.0 / (r + 1) for r in range(len(words))]
    out = []
    for _ in range(n):
        s, w = [], rng.choice(words)
        for _ in range(rng.randint(1, 7)):
            s.append(w)
            if rng.random() < 0.7:
                w = rng.choice(words[: words.index(w) + 2])
            else:
                w = rng.choices(words, weights=zipf)[0]
        out.append(s)
    return out


def _reference_kn(sents, N):
    """Textbook interpolated modified KN, straight from the definitions (slow, for checking)."""
    counts = {n: collections.Counter() for n in range(1, N + 1)}
    for s in sents:
        t = ["<s>"] + s + ["</s>"]
        for n in range(1, N + 1):
            for i in range(len(t) - n + 1):
                counts[n][tuple(t[i:i + n])] += 1
    adj = {N: dict(counts[N])}
    for n in range(N - 1, 0, -1):
        ext = collections.Counter(g[1:] for g in counts[n + 1])
        adj[n] = {g: (c if g[0] == "<s>" else ext[g]) for g, c in counts[n].items()}
    adj[1].pop(("<s>",))
    vocab = sorted({w for s in sents for w in s}) + ["</s>"]

    def disc(n):
        coc = collections.Counter(adj[n].values())
        y = coc[1] / (coc[1] + 2 * coc[2])
        return {1: 1 - 2 * y * coc[2] / coc[1], 2: 2 - 3 * y * coc[3] / coc[2],
                3: 3 - 4 * y * coc[4] / coc[3]}

    D = {n: disc(n) for n in range(1, N + 1)}

    def p(h, w):
        n = len(h) + 1
        if n == 0:
            return 1.0 / len(vocab)
        cont = {g: a for g, a in adj[n].items() if g[:-1] == h}
        lower = p(h[1:], w) if h else 1.0 / len(vocab)
        if not cont:
            return lower
        tot = sum(cont.values())
        d = D[n]
        gamma = sum(d[min(a, 3)] for a in cont.values()) / tot
        a = cont.get(h + (w,), 0)
        return (max(a - d[min(a, 3)], 0) if a else 0) / tot + gamma * lower

    return p, vocab, D


def test_discount_formula_by_hand():
    d = _discounts(np.array([1, 1, 1, 1, 2, 2, 3, 4]))
    # n1=4 n2=2 n3=1 n4=1: Y=0.5, D1=1-2Y*2/4, D2=2-3Y*1/2, D3=3-4Y*1/1
    assert d == pytest.approx((0.5, 1.25, 1.0))
    assert _discounts(np.array([1, 1, 2])) == pytest.approx((0.5, 0.5, 0.5))  # fallback


def test_adjusted_counts_by_hand():
    # order 2 on "<s> A B </s>", "<s> C B </s>": unigram B has 2 left extensions, A and C only
    # follow <s> (adjusted 1 each), </s> follows B in both (adjusted 1)
    lm = estimate([["A", "B"], ["C", "B"]], order=2)
    d = lm.discounts[1]
    a = {"A": 1, "B": 2, "C": 1, "</s>": 1}
    tot = sum(a.values())
    gamma = (d[0] * 3 + d[1] * 1) / tot
    for w, c in a.items():
        assert 10 ** lm.logprob[(w,)] == pytest.approx((c - d[min(c, 3) - 1]) / tot + gamma / 4,
                                                        abs=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_normalized_per_history(order):
    lm = estimate(_corpus(), order=order)
    vocab = sorted(lm.vocab - {"<s>"})
    hists = {k[:-1] for k in lm.logprob} | {("F", "F", "A")[: order - 1], ("A", "<s>")[-(order - 1):] if order > 1 else ()}
    for h in hists:
        h = () if order == 1 else h
        s = sum(10 ** lm.score_word(list(h) if h else ["<s>"], w) for w in vocab)
        assert s == pytest.approx(1.0, abs=1e-5), h


def test_matches_textbook_reference():
    sents = _corpus(200, seed=1, nwords=40)
    lm = estimate(sents, order=3)
    ref, vocab, D = _reference_kn(sents, 3)
    for n in (1, 2, 3):
        assert lm.discounts[n] == pytest.approx((D[n][1], D[n][2], D[n][3]))
    for h in [("<s>", "A"), ("A", "B"), ("B", "B"), ("F", "A"), ("C", "D"), ("E", "E")]:
        for w in vocab:
            assert 10 ** lm.score_word(list(h), w) == pytest.approx(ref(h, w), rel=1e-6), (h, w)


def test_arpa_round_trip_and_perplexity(tmp_path):
    sents = _corpus(200, seed=2)
    lm = estimate(sents, order=3)
    write_arpa(lm, tmp_path / "lm.arpa")
    back = NgramLM.read_arpa(tmp_path / "lm.arpa")
    assert back.order == 3 and set(back.logprob) == set(lm.logprob)
    assert all(abs(back.logprob[k] - v) < 1e-5 for k, v in lm.logprob.items())
    assert all(abs(back.backoff[k] - v) < 1e-5 for k, v in lm.backoff.items())
    dev = [["A", "B", "C"], ["F", "ZZZ", "E"]]
    r = perplexity(str(tmp_path / "lm.arpa"), dev)
    lp = 0.0
    for s in dev:
        h = ["<s>"]
        for w in s + ["</s>"]:
            if w == "ZZZ":
                h = ["<s>"]
                continue
            lp += lm.score_word(h, w)
            h.append(w)
    assert r["oovs"] == 1 and r["words"] == 6 and r["oov_rate"] == pytest.approx(1 / 6)
    assert r["ppl"] == pytest.approx(10 ** (-lp / 7))
    assert r["ppl"] == pytest.approx(perplexity(lm, dev)["ppl"], rel=1e-6)


def test_vocab_maps_to_unk(tmp_path):
    (tmp_path / "words.txt").write_text("<eps> 0\n<UNK> 1\nA 2\nB 3\nZ 4\n#0 5\n<s> 6\n</s> 7\n")
    (tmp_path / "t").write_text("u1 A B C\nu2 B A D\n")
    info = train_lm([str(tmp_path / "t")], str(tmp_path / "lm.arpa"), order=3, utt_ids=True,
                    vocab_path=str(tmp_path / "words.txt"), dev_text=str(tmp_path / "t"))
    lm = NgramLM.read_arpa(tmp_path / "lm.arpa")
    assert lm.vocab == {"<s>", "</s>", "<UNK>", "A", "B", "Z"}
    assert ("B", "<UNK>") in lm.logprob
    assert info["dev"]["oovs"] == 2 and info["dev"]["oov_rate"] == pytest.approx(2 / 6)
    # plain training text; the dev text keeps its utterance ids (they are not counted as OOVs)
    (tmp_path / "plain").write_text("A B C\nB A D\n")
    info = train_lm([str(tmp_path / "plain")], str(tmp_path / "lm2.arpa"), order=3,
                    vocab_path=str(tmp_path / "words.txt"), dev_text=str(tmp_path / "t"))
    assert info["dev"]["oovs"] == 2 and info["dev"]["words"] == 6
    with pytest.raises(UserError):
        train_lm([str(tmp_path / "missing")], str(tmp_path / "x.arpa"))


def _kl_of_pruning(lm, pruned, h, vocab):
    """p(h) * KL(p(.|h) || p'(.|h)) in log10, summed over the vocabulary by brute force."""
    from asrkd.lm import _history_prob

    d = 0.0
    for w in vocab:
        p = 10 ** lm.score_word(list(h), w)
        d += p * (lm.score_word(list(h), w) - pruned.score_word(list(h), w))
    return _history_prob(lm, h) * d


def test_entropy_pruning(tmp_path):
    sents = _corpus(1500, seed=3, nwords=30)
    dev = _corpus(200, seed=4, nwords=30)
    lm = estimate(sents, order=3)
    vocab = sorted(lm.vocab - {"<s>"})
    sizes, ppls = [], []
    for threshold in (0.0, 1e-5, 1e-4, 1e-3, 1e-2):
        p = prune_entropy(lm, threshold)
        sizes.append(sum(p.counts.values()) if threshold else len(lm.logprob))
        ppls.append(perplexity(p, dev)["ppl"])
        # every history still normalised: the backoff weights were recomputed
        for h in [k[:-1] for k in list(p.logprob)[::37] if len(k) > 1] + [("A", "B"), ("F",)]:
            s = sum(10 ** p.score_word(list(h), w) for w in vocab)
            assert s == pytest.approx(1.0, abs=1e-6), (threshold, h)
        # a kept n-gram's prefix and suffix are kept (arpa2fst needs its states)
        for k in p.logprob:
            if len(k) > 1:
                assert k[:-1] in p.logprob and k[1:] in p.logprob, k
        assert all(len(k) > 1 or k in p.logprob for k in lm.logprob)  # unigrams all stay
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3] > sizes[4]
    assert abs(ppls[1] / ppls[0] - 1) < 0.01  # a mild threshold costs (almost) nothing
    assert ppls[4] > 1.3 * ppls[0]  # pruning down to the unigrams does
    # one n-gram judged alone: its criterion is the model's KL change, computed by brute force
    h, w = next(k[:-1] for k in lm.logprob if len(k) == 3), None
    w = next(k[-1] for k in lm.logprob if len(k) == 3 and k[:-1] == h)
    one = NgramLM(3, {k: v for k, v in lm.logprob.items() if k != h + (w,)}, dict(lm.backoff))
    from asrkd.lm import _backoff_weight

    ws = [k[-1] for k in one.logprob if len(k) == 3 and k[:-1] == h]
    one.backoff[h] = _backoff_weight(one, h, ws)
    kl = _kl_of_pruning(lm, one, h, vocab)
    assert kl > 0
    assert h + (w,) not in prune_entropy(lm, 10 ** (kl * 1.01) - 1).logprob
    assert h + (w,) in prune_entropy(lm, 10 ** (kl * 0.99) - 1).logprob
    # written and read back as ARPA; the CLI option
    write_arpa(prune_entropy(lm, 1e-4), tmp_path / "p.arpa")
    back = NgramLM.read_arpa(tmp_path / "p.arpa")
    assert perplexity(back, dev)["ppl"] == pytest.approx(ppls[2], rel=1e-4)
    with pytest.raises(UserError):
        prune_entropy(lm, -1.0)
    (tmp_path / "t").write_text("".join(" ".join(s) + "\n" for s in sents))
    info = train_lm([str(tmp_path / "t")], str(tmp_path / "cli.arpa"), prune=1e-4)
    assert info["ngrams"] == prune_entropy(lm, 1e-4).counts


def _held_out_dir(path, text):
    """A minimal test data dir (utt2spk, text) for the LM-text filter."""
    from asrkd.table import write_table

    path.mkdir()
    write_table(path / "text", text)
    write_table(path / "utt2spk", {u: u.split("-")[0] for u in text})
    return path


def test_filter_lm_text_drops_the_held_out_chapters_and_sentences(tmp_path, capsys):
    from asrkd.cli import main
    from asrkd.lm import filter_lm_text

    lm_text = tmp_path / "lm.txt"
    lm_text.write_text(
        "10-100-0000 THE TEST SENTENCE ITSELF\n"       # a test utterance
        "10-100-0001 ANOTHER LINE OF THAT CHAPTER\n"   # same chapter, not in the test set
        "10-200-0000 THE SAME SPEAKER ANOTHER BOOK\n"  # a chapter of 10 with no test utterance
        "20-300-0000 A TRAINING SENTENCE\n"
        "30-400-0007 THE TEST SENTENCE ITSELF\n"       # the test sentence read by another speaker
        "\n"
        "31-400-0001 THE TEST SENTENCE\n")             # a prefix of it: not the sentence
    test = _held_out_dir(tmp_path / "test", {"10-100-0000": "THE TEST SENTENCE ITSELF",
                                             "11-500-0003": "NOT IN THE LM TEXT"})
    out = tmp_path / "lm_heldout.txt"
    r = filter_lm_text(lm_text, out, [test])
    assert out.read_text().splitlines() == ["10-200-0000 THE SAME SPEAKER ANOTHER BOOK",
                                            "20-300-0000 A TRAINING SENTENCE",
                                            "31-400-0001 THE TEST SENTENCE"]
    assert r == {"kept": 3, "dropped_chapter": 2, "dropped_sentence": 1, "chapters": 2}
    # the verb writes the same file and says what it dropped
    out2 = tmp_path / "via_cli.txt"
    assert main(["filter-lm-text", str(lm_text), str(out2), "--held-out", str(test)]) == 0
    assert out2.read_text() == out.read_text()
    assert "dropped 2 of the 2 held-out chapters" in capsys.readouterr().out


def test_filter_lm_text_needs_utterance_ids(tmp_path):
    from asrkd.lm import filter_lm_text

    test = _held_out_dir(tmp_path / "test", {"10-100-0000": "A B"})
    plain = tmp_path / "plain.txt"
    plain.write_text("A PLAIN SENTENCE WITH NO ID\n")
    with pytest.raises(UserError, match="plain.txt:1: 'A' is not an utterance id"):
        filter_lm_text(plain, tmp_path / "out.txt", [test])
    odd = _held_out_dir(tmp_path / "odd", {"spk1_utt1": "A B"})
    with pytest.raises(UserError, match="not SPK-CHAPTER-UTT"):
        filter_lm_text(plain, tmp_path / "out.txt", [odd])
