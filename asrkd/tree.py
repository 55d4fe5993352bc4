"""Context-dependent phonetic decision trees in numpy (Kaldi's acc-tree-stats, cluster-phones,
compile-questions and build-tree), emitted as a ``kaldi_hmm_gmm.ContextDependency``.

The bindings have no tree building, so the tree is grown here and serialised to Kaldi's binary
EventMap bytes (``TE``/``SE``/``CE``), which ``ContextDependency.__setstate__`` accepts; the
``tree`` file is read and written by asrkd.gmm, alignments are converted to a new tree by
asrkd.transitions.

Flow (asrkd.gmmtrain's ``train_tri`` calls these in order)::

    stats = accumulate_tree_stats(feats, alis, mono_tm, lang.silence_phones)  # triphone Gaussians
    questions = build_questions(stats, lang.nonsilence_phones, lang.silence_phones)
    ctx = build_tree(stats, questions, lang.topo, num_leaves=2000)
    tri_tm = kaldi_hmm_gmm.TransitionModel(ctx, lang.topo)
    counts, means, variances = leaf_stats(stats, ctx)                         # one Gaussian per pdf
    new_ali = asrkd.transitions.convert_alignment(ali, mono_tm, tri_tm, ctx)

Where we deviate from Kaldi (simplifications):

- Roots: one root per phone (Kaldi's ``shared split`` roots, one line per phone), and each root is
  first split by pdf-class with a table (Kaldi instead asks pdf-class questions, which lets
  states of one phone share a leaf). So the tree never has fewer leaves than the sum of
  pdf-classes over phones, and pdf-class questions are not needed.
- Questions: ``cluster_phones`` is a top-down binary clustering of the non-silence phones, each
  phone described by one diagonal Gaussian per pdf-class; every node is a question (as Kaldi's
  cluster-phones + compile-questions). Each split is a few iterations of likelihood-based 2-means
  started from a split along the first principal axis of the phone means (Kaldi uses
  ClusterKMeans with random restarts). Extra questions: the silence set, silence + utterance edge
  (phone 0), and every single phone. The same questions are asked of every context position.
- Splitting: greedy best-first over all leaves with a global priority queue on the log-likelihood
  gain of diagonal Gaussians (variance floor ``var_floor``, as Kaldi's GaussClusterable), each
  child needing ``min_count`` frames, until ``num_leaves`` leaves (or no split gains more than
  ``thresh``). Leaf merging after splitting (Kaldi's ``--cluster-thresh``) is off by default so
  that every leaf grown is a pdf; with ``cluster_thresh`` set, leaves of one centre phone are
  merged greedily (smallest likelihood loss first) while the loss is below it, across pdf-classes
  as Kaldi's shared roots allow; -1 means Kaldi's default, the smallest split gain used.
- Silence phones are context-independent (Kaldi's ``--ci-phones``): their stats are pooled over
  contexts, so their roots only split by pdf-class.
"""

import heapq
import itertools
import logging
import struct
from dataclasses import dataclass

import numpy as np

from asrkd.errors import UserError
from asrkd.gmm import ctx_from_bytes
from asrkd.table import atomic_path
from asrkd.transitions import context_windows, phone_segments, transition_tables

log = logging.getLogger(__name__)

# Kaldi's EventMap key for the pdf-class; keys 0..N-1 are phone positions.
PDF_CLASS_KEY = -1


# --------------------------------------------------------------------------------------------
# Tree statistics


