import json
import os
import statistics

import numpy as np
import pytest

from asrkd.errors import UserError
from asrkd.report import write_report
from asrkd.report.artefacts import System, read_manifest, read_timings, write_manifest

SPEAKERS = ["s1", "s2", "s3", "s4", "s5", "s6"]


def _decode(exp, model, test_set, acc_by_spk=None, errs_by_spk=None, acwt=None, words=20,
            frames=100):
    """A decode dir with two utterances per speaker: per-speaker accuracy (fraction) split
    evenly, per-speaker word errors on `words` reference words per utterance."""
    d = exp / model / f"decode_{test_set}"
    d.mkdir(parents=True)
    utts = [(f"{s}-c-{i}", k) for k, s in enumerate(SPEAKERS) for i in range(2)]
    if acc_by_spk is not None:
        lines = ["# utt correct frames"]
        tot_c = tot_n = 0
        for u, k in utts:
            c = int(round(acc_by_spk[k] * frames))
            lines.append(f"{u} {c} {frames}")
            tot_c += c
            tot_n += frames
        (d / "frame_acc_per_utt").write_text("\n".join(lines) + "\n")
        (d / "frame_acc").write_text(f"{tot_c / tot_n:.6f}\n")
    if errs_by_spk is not None:
        lines = ["# utt words sub del ins"]
        tot = 0
        for u, k in utts:
            e = errs_by_spk[k]
            lines.append(f"{u} {words} {e} 0 0")
            tot += e
        (d / "per_utt").write_text("\n".join(lines) + "\n")
        n = words * len(utts)
        (d / "score.json").write_text(json.dumps({"wer": 100 * tot / n, "ins": 0, "del": 0,
                                                  "sub": tot, "words": n}))
    if acwt is not None:
        (d / "acwt").write_text(f"{acwt}\n")
    return d


def _curve(exp, model, accs):
    (exp / model / "train_log.csv").write_text(
        "epoch,train_loss,valid_frame_acc\n"
        + "".join(f"{i + 1},{1.0 / (i + 1)},{a}\n" for i, a in enumerate(accs)))


@pytest.fixture
def exp(tmp_path):
    exp = tmp_path / "exp"
    rng = np.random.default_rng(0)
    spk_base = np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65])
    systems = [System("tri", "gmm", "tri", (), "GMM triphone")]
    _decode(exp, "tri", "test", spk_base - 0.1, [6] * 6, acwt=0.1)
    for i in range(3):  # singles: +0, +1, +2 points on every speaker
        m = f"teachers/model{i + 1}"
        _decode(exp, m, "test", spk_base + 0.01 * i, [4, 5, 4, 5, 4, 5], acwt=0.15)
        _curve(exp, m, [0.3, 0.4, 0.5])
        systems.append(System(f"model{i + 1}", "single", m, (), f"single DNN {i + 1}"))
    # ensemble: +5 points on every speaker (significant); WER up on some speakers, down on
    # others (no significant WER gain)
    _decode(exp, "teachers", "test", spk_base + 0.05, [2, 7, 2, 7, 3, 6], acwt=0.2)
    systems.append(System("ensemble", "ensemble", "teachers", ("single",), "DNN ensemble"))
    _decode(exp, "control", "test", spk_base + 0.02, [4, 5, 4, 5, 4, 5], acwt=0.15)
    systems.append(System("control", "control", "control", ("single",), "control"))
    # distilled: +4 points on every speaker: recovers (4 - 1) / (5 - 1) = 75 % of the gain
    _decode(exp, "distill", "test", spk_base + 0.04, [3, 6, 3, 6, 3, 6], acwt=0.2)
    (exp / "distill" / "train_log.csv").write_text(
        "epoch,valid_acc,frames,updates\n1,0.35,200000,800\n2,0.5,200000,800\n3,0.56,200000,800\n")
    (exp / "distill" / "decode_dev").mkdir()
    (exp / "distill" / "decode_dev" / "acwt_edge").write_text("edge\n")
    (exp / "distill" / "decode_test" / "priors").write_text("posterior\n")
    (exp / "distill" / "distill.json").write_text(json.dumps(
        {"temperature": 2.0, "alpha": 0.5, "train_fraction": 1.0, "soft_dir": "x", "soft_meta": {
            "combine": "arith", "topk": 20, "bytes_per_frame": 80, "dense_bytes_per_frame": 4000,
            "kept_mass": {"mean": 0.987, "min": 0.5}}}))
    systems.append(System("distill", "student", "distill", ("single", "control"),
                          "distilled DNN (same size)"))
    systems.append(System("small_hard", "control", "small_hard", (), "small, hard targets"))
    systems.append(System("small_kd", "student", "small_kd", ("small_hard",), "small, distilled"))
    del rng
    write_manifest(exp / "systems.tsv", systems)
    (exp / "timings.tsv").write_text("0\tsynth\t10.5\n1\tdata prep\t4.5\n")
    return exp


