"""Data preparation, validation and splitting on a generated fake LibriSpeech subset."""

import os

import numpy as np
import pytest
import soundfile

from asrkd import cli
from asrkd.data import (DataDir, copy_data_dir, prepare_librispeech, subset_data_dir,
                        validate_data_dir)
from asrkd.errors import DataDirError, UserError

SR = 16000


def write_flac(path, seconds, sr=SR, freq=220.0):
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    soundfile.write(path, x.astype(np.float32), sr)


def write_empty_flac(path, sr=SR):
    """A FLAC stream with a STREAMINFO block and no audio frames."""
    v = 0
    for val, nbits in ((4096, 16), (4096, 16), (0, 24), (0, 24), (sr, 20), (0, 3), (15, 5),
                       (0, 36)):
        v = (v << nbits) | val
    with open(path, "wb") as f:
        f.write(b"fLaC" + bytes([0x80, 0, 0, 34]) + v.to_bytes(18, "big") + bytes(16))


def make_subset(root, spec):
    """spec: {(spk, chap): [(utt_suffix, seconds or None, words), ...]} -> LibriSpeech layout."""
    for (spk, chap), utts in spec.items():
        d = os.path.join(root, spk, chap)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{spk}-{chap}.trans.txt"), "w") as f:
            for suffix, seconds, words in utts:
                utt = f"{spk}-{chap}-{suffix}"
                if words is not None:
                    f.write(f"{utt} {words}\n")
                if seconds is not None:
                    write_flac(os.path.join(d, utt + ".flac"), seconds)
    return root


# Speaker ids chosen so that numeric and byte order differ (103 < 19 < 26 as strings).
GOOD = {
    ("19", "198"): [("0000", 1.0, "HELLO WORLD"), ("0001", 0.5, "good bye")],
    ("26", "495"): [("0000", 0.75, "A B C")],
    ("103", "1240"): [("0000", 1.25, "THE END"), ("0002", 0.3, "X")],
}


@pytest.fixture
def good_corpus(tmp_path):
    return make_subset(str(tmp_path / "train-clean-5"), GOOD)


def test_good_prep_sorted_consistent(good_corpus, tmp_path):
    out = str(tmp_path / "data")
    r = prepare_librispeech(good_corpus, out)
    assert r.kept == 5 and not r.rejected
    d = validate_data_dir(out, need=("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur"))
    utts = ["103-1240-0000", "103-1240-0002", "19-198-0000", "19-198-0001", "26-495-0000"]
    for name in ("wav.scp", "text", "utt2spk", "utt2dur"):
        with open(d.file(name)) as f:
            assert [ln.split()[0] for ln in f] == utts, name
    assert d.spk2utt == {"103": utts[:2], "19": utts[2:4], "26": utts[4:]}
    assert d.utt2dur["19-198-0000"] == pytest.approx(1.0, abs=1e-3)
    assert d.utt2dur["103-1240-0002"] == pytest.approx(0.3, abs=1e-3)
    assert d.text["19-198-0001"] == "GOOD BYE"
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in d.wav.values())
    with open(os.path.join(out, "log", "rejected.txt")) as f:
        assert f.read() == ""