@dataclass
class TreeStats:
    """Single-Gaussian sufficient statistics per event.

    events: int64 (E, N + 1): phones at positions 0..N-1 (0 = utterance edge), then pdf-class.
    counts: float64 (E,); sums: float64 (E, D); sumsq: float64 (E, D). Rows sorted by event.
    """

    events: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    sumsq: np.ndarray
    context_width: int = 3
    central_position: int = 1

    @property
    def dim(self):
        return self.sums.shape[1]

    def save(self, path):
        """Write as .npz (no pickle)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, events=self.events, counts=self.counts, sums=self.sums,
                         sumsq=self.sumsq,
                         shape=np.array([self.context_width, self.central_position]))

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as z:
            n, p = (int(x) for x in z["shape"])
            return cls(z["events"], z["counts"], z["sums"], z["sumsq"], n, p)

    @classmethod
    def merge(cls, parts):
        """Sum stats from several jobs (same context width)."""
        parts = list(parts)
        return _reduce_events(np.concatenate([p.events for p in parts]),
                              np.concatenate([p.counts for p in parts]),
                              np.concatenate([p.sums for p in parts]),
                              np.concatenate([p.sumsq for p in parts]),
                              parts[0].context_width, parts[0].central_position)


def _reduce_events(events, counts, sums, sumsq, n, p):
    uniq, inv = np.unique(events, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    return TreeStats(uniq, np.add.reduceat(counts[order], bounds),
                     np.add.reduceat(sums[order], bounds, axis=0),
                     np.add.reduceat(sumsq[order], bounds, axis=0), n, p)


def accumulate_tree_stats(feats_by_utt, ali_by_utt, trans_model, silence_phones=(),
                          context_width=3, central_position=1, chunk_frames=200000):
    """Accumulate per-(context window, pdf-class) Gaussian stats from alignments (acc-tree-stats).

    Args:
      feats_by_utt: mapping utt -> float (T, D) features (e.g. MFCC + deltas, D=39).
      ali_by_utt: mapping utt -> int (T,) transition ids of ``trans_model``; utts missing here
        are skipped, a frame-count mismatch raises UserError.
      trans_model: kaldi_hmm_gmm.TransitionModel of the alignments (usually the monophone one).
      silence_phones: context-independent phones (Kaldi acc-tree-stats --ci-phones): where one
        is the centre phone, its context is recorded as 0, so its tree cannot split on context.
      context_width, central_position: N and P of the tree (3, 1 = triphone).
    Returns:
      TreeStats with events (E, N + 1) = (phone at 0..N-1, pdf-class), utterance edges = phone 0.
    """
    tables = transition_tables(trans_model)
    ci = np.zeros(int(tables.phone.max()) + 1, bool)
    ci[[int(p) for p in silence_phones if int(p) < len(ci)]] = True
    parts, buf, nbuf = [], [], 0

    def flush():
        ev = np.concatenate([b[0] for b in buf])
        x = np.concatenate([b[1] for b in buf]).astype(np.float64)
        parts.append(_reduce_events(ev, np.ones(len(ev)), x, x * x, context_width,
                                    central_position))
        buf.clear()

    for utt in sorted(ali_by_utt):
        if utt not in feats_by_utt:
            continue
        ali = np.asarray(ali_by_utt[utt], dtype=np.int64)
        feats = np.asarray(feats_by_utt[utt])
        if len(ali) != len(feats):
            raise UserError(f"{utt}: alignment has {len(ali)} frames, features {len(feats)}")
        if len(ali) == 0:
            continue
        seg_id, seg_phone = phone_segments(ali, tables)
        win = context_windows(seg_phone, context_width, central_position)
        if ci.any():
            ci_seg = ci[seg_phone]
            win[ci_seg] = 0
            win[ci_seg, central_position] = seg_phone[ci_seg]
        win = win[seg_id]  # (T, N)
        buf.append((np.concatenate([win, tables.pdf_class[ali][:, None]], axis=1), feats))
        nbuf += len(ali)
        if nbuf >= chunk_frames:
            flush()
            nbuf = 0
    if buf:
        flush()
    if not parts:
        raise UserError("no aligned utterances to accumulate tree statistics from")
    return TreeStats.merge(parts)


# --------------------------------------------------------------------------------------------
# Gaussian objective


def gauss_objf(counts, sums, sumsq, var_floor=0.01):
    """Log-likelihood of data under its own ML diagonal Gaussian (Kaldi GaussClusterable::Objf).

    counts (...,), sums/sumsq (..., D) -> (...,); zero counts give 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    safe = np.maximum(counts, 1e-10)[..., None]
    mean = sums / safe
    var = np.maximum(sumsq / safe - mean * mean, var_floor)
    d = sums.shape[-1]
    objf = -0.5 * counts * (d * (1.0 + np.log(2 * np.pi)) + np.log(var).sum(-1))
    return np.where(counts > 0, objf, 0.0)


