"""Specialists: dustbin targets, training, the scorer and the report."""

import csv
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch

from asrkd.cli import main
from asrkd.errors import UserError
from asrkd.models import ModelConfig, build_model, load_checkpoint, load_model
from asrkd.score import frame_accuracy
from asrkd.scorer import make_scorer
from asrkd.specialists.combine import (collapse, collapse_sparse, combine, corrected_logits,
                                       specialist_logits)
from asrkd.specialists.report import specialist_report
from asrkd.specialists.scorer import SpecialistScorer
from asrkd.specialists.train import (SpecialistConfig, local_labels, specialist_frames,
                                     specialist_from_generalist, train_specialists)
from asrkd.train import train_model

# --- dustbin targets --------------------------------------------------------------------------


def test_dustbin_correction_against_counts():
    # Real class frequencies: pdfs 0..5; the set is {1, 4} (rare), the rest is common.
    counts = np.array([400, 30, 250, 150, 70, 100])
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(6), counts))
    in_set = np.zeros(6, dtype=bool)
    in_set[[1, 4]] = True
    idx, corr = specialist_frames(labels, in_set, np.random.default_rng(1))
    local = local_labels([1, 4], 6)[labels[idx]]
    sampled = np.bincount(local, minlength=3)
    assert sampled.tolist() == [30, 70, 100]  # every set frame + as many from the rest
    assert corr == pytest.approx(np.log(900 / 100))
    # A specialist that learns the sample's class frequencies (a bias, trained by SGD on the
    # drawn frames), corrected, predicts the real frequencies: 30, 70 and 900 of 1000.
    bias = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([bias], lr=0.05)
    y = torch.from_numpy(local)
    for _ in range(600):
        loss = torch.nn.functional.cross_entropy(bias.expand(len(y), 3), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = torch.softmax(corrected_logits(bias.detach()[None], corr), 1)[0].numpy()
    assert p == pytest.approx([0.03, 0.07, 0.9], abs=0.003)
    # Soft targets: the real distribution collapsed and shifted to the sample is the sample's.
    real = torch.from_numpy(counts[None] / counts.sum())
    assert collapse(real, [1, 4], corr)[0].numpy() == pytest.approx(sampled / sampled.sum())
    assert collapse(real, [1, 4])[0].numpy() == pytest.approx([0.03, 0.07, 0.9])


def test_specialist_frames_when_the_set_dominates():
    labels = np.array([0] * 50 + [1] * 10)
    in_set = np.array([True, False])
    idx, corr = specialist_frames(labels, in_set, np.random.default_rng(0))
    assert len(idx) == 60 and corr == 0.0  # all 10 rest frames drawn: no undersampling


@pytest.mark.parametrize("pooled", [True, False])
def test_untrained_specialists_leave_the_generalist_unchanged(pooled):
    torch.manual_seed(0)
    gen = build_model(ModelConfig(feat_dim=4, num_pdfs=9, left_context=1, right_context=1,
                                  hidden_dims=[16])).eval()
    x = torch.randn(50, 3, 4)
    p_g = torch.softmax(gen(x), 1).double()
    sets, corr = [[0, 3, 4], [4, 5, 8, 1]], 1.3
    probs = []
    for s in sets:
        spec = specialist_from_generalist(gen, s, corr, pooled=pooled).eval()
        with torch.no_grad():
            z = specialist_logits(spec, x, s, pooled)
            # before training: the sample's distribution, the corrected one the real one
            if pooled:
                assert torch.allclose(torch.softmax(z, 1).double(), collapse(p_g, s, corr),
                                      atol=1e-6)
            probs.append(torch.softmax(corrected_logits(z, corr), 1).double())
    active = torch.ones(50, 2, dtype=torch.bool)
    q = combine(p_g, probs, sets, active, steps=10).exp()
    if pooled:  # the combination of copies of p_g is p_g
        assert torch.allclose(q, p_g, atol=1e-6)
    else:  # only approximately: the dustbin row is an approximation
        assert (q.argmax(1) == p_g.argmax(1)).float().mean() > 0.6


def test_config_rejects_too_few_sets():
    with pytest.raises(UserError, match="too few"):
        SpecialistConfig(num_sets=3, clusterings=2, set_method="kmeans")
    with pytest.raises(UserError, match="targets"):
        SpecialistConfig(targets="generalist")


# --- training and inference end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from test_distill import make_learnable_data
    from test_train import MC, TC

    root = tmp_path_factory.mktemp("spec")
    data, ali = (str(p) for p in make_learnable_data(root / "c", num_spk=5, utts_per_spk=8,
                                                     num_pdfs=8, dim=8, seed=2))
    gen = train_model(data, ali, str(root / "gen"), MC, TC, seed=1)
    cfg = SpecialistConfig(num_sets=4, epochs=2, batch_size=64, lr=0.003, top_n=2,
                           num_threads=1)
    spec = train_specialists(gen, data, ali, str(root / "spec"), cfg, nj=2)
    return {"data": data, "ali": ali, "gen": gen, "spec_dir": os.path.dirname(spec)}


def test_train_specialists_writes_a_decodable_dir(trained):
    d = trained["spec_dir"]
    with open(os.path.join(d, "specialists.json")) as f:
        man = json.load(f)
    assert 1 <= len(man["specialists"]) <= 4 and man["config"]["targets"] == "hard"
    for s in man["specialists"]:
        assert 2 <= len(s["set"]) <= 2  # the default bound: ceil(8 / 4) pdfs
        assert os.path.isfile(os.path.join(d, s["dir"], "final.pt"))
        assert s["log_correction"] >= 0
        # pooled dustbin: the untrained specialist (= the generalist) competes as epoch 0,
        # and says so when it wins; the kept epoch is the best by accuracy (the default)
        assert man["config"]["select"] == "acc"
        assert s["valid_acc"] >= s["generalist_valid_acc"] - 1e-9
        assert s["kept_generalist"] == (s["best_epoch"] == 0)
        assert s["updates"] >= 2 and s["updates_to_best"] <= s["updates"]
        # asrkd.train's loop: its log, the training accuracy over set + dustbin (the
        # specialist's own classes), and no epoch checkpoints left behind
        with open(os.path.join(d, s["dir"], "train_log.csv")) as f:
            log = list(csv.DictReader(f))
        assert len(log) == 2 and all(float(r["train_acc"]) > 0.5 for r in log), log
        assert s["valid_acc"] == pytest.approx(max(
            [s["generalist_valid_acc"]] + [float(r["valid_acc"]) for r in log]), abs=1e-4)
        assert not glob.glob(os.path.join(d, s["dir"], "epoch*.pt"))
    assert "| set |" in open(os.path.join(d, "sets.md")).read()
    scorer = make_scorer(d, trained["data"])
    assert isinstance(scorer, SpecialistScorer)
    utt = scorer.reader.utts[0]
    lq = scorer.log_posteriors(utt)
    assert lq.shape == (scorer.reader.num_frames(utt), 8)
    assert np.allclose(np.exp(lq).sum(1), 1, atol=1e-5)
    assert np.allclose(scorer(utt), lq - scorer.log_prior, atol=1e-5)  # divided by priors
    acc = frame_accuracy(scorer, trained["data"], trained["ali"])
    gen_acc = frame_accuracy(trained["gen"], trained["data"], trained["ali"])
    assert acc > 0.5 and abs(acc - gen_acc) < 0.15, (acc, gen_acc)


def test_specialist_report_counts_every_frame(trained):
    r = specialist_report(trained["spec_dir"], trained["data"], trained["ali"], name="train",
                          timing_frames=200)
    total = sum(row["frames"] for row in r["coverage"])
    assert total == r["frames"] == sum(v["frames"] for v in r["per_speaker"].values())
    assert {row["covering"] for row in r["coverage"]} <= set(range(r["num_specialists"] + 1))
    acc = sum(row["combined_acc"] * row["frames"] for row in r["coverage"]) / total
    assert acc == pytest.approx(r["combined_frame_acc"])
    d = r["frame_acc_diff"]  # paired: the same draws for both systems
    assert d["diff"] == pytest.approx(100 * (r["combined_frame_acc"] - r["generalist_frame_acc"]))
    assert d["ci"][0] <= d["diff"] <= d["ci"][1]
    assert r["wer"] is None  # nothing decoded
    t = r["training"]
    assert t["kept_generalist"] == [x["specialist"] for x in t["specialists"]
                                    if x["best_epoch"] == 0]
    assert r["cost"]["generalist_us"] > 0 and r["cost"]["evaluations_per_frame"] >= 1
    md = open(os.path.join(trained["spec_dir"], "report_train.md")).read()
    assert "| covering |" in md


def test_cli_train_specialists_bad_input(trained, capsys):
    rc = main(["train-specialists", trained["gen"], trained["data"], trained["ali"],
               os.path.join(trained["spec_dir"], "x"), "--num-sets", "3", "--set-method",
               "kmeans"])
    assert rc == 1 and "too few" in capsys.readouterr().err
    rc = main(["train-specialists", trained["gen"], trained["data"], trained["ali"],
               os.path.join(trained["spec_dir"], "x"), "--num-sets", "2", "--targets", "soft"])
    assert rc == 1 and "--soft-targets" in capsys.readouterr().err


def test_collapse_sparse_matches_the_dense_collapse():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(20, 9, generator=g, dtype=torch.float64) * 2, 1)
    s = [2, 5, 7]
    lut = torch.from_numpy(local_labels(s, 9))
    ids = torch.arange(9).expand(20, 9)  # all pdfs kept: exact
    out = collapse_sparse(ids, probs, torch.zeros(20, dtype=torch.float64), lut, 4, 0.7)
    assert torch.allclose(out, collapse(probs, s, 0.7), atol=1e-12)
    top = probs.topk(4, 1)  # top 4 + rest: the rest goes to the dustbin
    rest = 1 - top.values.sum(1)
    out = collapse_sparse(top.indices, top.values, rest, lut, 4)
    dense = collapse(probs, s)
    assert torch.allclose(out.sum(1), torch.ones(20, dtype=torch.float64))
    assert (out[:, :-1] <= dense[:, :-1] + 1e-12).all() and (out[:, -1] >= dense[:, -1]).all()


