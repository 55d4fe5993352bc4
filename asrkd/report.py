"""The Table-1 report (Hinton, Vinyals & Dean 2015, table 1) for an experiment dir.

Input layout (relative to EXP_DIR; the recipe follows it, see ``SYSTEMS``)::

    mono/decode_test/                 GMM monophone          wer (frame_acc optional)
    tri/decode_test/                  GMM triphone           wer (frame_acc optional)
    teachers/model*/decode_test/      each single DNN        wer, frame_acc
    teachers/decode_test/             the ensemble           wer, frame_acc
    distill/decode_test/              distilled, same size   wer, frame_acc
    student_small_kd/decode_test/     small, distilled       wer, frame_acc
    student_small_hard/decode_test/   small, hard targets    wer, frame_acc
    frac_hard/decode_test/            optional (paper's table 5): trained on a fraction of the
    frac_kd/decode_test/              data (--train-fraction) on hard / soft targets
    timings.tsv                       optional: `stage seconds` or `n<TAB>name<TAB>seconds`

Other test sets follow the same layout with ``decode_<name>`` (e.g. decode_test_clean); every
``decode_*`` name found except ``dev*`` gets its own table (``test`` first), or pass the names.

- WER: the ``%WER x`` line of the Kaldi-style ``wer`` summary that ``asrkd.score.score()``
  writes into the decode dir. If a ``score.json`` (the dict score() returns) is there, it wins:
  100 * (ins + del + sub) / words from its counts, else its ``wer`` (a percentage).
- ``frame_acc`` holds one float: a fraction in [0, 1] (as ``asrkd.train.frame_accuracy``
  returns); values above 1 are read as percentages.
- Training curves come from ``train_log.csv`` in each decode dir's parent (the model's exp dir):
  column ``epoch`` (else the row number) and the first column whose name contains ``valid`` and
  ``acc``.
- A system whose decode dir is missing is listed as missing; nothing here crashes on a partial
  experiment.
- ``fill_frame_acc`` (``asrkd report EXP_DIR --data DATA --ali-dir ALI``) writes the missing
  ``frame_acc`` files of the DNN systems from their checkpoints: ``final.pt`` next to the decode
  dir, or for the ensemble ``teachers/model*/final.pt``; ALI is an alignment of the test set.
- Students' ``distill.json`` (temperature, alpha, train fraction, soft-target bytes per frame,
  transfer set) is shown under the table.

Outputs: EXP_DIR/results.md, results.json (same figures), results.png (frame accuracy and WER per
system), curves.png (validation frame accuracy per epoch).

Where we deviate from the paper's table: we add GMM rows and the small student rows, report the
single models as mean ± sample std over seeds plus the best one (best frame accuracy and best
WER are taken separately, so they may come from different seeds), and add "% of ensemble gain
recovered" = (system - mean single) / (ensemble - mean single), computed per column.
"""

import csv
import glob
import json
import math
import os
import re
from dataclasses import dataclass

from asrkd.errors import UserError
from asrkd.table import atomic_path


@dataclass(frozen=True)
class System:
    key: str
    label: str
    decode_dir: str  # relative to EXP_DIR
    kind: str  # "gmm" | "single" | "ensemble" | "student" | "fraction"
    optional: bool = False  # left out of the table (not shown as missing) when absent


SINGLES_GLOB = "teachers/model*/decode_test"

SYSTEMS = (
    System("mono", "GMM monophone", "mono/decode_test", "gmm"),
    System("tri", "GMM triphone", "tri/decode_test", "gmm"),
    System("single", "single DNN", SINGLES_GLOB, "single"),
    System("ensemble", "DNN ensemble", "teachers/decode_test", "ensemble"),
    System("distill", "distilled DNN (same size)", "distill/decode_test", "student"),
    System("student_small_kd", "small DNN, distilled", "student_small_kd/decode_test", "student"),
    System("student_small_hard", "small DNN, hard targets only",
           "student_small_hard/decode_test", "student"),
    System("frac_hard", "DNN on a data fraction, hard targets", "frac_hard/decode_test",
           "fraction", optional=True),
    System("frac_kd", "DNN on a data fraction, soft targets", "frac_kd/decode_test", "fraction",
           optional=True),
)


