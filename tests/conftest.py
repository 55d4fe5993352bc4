"""Shared fixtures: a tiny synthetic corpus taken through data preparation and features.

Generated once per test session (a few seconds of espeak-ng per utterance set), so every stage
from the GMM to distillation is tested on real (synthetic) speech, not on random numbers.
"""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(REPO, "conf")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A clean ~3-minute training corpus (6 speakers) plus dev and test, as Kaldi data dirs.

    Returns a dict: ``root``, ``corpus`` (LibriSpeech layout), ``lm_text`` and, for each of
    ``train``/``dev``/``test``, the fbank data dir under that key and the MFCC one under
    ``<set>_mfcc``; each has feats.scp, utt2num_frames and cmvn.scp.
    """
    from asrkd.data import copy_data_dir, prepare_librispeech
    from asrkd.featconf import load_feature_config
    from asrkd.features import compute_cmvn, compute_feats
    from asrkd.synth import synth_corpus

    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus"
    synth_corpus(corpus, hours=0.05, condition="clean", seed=7, nj=2, num_speakers=6)
    fbank = load_feature_config(os.path.join(CONF, "fbank.yaml"))
    mfcc = load_feature_config(os.path.join(CONF, "mfcc.yaml"))
    out = {"root": str(root), "corpus": str(corpus), "lm_text": str(corpus / "train-text.txt")}
    for s in ("train", "dev", "test"):
        d, dm = root / "data" / s, root / "data" / f"{s}_mfcc"
        prepare_librispeech(corpus / s, d)
        copy_data_dir(d, dm)
        compute_feats(d, root / "fbank", fbank, nj=1)
        compute_feats(dm, root / "mfcc", mfcc, nj=1)
        compute_cmvn(d)
        compute_cmvn(dm)
        out[s], out[f"{s}_mfcc"] = str(d), str(dm)
    return out



@pytest.fixture(scope="session")
def tiny_hybrid(tiny_data, tmp_path_factory):
    """A decoding graph and a small DNN for tiny_data's fbank dirs: what transcribe, ONNX export
    and ONNX decoding are tested with.

    A short monophone run gives the transition model and tree; the graph is a uniform loop over
    the dev and test words. The DNN (2 x 5 frames of context, 64 units) is trained for two
    epochs on the monophone alignment of train. Returns a dict: ``graph`` (graph dir), ``model``
    (its dir, holding final.pt), ``lang``.
    """
    from asrkd.align import align
    from asrkd.data import DataDir
    from asrkd.gmmtrain import train_mono
    from asrkd.lang import prepare_lang
    from asrkd.models import ModelConfig
    from asrkd.train import TrainConfig, train_model

    root = tmp_path_factory.mktemp("hybrid")
    texts = [os.path.join(tiny_data[s], "text") for s in ("train", "dev", "test")]
    lang = prepare_lang(str(root / "lang"), texts)
    mono = str(root / "mono")
    train_mono(tiny_data["train_mfcc"], lang.dir, mono, num_iters=6, num_gauss=150, nj=2)
    ali = str(root / "ali")
    align(tiny_data["train_mfcc"], lang.dir, mono, ali, nj=2)
    vocab = {w for t in texts for line in open(t) for w in line.split()[1:]}
    graph = word_loop_graph(lang, mono, vocab, str(root / "graph"))
    model = str(root / "dnn")
    train_model(tiny_data["train"], ali, model,
                ModelConfig(left_context=5, right_context=5, hidden_dims=[64]),
                TrainConfig(epochs=2, min_epochs=2, batch_size=256, num_threads=1,
                            tensorboard=False), seed=1)
    assert DataDir(tiny_data["test"]).utts
    return {"graph": graph, "model": model, "lang": lang.dir, "ali": ali}


def word_loop_graph(lang, model_dir, words, graph_dir):
    """A decoding graph dir over a uniform loop of ``words`` (small, fast, chance WER ~100%)."""
    import math
    import shutil

    import kaldifst

    from asrkd.gmm import load_gmm
    from asrkd.graph import compile_hclg
    from asrkd.lang import Lang

    vocab = sorted({lang.word_id(w) for w in words})
    cost = math.log(len(vocab))
    G = kaldifst.compile("".join(f"0 0 {i} {i} {cost}\n" for i in vocab) + "0\n")
    kaldifst.arcsort(G, sort_type="ilabel")
    m = load_gmm(model_dir)
    os.makedirs(graph_dir, exist_ok=True)
    compile_hclg(Lang(lang.dir), m.ctx, m.tm, G).write(os.path.join(graph_dir, "HCLG.fst"))
    shutil.copyfile(os.path.join(lang.dir, "words.txt"), os.path.join(graph_dir, "words.txt"))
    for f in ("final.mdl", "tree"):
        shutil.copyfile(os.path.join(model_dir, f), os.path.join(graph_dir, f))
    return graph_dir


@pytest.fixture(scope="module")
def gmm_corpus(tmp_path_factory):
    """(train, test, lang) of the GMM tests' tiny corpus (test_gmmtrain.make_corpus)."""
    from test_gmmtrain import make_corpus

    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module")
def gmm_mono(gmm_corpus, tmp_path_factory):
    """A monophone model dir trained on gmm_corpus."""
    from asrkd.gmmtrain import train_mono

    train, _, lang = gmm_corpus
    d = str(tmp_path_factory.mktemp("mono"))
    train_mono(train, lang, d, num_iters=10, num_gauss=100)
    return d

