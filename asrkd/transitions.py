"""Transition-id tables of a TransitionModel and what alignments need of them: phone instances
and their context windows (for tree statistics, asrkd.tree) and the conversion of an alignment
to another tree (Kaldi's convert-ali).

Where we deviate from Kaldi: alignment conversion keeps each frame's phone, HMM state and
transition index and only swaps the pdfs (Kaldi's ConvertAlignment without reordering or frame
subsampling).
"""

import re
from dataclasses import dataclass

import numpy as np


@dataclass
class TransitionTables:
    """Per-transition-id arrays (index 0 unused), all int64 of shape (num_transition_ids + 1,)."""

    phone: np.ndarray
    hmm_state: np.ndarray
    pdf_class: np.ndarray  # pdf-class of the frame this transition emits (self-loop aware)
    trans_index: np.ndarray  # which arc of the HMM state
    is_final: np.ndarray  # bool: the arc leaves the phone
    is_self_loop: np.ndarray  # bool
    state2id: np.ndarray  # (num_transition_states + 2,) first transition id of each state
    tuples: list  # tuples[s - 1] = (phone, hmm_state, forward_pdf, self_loop_pdf) for state s
    tuple2state: dict  # inverse of tuples
    state_pdf_classes: dict  # phone -> [(forward_pdf_class, self_loop_pdf_class) per HMM state]


def _topology_entry(topo, phone):
    """[(forward_pdf_class, self_loop_pdf_class, [arc destinations]) per HMM state]."""
    return [(st.forward_pdf_class, st.self_loop_pdf_class, [a for a, _ in st.transitions])
            for st in topo.topology_for_phone(phone)]


_TUPLE_RE = re.compile(r"phone=(-?\d+),hmm_state=(-?\d+),forward_pdf=(-?\d+),self_loop_pdf=(-?\d+)")


def transition_tables(tm):
    """Read a ``kaldi_hmm_gmm.TransitionModel`` into numpy lookup tables (see TransitionTables).

    ``tm.tuples`` fields are only reachable through ``str()``, hence the regex.
    """
    tuples = []
    for t in tm.tuples:
        m = _TUPLE_RE.search(str(t))
        if m is None:
            raise RuntimeError(f"cannot parse transition tuple {t!s}")
        tuples.append(tuple(int(x) for x in m.groups()))
    n = tm.num_transition_ids
    id2state = np.asarray(tm.id2state, dtype=np.int64)[: n + 1]
    state2id = np.asarray(tm.state2id, dtype=np.int64)
    topo = tm.topo
    phone = np.zeros(n + 1, np.int64)
    hmm_state = np.zeros(n + 1, np.int64)
    pdf_class = np.zeros(n + 1, np.int64)
    is_final = np.zeros(n + 1, bool)
    is_self_loop = np.zeros(n + 1, bool)
    trans_index = np.zeros(n + 1, np.int64)
    entries = {}
    for tid in range(1, n + 1):
        s = int(id2state[tid])
        p, h = tuples[s - 1][:2]
        if p not in entries:
            entries[p] = _topology_entry(topo, p)
        entry = entries[p]
        idx = tid - int(state2id[s])
        dest = entry[h][2][idx]
        phone[tid], hmm_state[tid], trans_index[tid] = p, h, idx
        is_self_loop[tid] = dest == h
        is_final[tid] = dest + 1 == len(entry)
        pdf_class[tid] = entry[h][1] if dest == h else entry[h][0]
    for p in topo.phones:
        if p not in entries:
            entries[p] = _topology_entry(topo, p)
    return TransitionTables(phone, hmm_state, pdf_class, trans_index, is_final, is_self_loop,
                            state2id, tuples, {t: i + 1 for i, t in enumerate(tuples)},
                            {p: [e[:2] for e in entry] for p, entry in entries.items()})


def phone_segments(ali, tables):
    """Split an alignment into phone instances.

    Returns (seg_id (T,), seg_phone (S,)): the instance index of each frame and each instance's
    phone. A new instance starts after a transition into the final state, or where the phone
    changes (a malformed alignment), so two adjacent copies of one phone stay two instances.
    """
    ali = np.asarray(ali, dtype=np.int64)
    phones = tables.phone[ali]
    start = np.ones(len(ali), bool)
    if len(ali) > 1:
        start[1:] = tables.is_final[ali[:-1]] | (phones[1:] != phones[:-1])
    seg_id = np.cumsum(start) - 1
    return seg_id, phones[start]


def context_windows(seg_phone, context_width, central_position):
    """(S, N) phone windows around each instance, phone 0 beyond the utterance edges."""
    s = len(seg_phone)
    padded = np.concatenate([np.zeros(central_position, np.int64), seg_phone,
                             np.zeros(context_width - 1 - central_position, np.int64)])
    return np.stack([padded[i:i + s] for i in range(context_width)], axis=1)


def convert_alignment(ali, old_tm, new_tm, new_ctx, old_tables=None, new_tables=None):
    """Map an alignment to another model with the same topology (Kaldi convert-ali).

    Each frame keeps its phone, HMM state and transition index; the pdfs come from ``new_ctx``
    applied to the phone-instance context. ``ali``: int (T,) transition ids of ``old_tm``.
    Returns int32 (T,) transition ids of ``new_tm``. Pass precomputed ``transition_tables`` when
    converting many utterances.
    """
    old = old_tables or transition_tables(old_tm)
    new = new_tables or transition_tables(new_tm)
    ali = np.asarray(ali, dtype=np.int64)
    if len(ali) == 0:
        return np.zeros(0, np.int32)
    seg_id, seg_phone = phone_segments(ali, old)
    win = context_windows(seg_phone, new_ctx.context_width, new_ctx.central_position)
    seg_frames = np.flatnonzero(np.r_[True, np.diff(seg_id) != 0, True])
    out = np.empty(len(ali), np.int64)
    for s, (a, b) in enumerate(zip(seg_frames[:-1], seg_frames[1:])):
        phone = int(seg_phone[s])
        window = win[s].tolist()
        # hmm_state -> first transition id of the new transition state
        first = {}
        for h in np.unique(old.hmm_state[ali[a:b]]).tolist():
            fc, sc = new.state_pdf_classes[phone][h]
            ok1, fpdf = new_ctx.compute(window, fc)
            ok2, spdf = new_ctx.compute(window, sc)
            state = new.tuple2state.get((phone, h, fpdf, spdf)) if ok1 and ok2 else None
            if state is None:
                raise ValueError(f"cannot convert phone {phone} state {h} in context {window}")
            first[h] = int(new.state2id[state])
        h = old.hmm_state[ali[a:b]]
        base = np.array([first[x] for x in h.tolist()], np.int64)
        out[a:b] = base + old.trans_index[ali[a:b]]
    return out.astype(np.int32)
