"""A decode dir's lattices (``decode --write-lattices``): n-best lists, CTM, LM rescoring.

Kaldi's lattice-to-nbest, lattice-to-ctm-conf and n-best LM rescoring, over the lattices
asrkd.lattice writes. Each reads DECODE_DIR/lat.*.gz and the graph dir's words.txt (and
final.mdl for phones); the acoustic scale defaults to the one the decode chose
(DECODE_DIR/acwt).

LM rescoring replaces, on each of an utterance's n best word sequences, the decode LM's cost
by a new LM's: graph cost - old LM cost + new LM cost (the rest of the graph cost, lexicon and
HMM transitions, stays), then keeps the best sequence. With the old LM as the new one, the
1-best is unchanged.
"""

import glob
import math
import os
import sys

from tqdm import tqdm

from asrkd import gmm, lattice
from asrkd.errors import UserError
from asrkd.lang import read_symbols
from asrkd.lm import NgramLM
from asrkd.table import atomic_path, write_table

LN10 = math.log(10.0)


def lattice_files(decode_dir):
    files = sorted(glob.glob(os.path.join(decode_dir, "lat.*.gz")),
                   key=lambda p: int(p.split(".")[-2]) if p.split(".")[-2].isdigit() else 0)
    if not files:
        raise UserError(f"{decode_dir}: no lat.*.gz (decode with --write-lattices)")
    return files


def read_lattices(decode_dir, desc=None):
    """Yields (utt, Lattice) of every lattice file of decode_dir, in order; ``desc``: show a
    progress bar on stderr (the total from the decode's hyp.txt)."""
    hyp = os.path.join(decode_dir, "hyp.txt")
    total = None
    if desc and os.path.isfile(hyp):
        with open(hyp) as f:
            total = sum(1 for _ in f)
    with tqdm(total=total, desc=desc, unit="utt", file=sys.stderr,
              disable=None if desc else True) as bar:
        for path in lattice_files(decode_dir):
            with lattice.open_lattice_ark(path) as f:
                for item in lattice.read_kaldi_text(f):
                    yield item
                    bar.update(1)


def _acwt(decode_dir, acwt):
    if acwt is not None:
        return acwt
    path = os.path.join(decode_dir, "acwt")
    if not os.path.isfile(path):
        raise UserError(f"{decode_dir}: no acwt file; pass --acwt")
    with open(path) as f:
        return float(f.read().split()[0])


def _words(graph_dir):
    return {i: w for w, i in read_symbols(os.path.join(graph_dir, "words.txt")).items()}


def nbest(graph_dir, decode_dir, out, n=10, acwt=None, lmwt=1.0):
    """`asrkd lattice-nbest`: per utterance its n best word sequences, one line each:
    ``utt-K graph_cost acoustic_cost words`` (K from 1, costs unscaled, Kaldi's n-best keys)."""
    acwt, words = _acwt(decode_dir, acwt), _words(graph_dir)
    count = 0
    for utt, lat in read_lattices(decode_dir, "lattice-nbest"):
        for k, (seq, _, g, a) in enumerate(lat.nbest(n, acwt, lmwt), 1):
            out.write(f"{utt}-{k} {g:.4f} {a:.4f} {' '.join(words[i] for i in seq)}\n")
        count += 1
    print(f"lattice-nbest: {count} lattices, up to {n} sequences each (acwt {acwt:g})",
          file=sys.stderr)


def ctm(graph_dir, decode_dir, out, acwt=None, lmwt=1.0, frame_shift=0.01):
    """`asrkd lattice-ctm`: the best path's words with times and confidences, Kaldi's CTM
    (``utt 1 start duration word confidence``); silence (SIL) is not part of a word."""
    acwt, words = _acwt(decode_dir, acwt), _words(graph_dir)
    tm = gmm.load_gmm(graph_dir).tm
    path = os.path.join(graph_dir, "phones.txt")
    phones = read_symbols(path) if os.path.isfile(path) else {}
    silence = {phones[p] for p in ("SIL", "sil") if p in phones}
    if not silence:
        print(f"lattice-ctm: no SIL in {path}: silence after a word counts as the word's",
              file=sys.stderr)
    for utt, lat in read_lattices(decode_dir, "lattice-ctm"):
        for w, start, dur, conf in lat.ctm(acwt, lmwt, tm.transition_id_to_phone, silence,
                                           frame_shift):
            out.write(f"{utt} 1 {start:.2f} {dur:.2f} {words[w]} {conf:.3f}\n")


def lm_cost(lm, words, unk="<UNK>"):
    """-ln p(words </s> | <s>) under ``lm`` (as G.fst scores a sentence); a word the LM lacks
    is scored as ``unk``."""
    hist, cost = ["<s>"], 0.0
    for w in list(words) + ["</s>"]:
        p = lm.score_word(hist, w)
        if p is None and unk in lm.vocab:
            p = lm.score_word(hist, unk)
        if p is None:
            raise UserError(f"the LM has no '{w}' and no {unk}")
        cost -= p * LN10
        hist.append(w)
    return cost


def lm_rescore(graph_dir, decode_dir, old_arpa, new_arpa, out_dir, n=100, acwt=None,
               lmwt=1.0, ref_text=None):
    """`asrkd lm-rescore`: each utterance's n best sequences rescored with ``new_arpa`` in place
    of ``old_arpa`` (the LM the graph was built with); out_dir/hyp.txt (scored against
    ``ref_text`` when given). Returns {"changed": utterances whose words changed, "utts",
    "wer" (or None)}."""
    from asrkd.score import score

    acwt, words = _acwt(decode_dir, acwt), _words(graph_dir)
    old, new = NgramLM.read_arpa(old_arpa), NgramLM.read_arpa(new_arpa)
    hyps, changed = {}, 0
    for utt, lat in read_lattices(decode_dir, "lm-rescore"):
        best, best_cost, first = None, math.inf, None
        for seq, _, g, a in lat.nbest(n, acwt, lmwt):
            text = [words[i] for i in seq]
            c = lmwt * (g - lm_cost(old, text) + lm_cost(new, text)) + acwt * a
            first = text if first is None else first
            if c < best_cost:
                best, best_cost = text, c
        hyps[utt] = " ".join(best or [])
        changed += best != first
    os.makedirs(out_dir, exist_ok=True)
    write_table(os.path.join(out_dir, "hyp.txt"), hyps)
    with atomic_path(os.path.join(out_dir, "acwt")) as tmp, open(tmp, "w") as f:
        f.write(f"{acwt:g}\n")
    res = {"changed": changed, "utts": len(hyps), "wer": None}
    if ref_text is not None:
        res["wer"] = score(ref_text, os.path.join(out_dir, "hyp.txt"), out_dir)
    print(f"lm-rescore: {len(hyps)} utterances, {changed} changed by {new_arpa}"
          + (f"; %WER {res['wer']['wer']:.2f}" if res["wer"] else ""), file=sys.stderr)
    return res