# ---------------------------------------------------------------------------------------------
# Reading


def read_wer(decode_dir):
    """WER in percent from decode_dir/score.json (or its `wer` summary); None if absent."""
    path = os.path.join(decode_dir, "score.json")
    if os.path.isfile(path):
        with open(path) as f:
            s = json.load(f)
        if all(k in s for k in ("ins", "del", "sub", "words")) and s["words"]:
            return 100.0 * (s["ins"] + s["del"] + s["sub"]) / s["words"]
        if "wer" in s:
            return float(s["wer"])
        raise UserError(f"{path}: no wer and no error counts")
    path = os.path.join(decode_dir, "wer")
    if os.path.isfile(path):
        with open(path) as f:
            m = re.search(r"%WER\s+([0-9.]+)", f.read())
        if not m:
            raise UserError(f"{path}: no '%WER x' line")
        return float(m.group(1))
    return None


def read_frame_acc(decode_dir):
    """Frame accuracy in percent from decode_dir/frame_acc; None if absent."""
    path = os.path.join(decode_dir, "frame_acc")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read().split()
    try:
        v = float(text[0])
    except (IndexError, ValueError):
        raise UserError(f"{path}: expected one number") from None
    return 100.0 * v if v <= 1.0 else v


def read_curve(model_dir):
    """(epochs, valid frame acc in percent) from model_dir/train_log.csv; None if absent."""
    path = os.path.join(model_dir, "train_log.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    cols = list(rows[0])
    acc = next((c for c in cols if "valid" in c.lower() and "acc" in c.lower()), None)
    if acc is None:
        return None
    epochs, accs = [], []
    for i, r in enumerate(rows, 1):
        try:
            a = float(r[acc])
        except (TypeError, ValueError):
            continue
        epochs.append(float(r["epoch"]) if r.get("epoch") not in (None, "") else i)
        accs.append(100.0 * a if a <= 1.0 else a)
    return epochs, accs


def read_timings(path):
    """[(stage, seconds)] from a timings.tsv; [] if absent."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            try:
                secs = float(fields[-1])
            except ValueError:
                raise UserError(f"{path}: bad line {line!r} (want `stage seconds`)") from None
            out.append((" ".join(fields[:-1]).strip() or "?", secs))
    return out


def count_params(model_dir):
    """Number of parameters of model_dir/final.pt (via asrkd.models.load_model); None if absent."""
    path = os.path.join(model_dir, "final.pt")
    if not os.path.isfile(path):
        return None
    try:
        from asrkd.models import load_model

        return sum(p.numel() for p in load_model(path).parameters())
    except Exception:  # noqa: BLE001 - the report must not fail on an odd checkpoint
        return None


def model_checkpoints(exp_dir, system):
    """Checkpoint paths behind a DNN system's scores ([] for GMMs or when not trained yet)."""
    if system.kind == "gmm":
        return []
    model_dir = os.path.dirname(os.path.join(exp_dir, system.decode_dir))
    if system.kind == "ensemble":
        return sorted(glob.glob(os.path.join(model_dir, "model*", "final.pt")))
    path = os.path.join(model_dir, "final.pt")
    return [path] if os.path.isfile(path) else []


def fill_frame_acc(exp_dir, data_dir, ali_dir, test_set="test", recompute=False):
    """Write decode_dir/frame_acc (a fraction) for every trained DNN system lacking one.

    Returns {decode dir (relative): frame accuracy} of what was computed.
    """
    from asrkd.train import frame_accuracy

    todo = []
    for s in SYSTEMS:
        if s.kind == "single":
            model_glob = os.path.join(exp_dir, os.path.dirname(s.decode_dir), "final.pt")
            for ckpt in sorted(glob.glob(model_glob)):
                decode = os.path.join(os.path.dirname(ckpt), "decode_" + test_set)
                todo.append((os.path.relpath(decode, exp_dir), [ckpt]))
        else:
            todo.append((decode_dir(s, test_set), model_checkpoints(exp_dir, s)))
    done = {}
    for rel, ckpts in todo:
        out = os.path.join(exp_dir, rel, "frame_acc")
        if not ckpts or (os.path.isfile(out) and not recompute):
            continue
        acc = frame_accuracy(ckpts if len(ckpts) > 1 else ckpts[0], data_dir, ali_dir)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with atomic_path(out) as tmp, open(tmp, "w") as f:
            f.write(f"{acc:.6f}\n")
        done[rel] = acc
        print(f"{rel}: frame accuracy {100 * acc:.2f}%")
    return done


def read_distill_info(model_dir):
    """Settings of a distilled student (model_dir/distill.json); None if absent."""
    path = os.path.join(model_dir, "distill.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        d = json.load(f)
    meta = d.get("soft_meta") or {}
    return {k: v for k, v in {
        "temperature": d.get("temperature"), "alpha": d.get("alpha"),
        "train_fraction": d.get("train_fraction"), "combine": meta.get("combine", d.get("combine")),
        "topk": meta.get("topk", d.get("topk")), "bytes_per_frame": meta.get("bytes_per_frame"),
        "dense_bytes_per_frame": meta.get("dense_bytes_per_frame"),
        "on_the_fly": "teachers" in d and "soft_dir" not in d,
        "transfer_utts": d.get("transfer_utts"), "transfer_frames": d.get("transfer_frames"),
    }.items() if v is not None}


def _measure(exp_dir, rel):
    d = os.path.join(exp_dir, rel)
    model_dir = os.path.dirname(d)
    return {
        "decode_dir": rel,
        "present": os.path.isdir(d),
        "frame_acc": read_frame_acc(d),
        "wer": read_wer(d),
        "params": count_params(model_dir),
        "curve": read_curve(model_dir),
    }


# ---------------------------------------------------------------------------------------------
# Table


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def gain_recovered(value, single_mean, ensemble):
    """Percent of the ensemble's gain over the mean single model that ``value`` recovers."""
    if value is None or single_mean is None or ensemble is None:
        return None
    if abs(ensemble - single_mean) < 1e-9:
        return None
    return 100.0 * (value - single_mean) / (ensemble - single_mean)


def decode_dir(system, test_set="test"):
    """A system's decode dir (relative to EXP_DIR) for a test set: ``.../decode_<test_set>``."""
    return os.path.join(os.path.dirname(system.decode_dir), "decode_" + test_set)


def find_test_sets(exp_dir):
    """Test sets decoded anywhere in the layout (decode_* dirs, dev* excluded); ["test"] if none."""
    names = set()
    for s in SYSTEMS:
        for d in glob.glob(os.path.join(exp_dir, decode_dir(s, "*"))):
            name = os.path.basename(d)[len("decode_"):]
            if os.path.isdir(d) and not name.startswith("dev"):
                names.add(name)
    return sorted(names, key=lambda n: (n != "test", n)) or ["test"]


def collect(exp_dir, test_set="test"):
    """All figures of the report for one test set as a dict (what results.json holds)."""
    if not os.path.isdir(exp_dir):
        raise UserError(f"{exp_dir}: not a directory")
    rows, singles = [], []
    for s in SYSTEMS:
        if s.kind == "single":
            # natural order: model2 before model10
            dirs = sorted(glob.glob(os.path.join(exp_dir, decode_dir(s, test_set))),
                          key=lambda d: [int(t) if t.isdigit() else t
                                         for t in re.split(r"(\d+)", d)])
            for d in dirs:
                m = _measure(exp_dir, os.path.relpath(d, exp_dir))
                m["name"] = os.path.basename(os.path.dirname(d))
                singles.append(m)
            acc_m, acc_s = _mean_std([m["frame_acc"] for m in singles])
            wer_m, wer_s = _mean_std([m["wer"] for m in singles])
            accs = [m["frame_acc"] for m in singles if m["frame_acc"] is not None]
            wers = [m["wer"] for m in singles if m["wer"] is not None]
            rows.append({
                "key": "single_mean", "label": f"{s.label}, mean ± std", "kind": "single",
                "n": len(singles), "present": bool(singles),
                "frame_acc": acc_m, "frame_acc_std": acc_s, "wer": wer_m, "wer_std": wer_s,
                "params": next((m["params"] for m in singles if m["params"]), None),
            })
            rows.append({
                "key": "single_best", "label": f"{s.label}, best", "kind": "single",
                "n": len(singles), "present": bool(singles),
                "frame_acc": max(accs) if accs else None, "wer": min(wers) if wers else None,
                "params": rows[-1]["params"],
            })
            continue
        m = _measure(exp_dir, decode_dir(s, test_set))
        m.pop("curve")
        if s.optional and not m["present"]:
            continue
        if s.kind in ("student", "fraction"):
            m["distill"] = read_distill_info(os.path.dirname(os.path.join(exp_dir, s.decode_dir)))
        rows.append({"key": s.key, "label": s.label, "kind": s.kind, **m})
    by_key = {r["key"]: r for r in rows}
    ens = by_key["ensemble"]
    if singles and ens["present"]:
        ens["label"] = f"{len(singles)}x {ens['label']}"
    mean = by_key["single_mean"]
    for r in rows:
        if r["kind"] == "student":
            r["gain_frame_acc"] = gain_recovered(r["frame_acc"], mean["frame_acc"],
                                                 ens["frame_acc"])
            r["gain_wer"] = gain_recovered(r["wer"], mean["wer"], ens["wer"])
    timings = read_timings(os.path.join(exp_dir, "timings.tsv"))
    curves = {m["name"]: m["curve"] for m in singles if m["curve"]}
    for s in SYSTEMS:
        if s.kind in ("student", "fraction"):
            c = read_curve(os.path.dirname(os.path.join(exp_dir, s.decode_dir)))
            if c:
                curves[s.key] = c
    return {
        "exp_dir": os.path.abspath(exp_dir),
        "test_set": test_set,
        "systems": rows,
        "singles": [{k: v for k, v in m.items() if k != "curve"} for m in singles],
        "curves": {k: {"epoch": e, "valid_frame_acc": a} for k, (e, a) in curves.items()},
        "timings": [{"stage": n, "seconds": t} for n, t in timings],
        "total_seconds": sum(t for _, t in timings) if timings else None,
    }


def _fmt(v, std=None, digits=2):
    if v is None:
        return "-"
    return f"{v:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{v:.{digits}f}"


def _fmt_pct(v):
    return "-" if v is None else f"{v:.1f}%"


def _fmt_params(n):
    if not n:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def render_markdown(results, charts):
    """results: one collect() dict per test set; charts: {test set: PNG file name}."""
    res = results[0]
    lines = [
        "# Results: knowledge distillation of a DNN-HMM ensemble",
        "",
        f"Experiment: `{res['exp_dir']}`. Frame accuracy is on the forced-alignment pdf targets "
        "of the test set. Gain recovered = (system - mean single) / (ensemble - mean single).",
    ]
    for r in results:
        lines += _render_test_set(r, charts[r["test_set"]])
    notes = []
    for r in res["systems"]:
        d = r.get("distill")
        if not d:
            continue
        parts = [f"T = {d['temperature']:g}" if "temperature" in d else None,
                 f"alpha = {d['alpha']:g}" if "alpha" in d else None,
                 f"{d['combine']} combination" if "combine" in d else None,
                 f"trained on {100 * d['train_fraction']:g}% of the data"
                 if d.get("train_fraction", 1) < 1 else None,
                 "teachers run on the fly" if d.get("on_the_fly") else None,
                 f"transfer set: {d['transfer_utts']} unlabeled utterances "
                 f"({d['transfer_frames'] / 360000:.2f} h at 10 ms frames, soft targets only)"
                 if d.get("transfer_utts") else None]
        if "bytes_per_frame" in d:
            parts.append(f"top-{d['topk']} soft targets, {d['bytes_per_frame']} bytes/frame "
                         f"(dense float32: {d['dense_bytes_per_frame']})")
        notes.append(f"- {r['label']}: " + ", ".join(p for p in parts if p))
    if notes:
        lines += ["", "Distillation settings:", ""] + notes
    if res["curves"]:
        lines += ["", "![validation frame accuracy per epoch](curves.png)"]
    if res["timings"]:
        lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---:|"]
        for t in res["timings"]:
            lines.append(f"| {t['stage']} | {t['seconds']:.1f} |")
        total = res["total_seconds"]
        lines.append(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def _render_test_set(res, chart):
    lines = [
        "",
        f"## Test set `{res['test_set']}`",
        "",
        "| system | params | frame acc % | WER % | gain recovered (acc) | gain recovered (WER) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["systems"]:
        if not r["present"]:
            lines.append(f"| {r['label']} | missing | - | - | - | - |")
            continue
        acc = _fmt(r["frame_acc"], r.get("frame_acc_std"))
        wer = _fmt(r["wer"], r.get("wer_std"))
        g_acc, g_wer = (_fmt_pct(r.get("gain_frame_acc")), _fmt_pct(r.get("gain_wer"))) \
            if r["kind"] == "student" else ("", "")
        lines.append(f"| {r['label']} | {_fmt_params(r['params'])} | {acc} | {wer} "
                     f"| {g_acc} | {g_wer} |")
    if res["singles"]:
        lines += ["", "Single models:", "", "| model | frame acc % | WER % |", "|---|---:|---:|"]
        for m in res["singles"]:
            lines.append(f"| {m['name']} | {_fmt(m['frame_acc'])} | {_fmt(m['wer'])} |")
    lines += ["", f"![frame accuracy and WER per system]({chart})"]
    return lines


def plot_systems(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["systems"] if r["present"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, title in ((axes[0], "frame_acc", f"{res['test_set']}: frame accuracy (%)"),
                           (axes[1], "wer", f"{res['test_set']}: WER (%)")):
        sel = [r for r in rows if r[key] is not None]
        labels = [r["label"] for r in sel]
        vals = [r[key] for r in sel]
        errs = [r.get(key + "_std") or 0.0 for r in sel]
        colors = [{"gmm": "0.6", "single": "tab:blue", "ensemble": "tab:green",
                   "student": "tab:orange", "fraction": "tab:purple"}[r["kind"]] for r in sel]
        ax.barh(range(len(sel)), vals, xerr=errs, color=colors)
        ax.set_yticks(range(len(sel)), labels)
        ax.invert_yaxis()
        ax.set_title(title)
        if vals:
            lo = min(v - e for v, e in zip(vals, errs))
            hi = max(v + e for v, e in zip(vals, errs))
            pad = max(0.5, 0.15 * (hi - lo))
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
            for i, v in enumerate(vals):
                ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_curves(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    teacher_labelled = False
    student_colors = iter(["tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:olive"] * 4)
    for name, c in sorted(res["curves"].items()):
        if name.startswith("model"):
            ax.plot(c["epoch"], c["valid_frame_acc"], color="tab:blue", alpha=0.4, lw=1,
                    label=None if teacher_labelled else "single DNNs (teachers)")
            teacher_labelled = True
        else:
            ax.plot(c["epoch"], c["valid_frame_acc"], lw=2, marker="o", ms=3, label=name,
                    color=next(student_colors))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation frame accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _savefig(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_report(exp_dir, test_sets=None):
    """Write EXP_DIR/results.{md,json,png} (+ curves.png); return the collected figures.

    ``test_sets``: names of the decode_<name> dirs to report (default: all found, ``test``
    first). The first one's figures are the top level of results.json and results.png; every
    set's figures are under ``by_test_set`` (charts ``results_<name>.png`` for the others).
    """
    sets = list(test_sets) if test_sets else find_test_sets(exp_dir)
    results = [collect(exp_dir, t) for t in sets]
    charts = {t: "results.png" if i == 0 else f"results_{t}.png" for i, t in enumerate(sets)}
    for r in results:
        plot_systems(r, os.path.join(exp_dir, charts[r["test_set"]]))
    res = dict(results[0])
    if res["curves"]:
        plot_curves(res, os.path.join(exp_dir, "curves.png"))
    res["by_test_set"] = {r["test_set"]: {"systems": r["systems"], "singles": r["singles"]}
                          for r in results}
    with atomic_path(os.path.join(exp_dir, "results.json")) as tmp, open(tmp, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    md = render_markdown(results, charts)
    with atomic_path(os.path.join(exp_dir, "results.md")) as tmp, open(tmp, "w") as f:
        f.write(md)
    return res
