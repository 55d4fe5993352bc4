import json
import os
import statistics

import pytest

from asrkd.errors import UserError
from asrkd.report import SYSTEMS, gain_recovered, read_timings, write_report


def _system(exp, rel, wer_counts=None, frame_acc=None, wer_file=None, curve=None):
    d = exp / rel
    d.mkdir(parents=True)
    if wer_counts is not None:
        ins, dele, sub, words = wer_counts
        (d / "score.json").write_text(json.dumps(
            {"wer": 100.0 * (ins + dele + sub) / words, "ins": ins, "del": dele, "sub": sub,
             "words": words, "sents": 10}))
    if wer_file is not None:
        (d / "wer").write_text(wer_file)
    if frame_acc is not None:
        (d / "frame_acc").write_text(f"{frame_acc}\n")
    if curve is not None:
        (d.parent / "train_log.csv").write_text(
            "epoch,train_loss,valid_frame_acc\n"
            + "".join(f"{i + 1},{1.0 / (i + 1)},{a}\n" for i, a in enumerate(curve)))


@pytest.fixture
def exp(tmp_path):
    exp = tmp_path / "exp"
    _system(exp, "mono/decode_test", (5, 5, 30, 200))  # 20 %
    # no score.json: the Kaldi-style summary is parsed
    _system(exp, "tri/decode_test", wer_file="%WER 15.00 [ 30 / 200, 5 ins, 5 del, 20 sub ]\n")
    # singles: acc 0.50, 0.52, 0.54 (fractions); WER 12, 11, 10 %
    for i, (acc, errs) in enumerate([(0.50, 24), (0.52, 22), (0.54, 20)], 1):
        _system(exp, f"teachers/model{i}/decode_test", (0, 0, errs, 200), acc,
                curve=[0.3, 0.4, acc])
    _system(exp, "teachers/decode_test", (0, 0, 16, 200), 0.58)  # ens: 58 %, 8 %
    _system(exp, "distill/decode_test", (0, 0, 18, 200), 56.0, curve=[35.0, 50.0, 56.0])  # %
    _system(exp, "student_small_kd/decode_test", (0, 0, 21, 200), 0.53)
    # student_small_hard missing on purpose
    (exp / "timings.tsv").write_text("0\tsynth\t10.5\n1\tdata prep\t4.5\n")
    return exp


def _row(res, key):
    return next(r for r in res["systems"] if r["key"] == key)


def test_report_numbers(exp):
    res = write_report(exp)
    mean = _row(res, "single_mean")
    assert mean["n"] == 3
    assert mean["frame_acc"] == pytest.approx(52.0)
    assert mean["frame_acc_std"] == pytest.approx(statistics.stdev([50.0, 52.0, 54.0]))
    assert mean["wer"] == pytest.approx(11.0) and mean["wer_std"] == pytest.approx(1.0)
    best = _row(res, "single_best")
    assert best["frame_acc"] == pytest.approx(54.0) and best["wer"] == pytest.approx(10.0)
    assert _row(res, "mono")["wer"] == pytest.approx(20.0)
    assert _row(res, "mono")["frame_acc"] is None
    assert _row(res, "tri")["wer"] == pytest.approx(15.0)
    ens = _row(res, "ensemble")
    assert ens["frame_acc"] == pytest.approx(58.0) and ens["label"].startswith("3x")
    d = _row(res, "distill")
    # acc: (56 - 52) / (58 - 52) = 66.7 %; WER: (9 - 11) / (8 - 11) = 66.7 %
    assert d["gain_frame_acc"] == pytest.approx(200 / 3)
    assert d["gain_wer"] == pytest.approx(200 / 3)
    kd = _row(res, "student_small_kd")
    assert kd["gain_frame_acc"] == pytest.approx(100 / 6)
    assert kd["gain_wer"] == pytest.approx(100 / 6)  # WER 10.5: (10.5 - 11) / (8 - 11)
    hard = _row(res, "student_small_hard")
    assert not hard["present"] and hard["wer"] is None
    assert res["total_seconds"] == pytest.approx(15.0)
    assert res["curves"]["model2"]["valid_frame_acc"] == pytest.approx([30.0, 40.0, 52.0])
    assert res["curves"]["distill"]["epoch"] == [1.0, 2.0, 3.0]

    md = (exp / "results.md").read_text()
    assert "| single DNN, mean ± std | - | 52.00 ± 2.00 | 11.00 ± 1.00 |" in md
    assert "| distilled DNN (same size) | - | 56.00 | 9.00 | 66.7% | 66.7% |" in md
    assert "| small DNN, hard targets only | missing |" in md
    assert "| GMM monophone | - | - | 20.00 |" in md
    assert "**15.0**" in md
    on_disk = json.loads((exp / "results.json").read_text())
    assert _row(on_disk, "distill")["gain_wer"] == pytest.approx(200 / 3)
    for png in ("results.png", "curves.png"):
        data = (exp / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_on_empty_exp_dir(tmp_path):
    res = write_report(tmp_path)
    assert not any(r["present"] for r in res["systems"])
    assert "missing" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").is_file()
    with pytest.raises(UserError):
        write_report(tmp_path / "nope")


def test_gain_and_timings_helpers(tmp_path):
    assert gain_recovered(60.0, 50.0, 60.0) == pytest.approx(100.0)
    assert gain_recovered(60.0, 50.0, 50.0) is None  # no ensemble gain: undefined
    assert gain_recovered(None, 50.0, 60.0) is None
    p = tmp_path / "t"
    p.write_text("feats 3.5\ntrain dnn 10\n")
    assert read_timings(p) == [("feats", 3.5), ("train dnn", 10.0)]
    p.write_text("feats x\n")
    with pytest.raises(UserError):
        read_timings(p)
    assert [s.decode_dir for s in SYSTEMS][0] == "mono/decode_test"
    assert all(not os.path.isabs(s.decode_dir) for s in SYSTEMS)