# --------------------------------------------------------------------------------------------
# Questions


def _phone_class_stats(stats, phones, classes):
    """(len(phones), len(classes)) counts and (..., D) sums/sumsq pooled by centre phone."""
    p, d = stats.central_position, stats.dim
    lut_p = np.full(max(int(stats.events[:, p].max(initial=0)), max(phones)) + 1, -1)
    lut_p[phones] = np.arange(len(phones))
    lut_c = np.full(int(stats.events[:, -1].max(initial=0)) + 1, -1)
    lut_c[classes] = np.arange(len(classes))
    i, j = lut_p[stats.events[:, p]], lut_c[stats.events[:, -1]]
    keep = (i >= 0) & (j >= 0)
    flat = i[keep] * len(classes) + j[keep]
    size = len(phones) * len(classes)
    n = np.bincount(flat, weights=stats.counts[keep], minlength=size)
    s = np.zeros((size, d))
    ss = np.zeros((size, d))
    np.add.at(s, flat, stats.sums[keep])
    np.add.at(ss, flat, stats.sumsq[keep])
    shape = (len(phones), len(classes))
    n, s, ss = n.reshape(shape), s.reshape(shape + (d,)), ss.reshape(shape + (d,))
    return n, s, ss


def _expected_loglik(n, s, ss, mean, var):
    """Log-likelihood of stats (k, C)/(k, C, D) under Gaussians mean/var (C, D) -> (k,)."""
    quad = (ss - 2 * mean * s + n[..., None] * mean * mean) / var
    return -0.5 * (n[..., None] * np.log(2 * np.pi * var) + quad).sum(axis=(-1, -2))


def _split_two(n, s, ss, var_floor, iters=10):
    """Partition phones (rows) into two non-empty groups; returns a bool mask (k,)."""
    k = len(n)
    tot = np.maximum(n.sum(-1), 1e-10)
    mean = (s.sum(1) / tot[:, None])  # (k, D) phone means pooled over classes
    gvar = np.maximum(mean.var(0), 1e-6)
    z = (mean - mean.mean(0)) / np.sqrt(gvar)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    proj = z @ vt[0]
    mask = proj > np.median(proj)
    if mask.all() or not mask.any():
        mask = np.arange(k) < k // 2
    for _ in range(iters):
        lls = []
        for m in (mask, ~mask):
            cn, cs, css = n[m].sum(0), s[m].sum(0), ss[m].sum(0)
            safe = np.maximum(cn, 1e-10)[:, None]
            mu = cs / safe
            var = np.maximum(css / safe - mu * mu, var_floor)
            lls.append(_expected_loglik(n, s, ss, mu, var))
        new = lls[0] >= lls[1]
        if new.all() or not new.any() or (new == mask).all():
            break
        mask = new
    return mask


def cluster_phones(stats, phones, var_floor=0.01):
    """Top-down binary clustering of ``phones`` by their stats (Kaldi cluster-phones).

    Each phone is described by one diagonal Gaussian per pdf-class (classes common to all the
    phones). Returns the phone sets of every node of the clustering tree (root first, sorted
    tuples), which serve as questions. Phones without data are kept at the root only.
    """
    phones = sorted(int(p) for p in phones)
    if not phones:
        return []
    classes = sorted(set(int(c) for c in stats.events[:, -1]))
    n, s, ss = _phone_class_stats(stats, phones, classes)
    seen = n.sum(1) > 0
    out = [tuple(phones)]
    todo = [np.flatnonzero(seen)]
    while todo:
        idx = todo.pop()
        if len(idx) < 2:
            continue
        mask = _split_two(n[idx], s[idx], ss[idx], var_floor)
        for part in (idx[mask], idx[~mask]):
            out.append(tuple(phones[i] for i in part))
            todo.append(part)
    return out


