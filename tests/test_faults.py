"""Bad input, tampered artefacts and faults: each gives a clear one-line error (exit 1) or a
counted, logged skip, never a result from bad data with exit 0.

Every case builds its fault on tiny data: a NaN sample, a truncated file, a checkpoint of
another tree, a full disk (a file size limit), a killed parent process, ...
"""

import glob
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from asrkd.cli import main
from asrkd.errors import UserError
from asrkd.table import ArkWriter, write_table
from test_decode import _data_dir, _word_loop_graph
from test_gmmtrain import make_corpus as make_gmm_corpus
from test_train import MC, TC, make_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _error_line(capsys, verb):
    """The CLI's stderr: exactly one "asrkd VERB: error: ..." line, returned."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"asrkd {verb}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------
# Audio: NaN samples and truncated files are rejected (counted) at preparation


def _librispeech(root, utts):
    """A one-chapter LibriSpeech-layout subset; ``utts``: utt suffix -> (samples, subtype)."""
    chap = os.path.join(root, "19", "198")
    os.makedirs(chap)
    with open(os.path.join(chap, "19-198.trans.txt"), "w") as f:
        for n in sorted(utts):
            f.write(f"19-198-{n} HELLO WORLD\n")
    for n, (x, subtype) in utts.items():
        # a float WAV under a .flac name: libsndfile reads by content, as prepare-data does
        fmt = "WAV" if subtype == "FLOAT" else "FLAC"
        soundfile.write(os.path.join(chap, f"19-198-{n}.flac"), x, 16000, format=fmt,
                        subtype=subtype)
    return root


def _speech(seed, n=16000):
    return (np.random.default_rng(seed).normal(size=n) * 0.1).astype(np.float32)


def test_prepare_rejects_nan_and_truncated_audio_and_counts_them(tmp_path, capsys):
    nan = _speech(1)
    nan[[100, 5000]] = np.nan
    corpus = _librispeech(str(tmp_path / "corpus"), {
        "0000": (_speech(0), "PCM_16"), "0001": (nan, "FLOAT"), "0002": (_speech(2), "PCM_16"),
        "0003": (_speech(3) * np.float32(np.inf), "FLOAT")})
    trunc = os.path.join(corpus, "19", "198", "19-198-0002.flac")
    data = open(trunc, "rb").read()
    open(trunc, "wb").write(data[: len(data) // 2])  # the header still gives the full length
    out = str(tmp_path / "data")
    assert main(["prepare-data", corpus, out]) == 0
    assert "1 kept, 3 rejected (corrupt-audio: 1, nonfinite-audio: 2)" in capsys.readouterr().out
    rejected = open(os.path.join(out, "log", "rejected.txt")).read()
    assert "19-198-0001 nonfinite-audio 2 NaN/Inf samples" in rejected
    assert "19-198-0002 corrupt-audio decoding fails after" in rejected
    assert open(os.path.join(out, "wav.scp")).read().split()[0] == "19-198-0000"


def test_features_of_nan_audio_are_an_error_naming_the_utterance(tmp_path, capsys):
    """A wav.scp pointing at NaN audio (prepared elsewhere): compute-feats names the file, and
    the job's error reaches the terminal (nj 2), not just "1 of 2 jobs failed"."""
    corpus = _librispeech(str(tmp_path / "corpus"), {"0000": (_speech(0), "PCM_16"),
                                                    "0001": (_speech(1), "PCM_16")})
    data = str(tmp_path / "data")
    assert main(["prepare-data", corpus, data]) == 0
    bad = str(tmp_path / "nan.wav")
    x = _speech(5)
    x[7] = np.nan
    soundfile.write(bad, x, 16000, subtype="FLOAT")
    wav = dict(line.split() for line in open(os.path.join(data, "wav.scp")))
    wav["19-198-0001"] = bad
    write_table(os.path.join(data, "wav.scp"), wav)
    capsys.readouterr()
    assert main(["compute-feats", data, str(tmp_path / "fbank"), "--nj", "2"]) == 1
    line = _error_line(capsys, "compute-feats")
    assert f"19-198-0001: audio {bad}: 1 of 16000 values are NaN or Inf" in line
    assert "job 2 of 2" in line
    assert not os.path.exists(os.path.join(data, "feats.scp"))


def test_multi_channel_audio_is_refused_unless_a_channel_or_a_downmix_is_named(tmp_path,
                                                                              capsys):
    """compute-feats read the first channel of a stereo file without a word: now one line,
    and --channel N / mix read what they say (recorded for the feature config check)."""
    from asrkd.featconf import load_feature_config
    from asrkd.features import check_feature_config

    left, right = _speech(0), _speech(1)
    corpus = _librispeech(str(tmp_path / "corpus"), {"0000": (left, "FLOAT")})
    stereo = os.path.join(corpus, "19", "198", "19-198-0000.flac")
    soundfile.write(stereo, np.stack([left, right], axis=1), 16000, format="WAV",
                    subtype="FLOAT")
    data, fbank = str(tmp_path / "data"), str(tmp_path / "fbank")
    assert main(["prepare-data", corpus, data]) == 0
    capsys.readouterr()
    assert main(["compute-feats", data, fbank]) == 1
    assert f"{stereo}: 2 channels: name one with --channel N (0 to 1) or downmix them " \
        "with --channel mix" in _error_line(capsys, "compute-feats")
    assert not os.path.exists(os.path.join(data, "feats.scp"))
    mono = str(tmp_path / "mono")
    os.makedirs(mono)
    conf = os.path.join(REPO, "conf", "fbank.yaml")
    for channel, want in (("1", right), ("mix", (left + right) / 2)):
        assert main(["compute-feats", data, fbank, "--channel", channel]) == 0
        assert open(os.path.join(data, "channel")).read() == f"{channel}\n"
        soundfile.write(os.path.join(mono, "x.wav"), want, 16000, subtype="FLOAT")
        d2 = str(tmp_path / f"data_{channel}")
        os.makedirs(d2)
        for name in ("utt2spk", "spk2utt", "text"):
            open(os.path.join(d2, name), "w").write(open(os.path.join(data, name)).read())
        write_table(os.path.join(d2, "wav.scp"), {"19-198-0000": os.path.join(mono, "x.wav")})
        assert main(["compute-feats", d2, str(tmp_path / f"fbank_{channel}")]) == 0
        got = [kaldiio.load_mat(open(os.path.join(d, "feats.scp")).read().split()[1])
               for d in (data, d2)]
        np.testing.assert_allclose(got[0], got[1], atol=1e-4)
        assert check_feature_config(load_feature_config(conf), data)
    assert main(["compute-feats", data, fbank, "--channel", "2"]) == 1
    assert "no channel 2 (it has 2)" in _error_line(capsys, "compute-feats")


