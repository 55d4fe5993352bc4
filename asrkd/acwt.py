"""The acoustic scale of a decode, chosen on dev (Kaldi's score.sh sweep of LM weights).

A grid decode (asrkd.decode) scores every value of its grid, and of the grid widened past an
edge, off one search's lattices: decode_dir/acwt_<v>/ (hyp.txt, wer, per_utt ...) and
decode_dir/acwt_values ("value WER errors words"). Here a value is chosen from dev decodes
(``choose_acwt``: the least word errors, of one system or summed over several) and made a decode
dir's own (``apply_acwt``: its hyp.txt, wer, ... and acwt). Files and text only: no torch, so
that `asrkd choose-acwt` starts in a fraction of a second.
"""

import json
import os
import shutil

from asrkd.decodeconf import record_dev_decode
from asrkd.errors import UserError, reading
from asrkd.table import atomic_path


def fmt_acwt(a):
    return f"{a:g}"


MAX_WIDEN = 4  # grid values added beyond an edge before giving up (each is one more decode)


def widened(grid, best):
    """The next acoustic scale beyond ``best`` when it is an edge of ``grid`` (same ratio as the
    step to its neighbour: a geometric continuation), else None."""
    g = sorted(grid)
    if best == g[0]:
        return g[0] * g[0] / g[1]
    if best == g[-1]:
        return g[-1] * g[-1] / g[-2]
    return None


def continuations(grid):
    """The values widening may try: MAX_WIDEN beyond each edge, each a step of the ratio of the
    edge to its neighbour (a geometric continuation)."""
    g = sorted(grid)
    if len(g) < 2:
        return []
    lo, hi = g[0] / g[1], g[-1] / g[-2]
    return [g[0] * lo ** k for k in range(1, MAX_WIDEN + 1)] + [
        g[-1] * hi ** k for k in range(1, MAX_WIDEN + 1)]


def write_values(decode_dir, values, results):
    """decode_dir/acwt_values: "value WER errors words" for each scored value (what
    choose_acwt reads)."""
    with atomic_path(os.path.join(decode_dir, "acwt_values")) as tmp, open(tmp, "w") as f:
        f.writelines(f"{fmt_acwt(a)} {results[a]['wer']:.4f} "
                     f"{results[a]['ins'] + results[a]['del'] + results[a]['sub']} "
                     f"{results[a]['words']}\n" for a in values)


def write_choice(out_dir, best, wers, edge):
    """best_acwt, acwt_wers ("value WER" per value) and acwt_edge ("edge" or "inside")."""
    with atomic_path(os.path.join(out_dir, "best_acwt")) as tmp, open(tmp, "w") as f:
        f.write(f"{fmt_acwt(best)}\n")
    with atomic_path(os.path.join(out_dir, "acwt_wers")) as tmp, open(tmp, "w") as f:
        f.writelines(f"{fmt_acwt(a)} {wers[a]:.2f}\n" for a in sorted(wers))
    with atomic_path(os.path.join(out_dir, "acwt_edge")) as tmp, open(tmp, "w") as f:
        f.write("edge\n" if edge else "inside\n")


def best_of_grid(grid, results):
    """The grid value of lowest WER; ties go to the value nearest 0.1 (Kaldi's usual scale)."""
    return min(grid, key=lambda a: (results[a]["wer"], abs(a - 0.1)))


def read_best_acwt(decode_dir):
    path = os.path.join(decode_dir, "best_acwt")
    if not os.path.isfile(path):
        raise UserError(f"{decode_dir}: no best_acwt (decode the dev set with a grid first)")
    with open(path) as f:
        return float(f.read().split()[0])


CHOICE_FILES = ("hyp.txt", "wer", "errors", "per_utt", "score.json", "missing", "acwt",
                "acwt_from", "best_acwt", "acwt_wers", "acwt_edge")


def clear_choice(decode_dir, keep=()):
    """Remove what an earlier choice of scale left in decode_dir (its hyp.txt, scores, acwt)."""
    for name in CHOICE_FILES:
        if name in keep:
            continue
        p = os.path.join(decode_dir, name)
        if os.path.isfile(p):
            os.unlink(p)


