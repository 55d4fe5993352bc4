"""Scores of acoustic models: word error rate and frame accuracy.

Word error rate (Kaldi's compute-wer / sclite-style alignment via kaldialign): ``score``.
Deviation from Kaldi's score.sh: no LM-weight sweep (there are no lattices), and an utterance of
the reference without a hypothesis is scored as all deletions and listed, instead of failing.

Frame accuracy against alignments (a forward pass, no decoding): ``frame_accuracy`` and its files
``frame_acc``/``frame_acc_per_utt`` (``write_frame_accuracy``), as a decode dir holds them, and
``frame_acc_unscored``: the utterances without an alignment (e.g. whose forced alignment failed),
which the fraction leaves out, counted and listed rather than dropped unseen; the
utterance lists a score can be restricted to (``write_utt_list``/``read_utt_list``, e.g. the
``train_utts`` a training run saw).
"""

import json
import os
import sys
from collections.abc import Mapping

import numpy as np
import torch

from asrkd.alignment import AlignmentDir
from asrkd.data import DataDir
from asrkd.errors import UserError
from asrkd.features import FeatureReader
from asrkd.ensemble import Scorer
from asrkd.models import load_model
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


# --------------------------------------------------------------------------------------------
# Frame accuracy


def frame_accuracy(model_or_scorer, data_dir, ali_dir, per_utt=False, utts=None, unscored=None):
    """Fraction of aligned frames whose argmax posterior is the aligned pdf.

    Accepts a model (nn.Module), checkpoint path(s) (an ensemble: mean of posteriors), or a
    scorer from ``make_scorer`` (its posteriors are used, not the prior-divided scores); any
    other callable ``utt -> (T, P)`` is taken as is; a mapping ``utt -> (T,)`` gives the best pdf
    of each frame already found (a decode's: asrkd.decode, keep_best). With ``per_utt`` returns
    ``(fraction, {utt: (correct, frames)})``, what a speaker bootstrap resamples. ``utts``:
    only these utterances of data_dir (e.g. a model's ``train_utts``); UserError if one is not
    in data_dir. Utterances without an alignment in ali_dir are not scored: their number is
    logged and, given a list ``unscored``, their ids appended to it.
    """
    ali = AlignmentDir(ali_dir).check()
    pdf_scp, num_pdfs = ali.pdf_scp, ali.num_pdfs
    scorer = model_or_scorer
    if isinstance(scorer, (str, os.PathLike)):
        scorer = [scorer]
    if isinstance(scorer, (list, tuple)):
        scorer = [load_model(p) for p in scorer]
    elif isinstance(scorer, torch.nn.Module):
        scorer = [scorer.cpu().eval()]
    if isinstance(scorer, list):
        scorer = Scorer(scorer, FeatureReader(data_dir, cmvn=scorer[0].config.cmvn))
    if isinstance(scorer, Mapping):  # best pdfs already found
        def best(utt):
            if utt not in scorer:
                raise UserError(f"{utt}: no best pdfs given for it")
            return np.asarray(scorer[utt])
    else:
        score = scorer.log_posteriors if isinstance(scorer, Scorer) else scorer

        def best(utt):
            s = np.asarray(score(utt))
            if s.shape[1] != num_pdfs:
                # e.g. a monophone GMM against triphone alignments: different pdf sets
                raise UserError(f"the model scores {s.shape[1]} pdfs but {ali_dir} has "
                                f"{num_pdfs}: frame accuracy needs alignments of the model's "
                                "own tree")
            return s.argmax(-1)
    correct = total = 0
    counts = {}
    todo = DataDir(data_dir).utts
    if utts is not None:
        missing = sorted(set(utts) - set(todo))
        if missing:
            raise UserError(f"{data_dir}: no utterance {missing[0]} (of {len(missing)} asked "
                            "for)")
        wanted = set(utts)
        todo = [u for u in todo if u in wanted]
    skipped = [u for u in todo if u not in pdf_scp]
    if skipped:
        print(f"frame accuracy: {len(skipped)} of {len(todo)} utterances of {data_dir} have no "
              f"alignment in {ali_dir} (e.g. {skipped[0]}): not scored", file=sys.stderr)
        if unscored is not None:
            unscored.extend(skipped)
    for utt in todo:
        if utt not in pdf_scp:
            continue
        y = np.asarray(pdf_scp[utt])
        b = best(utt)
        if b.shape[0] != y.shape[0]:
            raise UserError(f"{utt}: {b.shape[0]} scored frames but {y.shape[0]} aligned")
        counts[utt] = (int((b == y).sum()), len(y))
        correct += counts[utt][0]
        total += len(y)
    if total == 0:
        raise UserError(f"{ali_dir}: no aligned utterance of {data_dir}")
    return (correct / total, counts) if per_utt else correct / total


def write_utt_list(path, utts):
    """One utterance id per line."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(f"{u}\n" for u in utts)


def read_utt_list(path):
    """Utterance ids of a file with one per line (the first field of each line)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such utterance list")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip() and not line.startswith("#")]


def write_frame_accuracy(out_dir, acc, counts, unscored=()):
    """out_dir/frame_acc (the fraction), frame_acc_per_utt (``utt correct frames`` lines) and
    frame_acc_unscored (the utterances not in the fraction: no alignment; a count line, then
    one id a line)."""
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, "frame_acc_unscored")) as tmp, open(tmp, "w") as f:
        f.write(f"# {len(unscored)} utterances without alignment, not in frame_acc\n")
        f.writelines(f"{u}\n" for u in unscored)
    with atomic_path(os.path.join(out_dir, "frame_acc_per_utt")) as tmp, open(tmp, "w") as f:
        f.write("# utt correct frames\n")
        f.writelines(f"{u} {c} {n}\n" for u, (c, n) in sorted(counts.items()))
    with atomic_path(os.path.join(out_dir, "frame_acc")) as tmp, open(tmp, "w") as f:
        f.write(f"{acc:.6f}\n")
