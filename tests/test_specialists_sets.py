"""Specialists: confusable sets from the covariance of the generalist's posteriors."""

import numpy as np

from asrkd.specialists.sets import CovarianceAccumulator, confusable_sets, online_kmeans


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