def build_questions(stats, nonsilence_phones, silence_phones, var_floor=0.01):
    """Questions (sets of phone ids) asked of every context position (compile-questions).

    Clustering of the non-silence phones, plus the silence set, silence + edge (phone 0), and
    every single phone. Returns a sorted-deduplicated list of sorted tuples.
    """
    qs = set(cluster_phones(stats, nonsilence_phones, var_floor))
    sil = tuple(sorted(int(p) for p in silence_phones))
    if sil:
        qs.add(sil)
        qs.add(tuple(sorted(set(sil) | {0})))
    for p in list(nonsilence_phones) + list(silence_phones):
        qs.add((int(p),))
    return sorted(q for q in qs if q)


# --------------------------------------------------------------------------------------------
# Tree building


@dataclass
class _Node:
    rows: np.ndarray  # indices into stats rows
    leaf: int = -1  # pdf id once numbered
    key: int = 0  # phone position asked (for a split node)
    yes: tuple = ()  # phone set answering yes
    children: tuple = ()  # (yes_node, no_node) when split


def _best_split(stats, node, qmat, questions, keys, min_count, var_floor):
    """(gain, key, question index, yes mask over node rows) of the best split, or None."""
    rows = node.rows
    if len(rows) < 2:
        return None
    n, s, ss = stats.counts[rows], stats.sums[rows], stats.sumsq[rows]
    tot_n, tot_s, tot_ss = n.sum(), s.sum(0), ss.sum(0)
    if tot_n < 2 * min_count:
        return None
    base = gauss_objf(tot_n, tot_s, tot_ss, var_floor)
    nv = qmat.shape[1]
    best = None
    for key in keys:
        vals = stats.events[rows, key]
        vn = np.bincount(vals, weights=n, minlength=nv)
        vs = np.zeros((nv, s.shape[1]))
        vss = np.zeros_like(vs)
        np.add.at(vs, vals, s)
        np.add.at(vss, vals, ss)
        yn, ys, yss = qmat @ vn, qmat @ vs, qmat @ vss  # (Q,), (Q, D)
        gain = (gauss_objf(yn, ys, yss, var_floor)
                + gauss_objf(tot_n - yn, tot_s - ys, tot_ss - yss, var_floor) - base)
        ok = (yn >= min_count) & (tot_n - yn >= min_count)
        if not ok.any():
            continue
        gain = np.where(ok, gain, -np.inf)
        q = int(np.argmax(gain))
        if best is None or gain[q] > best[0]:
            best = (float(gain[q]), key, q, qmat[q, vals] > 0)
    return best


