"""Specialists: confusable sets from the generalist's confusions or the covariance of its
posteriors."""

import numpy as np
import pytest

from asrkd.specialists.sets import (ConfusionAccumulator, CovarianceAccumulator, confusable_sets,
                                    confusion_sets, confusion_share, default_set_size,
                                    online_kmeans)


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


def test_confusion_sets_hold_the_planted_confusions_and_stay_bounded():
    # 12 pdfs; the generalist confuses {2, 7, 9} with each other and {4, 5} with each other,
    # a little of everything with everything (noise)
    rng = np.random.default_rng(0)
    n = 12
    labels = rng.integers(n, size=6000)
    groups = [[2, 7, 9], [4, 5]]
    acc = ConfusionAccumulator(n)
    probs = np.full((len(labels), n), 0.2 / n)
    for i, y in enumerate(labels):
        g = next((g for g in groups if y in g), [y])
        probs[i, g] += 0.8 / len(g)  # mass spread evenly over y's group
    acc.add(probs[:3000], labels[:3000])
    acc.add(probs[3000:], labels[3000:])  # in batches
    assert acc.n == 6000
    assert acc.confusion.sum() == pytest.approx(6000)
    found = confusion_sets(acc.confusion, num_sets=2, set_size=3)
    # the pair confused most ({4, 5}) starts the first set, which a third pdf fills up
    assert {4, 5} < set(found[0]["pdfs"]) and found[1]["pdfs"] == [2, 7, 9]
    # the first set holds most of the confusion mass: its pairs carry 0.8 * 2/3 per frame
    assert confusion_share(acc.confusion, [2, 7, 9]) > confusion_share(acc.confusion, [4, 5])
    assert confusion_share(acc.confusion, [0, 1]) < 0.02
    small = confusion_sets(acc.confusion, num_sets=4, set_size=2)
    assert all(len(s["pdfs"]) == 2 for s in small)
    assert small[0]["pdfs"] == [4, 5] and small[1]["pdfs"] in ([2, 7], [2, 9], [7, 9])


def test_default_set_size_is_a_subset():
    assert default_set_size(500, 4) == 125 and default_set_size(500, 1) == 250
    assert default_set_size(500, 8) == 63 and default_set_size(6, 100) == 2
    # no confusion at all: no set
    assert confusion_sets(np.eye(5), num_sets=3, set_size=2) == []