def test_audio_changed_after_prepare_data_is_caught(tmp_path, capsys):
    """A file replaced by a longer one after prepare-data: compute-feats measures it against
    utt2dur; a data dir whose features already disagree with utt2dur fails validate-data-dir."""
    corpus = _librispeech(str(tmp_path / "corpus"), {"0000": (_speech(0), "PCM_16"),
                                                    "0001": (_speech(1), "PCM_16")})
    data, fbank = str(tmp_path / "data"), str(tmp_path / "fbank")
    assert main(["prepare-data", corpus, data]) == 0
    path = os.path.join(corpus, "19", "198", "19-198-0001.flac")
    soundfile.write(path, _speech(2, 2 * 16000), 16000, format="FLAC", subtype="PCM_16")
    capsys.readouterr()
    assert main(["compute-feats", data, fbank]) == 1
    assert f"19-198-0001: {path} is 2 s long but utt2dur says 1 s: the audio changed after " \
        "prepare-data; rerun it" in _error_line(capsys, "compute-feats")
    # features made from the new audio under an old utt2dur (as before this check)
    dur = open(os.path.join(data, "utt2dur")).read()
    write_table(os.path.join(data, "utt2dur"), {"19-198-0000": "1.000", "19-198-0001": "2.000"})
    assert main(["compute-feats", data, fbank]) == 0
    assert main(["validate-data-dir", data]) == 0
    open(os.path.join(data, "utt2dur"), "w").write(dur)
    capsys.readouterr()
    assert main(["validate-data-dir", data]) == 1
    assert "19-198-0001 has 198 frames but utt2dur says 1 s (98 frames): its audio changed " \
        "after prepare-data" in _error_line(capsys, "validate-data-dir")


def test_digital_silence_with_a_transcript_is_rejected_not_aligned(tmp_path, capsys):
    """A recording of zeros is counted as silent-audio at prepare-data; a wav.scp made
    elsewhere pointing at one stops compute-feats naming the utterance."""
    corpus = _librispeech(str(tmp_path / "corpus"), {
        "0000": (_speech(0), "PCM_16"), "0001": (np.zeros(16000, np.float32), "PCM_16")})
    data = str(tmp_path / "data")
    assert main(["prepare-data", corpus, data]) == 0
    assert "1 kept, 1 rejected (silent-audio: 1)" in capsys.readouterr().out
    assert "19-198-0001 silent-audio 16000 samples, all 0" in open(
        os.path.join(data, "log", "rejected.txt")).read()
    wav = dict(line.split() for line in open(os.path.join(data, "wav.scp")))
    silent = os.path.join(corpus, "19", "198", "19-198-0001.flac")
    write_table(os.path.join(data, "wav.scp"), {**wav, "19-198-0000": silent})
    assert main(["compute-feats", data, str(tmp_path / "fbank")]) == 1
    assert f"19-198-0000: {silent} is digital silence (every sample 0)" in _error_line(
        capsys, "compute-feats")


# --------------------------------------------------------------------------------------------
# Features and CMVN: NaN stops at the reader and at compute-cmvn


def _poison_features(data, utt, tmp_path):
    """Rewrite ``utt``'s features in a new archive with one NaN (feats.scp repointed)."""
    scp = dict(line.split() for line in open(os.path.join(data, "feats.scp")))
    x = kaldiio.load_mat(scp[utt]).copy()
    x[3, 2] = np.nan
    with ArkWriter(str(tmp_path / "bad.ark"), str(tmp_path / "bad.scp")) as w:
        w[utt] = x
    scp[utt] = open(tmp_path / "bad.scp").read().split()[1]
    write_table(os.path.join(data, "feats.scp"), scp)


def test_nan_features_stop_cmvn_and_training(tmp_path, capsys):
    data, ali = make_corpus(str(tmp_path / "c"))
    utt = "102-1-0001"
    _poison_features(data, utt, tmp_path)
    assert main(["compute-cmvn", data]) == 1
    line = _error_line(capsys, "compute-cmvn")
    assert f"utterance {utt} (speaker 102): 1 of " in line and "NaN or Inf" in line
    # training on them (CMVN of before): the frame cache names the utterance
    from asrkd.train import train_model

    with pytest.raises(UserError, match=f"features of {utt}: 1 of \\d+ values are NaN"):
        train_model(data, ali, str(tmp_path / "exp"), MC, TC, seed=1)
    assert not os.path.exists(tmp_path / "exp" / "final.pt")


def test_validate_data_dir_values_finds_nan_features(tmp_path, capsys):
    data, _ = make_corpus(str(tmp_path / "c"))
    assert main(["validate-data-dir", data, "--need", "utt2spk", "--values"]) == 0
    _poison_features(data, "105-1-0000", tmp_path)
    assert main(["validate-data-dir", data, "--need", "utt2spk"]) == 0  # headers only
    capsys.readouterr()
    assert main(["validate-data-dir", data, "--need", "utt2spk", "--values"]) == 1
    assert "features of 105-1-0000: 1 of" in _error_line(capsys, "validate-data-dir")


def test_nan_cmvn_stats_are_an_error_naming_the_speaker(tmp_path):
    from asrkd.features import FeatureReader

    data, _ = make_corpus(str(tmp_path / "c"))
    cmvn = dict(line.split() for line in open(os.path.join(data, "cmvn.scp")))
    st = kaldiio.load_mat(cmvn["103"]).copy()
    st[1, 0] = np.inf
    with ArkWriter(str(tmp_path / "cmvn2.ark"), str(tmp_path / "cmvn2.scp")) as w:
        w["103"] = st
    cmvn["103"] = open(tmp_path / "cmvn2.scp").read().split()[1]
    write_table(os.path.join(data, "cmvn.scp"), cmvn)
    with pytest.raises(UserError, match="CMVN stats of speaker 103: 1 of 18 values are NaN"):
        FeatureReader(data, cmvn="meanvar")


# --------------------------------------------------------------------------------------------
# Training: a non-finite loss stops the epoch, names it and the batch's utterances; bad targets


