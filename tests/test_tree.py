"""Decision-tree building on synthetic monophone alignments where phone 2's right context
shifts its mean. ``synthetic_alignments`` also serves test_transitions."""

import numpy as np
import pytest

khg = pytest.importorskip("kaldi_hmm_gmm")

from asrkd import gmm, tree  # noqa: E402
from asrkd.errors import UserError  # noqa: E402
from asrkd.lang import make_topo  # noqa: E402
from asrkd.transitions import transition_tables  # noqa: E402

NONSIL = [1, 2, 3, 4, 5, 6]
SIL = [7]
DIM = 4
SHIFT_CONTEXT = (3, 4)  # right contexts that shift phone 2

TOPO = make_topo(NONSIL, SIL)  # the lang dir's topology: 3-state phones, 5-state silence


def _topo():
    topo = khg.HmmTopology()
    topo.read(TOPO)
    return topo


def _tid(tables, phone, state, dest):
    """Transition id of arc state -> dest of phone (monophone model)."""
    hit = np.flatnonzero((tables.phone == phone) & (tables.hmm_state == state)
                         & (tables.trans_index == _arc_index(phone, state, dest)))
    assert len(hit) == 1, (phone, state, dest)
    return int(hit[0])


def _arc_index(phone, state, dest):
    dests = {0: [0, 1, 2, 3], 1: [1, 2, 3, 4], 2: [1, 2, 3, 4], 3: [1, 2, 3, 4], 4: [4, 5]}
    if phone in SIL:
        return dests[state].index(dest)
    return [state, state + 1].index(dest)


def synthetic_alignments():
    """Monophone alignments of 120 utterances with their features, phone sequences and tree
    stats: dict(topo, tm, feats, alis, seqs, stats)."""
    rng = np.random.default_rng(0)
    topo = _topo()
    ctx = khg.monophone_context_dependency(NONSIL + SIL, topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx, topo)
    tables = transition_tables(tm)
    tid_cache = {}

    def tid(p, h, d):
        if (p, h, d) not in tid_cache:
            tid_cache[(p, h, d)] = _tid(tables, p, h, d)
        return tid_cache[(p, h, d)]

    means = rng.normal(0, 3, size=(8, 5, DIM))
    feats, alis, phone_seqs = {}, {}, {}
    for u in range(120):
        seq = [7] + list(rng.choice(NONSIL, size=rng.integers(4, 9))) + [7]
        ali, x = [], []
        for i, p in enumerate(seq):
            right = seq[i + 1] if i + 1 < len(seq) else 0
            nstates = 5 if p in SIL else 3
            for h in range(nstates):
                dur = int(rng.integers(1, 5))
                ali += [tid(p, h, h)] * (dur - 1) + [tid(p, h, h + 1)]
                mu = means[p, h] + (3.0 if p == 2 and right in SHIFT_CONTEXT else 0.0)
                x.append(mu + 0.5 * rng.normal(size=(dur, DIM)))
        utt = f"1-1-{u:04d}"
        alis[utt] = np.array(ali, np.int32)
        feats[utt] = np.concatenate(x).astype(np.float32)
        phone_seqs[utt] = seq
    stats = tree.accumulate_tree_stats(feats, alis, tm, SIL)
    return dict(topo=topo, tm=tm, feats=feats, alis=alis, seqs=phone_seqs, stats=stats)


@pytest.fixture(scope="module")
def setup():
    return synthetic_alignments()