def test_bad_inputs_rejected_with_reasons(tmp_path, capsys):
    root = str(tmp_path / "dev")
    make_subset(root, {
        ("19", "198"): [
            ("0000", 1.0, "OK ONE"),
            ("0001", None, "NO AUDIO HERE"),        # transcript without audio
            ("0002", 1.0, None),                    # audio without transcript
            ("0003", 1.0, ""),                      # empty transcript
            ("0004", 1.0, "FIRST"),                 # duplicate id (second line below)
            ("0005", 0.01, "TOO SHORT"),
        ],
        ("26", "495"): [("0000", 1.0, "OK TWO"), ("0001", 1.0, "UNREADABLE"),
                        ("0002", 1.0, "EMPTY"), ("0003", 1.0, "EIGHT KHZ")],
    })
    with open(os.path.join(root, "19", "198", "19-198.trans.txt"), "a") as f:
        f.write("19-198-0004 SECOND\n")
    chap = os.path.join(root, "26", "495")
    with open(os.path.join(chap, "26-495-0001.flac"), "wb") as f:
        f.write(b"this is not audio at all" * 10)
    write_empty_flac(os.path.join(chap, "26-495-0002.flac"))
    write_flac(os.path.join(chap, "26-495-0003.flac"), 1.0, sr=8000)

    out = str(tmp_path / "data")
    assert cli.main(["prepare-data", root, out]) == 0
    printed = capsys.readouterr().out
    expect = {
        "19-198-0001": "no-audio", "19-198-0002": "no-transcript",
        "19-198-0003": "empty-transcript", "19-198-0004": "duplicate-utt",
        "19-198-0005": "too-short", "26-495-0001": "unreadable-audio",
        "26-495-0002": "empty-audio", "26-495-0003": "wrong-sample-rate",
    }
    assert "2 kept, 8 rejected" in printed
    for reason in set(expect.values()):
        assert f"{reason}: 1" in printed
    with open(os.path.join(out, "log", "rejected.txt")) as f:
        got = {ln.split()[0]: ln.split()[1] for ln in f}
    assert got == expect
    d = validate_data_dir(out)
    assert d.utts == ["19-198-0000", "26-495-0000"]


