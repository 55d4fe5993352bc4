"""Transition-id tables and alignment conversion (asrkd.transitions) on test_tree's synthetic
monophone alignments."""

import numpy as np
import pytest

khg = pytest.importorskip("kaldi_hmm_gmm")

from asrkd import tree  # noqa: E402
from asrkd.transitions import (context_windows, convert_alignment, phone_segments,  # noqa: E402
                               transition_tables)
from test_tree import NONSIL, SIL, synthetic_alignments  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    return synthetic_alignments()


def test_convert_alignment(setup):
    stats, topo, mono_tm = setup["stats"], setup["topo"], setup["tm"]
    ctx = tree.build_tree(stats, tree.build_questions(stats, NONSIL, SIL), topo, num_leaves=45,
                          min_count=10)
    tri_tm = khg.TransitionModel(ctx, topo)
    old_t, new_t = transition_tables(mono_tm), transition_tables(tri_tm)
    mono_ctx = khg.monophone_context_dependency(NONSIL + SIL, topo.get_phone_to_num_pdf_classes())
    tid2pdf = np.asarray(tri_tm.transition_id_to_pdf_array())
    for utt in sorted(setup["alis"])[:20]:
        ali = setup["alis"][utt]
        new = convert_alignment(ali, mono_tm, tri_tm, ctx, old_t, new_t)
        assert new.dtype == np.int32 and len(new) == len(ali)
        np.testing.assert_array_equal(new_t.phone[new], old_t.phone[ali])
        np.testing.assert_array_equal(new_t.hmm_state[new], old_t.hmm_state[ali])
        np.testing.assert_array_equal(new_t.is_self_loop[new], old_t.is_self_loop[ali])
        # pdf of each frame = the tree's leaf for its triphone event
        seg_id, seg_phone = phone_segments(ali, old_t)
        assert seg_phone.tolist() == setup["seqs"][utt]
        win = context_windows(seg_phone, 3, 1)[seg_id]
        ev = np.concatenate([win, old_t.pdf_class[ali][:, None]], axis=1)
        np.testing.assert_array_equal(tid2pdf[new], tree.map_events(ctx, ev))
        back = convert_alignment(new, tri_tm, mono_tm, mono_ctx)
        np.testing.assert_array_equal(back, ali)