def _row(res, key):
    return next(r for r in res["systems"] if r["key"] == key)


def test_report_numbers_and_intervals(exp):
    res = write_report(exp, resamples=1000)
    keys = [r["key"] for r in res["systems"]]
    assert keys == ["tri", "single", "single_best", "ensemble", "control", "distill",
                    "small_hard", "small_kd"]
    assert res["bootstrap"]["frame_acc"] == {"speakers": 6, "resamples": 1000, "utterances": 12}
    mean = _row(res, "single")
    assert mean["n"] == 3
    assert mean["frame_acc"] == pytest.approx(53.5)  # 52.5 + 1 on average
    assert mean["frame_acc_std"] == pytest.approx(statistics.stdev([52.5, 53.5, 54.5]))
    assert mean["wer"] == pytest.approx(22.5) and mean["acwt"] == 0.15
    assert _row(res, "single_best")["frame_acc"] == pytest.approx(54.5)
    ens = _row(res, "ensemble")
    assert ens["label"] == "3x DNN ensemble" and ens["acwt"] == 0.2
    lo, hi = ens["frame_acc_ci"]
    assert lo < 57.5 < hi
    # paired: the ensemble is 4 points above the mean single on every speaker
    d = ens["vs"]["single"]["frame_acc"]
    assert d["diff"] == pytest.approx(4.0) and d["ci"] == pytest.approx([4.0, 4.0])
    assert d["significant"]
    assert not ens["vs"]["single"]["wer"]["significant"]
    dist = _row(res, "distill")
    assert dist["baseline"] == "single"
    assert dist["gain_frame_acc"] == pytest.approx(75.0)
    assert dist["gain_frame_acc_ci"] == pytest.approx([75.0, 75.0])
    assert dist["gain_wer"] is None  # the ensemble's WER gain is not significant
    assert dist["vs"]["control"]["frame_acc"]["diff"] == pytest.approx(2.0)
    small = _row(res, "small_kd")
    assert not small["present"] and small.get("gain_frame_acc") is None
    assert _row(res, "control").get("gain_frame_acc") is None  # only students get a share
    assert res["total_seconds"] == pytest.approx(15.0)
    assert res["curves"]["model2"]["valid_frame_acc"] == pytest.approx([30.0, 40.0, 50.0])

    md = (exp / "results.md").read_text()
    assert "| distilled DNN (same size) | - | 2.4k / 0.6M | 0.2 (edge) | 56.50 [" in md
    assert "still at an edge for: distilled DNN (same size)." in md
    assert "each model's own mean posterior" in md and "alignment's pdf counts" not in md
    assert _row(res, "distill")["training"] == {"updates": 2400, "frames": 600000, "epochs": 3}
    assert _row(res, "distill")["priors"] == "posterior" and _row(res, "control")["priors"] is None
    assert _row(res, "ensemble")["training"] is None  # no member logs the updates
    assert "| 75.0% [75.0, 75.0] | n.s. |" in md
    assert "| small, distilled | missing |" in md
    assert "| 3x DNN ensemble - single DNN, mean ± std | +4.00 [+4.00, +4.00] * |" in md
    assert ("of which the soft targets (student - control: same model, schedule and "
            "regularisation on hard targets) account for +2.00 [+2.00, +2.00]") in md
    assert "keeping 98.70% of the mass on average" in md
    assert "**15.0**" in md
    for png in ("results.png", "curves.png"):
        data = (exp / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_is_deterministic(exp):
    a = (write_report(exp), (exp / "results.json").read_text())[1]
    b = (write_report(exp), (exp / "results.json").read_text())[1]
    assert a == b


def test_wer_share_only_when_the_ensemble_gain_is_significant(exp, tmp_path):
    # ensemble WER 2 errors below the singles on every speaker: significant, share computed
    import shutil

    shutil.rmtree(exp / "teachers" / "decode_test")
    _decode(exp, "teachers", "test", np.array([0.45, 0.5, 0.55, 0.6, 0.65, 0.7]),
            [2, 3, 2, 3, 2, 3], acwt=0.2)
    res = write_report(exp, resamples=500)
    dist = _row(res, "distill")
    # singles 4.5 errors per 20 words, ensemble 2.5, distilled 4.5: share 0
    assert dist["gain_wer"] == pytest.approx(0.0, abs=1e-9)
    assert dist["gain_wer_ci"] is not None


def test_report_several_test_sets_and_speakers_from_data(exp, tmp_path):
    _decode(exp, "tri", "test_other", np.full(6, 0.3), [8] * 6)
    _decode(exp, "teachers/model1", "test_other", np.full(6, 0.4), [6] * 6)
    _decode(exp, "tri", "dev", np.full(6, 0.3), [8] * 6)  # dev sets are not reported
    # speakers from a data dir: here all utterances of s1-s3 belong to one speaker "A"
    data = tmp_path / "data" / "test_other"
    data.mkdir(parents=True)
    (data / "utt2spk").write_text("".join(f"{s}-c-{i} {'A' if s < 's4' else 'B'}\n"
                                          for s in SPEAKERS for i in range(2)))
    res = write_report(exp, data_root=tmp_path / "data", resamples=200)
    assert list(res["by_test_set"]) == ["test", "test_other"] and res["test_set"] == "test"
    assert res["by_test_set"]["test_other"]["bootstrap"]["frame_acc"]["speakers"] == 2
    other = {r["key"]: r for r in res["by_test_set"]["test_other"]["systems"]}
    assert other["tri"]["wer"] == pytest.approx(40.0)
    assert other["single"]["n"] == 1 and other["single"]["frame_acc"] == pytest.approx(40.0)
    md = (exp / "results.md").read_text()
    assert "## Test set `test_other`" in md and "(results_test_other.png)" in md


def test_manifest_errors(tmp_path):
    p = tmp_path / "systems.tsv"
    with pytest.raises(UserError, match="no systems manifest"):
        read_manifest(p)
    p.write_text("a\tgmm\ta\t-\n a\tgmm\tb\t-\n")
    with pytest.raises(UserError, match="twice"):
        read_manifest(p)
    p.write_text("a\tbanana\ta\t-\n")
    with pytest.raises(UserError, match="unknown kind"):
        read_manifest(p)
    p.write_text("a\tstudent\ta\tnope\n")
    with pytest.raises(UserError, match="unknown system 'nope'"):
        read_manifest(p)
    p.write_text("# comment\na\tgmm\tx\t-\tA label\n")
    assert read_manifest(p) == [System("a", "gmm", "x", (), "A label")]
    with pytest.raises(UserError):
        write_report(tmp_path / "nope")


def test_timings_helper(tmp_path):
    p = tmp_path / "t"
    p.write_text("feats 3.5\ntrain dnn 10\n")
    assert read_timings(p) == [("feats", 3.5), ("train dnn", 10.0)]
    p.write_text("feats x\n")
    with pytest.raises(UserError):
        read_timings(p)


def test_train_set_column(exp):
    """The paper's table 5: each system's frame accuracy on training data beside the test's."""
    spk = np.array([0.70, 0.72, 0.74, 0.76, 0.78, 0.80])
    for i in range(3):
        _decode(exp, f"teachers/model{i + 1}", "train_small", spk + 0.01 * i)
    _decode(exp, "control", "train_small", spk + 0.1)  # memorised its small training set
    _decode(exp, "distill", "train_small", spk - 0.02)
    res = write_report(exp, train_set="train_small", resamples=300)
    assert list(res["by_test_set"]) == ["test"]  # the train set is a column, not a test set
    train = res["train_set"]
    assert train["name"] == "train_small"
    assert train["bootstrap"]["frame_acc"] == {"speakers": 6, "resamples": 300,
                                               "utterances": 12}
    assert train["systems"]["single"]["frame_acc"] == pytest.approx(76.0)
    assert train["systems"]["control"]["frame_acc"] == pytest.approx(85.0)
    assert "tri" not in train["systems"]  # not scored on the train set
    md = (exp / "results.md").read_text()
    assert ("| system | params | updates / frames | acwt | train frame acc % | frame acc % "
            "| WER % |") in md
    assert "Train frame accuracy: on `train_small`, 12 utterances of 6 speakers." in md
    assert "| control | - | - | 0.15 | 85.00 [" in md
    assert "| distilled DNN (same size) | - | 2.4k / 0.6M | 0.2 (edge) | 73.00 [" in md \
        and "| 56.50 [" in md
    assert "| GMM triphone | - | - | 0.1 | - | 42.50 [" in md
    assert "| small, distilled | missing | - | - | - | - | - | | |" in md


def test_compare_runs(exp, tmp_path, capsys):
    """Two runs side by side: each row carries its run's figures, a run lacking a system '-'."""
    import shutil

    from asrkd.cli import main
    from asrkd.report import compare_runs

    write_report(exp, resamples=500)
    other = tmp_path / "seed1"
    shutil.copytree(exp, other)
    shutil.rmtree(other / "control")
    write_report(other, resamples=500)
    table = compare_runs([exp, other], names=["seed0", "seed1"])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | single DNN (mean) acc %")
    seed0 = [c.strip() for c in lines[2].strip("|").split("|")]
    seed1 = [c.strip() for c in lines[3].strip("|").split("|")]
    assert seed0[0] == "seed0" and seed0[1].startswith("53.50 ± 1.00 [")
    assert seed0[3] == "+4.00 [+4.00, +4.00] *"  # ensemble - single, paired
    assert seed0[5] == "+2.00 [+2.00, +2.00] *"  # distilled - control
    assert seed0[6] == "75.0% [75.0, 75.0]"
    assert seed0[7] == "-"  # no train-only student in these runs
    assert seed0[12].startswith(("+", "-0", "-1")) and "[" in seed0[12]  # the same in WER
    assert seed1[5] == "-" and seed1[12] == "-"  # no control in that run
    assert seed1[6] == "75.0% [75.0, 75.0]"
    assert main(["compare-runs", str(exp), str(tmp_path / "nowhere")]) == 1
    assert "results.json: no such file" in capsys.readouterr().err


def test_a_test_set_that_is_the_dev_set_is_flagged(exp):
    res = write_report(str(exp), test_sets=["test"], dev_set="test")
    assert "is the dev set" in res["notes"][0]
    assert "is the dev set" in (exp / "results.md").read_text()
    assert not any("dev set" in n for n in write_report(str(exp), test_sets=["test"],
                                                        dev_set="dev")["notes"])


def _pooled_run(root, counts):
    """A run dir whose systems (``counts``: {model dir: {utt: (errors, words)}}) have WER only;
    models "s1", "s2" are singles, "ens" the ensemble, "kd" a student, "ctl" its control."""
    kinds = {"s1": "single", "s2": "single", "ens": "ensemble", "kd": "student", "ctl": "control"}
    keys = {"s1": "model1", "s2": "model2", "ens": "ensemble", "kd": "distill", "ctl": "control"}
    root.mkdir()
    with open(root / "systems.tsv", "w") as f:
        f.write("# key\tkind\tmodel\tcompare\tlabel\n")
        for m in counts:
            f.write(f"{keys[m]}\t{kinds[m]}\t{m}\t-\t{m}\n")
    for m, per in counts.items():
        d = root / m / "decode_test"
        d.mkdir(parents=True)
        (d / "per_utt").write_text("# utt words sub del ins\n" + "".join(
            f"{u} {w} {e} 0 0\n" for u, (e, w) in per.items()))
    return str(root)


def test_pooled_differences_known_answer(tmp_path):
    """Pooled over runs: the ratio of summed counts, speakers drawn within each run; the mean
    single is the singles' mean counts; a run without a system is left out of its pairs."""
    from asrkd.report.render import POOLED_COMPARISONS, pooled_table
    from asrkd.report.statistics import pooled_difference

    r1 = _pooled_run(tmp_path / "r1", {
        "s1": {"A-1-0": (2, 10), "B-1-0": (1, 10)}, "s2": {"A-1-0": (4, 10), "B-1-0": (3, 10)},
        "ens": {"A-1-0": (1, 10), "B-1-0": (1, 10)},
        "kd": {"A-1-0": (2, 10), "B-1-0": (1, 10)}, "ctl": {"A-1-0": (4, 10), "B-1-0": (1, 10)}})
    r2 = _pooled_run(tmp_path / "r2", {
        "s1": {"C-1-0": (6, 20)}, "s2": {"C-1-0": (2, 20)}, "ens": {"C-1-0": (1, 20)},
        "kd": {"C-1-0": (0, 20)}, "ctl": {"C-1-0": (2, 20)}})
    r3 = _pooled_run(tmp_path / "r3", {  # no control: left out of distilled - control
        "s1": {"D-1-0": (5, 10)}, "s2": {"D-1-0": (5, 10)}, "ens": {"D-1-0": (5, 10)},
        "kd": {"D-1-0": (9, 10)}})
    runs = [(r, read_manifest(os.path.join(r, "systems.tsv"))) for r in (r1, r2, r3)]
    kd = pooled_difference(runs, "distill", "control_matched|control", "wer", resamples=300)
    # (2 + 1 + 0 - 4 - 1 - 2) / 40 words of the two runs with both
    assert kd["runs"] == 2 and kd["speakers"] == 3 and kd["b"] == ["control"]
    assert abs(kd["diff"] - 100.0 * (3 - 7) / 40) < 1e-9
    assert kd["ci"][1] < 0 and kd["significant"]  # every draw has speaker C: a - b < 0
    ens = pooled_difference(runs, "ensemble", "single", "wer", resamples=300)
    # singles' mean counts: A 3, B 2, C 4, D 5; the ensemble: 1, 1, 1, 5 (50 words)
    assert ens["runs"] == 3 and abs(ens["diff"] - 100.0 * (8 - 14) / 50) < 1e-9
    assert pooled_difference(runs, "distill_train", "control", "wer") is None
    assert pooled_difference(runs, "distill", "control", "frame_acc") is None  # not scored
    rows = [(label, {"frame_acc": None, "wer": pooled_difference(runs, a, b, "wer", resamples=300)})
            for label, a, b in POOLED_COMPARISONS]
    table = pooled_table(rows)
    assert "| distilled - control | 2 | 3 | - | -10.00 [" in table
    assert "train-only" not in table  # no run has that student


def test_singles_with_frame_accuracy_only(exp):
    """--wer-singles: a single measured in frame accuracy only counts in the singles' frame
    accuracy, not in their WER (mean, interval, the paired WER differences), and the table says
    over how many each is."""
    spk_base = np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65])
    _decode(exp, "teachers/model4", "test", spk_base + 0.05)  # no WER: frame accuracy only
    rows = read_manifest(exp / "systems.tsv")
    rows.insert(4, System("model4", "single", "teachers/model4", (), "single DNN 4"))
    write_manifest(exp / "systems.tsv", rows)
    res = write_report(exp, resamples=500)
    mean = _row(res, "single")
    assert mean["n_frame_acc"] == 4 and mean["n_wer"] == 3
    assert mean["frame_acc"] == pytest.approx((52.5 + 53.5 + 54.5 + 57.5) / 4)
    assert mean["wer"] == pytest.approx(22.5)  # the three decoded singles' alone
    assert mean["wer_ci"] is not None
    d = _row(res, "ensemble")["vs"]["single"]
    assert d["frame_acc"]["diff"] == pytest.approx(57.5 - 54.5)
    assert d["wer"]["diff"] == pytest.approx(0.0)  # 22.5 both: the frame-only single not in it
    md = open(exp / "results.md").read()
    assert "WER of the first 3 of 4" in md
    assert "| single DNN 4 | - | 57.50 | - |" in md