def test_out_of_range_pdf_id_in_an_alignment_is_an_error(tmp_path, capsys):
    data, ali = make_corpus(str(tmp_path / "c"))
    scp = dict(line.split() for line in open(os.path.join(ali, "pdf.scp")))
    y = kaldiio.load_mat(scp["101-1-0003"]).copy()
    y[4] = 99
    with ArkWriter(str(tmp_path / "p.ark"), str(tmp_path / "p.scp")) as w:
        w["101-1-0003"] = y
    scp["101-1-0003"] = open(tmp_path / "p.scp").read().split()[1]
    write_table(os.path.join(ali, "pdf.scp"), scp)
    assert main(["train", data, ali, str(tmp_path / "exp")]) == 1
    assert "101-1-0003: pdf ids outside [0, 6)" in _error_line(capsys, "train")
    assert not os.path.exists(tmp_path / "exp" / "final.pt")



def test_nan_loss_stops_training_naming_epoch_and_utterances(tmp_path):
    """Poisoned extra (soft) targets for one utterance: training must not write a model."""
    from asrkd.frames import split_by_speaker
    from asrkd.train import TrainHooks, train_model

    data, ali = make_corpus(str(tmp_path / "c"))
    frames = dict(line.split() for line in open(os.path.join(data, "utt2num_frames")))
    extra = {u: np.zeros((int(n), 1), dtype=np.float32) for u, n in frames.items()}
    spk = [u.split("-")[0] for u in sorted(frames)]
    train_utts, _ = split_by_speaker(spk, TC.valid_fraction)
    bad = sorted(frames)[train_utts[-1]]  # one the epoch trains on
    extra[bad][10] = np.nan

    def loss_fn(logits, batch):  # CE plus a (soft) term that carries the NaN
        return torch.nn.functional.cross_entropy(logits, batch["y"]) + batch["extra"].mean()

    exp = str(tmp_path / "exp")
    with pytest.raises(UserError, match=rf"epoch 1: the loss is NaN or Inf; non-finite values "
                                        rf"in the batch rows of {bad};"):
        train_model(data, ali, exp, MC, TC, seed=1,
                    hooks=TrainHooks(targets=extra, loss=loss_fn))
    assert glob.glob(os.path.join(exp, "*.pt")) == []


# --------------------------------------------------------------------------------------------
# GMM-HMM systems: two trees with the same pdf count; tampered GMM archives


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    """Two triphone systems with 60 leaves each but different trees (other corpora), the
    alignments of corpus A by each, a data dir of corpus A, a DNN trained on A's alignments and
    the graphs of both trees."""
    from asrkd.align import align
    from asrkd.featconf import MfccConfig, write_feature_config
    from asrkd.gmmtrain import train_mono, train_tri
    from asrkd.train import train_model

    root = tmp_path_factory.mktemp("systems")
    out = {"root": root}
    train_a, _, lang_a = make_gmm_corpus(str(root / "corpus"))
    mono = str(root / "mono")
    train_mono(train_a, lang_a, mono, num_iters=10, num_gauss=100)
    align(train_a, lang_a, mono, str(root / "mono_ali"))
    # the same data, leaf count and pdf count; another minimum leaf count grows another tree
    for name, min_count in (("a", 20), ("b", 5)):
        tri = str(root / f"tri_{name}")
        train_tri(train_a, lang_a, str(root / "mono_ali"), tri, num_leaves=60, num_gauss=200,
                  num_iters=8, min_count=min_count)
        out[name] = (train_a, lang_a, tri)
    data = _data_dir(str(root / "data_a"), train_a, None)
    write_feature_config(data, MfccConfig())  # 13 dims, as the synthetic features
    out["data"] = data
    for name in ("a", "b"):  # corpus A aligned by each tree
        out[f"ali_{name}"] = str(root / f"ali_{name}")
        align(train_a, lang_a, out[name][2], out[f"ali_{name}"])
        out[f"graph_{name}"] = _word_loop_graph(lang_a, out[name][2], str(root / f"graph_{name}"))
    tc = TC.__class__(**{**TC.to_dict(), "epochs": 1, "min_epochs": 1})
    mc = MC.__class__(**{**MC.to_dict(), "cmvn": "mean"})
    out["dnn"] = train_model(data, out["ali_a"], str(root / "teachers" / "model1"), mc, tc, 1)
    return out


def test_two_trees_same_pdf_count_are_told_apart(systems):
    from asrkd.gmm import load_gmm
    from asrkd.identity import tree_id

    a, b = systems["a"][2], systems["b"][2]
    assert load_gmm(a).num_pdfs == load_gmm(b).num_pdfs == 60  # the count cannot tell
    assert tree_id(a) != tree_id(b)
    assert tree_id(systems["ali_a"]) == tree_id(a) == tree_id(systems["graph_a"])
    from asrkd.identity import phones_id, read_id

    assert read_id(os.path.join(a, "phones_id")) == phones_id(systems["a"][1].phones)
    ckpt = torch.load(systems["dnn"], weights_only=True)
    assert ckpt["tree_id"] == tree_id(a)
    assert ckpt["feature_config"]["type"] == "mfcc"


def test_decoding_a_dnn_over_another_trees_graph_is_an_error(systems, tmp_path, capsys):
    args = [systems["graph_b"], systems["data"], systems["dnn"], str(tmp_path / "dec")]
    assert main(["decode", *args, "--acwt", "0.1"]) == 1
    line = _error_line(capsys, "decode")
    assert f"{systems['dnn']} (tree " in line and f"{systems['graph_b']} (tree " in line
    assert "different triphone trees" in line
    assert not os.path.exists(tmp_path / "dec" / "hyp.txt")
    # and frame accuracy against the other tree's alignments
    assert main(["decode", systems["graph_a"], systems["data"], systems["dnn"],
                 str(tmp_path / "dec2"), "--acwt", "0.1", "--ali-dir", systems["ali_b"]]) == 1
    assert systems["ali_b"] in _error_line(capsys, "decode")


def test_an_ensemble_of_two_trees_is_an_error(systems, tmp_path, capsys):
    from asrkd.train import train_model

    tc = TC.__class__(**{**TC.to_dict(), "epochs": 1, "min_epochs": 1})
    mc = MC.__class__(**{**MC.to_dict(), "cmvn": "mean"})
    other = train_model(systems["data"], systems["ali_b"], str(tmp_path / "m2"), mc, tc, 2)
    assert main(["decode", systems["graph_a"], systems["data"], systems["dnn"], other,
                 str(tmp_path / "dec"), "--acwt", "0.1"]) == 1
    line = _error_line(capsys, "decode")
    assert systems["dnn"] in line and other in line and "different triphone trees" in line


def test_gmm_decode_over_another_trees_graph_is_an_error(systems, tmp_path, capsys):
    assert main(["decode", systems["graph_a"], systems["data"], systems["b"][2],
                 str(tmp_path / "dec"), "--acwt", "0.1"]) == 1
    assert "different triphone trees" in _error_line(capsys, "decode")


