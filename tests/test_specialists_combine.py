"""Specialists: the KL combination of a generalist and its active specialists."""

import pytest
import torch

from asrkd.specialists.combine import (active_specialists, combination_objective, combine,
                                       membership)


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