def test_accumulate_counts_and_events(setup):
    stats, feats = setup["stats"], setup["feats"]
    total = sum(len(f) for f in feats.values())
    assert stats.counts.sum() == total
    np.testing.assert_allclose(stats.sums.sum(0), sum(f.astype(np.float64).sum(0)
                                                       for f in feats.values()), rtol=1e-9)
    utt = sorted(feats)[0]
    seq = setup["seqs"][utt]
    # SIL is context-independent: its context is recorded as 0
    sil_rows = stats.events[:, 1] == 7
    assert (stats.events[sil_rows][:, [0, 2]] == 0).all()
    # the second phone of an utterance has SIL on its left, the third phone on its right
    assert any((stats.events == [7, seq[1], seq[2], 0]).all(1))
    assert any((stats.events == [seq[-3], seq[-2], 7, 2]).all(1))
    no_ci = tree.accumulate_tree_stats(feats, setup["alis"], setup["tm"])
    assert any((no_ci.events == [0, 7, seq[1], 0]).all(1))
    assert no_ci.counts.sum() == total
    assert stats.events.shape[1] == 4 and set(stats.events[:, -1]) == {0, 1, 2, 3, 4}


def test_questions(setup):
    qs = tree.build_questions(setup["stats"], NONSIL, SIL)
    assert tuple(NONSIL) in qs and (7,) in qs and (0, 7) in qs
    for p in NONSIL:
        assert (p,) in qs
    # binary clustering of 6 phones gives 2 * 6 - 1 nodes, singletons included
    assert len(tree.cluster_phones(setup["stats"], NONSIL)) == 11


def test_tree_splits_on_right_context(setup):
    stats, topo = setup["stats"], setup["topo"]
    questions = tree.build_questions(stats, NONSIL, SIL) + [SHIFT_CONTEXT]
    nroots = 6 * 3 + 5
    ctx, info = tree.build_tree(stats, questions, topo, num_leaves=nroots + 3, min_count=20,
                                return_info=True)
    assert ctx.num_pdfs == nroots + 3 == info["num_leaves"]
    assert info["objf_after"] > info["objf_before"] + 100
    seen_right = set(stats.events[stats.events[:, 1] == 2, 2].tolist())
    for phone, pclass, key, q, gain in info["splits"]:
        assert phone == 2 and key == 2 and gain > 0
        yes = set(q) & seen_right
        assert yes == set(SHIFT_CONTEXT) or yes == seen_right - set(SHIFT_CONTEXT)
    assert sorted(s[1] for s in info["splits"]) == [0, 1, 2]
    # The ContextDependency maps events to the leaves the split implies.
    for c in range(3):
        shifted = {ctx.compute([l, 2, r], c)[1] for l in [0, 1, 7] for r in SHIFT_CONTEXT}
        plain = {ctx.compute([l, 2, r], c)[1] for l in [0, 1, 7] for r in [0, 1, 2, 5, 6, 7]}
        assert len(shifted) == 1 and len(plain) == 1 and shifted != plain
    leaves = tree.map_events(ctx, stats.events)
    np.testing.assert_array_equal(leaves, info["leaf_of_event"])
    counts, means, variances = tree.leaf_stats(stats, ctx)
    assert counts.sum() == stats.counts.sum() and means.shape == (ctx.num_pdfs, DIM)
    (sh,) = {ctx.compute([0, 2, 3], 1)[1]}
    (pl,) = {ctx.compute([0, 2, 1], 1)[1]}
    np.testing.assert_allclose(means[sh] - means[pl], 3.0, atol=0.3)
    assert (variances > 0.1).all() and (variances < 0.5).all()


def test_num_leaves_and_min_count(setup):
    stats, topo = setup["stats"], setup["topo"]
    questions = tree.build_questions(stats, NONSIL, SIL)
    ctx, info = tree.build_tree(stats, questions, topo, num_leaves=40, min_count=10,
                                return_info=True)
    assert ctx.num_pdfs == 40
    counts, _, _ = tree.leaf_stats(stats, ctx)
    split_roots = {(s[0], s[1]) for s in info["splits"]}
    leaves = info["leaf_of_event"]
    for p, c in split_roots:
        rows = (stats.events[:, 1] == p) & (stats.events[:, -1] == c)
        assert (counts[np.unique(leaves[rows])] >= 10).all()
    # a huge min_count forbids every split: one leaf per (phone, pdf-class)
    ctx2 = tree.build_tree(stats, questions, topo, num_leaves=100, min_count=1e9)
    assert ctx2.num_pdfs == 23