def test_distilling_with_another_trees_alignments_is_an_error(systems, tmp_path):
    from asrkd.distill import distill
    from asrkd.softtargets import compute_soft_targets

    soft = str(tmp_path / "soft")
    meta = compute_soft_targets(systems["data"], str(systems["root"] / "teachers"), soft)
    assert meta["tree_id"] is not None
    with pytest.raises(UserError, match=r"the soft targets .* \(tree [0-9a-f]+\) and .*ali_b "
                                        r"\(tree [0-9a-f]+\) come from different"):
        distill(systems["data"], systems["ali_b"], soft, str(tmp_path / "student"), MC, TC)
    with pytest.raises(UserError, match="different triphone trees"):  # teachers on the fly
        distill(systems["data"], systems["ali_b"], None, str(tmp_path / "student2"), MC, TC,
                teachers_dir=str(systems["root"] / "teachers"))
    assert not os.path.exists(tmp_path / "student" / "final.pt")


def test_training_from_another_trees_init_or_resume_is_an_error(systems, tmp_path):
    from asrkd.train import train_model

    with pytest.raises(UserError, match="different triphone trees"):
        train_model(systems["data"], systems["ali_b"], str(tmp_path / "x"), MC, TC, 1,
                    init_from=systems["dnn"])
    exp = str(tmp_path / "resume")
    tc1 = TC.__class__(**{**TC.to_dict(), "epochs": 1, "min_epochs": 1})
    train_model(systems["data"], systems["ali_a"], exp, MC, tc1, 1)
    with pytest.raises(UserError, match="epoch1.pt .* different triphone trees"):
        train_model(systems["data"], systems["ali_b"], exp, MC, TC, 1)
    # an epoch checkpoint without its optimizer state: named, not a KeyError
    ck = torch.load(os.path.join(exp, "epoch1.pt"), weights_only=True)
    del ck["optimizer"]
    torch.save(ck, os.path.join(exp, "epoch1.pt"))
    with pytest.raises(UserError, match="epoch1.pt: not an epoch checkpoint \\(no optimizer\\)"):
        train_model(systems["data"], systems["ali_a"], exp, MC, TC, 1)


def _tamper_npz(path, **changes):
    """Rewrite an npz with arrays replaced (value) or removed (None)."""
    z = dict(np.load(path, allow_pickle=False))
    for k, v in changes.items():
        if v is None:
            z.pop(k)
        else:
            z[k] = v
    with open(path, "wb") as f:
        np.savez(f, **z)