# --- known answers: a pair the generalist confuses --------------------------------------------


@pytest.fixture(scope="module")
def confused_pair(tmp_path_factory):
    """A generalist whose output rows of pdfs 0 and 1 are tied (it cannot tell them apart;
    its argmax always says 0), on data where they are separable."""
    from test_distill import make_learnable_data
    from test_train import MC, TC

    root = tmp_path_factory.mktemp("pair")
    data, ali = (str(p) for p in make_learnable_data(root / "c", num_spk=5, utts_per_spk=8,
                                                     num_pdfs=6, dim=8, seed=3))
    gen = train_model(data, ali, str(root / "gen"), MC, TC, seed=1)
    ck = load_checkpoint(gen)
    for k in ("output.weight", "output.bias"):
        w = ck["state_dict"][k]
        w[0] = w[1] = (w[0] + w[1]) / 2
    tied = str(root / "tied.pt")
    torch.save(ck, tied)
    return {"root": root, "data": data, "ali": ali, "gen": tied}


def _pair_report(pair, name, **cfg):
    soft = cfg.pop("soft", None)
    config = SpecialistConfig(**{**dict(num_sets=1, set_size_max=2, epochs=3, batch_size=64,
                                        lr=0.003, num_threads=1), **cfg})
    d = str(pair["root"] / name)
    train_specialists(pair["gen"], pair["data"], pair["ali"], d, config, soft_dir=soft)
    with open(os.path.join(d, "specialists.json")) as f:
        man = json.load(f)
    return man, specialist_report(d, pair["data"], pair["ali"], timing_frames=100)


