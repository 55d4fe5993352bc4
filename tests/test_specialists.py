"""Specialists: the KL combination, dustbin targets, confusable sets, training and inference."""

import json
import os

import numpy as np
import pytest
import torch

from asrkd.errors import UserError
from asrkd.specialists import (CovarianceAccumulator, SpecialistConfig, active_specialists,
                               collapse, combination_objective, combine, confusable_sets,
                               corrected_logits, local_labels, membership, online_kmeans,
                               specialist_frames)

# --- (c) the combination ---------------------------------------------------------------------


def test_combination_two_class_hand_case():
    # q = (x, 1 - x) minimising KL(p_g || q) + KL(p_m || q), S = {0}, the dustbin = {1}:
    # d/dx gives (a + b) / x = (2 - a - b) / (1 - x), so x = (a + b) / 2.
    a = torch.tensor([0.7, 0.2, 0.5, 0.9], dtype=torch.float64)
    b = torch.tensor([0.4, 0.6, 0.5, 0.1], dtype=torch.float64)
    p_g = torch.stack([a, 1 - a], 1)
    p_m = torch.stack([b, 1 - b], 1)
    active = torch.tensor([[True], [True], [True], [False]])
    for init, steps in (("em", 0), ("generalist", 300)):
        q = combine(p_g, [p_m], [[0]], active, steps=steps, init=init).exp()
        expect = torch.where(active[:, 0], (a + b) / 2, a)  # inactive frame: p_g unchanged
        assert torch.allclose(q[:, 0], expect, atol=1e-6), (init, q[:, 0], expect)


def _em_reference(p_g, spec_probs, sets, active, iters=300):
    """Independent fixed-point solver: spread each dustbin over its rest in proportion to q."""
    q = p_g.clone()
    member = membership(sets, p_g.shape[1])
    for _ in range(iters):
        new = p_g.clone()
        for m, (s, p) in enumerate(zip(sets, spec_probs)):
            w = active[:, m].double()[:, None]
            full = torch.zeros_like(q)
            full[:, s] = p[:, :-1]
            rest = (~member[m]).double()
            full += p[:, -1:] * q * rest / (q * rest).sum(1, keepdim=True)
            new += w * full
        q = new / new.sum(1, keepdim=True)
    return q


def test_combination_gradient_descent_reaches_the_minimum():
    g = torch.Generator().manual_seed(0)
    n, p = 6, 7
    p_g = torch.softmax(torch.randn(n, p, generator=g, dtype=torch.float64) * 2, 1)
    sets = [[0, 1, 2], [2, 3, 4], [5]]  # overlapping, one single-pdf set
    spec = [torch.softmax(torch.randn(n, len(s) + 1, generator=g, dtype=torch.float64) * 2, 1)
            for s in sets]
    active = active_specialists(p_g, membership(sets, p), top_n=2)
    active[0] = False  # one frame with no specialist
    assert active.any()
    ref = _em_reference(p_g, spec, sets, active)
    q = combine(p_g, spec, sets, active, steps=3000).exp()
    assert torch.allclose(q, ref, atol=1e-4)
    assert torch.allclose(q[0], p_g[0], atol=1e-12)
    assert torch.allclose(combine(p_g, spec, sets, active, steps=100, method="em").exp(), ref,
                          atol=1e-9)
    # a few steps (the default) already lower the objective below the EM start and p_g
    obj = combination_objective(q, p_g, spec, sets, active)
    few = combination_objective(combine(p_g, spec, sets, active, steps=10).exp(), p_g, spec,
                                sets, active)
    start = combination_objective(combine(p_g, spec, sets, active, steps=0).exp(), p_g, spec,
                                  sets, active)
    base = combination_objective(p_g, p_g, spec, sets, active)
    assert (few <= start + 1e-12).all() and (start <= base + 1e-12).all()
    assert (obj <= few + 1e-9).all() and (few - obj).max() < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_combination_on_gpu_matches_cpu():
    g = torch.Generator().manual_seed(1)
    p_g = torch.softmax(torch.randn(300, 40, generator=g), 1)
    sets = [list(range(0, 12)), list(range(8, 30)), [35, 36]]
    spec = [torch.softmax(torch.randn(300, len(s) + 1, generator=g), 1) for s in sets]
    active = active_specialists(p_g, membership(sets, 40), top_n=3)
    cpu = combine(p_g, spec, sets, active)
    gpu = combine(p_g.cuda(), [p.cuda() for p in spec], sets, active.cuda())
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


def test_active_specialists_from_top_n():
    p_g = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.2, 0.6]])
    member = membership([[0], [1, 2], [3]], 4)
    assert active_specialists(p_g, member, 1).tolist() == [[True, False, False],
                                                           [False, False, True]]
    assert active_specialists(p_g, member, 2).tolist() == [[True, True, False],
                                                           [False, True, True]]


# --- (b) dustbin targets ----------------------------------------------------------------------


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
    from asrkd.models import ModelConfig, build_model
    from asrkd.specialists import specialist_from_generalist, specialist_logits

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


# --- (a) confusable sets ----------------------------------------------------------------------