def test_gmm_archive_missing_key_nan_or_truncated_names_the_file(systems, tmp_path, capsys):
    import shutil

    from asrkd.gmm import load_gmm

    for case, change in (("missing", {"gmm_inv_vars": None}), ("nan", "nan"),
                         ("truncated", "truncated")):
        d = str(tmp_path / case)
        shutil.copytree(systems["a"][2], d)
        mdl = os.path.join(d, "final.mdl")
        if change == "nan":
            means = np.load(mdl)["gmm_means_invvars"].copy()
            means[4, 1] = np.nan
            _tamper_npz(mdl, gmm_means_invvars=means)
        elif change == "truncated":
            data = open(mdl, "rb").read()
            open(mdl, "wb").write(data[: len(data) // 3])
        else:
            _tamper_npz(mdl, **change)
        with pytest.raises(UserError) as e:
            load_gmm(d)
        msg = str(e.value)
        assert msg.startswith(mdl + ":")
        assert {"missing": "no 'gmm_inv_vars' array", "nan": "gmm_means_invvars: 1 of",
                "truncated": "truncated"}[case] in msg
    # nor is a model with NaN parameters written
    from asrkd.gmm import am_from_arrays, am_to_arrays, save_gmm

    m = load_gmm(systems["a"][2])
    w, iv, mi = am_to_arrays(m.am)
    iv[3] = iv[3].copy()
    iv[3][0, 0] = np.inf
    m.am = am_from_arrays(w, iv, mi)
    with pytest.raises(UserError, match=r"final.mdl: gmm_inv_vars: 1 of \d+ values are NaN"):
        save_gmm(m, str(tmp_path / "nan_model"))
    assert not os.path.exists(tmp_path / "nan_model" / "final.mdl")
    # through the CLI: align with the damaged model is one line
    assert main(["align", systems["data"], systems["a"][1].dir, str(tmp_path / "missing"),
                 str(tmp_path / "ali")]) == 1
    assert "no 'gmm_inv_vars' array" in _error_line(capsys, "align")


# --------------------------------------------------------------------------------------------
# Features: the config carried from compute-feats to checkpoints and consumers


def test_feature_config_travels_and_mismatches_are_named(tiny_data, tmp_path):
    from asrkd.data import combine_data_dirs, subset_data_dir, validate_data_dir
    from asrkd.featconf import feature_config
    from asrkd.features import FeatureReader
    from asrkd.models import ModelConfig, build_model
    from asrkd.scorer import make_scorer

    fb, mf = tiny_data["test"], tiny_data["test_mfcc"]
    assert feature_config(fb)["type"] == "fbank" and feature_config(mf)["type"] == "mfcc"
    s1, s2 = str(tmp_path / "s1"), str(tmp_path / "s2")
    subset_data_dir(fb, s1, s2, num_speakers=1)
    assert feature_config(s1) == feature_config(fb)
    with pytest.raises(UserError, match="different configs"):
        combine_data_dirs(str(tmp_path / "both"), [s2, tiny_data["dev_mfcc"]])
    # a model trained on fbank, its checkpoint recording the config, scored on MFCC
    m = build_model(ModelConfig(feat_dim=40, num_pdfs=5, hidden_dims=[8]))
    m.pdf_counts += 1
    ck = str(tmp_path / "m.pt")
    m.save(ck, feature_config=feature_config(fb))
    with pytest.raises(UserError, match=r"m.pt was trained on other features than .*test_mfcc "
                                        r"has \(type='fbank' vs 'mfcc', "):
        make_scorer(ck, feats=FeatureReader(mf, cmvn="meanvar"))
    # without a recorded config the dims still disagree, in one line
    m.save(ck)
    with pytest.raises(UserError, match=r"takes 40-dim features but .*test_mfcc has 13-dim"):
        make_scorer(ck, feats=FeatureReader(mf, cmvn="meanvar"))
    # a feat_config.yaml that does not describe the stored features
    with open(os.path.join(s1, "feat_config.yaml"), "a") as f:
        f.write("num_mel_bins: 23\n")
    with pytest.raises(UserError, match="features have dim 40 but feat_config.yaml describes 23"):
        validate_data_dir(s1)


# --------------------------------------------------------------------------------------------
# Checkpoints: corrupt, pickled, inconsistent, non-finite


@pytest.fixture
def checkpoint(tmp_path):
    from asrkd.models import ModelConfig, build_model

    m = build_model(ModelConfig(feat_dim=4, num_pdfs=3, hidden_dims=[8]))
    path = str(tmp_path / "ok.pt")
    m.save(path)
    return path


def test_corrupt_checkpoints_are_named_and_never_unpickled(checkpoint, tmp_path):
    from asrkd.models import CHECKPOINT_FORMAT, load_model

    data = open(checkpoint, "rb").read()
    trunc, garbage, empty = (str(tmp_path / n) for n in ("trunc.pt", "garbage.pt", "empty.pt"))
    open(trunc, "wb").write(data[: len(data) // 2])
    open(garbage, "wb").write(np.random.default_rng(0).bytes(3000))
    open(empty, "wb").close()
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = str(tmp_path / "evil.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "model_config": {}, "state_dict": {},
                "x": Payload()}, evil)
    for path, what in ((trunc, "truncated or corrupt"), (garbage, "not a torch checkpoint"),
                       (empty, "truncated or corrupt"), (evil, "holds pickled Python objects")):
        with pytest.raises(UserError) as e:
            load_model(path)
        assert str(e.value).startswith(f"{path}: {what}"), str(e.value)
        assert "weights_only" not in str(e.value)
    assert not marker.exists()


def test_checkpoint_config_and_shapes_checked_before_allocation(checkpoint, tmp_path):
    from asrkd.models import load_model

    ck = torch.load(checkpoint, weights_only=True)
    # a config asking for 10^9 units: allocated, this would need terabytes
    ck["model_config"]["hidden_dims"] = [10**9]
    bad = str(tmp_path / "huge.pt")
    torch.save(ck, bad)
    with pytest.raises(UserError, match=r"huge.pt: state_dict\['hidden.0.bias'\] is shape "
                                        r"\(8,\), the model_config gives shape "
                                        r"\(1000000000,\)"):
        load_model(bad)
    ck = torch.load(checkpoint, weights_only=True)
    ck["model_config"]["hidden_dimz"] = [8]
    torch.save(ck, bad)
    with pytest.raises(UserError, match="huge.pt: bad model_config: unknown ModelConfig keys"):
        load_model(bad)
    ck = torch.load(checkpoint, weights_only=True)
    ck["state_dict"]["output.bias"][1] = float("nan")
    torch.save(ck, bad)
    with pytest.raises(UserError, match=r"state_dict\['output.bias'\]: 1 of 3 values are NaN"):
        load_model(bad)


def test_a_few_kb_checkpoint_declaring_a_huge_model_is_refused_before_allocation(
        checkpoint, tmp_path, capsys, monkeypatch):
    """Zero-stride tensors make a consistent 40 GB model a 3 KB file: its declared size is
    checked against the limit before anything is built, checked for NaN or allocated."""
    from asrkd.models import ModelConfig, build_model, load_model

    ck = torch.load(checkpoint, weights_only=True)
    ck["model_config"]["hidden_dims"] = [10**5, 10**5]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in
                  build_model(ModelConfig.from_dict(ck["model_config"])).state_dict().items()}
    ck["state_dict"] = {k: torch.zeros(1).expand(*s) if len(s) else torch.zeros(())
                        for k, s in shapes.items()}
    huge = str(tmp_path / "huge.pt")
    torch.save(ck, huge)
    assert os.path.getsize(huge) < 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(hard, 2**31) if hard > 0 else 2**31, hard))
    try:  # the old path allocated 40 GB: under this limit a MemoryError/RuntimeError
        with pytest.raises(UserError, match=r"huge.pt: the model_config declares a model of "
                                            r"37.3 GiB \(limit 8 GiB"):
            load_model(huge)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert main(["export-onnx", huge, str(tmp_path / "m.onnx")]) == 1
    assert "37.3 GiB" in _error_line(capsys, "export-onnx")
    monkeypatch.setenv("ASRKD_MAX_MODEL_BYTES", "100")  # the stated limit is the user's
    with pytest.raises(UserError, match=r"ok.pt: .* \(limit 9.31e-08 GiB"):
        load_model(checkpoint)
    monkeypatch.setenv("ASRKD_MAX_MODEL_BYTES", "1e4")
    load_model(checkpoint)


# --------------------------------------------------------------------------------------------
# Jobs: errors surface, crashes show their log, dead workers do not hang, orphans die


def _user_error_job(i):
    if i == 2:
        raise UserError("utt-7: something the user can fix")
    return i


def _crash_job(i):
    if i == 1:
        print("reading utt-9")
        raise ValueError("boom")
    return i


def _killed_job(i):
    if i == 1:
        print("about to die")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return i


@pytest.mark.parametrize("nj", [1, 2])
def test_job_user_error_reaches_the_parent_with_its_context(tmp_path, nj):
    from asrkd.jobs import run_jobs

    with pytest.raises(UserError) as e:
        run_jobs(_user_error_job, [(i,) for i in range(3)], nj, str(tmp_path), "work")
    assert str(e.value) == (f"utt-7: something the user can fix [work job 3 of 3, log "
                            f"{tmp_path}/work.3.log]")


@pytest.mark.parametrize("job", [_crash_job, _killed_job])
def test_crashed_or_killed_job_prints_its_log_tail(tmp_path, capsys, job):
    from asrkd.jobs import run_jobs

    t0 = time.time()
    with pytest.raises(UserError, match="jobs failed; job 2: .*work.2.log ends as printed"):
        run_jobs(job, [(i,) for i in range(3)], 2, str(tmp_path), "work")
    assert time.time() - t0 < 30  # a dead worker must not hang the pool
    err = capsys.readouterr().err
    assert f"--- last lines of {tmp_path}/work.2.log ---" in err
    assert ("reading utt-9" in err and "ValueError: boom" in err) if job is _crash_job \
        else "about to die" in err