def read_acwt_values(decode_dir):
    """{acwt: (errors, words)} of a ``grid_only`` decode (decode_dir/acwt_values)."""
    path = os.path.join(decode_dir, "acwt_values")
    if not os.path.isfile(path):
        raise UserError(f"{decode_dir}: no acwt_values (decode it with --grid-only and its "
                        "reference text)")
    out = {}
    with reading(path, "not a list of 'value WER errors words' lines"):
        with open(path) as f:
            for line in f:
                if line.strip():
                    v, _, err, words = line.split()
                    out[float(v)] = (int(err), int(words))
    return out


def choose_acwt(out_dir, dev_dirs):
    """One acoustic scale for several systems: the value of lowest summed word errors over the
    ``grid_only`` dev decodes ``dev_dirs`` (ties: nearest 0.1), among the values every one of
    them scored. Writes out_dir/best_acwt, acwt_wers (pooled WER per value), acwt_edge ("edge"
    when the best is the lowest or highest value scored) and systems (the dev decode dirs).
    Returns {"acwt", "wers": {value: pooled WER}, "edge": bool}."""
    if not dev_dirs:
        raise UserError("choose-acwt: no dev decode dirs to choose from")
    tables = [read_acwt_values(d) for d in dev_dirs]
    common = sorted(set.intersection(*(set(t) for t in tables)))
    if not common:
        raise UserError("choose-acwt: the dev decodes share no acoustic scale (decode them "
                        "over the same grid)")
    errors = {a: sum(t[a][0] for t in tables) for a in common}
    words = {a: sum(t[a][1] for t in tables) for a in common}
    wers = {a: 100.0 * errors[a] / max(1, words[a]) for a in common}
    best = min(common, key=lambda a: (errors[a], abs(a - 0.1)))
    edge = best in (common[0], common[-1]) and len(set(errors.values())) > 1
    os.makedirs(out_dir, exist_ok=True)
    write_choice(out_dir, best, wers, edge)
    with atomic_path(os.path.join(out_dir, "systems")) as tmp, open(tmp, "w") as f:
        f.writelines(os.path.abspath(d) + "\n" for d in dev_dirs)
    return {"acwt": best, "wers": wers, "edge": edge}


def apply_acwt(acwt_dir, decode_dir, record=False):
    """Make ``acwt_dir``'s best_acwt (choose_acwt's, or a dev grid decode's) ``decode_dir``'s
    scale: a ``grid_only`` decode's acwt_<v>/ hypotheses and scores become decode_dir's
    hyp.txt, wer, per_utt ..., decode_dir/acwt the value and decode_dir/acwt_from the dir it
    came from. ``record`` (a dev set): the decoded model dir's decode.json (what `transcribe`
    uses) gets the value and the decoder's beams (decode_dir/decoder.json). Returns the value."""
    acwt = read_best_acwt(acwt_dir)
    src = os.path.join(decode_dir, f"acwt_{fmt_acwt(acwt)}")
    if not os.path.isfile(os.path.join(src, "hyp.txt")):
        raise UserError(f"{decode_dir}: no hypotheses at acoustic scale {fmt_acwt(acwt)} "
                        f"({src}/hyp.txt): decode it with --grid-only over the dev decodes' grid")
    own = os.path.abspath(acwt_dir) == os.path.abspath(decode_dir)  # a system's own dev choice
    clear_choice(decode_dir, keep=("best_acwt", "acwt_wers", "acwt_edge") if own else ())
    for name in os.listdir(src):
        if os.path.isfile(os.path.join(src, name)):
            with atomic_path(os.path.join(decode_dir, name)) as tmp:
                shutil.copyfile(os.path.join(src, name), tmp)
    with atomic_path(os.path.join(decode_dir, "acwt")) as tmp, open(tmp, "w") as f:
        f.write(f"{fmt_acwt(acwt)}\n")
    with atomic_path(os.path.join(decode_dir, "acwt_from")) as tmp, open(tmp, "w") as f:
        f.write(os.path.abspath(acwt_dir) + "\n")
    setup = os.path.join(decode_dir, "decoder.json")
    if record and os.path.isfile(setup):
        with reading(setup, "not the decoder's JSON record"):
            with open(setup) as f:
                d = json.load(f)
        if d.get("model"):
            record_dev_decode(d["model"], d["graph_dir"], decode_dir, acwt, d["beam"],
                              d["lattice_beam"], d["max_active"])
    return acwt