def test_not_a_subset_is_one_line_error(tmp_path, capsys):
    (tmp_path / "LibriSpeech" / "train-clean-100").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        prepare_librispeech(tmp_path / "LibriSpeech", tmp_path / "data")
    assert "not a LibriSpeech subset" in str(e.value) and "\n" not in str(e.value)
    assert "train-clean-100" in str(e.value)  # hints at the subset dir
    assert cli.main(["prepare-data", str(tmp_path / "nowhere"), str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "no such directory" in err


def test_validator_catches_unsorted_and_inconsistent(good_corpus, tmp_path):
    out = str(tmp_path / "data")
    prepare_librispeech(good_corpus, out)

    def rewrite(name, fn):
        with open(os.path.join(out, name)) as f:
            lines = f.readlines()
        with open(os.path.join(out, name), "w") as f:
            f.writelines(fn(lines))

    rewrite("text", lambda ls: ls[::-1])
    with pytest.raises(DataDirError, match="not sorted"):
        validate_data_dir(out)
    rewrite("text", lambda ls: ls[::-1][1:])  # sorted again, first utterance dropped
    with pytest.raises(DataDirError, match="lacks 1 utterances"):
        validate_data_dir(out)
    prepare_librispeech(good_corpus, out)
    rewrite("spk2utt", lambda ls: [ls[0].split()[0] + " " + ls[0].split()[1] + "\n"] + ls[1:])
    with pytest.raises(DataDirError, match="spk2utt"):
        validate_data_dir(out)
    prepare_librispeech(good_corpus, out)
    rewrite("utt2spk", lambda ls: [ls[0].replace(" 103", " 1031")] + ls[1:])
    with pytest.raises(DataDirError, match="does not start with its speaker"):
        validate_data_dir(out)
    prepare_librispeech(good_corpus, out)
    rewrite("utt2dur", lambda ls: [ls[0].split()[0] + " -1\n"] + ls[1:])
    with pytest.raises(DataDirError, match="bad value"):
        validate_data_dir(out)
    prepare_librispeech(good_corpus, out)
    assert cli.main(["validate-data-dir", out]) == 0


def test_subset_by_speaker_disjoint_complete(good_corpus, tmp_path):
    src = str(tmp_path / "data")
    prepare_librispeech(good_corpus, src)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert subset_data_dir(src, a, b, num_speakers=1) == (["103"], ["19", "26"])
    da, db, ds = validate_data_dir(a), validate_data_dir(b), DataDir(src)
    assert set(da.utts).isdisjoint(db.utts)
    assert sorted(da.utts + db.utts) == ds.utts
    assert {**da.text, **db.text} == ds.text and {**da.utt2dur, **db.utt2dur} == ds.utt2dur
    assert subset_data_dir(src, a, b, fraction=0.6) == (["103", "19"], ["26"])
    assert cli.main(["subset-data-dir", src, a, b, "--fraction", "0.6"]) == 0
    assert DataDir(a).utts == ds.utts[:4]
    with pytest.raises(UserError):
        subset_data_dir(src, a, b, num_speakers=3)


def test_copy_data_dir_metadata_only(good_corpus, tmp_path):
    src, dst = str(tmp_path / "data"), str(tmp_path / "copy")
    prepare_librispeech(good_corpus, src)
    with open(os.path.join(src, "feats.scp"), "w") as f:
        f.write("x y\n")
    os.makedirs(dst)
    with open(os.path.join(dst, "cmvn.scp"), "w") as f:
        f.write("stale\n")
    assert cli.main(["copy-data-dir", src, dst]) == 0
    assert not os.path.exists(os.path.join(dst, "feats.scp"))
    assert not os.path.exists(os.path.join(dst, "cmvn.scp"))
    assert validate_data_dir(dst).text == DataDir(src).text


def test_combine_data_dirs_round_trips_a_split(good_corpus, tmp_path):
    src = str(tmp_path / "data")
    prepare_librispeech(good_corpus, src)
    a, b, c = (str(tmp_path / n) for n in "abc")
    subset_data_dir(src, a, b, num_speakers=1)
    assert cli.main(["combine-data-dirs", c, a, b]) == 0
    dc, ds = validate_data_dir(c), DataDir(src)
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur"):
        assert dc.table(name) == ds.table(name), name
    # the same utterance in two sources is an error, not a silent overwrite
    with pytest.raises(UserError, match="more than one source"):
        from asrkd.data import combine_data_dirs

        combine_data_dirs(str(tmp_path / "d"), [a, src])


def test_combine_data_dirs_carries_features_and_cmvn(tiny_data, tmp_path):
    from asrkd.data import combine_data_dirs
    from asrkd.features import FeatureReader

    out = str(tmp_path / "both")
    n = combine_data_dirs(out, [tiny_data["train"], tiny_data["dev"]])
    d = validate_data_dir(out)
    train, dev = DataDir(tiny_data["train"]), DataDir(tiny_data["dev"])
    assert n == len(train.utts) + len(dev.utts)
    assert d.table("cmvn.scp") == {**train.table("cmvn.scp"), **dev.table("cmvn.scp")}
    reader, src = FeatureReader(out, cmvn="meanvar"), FeatureReader(tiny_data["dev"],
                                                                     cmvn="meanvar")
    utt = dev.utts[0]
    np.testing.assert_array_equal(reader[utt], src[utt])
    # a source without features: metadata only, no partial feats.scp
    plain = str(tmp_path / "plain")
    copy_data_dir(tiny_data["test"], plain)
    combine_data_dirs(str(tmp_path / "mixed"), [tiny_data["train"], plain])
    assert not os.path.exists(tmp_path / "mixed" / "feats.scp")
    # a speaker in two sources: features carried, CMVN left to be recomputed
    from asrkd.data import spk2utt_from_utt2spk
    from asrkd.features import compute_cmvn
    from asrkd.table import write_table

    utts = train.utts
    halves = []
    for k, part in enumerate((utts[::2], utts[1::2])):
        h = tmp_path / f"half{k}"
        h.mkdir()
        for name in ("wav.scp", "text", "utt2spk", "utt2num_frames", "feats.scp"):
            write_table(h / name, {u: v for u, v in train.table(name).items() if u in part})
        write_table(h / "spk2utt", spk2utt_from_utt2spk({u: train.utt2spk[u] for u in part}))
        compute_cmvn(str(h))
        halves.append(str(h))
    combine_data_dirs(str(tmp_path / "rejoined"), halves)
    assert os.path.exists(tmp_path / "rejoined" / "feats.scp")
    assert not os.path.exists(tmp_path / "rejoined" / "cmvn.scp")
