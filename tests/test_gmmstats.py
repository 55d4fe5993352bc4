"""GMM statistics (asrkd.gmmstats): the vectorized accumulation against the bindings' one call
per frame, and exact fixed-point sums."""

import numpy as np
import pytest

from asrkd.gmm import PackedGmm
from asrkd.gmmstats import GmmStats, accumulate
from test_gmm import random_am


def test_vectorized_stats_equal_binding_accumulation():
    import kaldi_hmm_gmm as khg

    rng = np.random.default_rng(1)
    dim, num_pdfs = 6, 5
    am = random_am(rng, num_pdfs, dim)
    x = rng.normal(size=(300, dim)).astype(np.float32)
    pdfs = rng.integers(0, num_pdfs, size=300)
    stats = accumulate(PackedGmm(am), x, pdfs)

    acc = khg.AccumAmDiagGmm()
    acc.init(am, khg.str_to_gmm_flags("mvw"))
    tot = sum(acc.accumulate_for_gmm(am, x[t], int(pdfs[t]), 1.0) for t in range(len(x)))
    packed = PackedGmm(am)
    for p in range(num_pdfs):
        a = acc.get_acc(p)
        g = slice(packed.offsets[p], packed.offsets[p + 1])
        np.testing.assert_allclose(stats.occ[g], a.occupancy, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.x[g], a.mean_accumulator, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stats.xx[g], a.variance_accumulator, rtol=1e-4, atol=1e-4)
    assert stats.loglike == pytest.approx(tot, rel=1e-5)
    assert stats.frames == 300
    # per-pdf log-likelihoods used for alignment/decoding agree with the binding's
    ll = packed.pdf_loglikes(x[:20])
    for t in range(20):
        for p in range(num_pdfs):
            assert ll[t, p] == pytest.approx(am.log_likelihood(p, x[t]), abs=2e-3)


def test_stats_add():
    a = GmmStats.zeros(2, 3)
    b = GmmStats(np.ones(2), np.ones((2, 3)), np.ones((2, 3)), 1.5, 4)
    a.add(b).add(b)
    assert a.frames == 8 and a.loglike == 3.0 and a.occ.tolist() == [2.0, 2.0]


def test_fixed_point_stats_sum_exactly():
    rng = np.random.default_rng(0)
    parts = [GmmStats(rng.random(3) * 1e3, rng.normal(size=(3, 2)) * 50,
                      rng.random((3, 2)) * 1e4, float(rng.normal() * 1e5), 100) for _ in range(6)]
    fixed = [p.to_fixed() for p in parts]
    a = GmmStats.zeros(3, 2).to_fixed()
    for f in fixed:
        a.add(f)
    b = GmmStats.zeros(3, 2).to_fixed()
    for f in fixed[3:] + fixed[:3]:  # another grouping and order: the same integers
        b.add(f)
    assert np.array_equal(a.occ, b.occ) and np.array_equal(a.xx, b.xx) and a.loglike == b.loglike
    want = sum(p.xx for p in parts)
    np.testing.assert_allclose(a.from_fixed().xx, want, rtol=0, atol=6 * 2.0 ** -20)
    assert a.from_fixed().frames == 600