def build_tree(stats, questions, topo, num_leaves, min_count=100.0, var_floor=0.01, thresh=0.0,
               cluster_thresh=None, phones=None, return_info=False):
    """Grow a phonetic decision tree and return it as a ``kaldi_hmm_gmm.ContextDependency``.

    Args:
      stats: TreeStats from accumulate_tree_stats.
      questions: list of phone-id sets (build_questions), asked of every non-central position.
      topo: kaldi_hmm_gmm.HmmTopology; every phone in it (or in ``phones``) gets a root, split by
        pdf-class; phones/pdf-classes without data get one leaf each (no stats).
      num_leaves: target total number of leaves (pdfs); never below the number of roots x classes.
      min_count: frames each side of a split must have (Kaldi build-tree --min-count, ...).
      var_floor: variance floor of the Gaussian objective.
      thresh: minimum log-likelihood gain of a split (Kaldi --thresh).
      cluster_thresh: None = no leaf merging; otherwise merge leaves of one centre phone while
        the likelihood loss is below it (-1: the smallest split gain). Then num_pdfs < num_leaves.
      return_info: also return a dict {"objf_before", "objf_after", "num_leaves", "splits":
        [(phone, pdf_class, key, question, gain), ...], "leaf_of_event": int64 (E,) leaf of each
        stats row, -1 for rows outside the topology}.
    Returns:
      ctx (N = stats.context_width, P = stats.central_position) with pdf ids 0..L-1, leaves
      numbered by (centre phone, pdf-class, depth-first yes-before-no); or (ctx, info).
    """
    phones = sorted(int(p) for p in (phones if phones is not None else topo.phones))
    nclasses = topo.get_phone_to_num_pdf_classes()
    qmat, questions = _question_matrix(stats, questions, phones)
    roots = _make_roots(stats, phones, nclasses)
    objf_before = sum(_node_objf(stats, r, var_floor) for r in roots.values())
    leaves, splits, gain_total = _grow(stats, roots, qmat, questions, num_leaves, min_count,
                                       var_floor, thresh)
    leaf_nodes = _number_leaves(roots)
    merge_loss = 0.0
    if cluster_thresh is not None:
        if cluster_thresh < 0:
            cluster_thresh = min((sp[-1] for sp in splits), default=0.0)
        merge_loss = _merge_tree_leaves(stats, roots, leaf_nodes, cluster_thresh, var_floor)
    ctx = _make_ctx(roots, phones, nclasses, stats.context_width, stats.central_position)
    leaf_of_event = _checked_leaf_of_event(ctx, stats, roots)
    log.info("tree: %d leaves (%d after merging), %d splits, objf gain %.4g per frame", leaves,
             ctx.num_pdfs, len(splits), (gain_total - merge_loss) / max(stats.counts.sum(), 1.0))
    if return_info:
        return ctx, {"objf_before": objf_before,
                     "objf_after": objf_before + gain_total - merge_loss,
                     "num_leaves": ctx.num_pdfs, "splits": splits,
                     "leaf_of_event": leaf_of_event}
    return ctx


def _question_matrix(stats, questions, phones):
    """(Q, max phone + 1) 0/1 matrix of the questions' phone sets, and the questions as sorted
    tuples."""
    n_ctx = stats.context_width
    max_phone = max(max(phones), int(stats.events[:, :n_ctx].max(initial=0)))
    qmat = np.zeros((len(questions), max_phone + 1))
    for i, q in enumerate(questions):
        qmat[i, [int(x) for x in q if int(x) <= max_phone]] = 1.0
    return qmat, [tuple(sorted(int(x) for x in q)) for q in questions]