def test_a_specialist_separates_the_pair_the_generalist_confuses(confused_pair):
    man, r = _pair_report(confused_pair, "hard")
    (s,) = man["specialists"]
    assert s["set"] == [0, 1]  # the confusion the sets are made of
    assert not s["kept_generalist"] and s["updates"] > 20
    # every frame of pdf 1 is lost by the generalist; the combination wins most of them back
    gain = r["frame_acc_diff"]
    assert gain["diff"] > 5 and gain["significant"], gain
    covered = {row["covering"]: row for row in r["coverage"]}
    assert covered[1]["combined_acc"] > covered[1]["generalist_acc"] + 0.2
    assert covered.get(0, {"correct_gained": 0})["correct_gained"] == 0  # no active specialist


def test_soft_targets_that_know_the_pair_teach_it(confused_pair, tmp_path):
    # an "ensemble" that knows the answer: 0.8 on the aligned pdf, the rest spread
    from asrkd.alignment import AlignmentDir
    from asrkd.softtargets import save_soft_targets

    probs = {}
    for utt, y in AlignmentDir(confused_pair["ali"]).pdf_scp.items():
        p = np.full((len(y), 6), 0.04, dtype=np.float32)
        p[np.arange(len(y)), np.asarray(y)] = 0.8
        probs[utt] = p
    save_soft_targets(tmp_path / "soft", probs, temperature=1.0, topk=3)
    man, r = _pair_report(confused_pair, "soft", targets="soft", soft_weight=1.0,
                          soft=str(tmp_path / "soft"))
    assert man["config"]["targets"] == "soft" and r["training"]["targets"] == "soft"
    assert r["frame_acc_diff"]["diff"] > 5, r["frame_acc_diff"]


