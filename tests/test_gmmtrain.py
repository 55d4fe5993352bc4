"""GMM-HMM training (asrkd.gmmtrain): mono and triphone training on a tiny synthetic corpus
(words as sequences of phone-state-specific Gaussian feature segments), repeatability and
independence of the number of jobs. ``make_corpus`` also serves the alignment, model, decoding
and fault tests."""

import os

import numpy as np
import pytest

from asrkd import gmmtrain
from asrkd.align import align
from asrkd.gmm import load_gmm
from asrkd.gmmdata import TrainData
from asrkd.gmmtrain import train_mono, train_tri
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


def test_monophone_training_is_repeatable(gmm_corpus, gmm_mono, tmp_path):
    """A second run in the same process (the C rand() state has moved on) gives the same model:
    a recipe killed mid-stage and rerun must reach the same numbers."""
    import ctypes

    train, _, lang = gmm_corpus
    ctypes.CDLL(None).rand()  # disturb the state Kaldi's Gaussian splitting draws from
    again = str(tmp_path / "mono2")
    train_mono(train, lang, again, num_iters=10, num_gauss=100)
    a, b = np.load(os.path.join(gmm_mono, "final.mdl")), np.load(os.path.join(again, "final.mdl"))
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k


def test_mono_training_improves_likelihood(gmm_mono):
    lines = open(os.path.join(gmm_mono, "log", "train.log")).read().splitlines()
    ll = [float(line.split("loglike/frame ")[1].split()[0]) for line in lines]
    assert len(ll) == 10
    assert ll[-1] > ll[0] + 5  # flat start -> trained
    # close to the generating noise entropy: 13 * 0.5 * log(2 pi e 0.36) = -11.8
    assert ll[-1] > -13.0
    m = load_gmm(gmm_mono)
    assert 90 <= m.am.num_gauss <= 110
    assert open(os.path.join(gmm_mono, "failed")).read() == ""


@pytest.fixture(scope="module")
def tri(gmm_corpus, gmm_mono, tmp_path_factory):
    train, _, lang = gmm_corpus
    ali_dir = str(tmp_path_factory.mktemp("mono_ali"))
    align(train, lang, gmm_mono, ali_dir)
    d = str(tmp_path_factory.mktemp("tri"))
    train_tri(train, lang, ali_dir, d, num_leaves=60, num_gauss=200, num_iters=8, min_count=20)
    return d


def test_tri_training(tri):
    m = load_gmm(tri)
    assert m.ctx.context_width == 3
    assert m.num_pdfs == 60
    lines = open(os.path.join(tri, "log", "train.log")).read().splitlines()
    assert all(" 0 failed" in line for line in lines)
    assert float(lines[-1].split("loglike/frame ")[1].split()[0]) > -13.0


def test_mono_parallel_jobs_give_the_same_bytes(gmm_corpus, tmp_path, monkeypatch):
    # nj > 1: forked jobs share the parent's features, graphs and model; statistics are summed
    # in fixed point over blocks fixed by the data, so the job count changes nothing
    monkeypatch.setattr(gmmtrain, "ACC_BATCH_FRAMES", 500)  # many blocks, split unlike by nj
    train, _, lang = gmm_corpus
    blocks = gmmtrain.acc_blocks(TrainData(dict(train.feats), train.text), sorted(train.feats))
    assert len(blocks) > 3
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