def _block_posteriors(sizes, n=4000, seed=0):
    """Posteriors whose mass stays inside one planted block of pdfs per frame."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(sum(sizes))  # the blocks are not contiguous ids
    blocks = np.split(perm, np.cumsum(sizes)[:-1])
    probs = np.zeros((n, sum(sizes)))
    for i in range(n):
        b = blocks[rng.integers(len(blocks))]
        probs[i] = 0.01 / sum(sizes)
        probs[i, b] += 0.99 * rng.dirichlet(np.ones(len(b)))
    return probs, [sorted(b.tolist()) for b in blocks]


def test_covariance_accumulator_matches_numpy():
    probs, _ = _block_posteriors([3, 4], n=500)
    acc = CovarianceAccumulator(7)
    for s in range(0, 500, 64):  # in batches
        acc.add(probs[s:s + 64])
    assert acc.n == 500
    assert np.allclose(acc.covariance(), np.cov(probs.T, bias=True), atol=1e-6)


def test_kmeans_on_a_planted_block_covariance_recovers_the_blocks():
    sizes = [4, 5, 7, 8, 6]
    probs, blocks = _block_posteriors(sizes)
    acc = CovarianceAccumulator(sum(sizes))
    acc.add(probs)
    cov = acc.covariance()
    found = confusable_sets(cov, num_sets=5, clusterings=1)
    assert sorted(s["pdfs"] for s in found) == sorted(blocks)
    # overlap: two clusterings (two seeds) of 5 sets each, both recover the blocks
    found = confusable_sets(cov, num_sets=10, clusterings=2)
    assert sorted(s["pdfs"] for s in found) == sorted(blocks * 2)
    assert {s["clustering"] for s in found} == {0, 1}
    # a size bound: no set above it, each set still inside one block
    small = confusable_sets(cov, num_sets=5, clusterings=1, set_size_max=5)
    assert max(len(s["pdfs"]) for s in small) <= 5
    assert all(any(set(s["pdfs"]) <= set(b) for b in blocks) for s in small)


def test_online_kmeans_size_bound_leaves_the_farthest_out():
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0]])
    labels = online_kmeans(x, 2, seed=0, max_size=2)
    assert np.bincount(labels[labels >= 0]).max() <= 2
    assert (labels == -1).sum() == 2


def test_config_rejects_too_few_sets():
    with pytest.raises(UserError, match="too few"):
        SpecialistConfig(num_sets=3, clusterings=2)


# --- training and inference end to end --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from test_distill import make_learnable_data
    from test_train import MC, TC

    from asrkd.specialists import train_specialists
    from asrkd.train import train_model

    root = tmp_path_factory.mktemp("spec")
    data, ali = (str(p) for p in make_learnable_data(root / "c", num_spk=5, utts_per_spk=8,
                                                     num_pdfs=8, dim=8, seed=2))
    gen = train_model(data, ali, str(root / "gen"), MC, TC, seed=1)
    cfg = SpecialistConfig(num_sets=4, clusterings=2, epochs=2, batch_size=64, lr=0.003,
                           top_n=2, num_threads=1)
    spec = train_specialists(gen, data, ali, str(root / "spec"), cfg, nj=2)
    return {"data": data, "ali": ali, "gen": gen, "spec_dir": os.path.dirname(spec)}


def test_train_specialists_writes_a_decodable_dir(trained):
    from asrkd.scorer import make_scorer
    from asrkd.specialists import SpecialistScorer
    from asrkd.train import frame_accuracy

    d = trained["spec_dir"]
    with open(os.path.join(d, "specialists.json")) as f:
        man = json.load(f)
    assert len(man["specialists"]) == 4
    # two clusterings: every pdf in exactly two sets
    cover = np.zeros(8, int)
    for s in man["specialists"]:
        cover[s["set"]] += 1
        assert os.path.isfile(os.path.join(d, s["dir"], "final.pt"))
        assert s["log_correction"] >= 0
        # pooled dustbin: the untrained specialist (= the generalist) competes as epoch 0
        assert s["valid_loss"] <= s["generalist_valid_loss"] + 1e-5
    assert cover.tolist() == [2] * 8
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
    from asrkd.specialists import specialist_report

    r = specialist_report(trained["spec_dir"], trained["data"], trained["ali"], name="train",
                          timing_frames=200)
    total = sum(row["frames"] for row in r["coverage"])
    assert total == r["frames"] == sum(v["frames"] for v in r["per_speaker"].values())
    assert {row["covering"] for row in r["coverage"]} <= {0, 1, 2}
    acc = sum(row["combined_acc"] * row["frames"] for row in r["coverage"]) / total
    assert acc == pytest.approx(r["combined_frame_acc"])
    assert r["cost"]["generalist_us"] > 0 and r["cost"]["evaluations_per_frame"] >= 1
    md = open(os.path.join(trained["spec_dir"], "report_train.md")).read()
    assert "| covering |" in md


def test_cli_train_specialists_bad_input(trained, capsys):
    from asrkd.cli import main

    rc = main(["train-specialists", trained["gen"], trained["data"], trained["ali"],
               os.path.join(trained["spec_dir"], "x"), "--num-sets", "1"])
    assert rc == 1 and "too few" in capsys.readouterr().err