def test_write_read_and_transition_model(setup, tmp_path):
    stats, topo = setup["stats"], setup["topo"]
    ctx = tree.build_tree(stats, tree.build_questions(stats, NONSIL, SIL), topo, num_leaves=50,
                          min_count=10)
    path = tmp_path / "tree"
    gmm.write_tree(ctx, path)
    ctx2 = gmm.read_tree(path)
    assert gmm.ctx_to_bytes(ctx2) == gmm.ctx_to_bytes(ctx)
    gmm.write_tree(ctx2, tmp_path / "tree2")
    assert (tmp_path / "tree2").read_bytes() == path.read_bytes()
    # Kaldi's own binary writer produces the same file
    ctx.write(True, str(tmp_path / "tree3"))
    assert (tmp_path / "tree3").read_bytes() == path.read_bytes()
    tm = khg.TransitionModel(ctx2, topo)
    assert tm.num_pdfs == ctx.num_pdfs == 50
    with pytest.raises(UserError):
        gmm.read_tree(tmp_path / "missing")


def test_phone_without_data_gets_global_gaussian(setup):
    stats, topo = setup["stats"], setup["topo"]
    keep = stats.events[:, 1] != 6
    sub = tree.TreeStats(stats.events[keep], stats.counts[keep], stats.sums[keep],
                         stats.sumsq[keep])
    ctx = tree.build_tree(sub, tree.build_questions(sub, NONSIL, SIL), topo, num_leaves=30,
                          min_count=10)
    khg.TransitionModel(ctx, topo)
    counts, means, _ = tree.leaf_stats(sub, ctx)
    unseen = [ctx.compute([1, 6, 1], c)[1] for c in range(3)]
    assert len(set(unseen)) == 3 and (counts[unseen] == 0).all()
    np.testing.assert_allclose(means[unseen[0]], sub.sums.sum(0) / sub.counts.sum())
    assert (counts > 0).sum() == 27


def test_stats_save_load_and_merge(setup, tmp_path):
    stats = setup["stats"]
    stats.save(tmp_path / "stats.npz")
    back = tree.TreeStats.load(tmp_path / "stats.npz")
    np.testing.assert_array_equal(back.events, stats.events)
    np.testing.assert_array_equal(back.sumsq, stats.sumsq)
    utts = sorted(setup["alis"])
    halves = [tree.accumulate_tree_stats(setup["feats"], {u: setup["alis"][u] for u in part},
                                         setup["tm"], SIL) for part in (utts[:60], utts[60:])]
    merged = tree.TreeStats.merge(halves)
    np.testing.assert_array_equal(merged.events, stats.events)
    np.testing.assert_allclose(merged.sums, stats.sums, rtol=1e-9)


def test_leaf_merging(setup):
    stats, topo = setup["stats"], setup["topo"]
    questions = tree.build_questions(stats, NONSIL, SIL)
    ctx, info = tree.build_tree(stats, questions, topo, num_leaves=60, min_count=10,
                                cluster_thresh=-1, return_info=True)
    assert ctx.num_pdfs == info["num_leaves"] <= 60
    assert info["objf_after"] > info["objf_before"]
    khg.TransitionModel(ctx, topo)
    # an enormous threshold leaves one pdf per phone
    ctx = tree.build_tree(stats, questions, topo, num_leaves=60, min_count=10,
                          cluster_thresh=1e12)
    assert ctx.num_pdfs == 7
    pdfs = {p: {ctx.compute([1, p, 1], c)[1] for c in range(5 if p in SIL else 3)}
            for p in NONSIL + SIL}
    assert all(len(v) == 1 for v in pdfs.values())
    assert len(set.union(*pdfs.values())) == 7