def _make_roots(stats, phones, nclasses):
    """{(phone, pdf-class): _Node} holding the stats rows of that centre phone and pdf-class:
    one root per (phone, pdf-class), also for those without data."""
    p_ctx = stats.central_position
    centre, pclass = stats.events[:, p_ctx], stats.events[:, -1]
    order = np.lexsort((pclass, centre))
    roots = {}
    for ph in phones:
        for c in range(nclasses[ph]):
            roots[(ph, c)] = _Node(rows=np.zeros(0, np.int64))
    keyed = centre[order] * (max(nclasses) + 1) + pclass[order]
    bounds = np.flatnonzero(np.r_[True, np.diff(keyed) != 0, True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        ph, c = int(centre[order[a]]), int(pclass[order[a]])
        if (ph, c) in roots:
            roots[(ph, c)].rows = order[a:b]
    unused = len(stats.counts) - sum(len(r.rows) for r in roots.values())
    if unused:
        log.warning("%d tree-stats events have a phone or pdf-class outside the topology", unused)
    return roots


def _node_objf(stats, node, var_floor):
    r = node.rows
    return float(gauss_objf(stats.counts[r].sum(), stats.sums[r].sum(0), stats.sumsq[r].sum(0),
                            var_floor)) if len(r) else 0.0


def _grow(stats, roots, qmat, questions, num_leaves, min_count, var_floor, thresh):
    """Split the trees under ``roots`` (in place) best gain first, over all of them, until
    ``num_leaves`` leaves or no split gains more than ``thresh``. Returns (number of leaves,
    splits [(phone, pdf_class, key, question, gain), ...], total gain)."""
    keys = [k for k in range(stats.context_width) if k != stats.central_position]
    heap, tie = [], itertools.count()  # tie: equal gains pop in the order they were pushed

    def push(rk, node):
        best = _best_split(stats, node, qmat, questions, keys, min_count, var_floor)
        if best is not None:
            heapq.heappush(heap, (-best[0], next(tie), rk, node, best))

    for rk, node in roots.items():
        push(rk, node)
    leaves = len(roots)
    splits, gain_total = [], 0.0
    while heap and leaves < num_leaves:
        neg_gain, _, rk, node, (gain, key, q, mask) = heapq.heappop(heap)
        if gain <= thresh:
            break
        yes, no = _Node(node.rows[mask]), _Node(node.rows[~mask])
        node.key, node.yes, node.children = key, questions[q], (yes, no)
        leaves += 1
        gain_total += gain
        splits.append((rk[0], rk[1], key, questions[q], gain))
        for child in (yes, no):
            push(rk, child)
    return leaves, splits, gain_total


def _number_leaves(roots):
    """Number the leaves by (centre phone, pdf-class, depth-first yes-before-no); returns them
    in that order."""
    leaf_nodes = []

    def collect(node):
        if node.children:
            for ch in node.children:
                collect(ch)
        else:
            node.leaf = len(leaf_nodes)
            leaf_nodes.append(node)

    for rk in sorted(roots):
        collect(roots[rk])
    return leaf_nodes


def _merge_tree_leaves(stats, roots, leaf_nodes, thresh, var_floor):
    """Merge the leaves with data of each centre phone (_merge_leaves), then renumber all
    leaves consecutively in their original order; returns the total objf loss."""
    groups = {}
    for rk in sorted(roots):
        stack = [roots[rk]]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children)
            elif len(node.rows):
                groups.setdefault(rk[0], []).append(node)
    merge_loss = 0.0
    for nodes in groups.values():
        merge_loss += _merge_leaves(stats, nodes, thresh, var_floor)
    remap = {}
    for node in leaf_nodes:
        node.leaf = remap.setdefault(node.leaf, len(remap))
    return merge_loss


def _checked_leaf_of_event(ctx, stats, roots):
    """int64 (E,) leaf of each stats row (-1 outside the roots); RuntimeError unless the
    serialised ``ctx`` maps every event seen to the same leaf as the python tree."""
    leaf_of_event = np.full(len(stats.counts), -1, np.int64)
    stack = list(roots.values())
    while stack:
        node = stack.pop()
        if node.children:
            stack.extend(node.children)
        else:
            leaf_of_event[node.rows] = node.leaf
    seen = leaf_of_event >= 0
    if not np.array_equal(map_events(ctx, stats.events[seen]), leaf_of_event[seen]):
        raise RuntimeError("serialised tree disagrees with the python tree")
    return leaf_of_event


def _merge_leaves(stats, nodes, thresh, var_floor):
    """Greedily give leaves (of one centre phone) a shared id while the objf loss < thresh.

    Sets ``node.leaf`` of merged nodes to a common id; returns the total objf loss.
    """
    groups = [[nd] for nd in nodes]
    st = [(stats.counts[nd.rows].sum(), stats.sums[nd.rows].sum(0), stats.sumsq[nd.rows].sum(0))
          for nd in nodes]
    total = 0.0
    while len(groups) > 1:
        n = np.array([x[0] for x in st])
        s = np.stack([x[1] for x in st])
        ss = np.stack([x[2] for x in st])
        own = gauss_objf(n, s, ss, var_floor)
        loss = (own[:, None] + own[None, :]
                - gauss_objf(n[:, None] + n[None, :], s[:, None] + s[None, :],
                             ss[:, None] + ss[None, :], var_floor))
        np.fill_diagonal(loss, np.inf)
        i, j = np.unravel_index(int(np.argmin(loss)), loss.shape)
        if loss[i, j] >= thresh:
            break
        total += float(loss[i, j])
        i, j = min(i, j), max(i, j)
        groups[i] += groups.pop(j)
        b = st.pop(j)
        st[i] = (st[i][0] + b[0], st[i][1] + b[1], st[i][2] + b[2])
    for g in groups:
        leaf = min(nd.leaf for nd in g)
        for nd in g:
            nd.leaf = leaf
    return total


# --------------------------------------------------------------------------------------------
# Kaldi binary serialisation (tree/event-map.cc, context-dep.cc Write formats)


def _tok(s):
    return s.encode() + b" "


def _i32(v):
    return b"\x04" + struct.pack("<i", v)


def _node_bytes(node):
    if not node.children:
        return _tok("CE") + _i32(node.leaf)
    yes = sorted(node.yes)
    return (_tok("SE") + _i32(node.key) + b"\x04" + struct.pack(f"<i{len(yes)}i", len(yes), *yes)
            + _tok("{") + _node_bytes(node.children[0]) + _node_bytes(node.children[1]) + _tok("}"))


def _table_bytes(key, table):
    body = b"".join(_tok("NULL") if t is None else t for t in table)
    size = b"\xfc" + struct.pack("<I", len(table))  # Kaldi marks unsigned types with -sizeof
    return _tok("TE") + _i32(key) + size + _tok("(") + body + _tok(")")


def _make_ctx(roots, phones, nclasses, n_ctx, p_ctx):
    table = [None] * (max(phones) + 1)
    for ph in phones:
        table[ph] = _table_bytes(PDF_CLASS_KEY, [_node_bytes(roots[(ph, c)])
                                                 for c in range(nclasses[ph])])
    data = (_tok("ContextDependency") + _i32(n_ctx) + _i32(p_ctx) + _tok("ToPdf")
            + _table_bytes(p_ctx, table) + _tok("EndContextDependency"))
    return ctx_from_bytes(data)


# --------------------------------------------------------------------------------------------
# Using the tree


def map_events(ctx, events):
    """Leaf (pdf id) of each event row (E, N + 1) = (phones..., pdf-class) -> int64 (E,).

    Raises ValueError if the tree has no answer for an event.
    """
    events = np.asarray(events, dtype=np.int64)
    out = np.empty(len(events), np.int64)
    for i, ev in enumerate(events.tolist()):
        ok, pdf = ctx.compute(ev[:-1], ev[-1])
        if not ok:
            raise ValueError(f"tree has no pdf for event {ev}")
        out[i] = pdf
    return out


def leaf_stats(stats, ctx, var_floor=0.01):
    """One Gaussian per pdf of ``ctx`` from the tree stats, to initialise the GMMs.

    Returns (counts (L,), means (L, D), variances (L, D)), float64, L = ctx.num_pdfs. Pdfs
    without data get the global mean and variance (and count 0), as Kaldi's gmm-init-model.
    """
    leaves = map_events(ctx, stats.events)
    num = ctx.num_pdfs
    counts = np.bincount(leaves, weights=stats.counts, minlength=num)
    sums = np.zeros((num, stats.dim))
    sumsq = np.zeros((num, stats.dim))
    np.add.at(sums, leaves, stats.sums)
    np.add.at(sumsq, leaves, stats.sumsq)
    tot = max(counts.sum(), 1e-10)
    gmean = sums.sum(0) / tot
    gvar = np.maximum(sumsq.sum(0) / tot - gmean ** 2, var_floor)
    safe = np.maximum(counts, 1e-10)[:, None]
    means = np.where(counts[:, None] > 0, sums / safe, gmean)
    variances = np.where(counts[:, None] > 0,
                         np.maximum(sumsq / safe - means ** 2, var_floor), gvar)
    return counts, means, variances
