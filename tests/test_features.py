"""Features, CMVN, deltas and FeatureReader on generated audio.

Backend agreement (dither 0, same waveform): fbank log-mel within 2e-4 absolute, MFCC within
1e-3 absolute (measured: ~7e-5 and ~4e-4; MFCC C0 is a sum over all bins, so it collects the
most float32 rounding). Where torchaudio imports, torchaudio.compliance.kaldi agrees too.
"""

import glob
import os

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile

from asrkd import cli
from asrkd.data import prepare_librispeech, validate_data_dir
from asrkd.errors import DataDirError, UserError
from asrkd.featconf import FbankConfig, MfccConfig, load_feature_config, num_frames
from asrkd.features import FeatureReader, add_deltas, compute_feats, compute_features

SR = 16000
CONF = os.path.join(os.path.dirname(__file__), "..", "conf")


def speechlike(seconds, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(100, 250)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 0.1 + 0.003 * rng.standard_normal(len(t))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls") / "train"
    lens = {("1", "10"): [0.8, 1.3, 0.5], ("2", "20"): [1.1, 0.6], ("33", "30"): [0.9]}
    seed = 0
    for (spk, chap), secs in lens.items():
        d = root / spk / chap
        d.mkdir(parents=True)
        lines = []
        for i, s in enumerate(secs):
            utt = f"{spk}-{chap}-{i:04d}"
            soundfile.write(d / f"{utt}.flac", speechlike(s, seed), SR)
            seed += 1
            lines.append(f"{utt} SOME WORDS\n")
        (d / f"{spk}-{chap}.trans.txt").write_text("".join(lines))
    return str(root)


@pytest.fixture
def data_dir(corpus, tmp_path):
    out = str(tmp_path / "data" / "train")
    prepare_librispeech(corpus, out)
    return out


def torchaudio_or_none():
    try:
        import torchaudio.compliance.kaldi  # noqa: F401
        return True
    except (ImportError, OSError):
        return False


def test_backends_agree_and_dims():
    x = speechlike(2.0, 7) * 32768
    with_ta = torchaudio_or_none()
    for cfg, dim, tol in ((FbankConfig(), 40, 2e-4), (MfccConfig(), 13, 1e-3),
                          (load_feature_config(os.path.join(CONF, "mfcc.yaml")), 13, 1e-3)):
        a = compute_features(x, cfg, backend="torch")
        b = compute_features(x, cfg, backend="kaldi-native-fbank")
        assert a.shape == b.shape == (num_frames(len(x), cfg), dim)
        assert np.abs(a - b).max() < tol, cfg
        if with_ta:
            assert np.abs(a - compute_features(x, cfg, backend="torchaudio")).max() < tol, cfg


@pytest.mark.parametrize("opts", [
    dict(use_energy=True), dict(use_energy=True, raw_energy=False),
    dict(use_energy=True, energy_floor=1e9), dict(window_type="hamming", preemphasis=0.0),
    dict(window_type="blackman", remove_dc_offset=False), dict(window_type="hanning"),
    dict(low_freq=64.0, high_freq=-400.0, num_mel_bins=23), dict(use_power=False),
    dict(use_log_fbank=False), dict(round_to_power_of_two=False, frame_length_ms=20.0),
    dict(snip_edges=False),
])
def test_torch_backend_matches_kaldi_on_non_default_options(opts):
    """Each option changes the features, and the torch backend follows Kaldi's C++ code."""
    x = speechlike(1.3, 3) * 32768
    for cls in (FbankConfig, MfccConfig):
        kw = {k: v for k, v in opts.items() if hasattr(cls(), k)}
        cfg = cls(**kw)
        a = compute_features(x, cfg, backend="torch")
        b = compute_features(x, cfg, backend="kaldi-native-fbank")
        assert a.shape == b.shape
        # absolute on logs, relative on linear mel energies (~1e8)
        assert (np.abs(a - b) <= 2e-3 + 1e-4 * np.abs(b)).all(), (cls.kind, opts)
        if any(getattr(cls(), k) != v for k, v in kw.items()):
            base = compute_features(x, cls(), backend="torch")
            assert a.shape != base.shape or np.abs(a - base).max() > 1e-3, (cls.kind, opts)


def test_dithered_features_vary_and_run_kaldis_code():
    x = speechlike(1.0, 4) * 32768
    cfg = FbankConfig(dither=1.0)
    a, b = compute_features(x, cfg), compute_features(x, cfg)
    clean = compute_features(x, FbankConfig())
    assert a.shape == clean.shape and not np.array_equal(a, b)
    assert np.abs(a - clean).mean() < 0.05  # dither of 1 LSB barely moves speech-level frames


def test_missing_torchaudio_is_a_user_error():
    if torchaudio_or_none():
        pytest.skip("torchaudio imports here")
    with pytest.raises(UserError, match="torchaudio"):
        compute_features(speechlike(0.5, 1) * 32768, FbankConfig(), backend="torchaudio")


def test_frame_count_is_kaldis_formula():
    cfg = FbankConfig()
    for n, expect in ((399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (16001, 98)):
        assert num_frames(n, cfg) == expect == (1 + (n - 400) // 160 if n >= 400 else 0)
        x = speechlike(1.0, 1)[:n] * 32768
        if n >= 400:
            assert compute_features(x, cfg).shape[0] == expect
            assert compute_features(x, cfg, backend="kaldi-native-fbank").shape[0] == expect


def read_all(data_dir):
    r = FeatureReader(data_dir, cmvn=None)
    return {u: r[u] for u in r}


def test_compute_feats_nj_and_cli(data_dir, tmp_path):
    feat_dir = str(tmp_path / "fbank")
    compute_feats(data_dir, feat_dir, FbankConfig(), nj=1)
    one = read_all(data_dir)
    d = validate_data_dir(data_dir)
    assert sorted(one) == d.utts
    assert all(one[u].shape == (num_frames(round(d.utt2dur[u] * SR), FbankConfig()), 40)
               for u in one)
    assert d.utt2num_frames == {u: len(v) for u, v in one.items()}
    killed = os.path.join(feat_dir, ".fbank_train.2.ark.x1y2.tmp")  # as a SIGKILL leaves it
    open(killed, "wb").write(b"half an archive")
    compute_feats(data_dir, feat_dir, FbankConfig(), nj=2)
    assert not os.path.exists(killed)
    assert len(glob.glob(os.path.join(feat_dir, "fbank_train.*.ark"))) == 2
    assert os.path.isfile(os.path.join(feat_dir, "log", "make_fbank_train.2.log"))
    two = read_all(data_dir)
    assert all(np.array_equal(one[u], two[u]) for u in one)
    validate_data_dir(data_dir)
    # through the CLI, MFCC
    assert cli.main(["compute-feats", data_dir, str(tmp_path / "mfcc"), "--conf",
                     os.path.join(CONF, "mfcc.yaml"), "--backend", "kaldi-native-fbank"]) == 0
    assert FeatureReader(data_dir, cmvn=None).dim == 13


def test_failed_job_leaves_nothing_trusted(data_dir, tmp_path):
    feat_dir = str(tmp_path / "fbank")
    compute_feats(data_dir, feat_dir, FbankConfig(), nj=2)
    before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(feat_dir, "*.ark"))}
    # corrupt the last utterance's audio: job 2 fails after writing some utterances
    wav = validate_data_dir(data_dir).wav
    with open(wav[sorted(wav)[-1]], "r+b") as f:
        f.truncate(0)
        f.write(b"garbage" * 100)
    try:
        with pytest.raises(UserError, match="cannot decode audio.*job 2 of 2"):
            compute_feats(data_dir, feat_dir, FbankConfig(), nj=2)
        assert not os.path.exists(os.path.join(data_dir, "feats.scp"))
        assert not os.path.exists(os.path.join(data_dir, "utt2num_frames"))
        # the failed job's archive was never replaced by a partial one, and no temp is left
        ark2 = os.path.join(feat_dir, "fbank_train.2.ark")
        assert open(ark2, "rb").read() == before[ark2]
        assert not glob.glob(os.path.join(feat_dir, ".*tmp"))
        with pytest.raises(DataDirError, match="feats.scp"):
            FeatureReader(data_dir)
    finally:
        soundfile.write(wav[sorted(wav)[-1]], speechlike(0.9, 5), SR)


def test_cmvn_stats_and_reader(data_dir, tmp_path):
    compute_feats(data_dir, str(tmp_path / "fbank"), FbankConfig(), nj=1)
    assert cli.main(["compute-cmvn", data_dir]) == 0
    d = validate_data_dir(data_dir)
    raw = read_all(data_dir)
    import kaldiio

    cmvn = {k: kaldiio.load_mat(v) for k, v in d.table("cmvn.scp").items()}
    mean_r, mv_r = FeatureReader(data_dir, "mean"), FeatureReader(data_dir, "meanvar", 2)
    assert sorted(cmvn) == ["1", "2", "33"]
    for spk, utts in d.spk2utt.items():
        x = np.concatenate([raw[u] for u in utts]).astype(np.float64)
        s = cmvn[spk]
        assert s.shape == (2, 41) and s.dtype == np.float64
        assert s[0, -1] == len(x)
        np.testing.assert_allclose(s[0, :-1], x.sum(0), rtol=1e-9)
        np.testing.assert_allclose(s[1, :-1], (x * x).sum(0), rtol=1e-9)
        assert s[1, -1] == 0

        y = np.concatenate([mean_r[u] for u in utts])
        assert np.abs(y.mean(0)).max() < 1e-3
        np.testing.assert_allclose(y, x - x.mean(0), atol=1e-3)
        z = np.concatenate([mv_r[u] for u in utts])
        assert z.shape == (len(x), 120) and mv_r.dim == 120
        assert np.abs(z[:, :40].mean(0)).max() < 1e-3
        np.testing.assert_allclose(z[:, :40].std(0), 1.0, rtol=1e-3)
        assert z.dtype == np.float32
    # frame counts are checked against utt2num_frames
    with open(d.file("utt2num_frames")) as f:
        lines = f.readlines()
    u, n = lines[0].split()
    lines[0] = f"{u} {int(n) + 1}\n"
    with open(d.file("utt2num_frames"), "w") as f:
        f.writelines(lines)
    with pytest.raises(DataDirError, match="frames"):
        FeatureReader(data_dir)[u]
    with pytest.raises(DataDirError, match="frames"):
        validate_data_dir(data_dir)


def test_add_deltas_hand_and_kaldi():
    x = np.array([[1.0], [2.0], [4.0], [8.0]], dtype=np.float32)
    # window 1: d[t] = (x[t+1] - x[t-1]) / 2; dd = [.25, 0, -.5, 0, .25] taps, edges clamped
    d1 = [0.5, 1.5, 3.0, 2.0]
    d2 = [0.25 * 1 - 0.5 * 1 + 0.25 * 4, 0.25 * 1 - 0.5 * 2 + 0.25 * 8,
          0.25 * 1 - 0.5 * 4 + 0.25 * 8, 0.25 * 2 - 0.5 * 8 + 0.25 * 8]
    np.testing.assert_allclose(add_deltas(x, 2, 1), np.c_[x, d1, d2], atol=1e-6)
    # window 2, order 1, t = 2: (-2*1 - 1*2 + 1*8 + 2*8) / 10 = 2.0
    assert add_deltas(x, 1, 2)[2, 1] == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    m = rng.standard_normal((37, 5)).astype(np.float32)
    for order, window in ((2, 2), (1, 3), (3, 2)):
        ref = knf.compute_deltas(knf.DeltaOptions(order=order, window=window), m)
        np.testing.assert_allclose(add_deltas(m, order, window), ref, atol=1e-5)
    one = rng.standard_normal((1, 3)).astype(np.float32)
    np.testing.assert_allclose(add_deltas(one)[:, 3:], 0.0, atol=1e-6)
