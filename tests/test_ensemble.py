"""Ensembles: the one average of tempered posteriors, the one feature pass for all members,
the hybrid scorer (log mean posterior - log prior) and its checks."""

import math

import numpy as np
import pytest
import torch

from asrkd.ensemble import (Ensemble, Scorer, average_posteriors, ensemble_utterance_logits,
                            log_mean_posteriors, log_priors)
from asrkd.errors import UserError
from asrkd.models import ModelConfig, build_model
from asrkd.scorer import make_scorer

D, P = 6, 11


def _config(family, **kw):
    return ModelConfig(family=family, feat_dim=D, num_pdfs=P, hidden_dims=[16, 16, 12], **kw)


def test_arith_vs_geo_hand_case():
    z = torch.tensor([[[math.log(0.8), math.log(0.2)]], [[math.log(0.2), math.log(0.8)]],
                      [[math.log(0.5), math.log(0.5)]]])  # (M=3, T=1, P=2)
    arith = average_posteriors(z, 1.0, "arith")
    assert torch.allclose(arith, torch.tensor([[0.5, 0.5]]))
    geo = average_posteriors(z, 1.0, "geo")
    assert torch.allclose(geo, torch.tensor([[0.5, 0.5]]), atol=1e-6)
    # asymmetric: teachers (0.9, 0.1) and (0.5, 0.5)
    z = torch.log(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]]))
    arith = average_posteriors(z, 1.0, "arith")
    assert torch.allclose(arith, torch.tensor([[0.7, 0.3]]))
    g = torch.tensor([math.sqrt(0.45), math.sqrt(0.05)])
    geo = average_posteriors(z, 1.0, "geo")
    assert torch.allclose(geo, (g / g.sum())[None], atol=1e-6)
    # temperature: geo at T equals softmax(mean z / T)
    geo2 = average_posteriors(z, 2.0, "geo")
    assert torch.allclose(geo2, torch.softmax(z.mean(0) / 2.0, -1))
    with pytest.raises(UserError):
        average_posteriors(z, 1.0, "median")


def test_scorer_is_log_mean_posterior_minus_log_prior(tmp_path):
    feats = {"a": np.random.default_rng(0).normal(size=(9, D)).astype(np.float32)}

    class Reader(dict):
        cmvn = "meanvar"

    paths, models = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = build_model(_config("dnn")).eval()
        m.pdf_counts.copy_(torch.tensor([0, 5, 3, 1, 1, 1, 1, 1, 1, 1, 10]))
        paths.append(str(tmp_path / f"m{seed}.pt"))
        m.save(paths[-1])
        models.append(m)
    scorer = make_scorer(paths, feats=Reader(feats))
    out = scorer("a")
    assert out.dtype == np.float32 and out.shape == (9, P)
    x = torch.from_numpy(feats["a"])
    post = sum(torch.softmax(m.utterance_logits(x), -1) for m in models) / 2
    prior = log_priors([0, 5, 3, 1, 1, 1, 1, 1, 1, 1, 10])
    assert np.isfinite(prior).all() and prior[0] == prior[3]  # unseen pdf floored to count 1
    np.testing.assert_allclose(out, np.log(post.numpy()) - prior, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer.log_posteriors("a"), np.log(post.numpy()), atol=1e-5)

    class MeanOnly(dict):
        cmvn = "mean"

    with pytest.raises(UserError):
        make_scorer(paths, feats=MeanOnly(feats))


@pytest.mark.parametrize("batched", [False, True])
def test_ensemble_feature_pass_equals_each_member_on_its_own(batched):
    torch.manual_seed(0)
    members = [build_model(_config("dnn")) for _ in range(3)]
    members.append(build_model(_config("dnn", left_context=1, right_context=4)))
    members.append(build_model(_config("tdnn")))
    for m in members:
        m.eval()
    feats = torch.randn(23, D)
    want = torch.stack([m.utterance_logits(feats) for m in members])
    got = ensemble_utterance_logits(members, feats, chunk=7, batched=batched)  # 4 chunks
    assert got.shape == want.shape == (5, 23, P)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ensemble_utterance_logits(members, torch.zeros(0, D)).shape == (5, 0, P)


def test_scorer_in_bf16_is_close_to_fp32(tmp_path):
    torch.manual_seed(1)
    models = [build_model(_config("dnn")) for _ in range(2)]
    for m in models:
        m.pdf_counts.fill_(3)
        m.eval()
    feats = {"u": np.random.default_rng(0).normal(size=(40, D)).astype(np.float32)}
    fp32 = Scorer(models, feats).log_posteriors("u")
    bf16 = Scorer(models, feats, precision="bf16").log_posteriors("u")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert 0 < np.abs(bf16 - fp32).max() < 0.05  # bfloat16 really ran, and is close
    with pytest.raises(UserError, match="precision"):
        Scorer(models, feats, precision="fp8").log_posteriors("u")


def test_one_average_is_the_formulas_bit_for_bit():
    """Every user of an ensemble gets the same arithmetic: softmax(z / T) then the mean over
    members (arith), softmax(mean z / T) (geo); z / 1.0 is exact, so T = 1 is softmax(z)."""
    z = torch.randn(3, 17, 29, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(average_posteriors(z), torch.softmax(z, dim=-1).mean(dim=0))
    assert torch.equal(average_posteriors(z, 2.0), torch.softmax(z / 2.0, dim=-1).mean(dim=0))
    assert torch.equal(average_posteriors(z, 2.0, "geo"), torch.softmax(z.mean(0) / 2.0, dim=-1))
    assert torch.equal(log_mean_posteriors(z),
                       torch.log(torch.softmax(z, dim=-1).mean(dim=0).clamp_min(1e-30)))


def test_ensemble_loads_checks_and_averages_its_members(tmp_path):
    paths = []
    for seed, cmvn in ((1, "meanvar"), (2, "meanvar"), (3, "mean")):
        torch.manual_seed(seed)
        m = build_model(_config("dnn", cmvn=cmvn))
        m.pdf_counts.fill_(seed)
        paths.append(str(tmp_path / f"m{seed}.pt"))
        m.save(paths[-1])
    ens = Ensemble(paths[:2])
    assert ens.paths == paths[:2] and ens.cmvn == "meanvar"
    assert all(not p.requires_grad for m in ens.models for p in m.parameters())
    np.testing.assert_array_equal(ens.pdf_counts, np.full(P, 1.5))
    feats = torch.randn(12, D)
    z = ens.utterance_logits(feats)
    assert z.shape == (2, 12, P)
    assert torch.equal(ens.posteriors(feats, 2.0, "geo"), average_posteriors(z, 2.0, "geo"))
    np.testing.assert_allclose(ens.log_posteriors(feats), log_mean_posteriors(z).numpy(),
                               atol=1e-6)
    assert ens.log_posteriors(torch.zeros(0, D)).shape == (0, P)
    with pytest.raises(UserError, match="CMVN"):
        Ensemble(paths).cmvn
    scorer = Scorer(ens, {"u": feats.numpy()})
    np.testing.assert_allclose(scorer("u"), ens.log_posteriors(feats) - log_priors(np.full(P, 1.5)),
                               atol=1e-6)