def test_workers_die_with_their_parent(tmp_path):
    """SIGKILL the parent of two sleeping jobs: both workers are gone soon after."""
    code = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {REPO!r})
        from asrkd.jobs import run_jobs
        from asrkd.table import atomic_path

        def job(i):
            with atomic_path(os.path.join({str(tmp_path)!r}, f"out{{i}}")):
                open(os.path.join({str(tmp_path)!r}, f"pid{{i}}"), "w").write(str(os.getpid()))
                time.sleep(120)

        run_jobs(job, [(0,), (1,)], 2, {str(tmp_path / "log")!r}, "sleep")
    """)
    parent = subprocess.Popen([sys.executable, "-c", code])
    pids = []
    for _ in range(300):
        pids = [tmp_path / f"pid{i}" for i in range(2)]
        if all(p.exists() and p.read_text() for p in pids):
            break
        time.sleep(0.1)
    pids = [int(p.read_text()) for p in pids]
    parent.kill()
    parent.wait()
    for _ in range(100):
        alive = [p for p in pids if _alive(p)]
        if not alive:
            break
        time.sleep(0.1)
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert alive == []
    assert glob.glob(str(tmp_path / ".out*.tmp")) == []  # the jobs cleaned up as they died


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------------------------
# Files: a full disk during train, modes of atomically written files


def _limited(fsize, args):
    """`asrkd ARGS` in a child whose files may not grow beyond ``fsize`` bytes (the way a full
    disk looks to a writer: EFBIG here, ENOSPC there; both are handled alike)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "asrkd", *args], capture_output=True, text=True,
                          preexec_fn=limit, env=env, timeout=120)


def test_full_disk_during_train_is_one_line_and_leaves_no_temp_files(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"))
    conf = tmp_path / "dnn.yaml"
    conf.write_text("model: {left_context: 1, right_context: 1, hidden_dims: [16]}\n"
                    "train: {epochs: 1, min_epochs: 1, tensorboard: false}\n")
    exp = tmp_path / "exp"
    # the frame cache (24 x 60 frames x 8 dims) does not fit
    r = _limited(20_000, ["train", data, ali, str(exp), "--conf", str(conf)])
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.match(r"asrkd train: error: File too large writing .*/feats.npy; free space",
                    last), last
    assert "Traceback" not in r.stderr and "Bus error" not in r.stderr
    left = [p for p in glob.glob(str(exp / "**"), recursive=True) if os.path.isfile(p)]
    assert left == []
    # the cache fits, the checkpoint does not
    conf.write_text("model: {left_context: 1, right_context: 1, hidden_dims: [2000]}\n"
                    "train: {epochs: 1, min_epochs: 1, tensorboard: false}\n")
    r = _limited(100_000, ["train", data, ali, str(exp), "--conf", str(conf)])
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("asrkd train: error: File too large")
    assert "Traceback" not in r.stderr
    assert not glob.glob(str(exp / ".*.tmp")) and not glob.glob(str(exp / "*.pt"))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_files_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_table(str(tmp_path / "t"), {"a": "1"})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "t").st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------------------------
# Scoring and decoding options


def test_empty_reference_is_an_error_not_a_perfect_score(tmp_path, capsys):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_text("u1\nu2\n")
    hyp.write_text("u1 HELLO\n")
    assert main(["score", str(ref), str(hyp), str(tmp_path / "out")]) == 1
    assert f"reference {ref}: no words to score against (2 utterances)" in _error_line(
        capsys, "score")
    ref.write_text("")
    assert main(["score", str(ref), str(hyp), str(tmp_path / "out")]) == 1
    _error_line(capsys, "score")
    assert not (tmp_path / "out" / "wer").exists()


@pytest.mark.parametrize("opts,what", [
    (["--max-active", "100"], "--max-active must be at least the decoder's min-active 200"),
    (["--beam", "-1"], "--beam and --lattice-beam must be positive"),
    (["--lattice-beam", "0"], "--beam and --lattice-beam must be positive")])
def test_bad_decoder_options_are_refused_before_decoding(systems, tmp_path, capsys, opts, what):
    assert main(["decode", systems["graph_a"], systems["data"], systems["a"][2],
                 str(tmp_path / "dec"), "--acwt", "0.1", *opts]) == 1
    assert what in _error_line(capsys, "decode")


def test_nan_acoustic_scores_name_the_utterance(systems):
    from asrkd.decode import decode_loglikes, load_graph

    hclg, tm, _ = load_graph(systems["graph_a"])
    ll = np.zeros((20, tm.num_pdfs), dtype=np.float32)
    ll[5, 3] = np.nan
    with pytest.raises(UserError, match="utt-3: acoustic scores: 1 of 1200 values are NaN"):
        decode_loglikes(hclg, tm, ll, 0.1, utt="utt-3")



def test_a_killed_recipe_takes_its_asrkd_commands_with_it(tmp_path):
    """The recipes' shell (lib.sh) has its asrkd commands die with it: here `asrkd
    compute-feats` blocked reading its config from a FIFO, its shell killed with SIGKILL."""
    fifo, pidfile = tmp_path / "fbank.yaml", tmp_path / "pid"
    os.mkfifo(fifo)
    script = (f". {REPO}/recipes/lib.sh\n"
              f"{sys.executable} -m asrkd compute-feats {tmp_path} {tmp_path / 'f'} "
              f"--conf {fifo} &\necho $! > {pidfile}\nwait\n")
    shell = subprocess.Popen(["bash", "-c", script], env=dict(os.environ, PYTHONPATH=REPO))
    for _ in range(300):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    pid = int(pidfile.read_text())
    time.sleep(1.0)  # asrkd is up and blocked in open(fifo)
    assert _alive(pid)
    shell.kill()
    shell.wait()
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("asrkd outlived its recipe shell")


def test_bad_alignment_and_training_options_are_refused(systems, tmp_path, capsys):
    assert main(["align", systems["data"], systems["a"][1].dir, systems["a"][2],
                 str(tmp_path / "ali"), "--beam", "-2"]) == 1
    assert "need 0 < --beam <= --retry-beam" in _error_line(capsys, "align")
    from asrkd.train import TrainConfig

    with pytest.raises(UserError, match="lr and epochs must be positive"):
        TrainConfig(lr=float("nan"))
    from asrkd.decode import decode_data_dir

    with pytest.raises(UserError, match="acoustic scales must be positive"):
        decode_data_dir(systems["graph_a"], None, ["u"], str(tmp_path / "d"), float("nan"))


# --------------------------------------------------------------------------------------------
# One writer per directory: the experiment lock (asrkd.lock, recipes/lib.sh)


