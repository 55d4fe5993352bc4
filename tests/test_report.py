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
    (exp / "distill" / "distill.json").write_text(json.dumps(
        {"temperature": 2.0, "alpha": 0.5, "train_fraction": 1.0, "soft_dir": "x", "soft_meta": {
            "combine": "arith", "topk": 20, "bytes_per_frame": 80, "dense_bytes_per_frame": 4000}}))
    # student_small_hard missing on purpose
    (exp / "timings.tsv").write_text("0\tsynth\t10.5\n1\tdata prep\t4.5\n")
    return exp


def _row(res, key):
    return next(r for r in res["systems"] if r["key"] == key)


def test_report_numbers(exp):
    res = write_report(exp)
    assert [r["key"] for r in res["systems"]][-1] == "student_small_hard"  # optional rows absent
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
    assert ("- distilled DNN (same size): T = 2, alpha = 0.5, arith combination, top-20 soft "
            "targets, 80 bytes/frame (dense float32: 4000)") in md
    on_disk = json.loads((exp / "results.json").read_text())
    assert _row(on_disk, "distill")["gain_wer"] == pytest.approx(200 / 3)
    for png in ("results.png", "curves.png"):
        data = (exp / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_optional_fraction_rows(exp):
    _system(exp, "frac_hard/decode_test", (0, 0, 40, 200), 0.40)
    _system(exp, "frac_kd/decode_test", (0, 0, 30, 200), 0.50, curve=[0.3, 0.5])
    (exp / "frac_kd" / "distill.json").write_text(json.dumps(
        {"temperature": 2.0, "alpha": 0.5, "train_fraction": 0.03, "soft_dir": "x"}))
    res = write_report(exp)
    assert _row(res, "frac_hard")["frame_acc"] == pytest.approx(40.0)
    assert _row(res, "frac_kd")["wer"] == pytest.approx(15.0)
    assert "frac_kd" in res["curves"]
    assert "trained on 3% of the data" in (exp / "results.md").read_text()


def test_report_several_test_sets(exp):
    _system(exp, "tri/decode_test_other", (0, 0, 50, 200))
    _system(exp, "teachers/model1/decode_test_other", (0, 0, 30, 200), 0.4)
    _system(exp, "tri/decode_dev", (0, 0, 1, 200))  # dev sets are not reported
    res = write_report(exp)
    assert list(res["by_test_set"]) == ["test", "test_other"] and res["test_set"] == "test"
    other = {r["key"]: r for r in res["by_test_set"]["test_other"]["systems"]}
    assert other["tri"]["wer"] == pytest.approx(25.0)
    assert other["single_mean"]["n"] == 1 and other["single_mean"]["frame_acc"] == 40.0
    assert not other["mono"]["present"]
    md = (exp / "results.md").read_text()
    assert "## Test set `test_other`" in md and "(results_test_other.png)" in md
    assert (exp / "results_test_other.png").is_file()
    res = write_report(exp, test_sets=["test_other"])
    assert res["test_set"] == "test_other" and list(res["by_test_set"]) == ["test_other"]


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


def test_fill_frame_acc_from_checkpoints(tmp_path):
    import torch

    from asrkd.models import ModelConfig, build_model
    from asrkd.report import fill_frame_acc
    from asrkd.train import frame_accuracy
    from test_distill import make_learnable_data

    data, ali = make_learnable_data(tmp_path, num_spk=1, utts_per_spk=3)
    exp = tmp_path / "exp"
    paths = []
    for i, rel in enumerate(["teachers/model1", "teachers/model2", "student_small_kd"]):
        torch.manual_seed(i)
        m = build_model(ModelConfig(feat_dim=8, num_pdfs=6, left_context=1, right_context=1,
                                    hidden_dims=[4]))
        m.pdf_counts.fill_(1)
        (exp / rel).mkdir(parents=True)
        m.save(str(exp / rel / "final.pt"))
        paths.append(str(exp / rel / "final.pt"))
    (exp / "student_small_kd" / "decode_test").mkdir()
    (exp / "student_small_kd" / "decode_test" / "frame_acc").write_text("0.25\n")
    done = fill_frame_acc(str(exp), str(data), str(ali))
    assert sorted(done) == ["teachers/decode_test", "teachers/model1/decode_test",
                            "teachers/model2/decode_test"]  # existing file kept
    assert done["teachers/decode_test"] == pytest.approx(
        frame_accuracy(paths[:2], str(data), str(ali)))
    assert float((exp / "teachers/model2/decode_test/frame_acc").read_text()) == pytest.approx(
        frame_accuracy(paths[1], str(data), str(ali)), abs=1e-6)
    assert fill_frame_acc(str(exp), str(data), str(ali)) == {}
    redone = fill_frame_acc(str(exp), str(data), str(ali), recompute=True)
    assert "student_small_kd/decode_test" in redone
    res = write_report(exp)
    assert _row(res, "single_mean")["n"] == 2 and _row(res, "ensemble")["frame_acc"] is not None