def test_specialists_equal_to_the_generalist_give_back_the_generalist(trained, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(trained["spec_dir"], d, ignore=shutil.ignore_patterns("frames"))
    with open(os.path.join(d, "specialists.json")) as f:
        man = json.load(f)
    gen = load_model(os.path.join(d, "generalist.pt"))
    for s in man["specialists"]:  # untrained: the generalist with its dustbin corrected
        spec = specialist_from_generalist(gen, s["set"], s["log_correction"])
        spec.save(os.path.join(d, s["dir"], "final.pt"))
    scorer = make_scorer(d, trained["data"])
    for utt in scorer.reader.utts[:3]:
        st = scorer.frame_stats(scorer.reader[utt])
        assert st["active"].any()
        assert torch.allclose(st["log_q"].exp(), st["p_g"], atol=1e-6)


def test_a_specialist_that_cannot_move_is_reported_as_the_generalist(confused_pair):
    man, r = _pair_report(confused_pair, "frozen", lr=1e-12, epochs=1)
    assert man["specialists"][0]["kept_generalist"]
    assert r["training"]["kept_generalist"] == [1]
    assert r["combined_frame_acc"] == pytest.approx(r["generalist_frame_acc"])
    md = open(os.path.join(confused_pair["root"], "frozen", "report_data.md")).read()
    assert "1 of 1 specialists ended at epoch 0" in md


def test_the_report_notes_say_which_specialists_are_the_generalist(trained):
    from asrkd.report.artefacts import read_specialists_info
    from asrkd.report.render import specialist_notes

    info = read_specialists_info(trained["spec_dir"])
    with open(os.path.join(trained["spec_dir"], "specialists.json")) as f:
        man = json.load(f)
    kept = [i + 1 for i, s in enumerate(man["specialists"]) if s["best_epoch"] == 0]
    assert info["kept_generalist"] == kept and info["targets"] == "hard"
    assert info["updates"] == [s["updates"] for s in man["specialists"]]
    (note,) = specialist_notes([{"label": "gen + K", "specialists": info}])
    assert note.startswith(f"- gen + K: {len(man['specialists'])} specialists, hard targets")
    assert (f"{len(kept)} of" in note) if kept else ("none ended at epoch 0" in note)


def test_a_specialists_dir_decodes_with_its_own_posterior_priors(trained, tmp_path):
    """adjust-priors on a specialists dir writes the combination's mean posterior, and
    make_scorer(priors="posterior") divides by exactly that (the recipe's stage 15)."""
    import shutil

    from asrkd.cli import main
    from asrkd.priors import read_priors

    d = str(tmp_path / "spec")
    shutil.copytree(trained["spec_dir"], d)
    assert main(["adjust-priors", d, trained["data"]]) in (0, None)
    priors = read_priors(d, 8)
    scorer = make_scorer(d, trained["data"], priors="posterior")
    assert isinstance(scorer, SpecialistScorer)
    utt = scorer.reader.utts[0]
    lq = scorer.log_posteriors(utt)
    assert np.allclose(scorer(utt), lq - np.log(priors / priors.sum()), atol=1e-4)
    assert not np.allclose(scorer.log_prior, make_scorer(d, trained["data"]).log_prior,
                           atol=1e-3)  # not the counts