@pytest.fixture
def sleeper():
    """A live process (the owner of a lock); killed at the end."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def _score_args(tmp_path, out):
    ref = tmp_path / "ref"
    ref.write_text("u1 HELLO WORLD\n")
    return ["score", str(ref), str(ref), str(out)]


def test_a_second_writer_is_refused_naming_the_owner(tmp_path, capsys, sleeper):
    import socket

    from asrkd.lock import LOCK_NAME, locked

    out = tmp_path / "exp"
    out.mkdir()
    lock = out / LOCK_NAME
    lock.write_text(f"{sleeper.pid} {socket.gethostname()} asrkd train\n")
    for args in (_score_args(tmp_path, out), ["train", str(tmp_path), str(tmp_path), str(out)]):
        assert main(args) == 1
        line = _error_line(capsys, args[0])
        assert f"is in use by another run: pid {sleeper.pid} on {socket.gethostname()} " \
               "(asrkd train)" in line, line
    assert not (out / "wer").exists()
    # the owner is gone: its lock is taken over with a note, and released at the end
    sleeper.kill()
    sleeper.wait()
    assert main(_score_args(tmp_path, out)) == 0
    assert f"taking over the lock of pid {sleeper.pid}" in capsys.readouterr().err
    assert (out / "wer").exists() and not lock.exists()
    # a run's own workers (children, torchrun ranks > 0) do not lock again
    with locked(out):
        assert lock.exists()
        assert main(_score_args(tmp_path, out)) == 0
        assert lock.exists()
    assert not lock.exists()


def test_two_writers_started_together_one_wins(tmp_path):
    from asrkd.lock import acquire

    script = ("import sys, time; from asrkd.lock import acquire; from asrkd.errors import "
              "UserError\ntime.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
              "try:\n    acquire(sys.argv[1]); time.sleep(1); print('won')\n"
              "except UserError:\n    print('lost')\n")
    start = str(time.time() + 2)
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "d"), start],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["lost", "lost", "lost", "won"], outs
    assert acquire(tmp_path / "d")  # every owner gone: taken over


def test_two_recipes_on_one_exp_the_second_stops(tmp_path):
    exp = tmp_path / "exp"
    script = (f". {REPO}/recipes/lib.sh\nexp={exp}\nlock_exp\ncat $exp/.asrkd.lock\n"
              "echo $ASRKD_LOCKS\nsleep ${1:-0}\n")
    first = subprocess.Popen(["bash", "-c", script, "recipe", "20"], stdout=subprocess.PIPE,
                             text=True)
    for _ in range(100):
        if (exp / ".asrkd.lock").exists():
            break
        time.sleep(0.1)
    second = subprocess.run(["bash", "-c", script, "recipe"], capture_output=True, text=True)
    assert second.returncode == 1
    assert f"in use by another run: pid {first.pid} " in second.stderr, second.stderr
    first.kill()  # SIGKILL: no EXIT trap, the lock stays behind, stale
    first.wait()
    third = subprocess.run(["bash", "-c", script, "recipe"], capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert f"taking over the lock of pid {first.pid}" in third.stderr
    assert third.stdout.split()[-1] == str(exp.resolve())  # the verbs inherit it
    assert not (exp / ".asrkd.lock").exists()  # released on exit


# --------------------------------------------------------------------------------------------
# An overwrite interrupted: never read as whole


def test_an_interrupted_soft_target_overwrite_never_reads_as_whole(tmp_path, capsys):
    from asrkd.softtargets import SoftTargetStore, save_soft_targets

    rng = np.random.default_rng(0)
    dist = {f"u{i}": rng.dirichlet(np.ones(8), size=10).astype(np.float32) for i in range(3)}
    soft = str(tmp_path / "soft")
    save_soft_targets(soft, dist, temperature=2.0, topk=4)
    assert SoftTargetStore(soft).temperature == 2.0
    bad = dict(dist, u2=np.full((10, 8), np.nan, dtype=np.float32))  # stops the overwrite
    with pytest.raises(UserError):
        save_soft_targets(soft, bad, temperature=1.0, topk=4)
    with pytest.raises(UserError, match="an unfinished soft-target store .* run soft-targets "
                                         "again"):
        SoftTargetStore(soft)
    save_soft_targets(soft, dist, temperature=1.0, topk=4)
    assert SoftTargetStore(soft).temperature == 1.0


# --------------------------------------------------------------------------------------------
# Bounded readers: a truncated gzipped ARPA


def test_a_truncated_gzipped_arpa_ends_in_one_line_fast(tmp_path):
    import gzip

    from asrkd.graph import arpa_to_G

    text = tmp_path / "text"
    text.write_text("A B A\nB A B B\nA A B\n")
    arpa = tmp_path / "lm.arpa"
    assert main(["train-lm", str(text), str(arpa), "--order", "2"]) == 0
    words = tmp_path / "words.txt"
    words.write_text("<eps> 0\n<s> 1\n</s> 2\nA 3\nB 4\n#0 5\n")
    whole = arpa.read_bytes()
    gz = gzip.compress(whole)
    cases = {"cut.arpa.gz": (gz[: len(gz) // 2], "not a whole gzip file"),
             "short.arpa.gz": (gzip.compress(whole[: len(whole) * 2 // 3]),
                               r"the ARPA text ends before its \\end\\ line")}
    for name, (data, what) in cases.items():
        (tmp_path / name).write_bytes(data)
        t0 = time.time()
        with pytest.raises(UserError, match=what):
            arpa_to_G(str(tmp_path / name), str(words), str(tmp_path / "G.fst"), timeout=60)
        assert time.time() - t0 < 30
        assert not (tmp_path / "G.fst").exists()
    (tmp_path / "lm.arpa.gz").write_bytes(gz)
    assert arpa_to_G(str(tmp_path / "lm.arpa.gz"), str(words), str(tmp_path / "G.fst")).num_states


# --------------------------------------------------------------------------------------------
# One option check for every verb


@pytest.mark.parametrize("args,what", [
    (["transcribe", "m", "g", "a.wav", "--acwt", "0"], "--acwt must be positive, got 0.0"),
    (["transcribe", "m", "g", "a.wav", "--acwt", "-1"], "--acwt must be positive, got -1.0"),
    (["transcribe", "m", "g", "a.wav", "--beam", "-1"], "--beam and --lattice-beam must be "
                                                        "positive"),
    (["transcribe", "m", "g", "a.wav", "--max-active", "10"], "--max-active must be at least"),
    (["decode", "g", "d", "m", "o", "--acwt", "0"], "--acwt must be positive"),
    (["decode", "g", "d", "m", "o", "--acwt-grid", "0.1,-1"], "acoustic scales must be positive"),
    (["train-mono", "d", "l", "e", "--num-iters", "0"], "--num-iters must be >= 1, got 0"),
    (["train-tri", "d", "l", "a", "e", "--num-iters", "-3"], "--num-iters must be >= 1, got -3"),
    (["train-tri", "d", "l", "a", "e", "--num-leaves", "0"], "--num-leaves must be >= 1"),
    (["soft-targets", "d", "t", "o", "--topk", "-1"], "--topk must be >= 0, got -1"),
    (["soft-targets", "d", "t", "o", "--nj", "0"], "--nj must be >= 1, got 0"),
    (["distill", "d", "a", "s", "e", "--topk", "-5"], "--topk must be >= 0, got -5"),
    (["train-ensemble", "d", "a", "e", "--num-models", "0"], "--num-models must be >= 1"),
    (["train-specialists", "g", "d", "a", "e", "--num-sets", "0"], "--num-sets must be >= 1"),
    (["train-specialists", "g", "d", "a", "e", "--num-sets", "2", "--lr=-1e-3"],
     "--lr must be positive, got -0.001"),
])
def test_bad_options_are_refused_alike_by_every_verb(tmp_path, capsys, args, what):
    assert main(args) == 1
    assert what in _error_line(capsys, args[0])


def test_transcribe_checks_its_options_as_decode_does():
    from asrkd.transcribe import transcribe

    for kw in ({"acwt": -1.0}, {"acwt": 0.0}, {"beam": -2.0}):
        with pytest.raises(UserError, match="must be positive"):
            transcribe("m", "g", ["a.wav"], **kw)


# --------------------------------------------------------------------------------------------
# Corrupt, truncated or misplaced inputs: one line, no traceback


def test_a_truncated_hclg_is_one_line(systems, tmp_path, capsys):
    import shutil

    graph = str(tmp_path / "graph")
    shutil.copytree(systems["graph_a"], graph)
    hclg = os.path.join(graph, "HCLG.fst")
    data = open(hclg, "rb").read()
    open(hclg, "wb").write(data[: len(data) // 2])
    assert main(["decode", graph, systems["data"], systems["a"][2], str(tmp_path / "dec"),
                 "--acwt", "0.1"]) == 1
    assert f"{hclg}: not a whole FST" in _error_line(capsys, "decode")


def test_relative_scp_paths_read_from_elsewhere_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_corpus("c")  # feats.scp, cmvn.scp and pdf.scp hold paths relative to tmp_path
    monkeypatch.chdir(tmp_path / "c")
    data, ali = str(tmp_path / "c" / "data"), str(tmp_path / "c" / "ali")
    assert main(["train", data, ali, str(tmp_path / "exp")]) == 1
    line = _error_line(capsys, "train")
    assert "c/cmvn.ark: no such file" in line and "relative to the directory" in line, line
    from asrkd.alignment import AlignmentDir

    with pytest.raises(UserError, match=r"c/ali/pdf.ark: no such file, named by .*pdf.scp: "
                                        r"100-1-0000 .*relative to the directory"):
        next(iter(AlignmentDir(ali).pdf_scp.values()))


def test_a_feats_scp_with_a_wrong_offset_is_one_line(tmp_path, capsys):
    data, _ = make_corpus(str(tmp_path / "c"))
    scp = os.path.join(data, "feats.scp")
    lines = open(scp).read().splitlines()
    utt, spec = lines[1].split()
    ark, off = spec.rsplit(":", 1)
    lines[1] = f"{utt} {ark}:{int(off) + 3}"
    open(scp, "w").write("\n".join(lines) + "\n")
    assert main(["compute-cmvn", data]) == 1
    assert f"{ark}:{int(off) + 3}: not a Kaldi matrix" in _error_line(capsys, "compute-cmvn")


def test_a_malformed_lhotse_manifest_is_one_line(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, _speech(0), 16000)
    rec = {"id": "r1", "sources": [{"type": "file", "channels": [0], "source": str(wav)}],
           "sampling_rate": 16000, "num_samples": 16000, "duration": 1.0}
    good = {"id": "c1", "start": 0, "duration": 1.0, "channel": 0, "recording": rec,
            "supervisions": [{"id": "s1", "recording_id": "r1", "start": 0, "duration": 1.0,
                              "speaker": "spk", "text": "hi"}], "type": "MonoCut"}
    import json

    sup = good["supervisions"][0]
    for bad in ({**good, "supervisions": [{**sup, "text": 5}]},  # lhotse takes them as they are
                {**good, "supervisions": [{**sup, "speaker": 5}]}, {**good, "duration": "1.0"},
                {**good, "recording": {**rec, "duration": "x"}}):
        cuts = tmp_path / "cuts.jsonl"
        cuts.write_text(json.dumps(bad) + "\n")
        assert main(["import-lhotse", str(cuts), str(tmp_path / "d")]) == 1
        assert f"{cuts}: not a lhotse cuts manifest" in _error_line(capsys, "import-lhotse")


def test_a_broken_yaml_conf_and_a_dropout_above_one_are_one_line(tmp_path, capsys):
    conf = tmp_path / "dnn.yaml"
    conf.write_text("model: {left_context: 1, hidden_dims: [16]\ntrain: {epochs: 1}\n")
    for args in (["train", str(tmp_path), str(tmp_path), str(tmp_path / "e"), "--conf", str(conf)],
                 ["compute-feats", str(tmp_path), str(tmp_path / "f"), "--conf", str(conf)]):
        assert main(args) == 1
        assert f"{conf}: not valid YAML" in _error_line(capsys, args[0])
    conf.write_text("model: {dropout: 1.5}\n")
    with pytest.raises(UserError, match=r"dropout must be in \[0, 1\), got 1.5"):
        from asrkd.train import load_conf
        load_conf(str(conf))


def test_full_disk_during_compute_feats_and_soft_targets_is_one_line(tiny_data, systems,
                                                                     tmp_path):
    from asrkd.data import copy_data_dir

    data = str(tmp_path / "dev")
    copy_data_dir(tiny_data["dev"], data)
    for nj in ("2",):  # (a job in a worker process; soft-targets below runs one in-process)
        r = _limited(30_000, ["compute-feats", "--nj", nj, "--conf",
                              os.path.join(REPO, "conf", "fbank.yaml"), data,
                              str(tmp_path / f"fbank{nj}")])
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert re.match(r"asrkd compute-feats: error: File too large writing .*; free space",
                        r.stderr.strip().splitlines()[-1]), r.stderr
        assert not os.path.exists(os.path.join(data, "feats.scp"))
    teachers = os.path.dirname(os.path.dirname(systems["dnn"]))
    for nj in ("1",):
        soft = tmp_path / f"soft{nj}"
        r = _limited(2_000, ["soft-targets", "--nj", nj, systems["data"], teachers, str(soft)])
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert re.match(r"asrkd soft-targets: error: File too large writing .*; free space",
                        r.stderr.strip().splitlines()[-1]), r.stderr
        assert not (soft / "meta.json").exists()
