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
    from asrkd.features import compute_cmvn, compute_feats, load_feature_config
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

