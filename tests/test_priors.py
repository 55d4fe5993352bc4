"""Priors from a model's own mean posterior (asrkd adjust-priors, decode --priors posterior)."""

import json
import os
import shutil

import numpy as np
import pytest

from asrkd.cli import main
from asrkd.data import DataDir
from asrkd.ensemble import log_priors
from asrkd.errors import UserError
from asrkd.priors import read_priors, select_utts
from asrkd.scorer import make_scorer


@pytest.fixture()
def model(tiny_hybrid, tmp_path):
    """A copy of the tiny hybrid's model dir (adjust-priors writes into it)."""
    dst = str(tmp_path / "dnn")
    shutil.copytree(tiny_hybrid["model"], dst)
    return dst


def test_adjusted_priors_are_the_mean_posterior_and_change_only_the_prior(tiny_hybrid,
                                                                          tiny_data, model):
    train, test = tiny_data["train"], tiny_data["test"]
    with pytest.raises(UserError, match=f"run `asrkd adjust-priors {model} TRAIN_DATA`"):
        make_scorer(model, test, priors="posterior")
    assert main(["adjust-priors", "--max-frames", "0", model, train]) == 0
    scorer = make_scorer(model, train)
    utts = DataDir(train).utts
    post = np.concatenate([np.exp(scorer.log_posteriors(u).astype(np.float64)) for u in utts])
    priors = read_priors(model, post.shape[1])
    np.testing.assert_allclose(priors, post.mean(axis=0), rtol=1e-6, atol=1e-12)
    meta = json.load(open(os.path.join(model, "priors_posterior.json")))
    assert meta["frames"] == len(post) and meta["utterances"] == len(utts)
    # the scores differ by exactly the change of prior; the posteriors are untouched
    u = DataDir(test).utts[0]
    counts, adjusted = make_scorer(model, test), make_scorer(model, test, priors="posterior")
    np.testing.assert_array_equal(counts.log_posteriors(u), adjusted.log_posteriors(u))
    p = np.log(priors / priors.sum())
    np.testing.assert_allclose(counts(u) - adjusted(u),
                               (p - log_priors(counts.ensemble.pdf_counts))[None, :]
                               + np.zeros_like(counts(u)), atol=1e-4)
    assert not np.allclose(counts(u), adjusted(u))  # the alignment's counts are not the mean


def test_several_models_in_one_call_get_what_one_call_each_gives(tiny_data, model, tmp_path):
    """adjust-priors MODEL MODEL DATA: each model's file, byte for byte the one-call result."""
    other = str(tmp_path / "other")
    shutil.copytree(model, other)
    single = str(tmp_path / "single")
    shutil.copytree(model, single)
    assert main(["adjust-priors", model, other, tiny_data["train"]]) == 0
    assert main(["adjust-priors", single, tiny_data["train"]]) == 0
    ref = open(os.path.join(single, "priors_posterior"), "rb").read()
    for d in (model, other):
        assert open(os.path.join(d, "priors_posterior"), "rb").read() == ref
    os.unlink(os.path.join(model, "priors_posterior"))
    assert main(["adjust-priors", model, str(tmp_path / "missing"), tiny_data["train"]]) == 1
    assert not os.path.exists(os.path.join(model, "priors_posterior"))  # checked before any


def test_decode_with_posterior_priors_records_them(tiny_hybrid, tiny_data, model, tmp_path):
    dev = tiny_data["dev"]
    assert main(["adjust-priors", model, tiny_data["train"]]) == 0
    out = str(tmp_path / "dec")
    assert main(["decode", "--acwt", "0.1", "--priors", "posterior", tiny_hybrid["graph"], dev,
                 model, out]) == 0
    assert open(os.path.join(out, "priors")).read() == "posterior\n"
    out2 = str(tmp_path / "dec2")
    assert main(["decode", "--acwt", "0.1", tiny_hybrid["graph"], dev, model, out2]) == 0
    assert open(os.path.join(out2, "priors")).read() == "counts\n"
    # a prior file of the wrong size is refused with one line
    with open(os.path.join(model, "priors_posterior"), "w") as f:
        f.write("0.5 0.5\n")
    assert main(["decode", "--acwt", "0.1", "--priors", "posterior", tiny_hybrid["graph"], dev,
                 model, str(tmp_path / "dec3")]) == 1


def test_select_utts_keeps_about_max_frames_spread_over_the_list():
    lengths = {f"u{i:03d}": 100 for i in range(100)}
    kept = select_utts(lengths, 2000, lengths)
    assert 15 <= len(kept) <= 20 and kept[0] == "u000" and kept[-1] >= "u090"
    assert select_utts(lengths, 0, lengths) == sorted(lengths)


def test_transcribe_uses_the_posterior_priors_a_model_holds(tiny_hybrid, tiny_data, model,
                                                             tmp_path):
    """priors auto: a model dir with adjust-priors' file transcribes as `decode --priors
    posterior` decodes, utterance for utterance; --priors counts as the default decode."""
    import io

    from asrkd.decode import decode
    from asrkd.table import read_table
    from asrkd.transcribe import transcribe

    test = tiny_data["test"]
    assert main(["adjust-priors", model, tiny_data["train"]]) == 0
    hyps = {}
    for priors in ("posterior", "counts"):
        out = str(tmp_path / priors)
        decode(tiny_hybrid["graph"], test, model, out, acwt=0.25, priors=priors)
        hyps[priors] = read_table(os.path.join(out, "hyp.txt"))
    assert hyps["posterior"] != hyps["counts"]  # the priors change some words here
    wav_scp = os.path.join(test, "wav.scp")
    got = transcribe(model, tiny_hybrid["graph"], [wav_scp], acwt=0.25, out=io.StringIO())
    assert got["hyps"] == hyps["posterior"]
    got = transcribe(model, tiny_hybrid["graph"], [wav_scp], acwt=0.25, out=io.StringIO(),
                     priors="counts")
    assert got["hyps"] == hyps["counts"]


def test_onnx_export_carries_the_posterior_priors(tiny_hybrid, tiny_data, model, tmp_path):
    """export-onnx of a model dir holding priors_posterior: the ONNX scorer divides by them
    (its scores are the PyTorch scorer's with --priors posterior) and auto picks them; an
    export with --priors counts has none to give."""
    from asrkd.export import export_onnx
    from asrkd.priors import resolve_priors

    assert main(["adjust-priors", "--max-frames", "0", model, tiny_data["train"]]) == 0
    test = tiny_data["test"]
    auto, counts = str(tmp_path / "auto.onnx"), str(tmp_path / "counts.onnx")
    export_onnx(model, auto, data_dir=test)
    export_onnx(model, counts, data_dir=test, priors="counts")
    assert resolve_priors(auto, "auto") == "posterior"
    assert resolve_priors(counts, "auto") == "counts"
    u = DataDir(test).utts[0]
    want = make_scorer(model, test, priors="posterior")(u)
    np.testing.assert_allclose(make_scorer(auto, test, priors="posterior")(u), want, atol=1e-3)
    np.testing.assert_allclose(make_scorer(auto, test)(u), make_scorer(model, test)(u),
                               atol=1e-3)
    with pytest.raises(UserError, match="exported without posterior priors"):
        make_scorer(counts, test, priors="posterior")
