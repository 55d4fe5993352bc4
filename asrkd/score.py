"""Word error rate scoring (Kaldi's compute-wer / sclite-style alignment via kaldialign).

Deviation from Kaldi's score.sh: no LM-weight sweep (there are no lattices), and an utterance of
the reference without a hypothesis is scored as all deletions and listed, instead of failing.
"""

import json
import os
import sys

from asrkd.errors import UserError
from asrkd.table import atomic_path, read_table

EPS = "***"


def _read(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    try:
        return read_table(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def score(ref_text_path, hyp_path, out_dir):
    """Score hypotheses (``utt WORDS``) against reference text.

    Writes out_dir/{wer, errors, per_utt, hyp.txt, score.json, missing (if any)}; returns
    {"wer" (percent), "ins", "del", "sub", "words", "sents", "sent_errors", "missing"}.
    """
    import kaldialign

    ref = _read(ref_text_path, "reference")
    hyp = _read(hyp_path, "hypotheses")
    if not any(words.split() for words in ref.values()):
        # a WER over zero words would read "%WER 0.00", a perfect score of nothing
        raise UserError(f"reference {ref_text_path}: no words to score against "
                        f"({len(ref)} utterances)")
    extra = sorted(set(hyp) - set(ref))
    if extra:
        raise UserError(f"{hyp_path}: {len(extra)} hypotheses have no reference (first: "
                        f"{extra[0]}); wrong reference text?")
    missing = sorted(set(ref) - set(hyp))
    tot = {"ins": 0, "del": 0, "sub": 0}
    words = sent_err = 0
    per_utt, errors = [], []
    for u in sorted(ref):
        r = ref[u].split()
        h = hyp.get(u, "").split()
        ed = kaldialign.edit_distance(r, h)
        for k in tot:
            tot[k] += ed[k]
        words += len(r)
        sent_err += ed["total"] > 0
        per_utt.append(f"{u} {len(r)} {ed['sub']} {ed['del']} {ed['ins']} "
                       f"{'MISSING' if u in missing else ''}".rstrip())
        ali = kaldialign.align(r, h, EPS)
        rs, hs = [], []
        for a, b in ali:
            wdt = max(len(a), len(b))
            rs.append(a.ljust(wdt))
            hs.append(b.ljust(wdt))
        errors.append(f"{u} ref: {' '.join(rs)}".rstrip() + f"\n{u} hyp: {' '.join(hs)}".rstrip()
                      + "\n")
    n_err = tot["ins"] + tot["del"] + tot["sub"]
    wer = 100.0 * n_err / max(words, 1)
    res = {"wer": wer, "ins": tot["ins"], "del": tot["del"], "sub": tot["sub"], "words": words,
           "sents": len(ref), "sent_errors": int(sent_err), "missing": len(missing)}
    os.makedirs(out_dir, exist_ok=True)
    summary = (f"%WER {wer:.2f} [ {n_err} / {words}, {tot['ins']} ins, {tot['del']} del, "
               f"{tot['sub']} sub ]\n"
               f"%SER {100.0 * sent_err / max(len(ref), 1):.2f} [ {sent_err} / {len(ref)} ]\n"
               f"Scored {len(ref)} sentences, {len(missing)} without hypothesis "
               f"(counted as deletions).\n")
    _write(os.path.join(out_dir, "wer"), summary)
    _write(os.path.join(out_dir, "score.json"), json.dumps(res, indent=1) + "\n")
    _write(os.path.join(out_dir, "errors"), "".join(errors))
    _write(os.path.join(out_dir, "per_utt"),
           "# utt words sub del ins\n" + "\n".join(per_utt) + "\n")
    _write(os.path.join(out_dir, "hyp.txt"), "".join(f"{u} {hyp.get(u, '')}".rstrip() + "\n"
                                                    for u in sorted(ref)))
    if missing:
        _write(os.path.join(out_dir, "missing"), "".join(u + "\n" for u in missing))
        print(f"score: {len(missing)} of {len(ref)} utterances have no hypothesis "
              f"(counted as deletions), see {os.path.join(out_dir, 'missing')}", file=sys.stderr)
    return res


def _write(path, s):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(s)
