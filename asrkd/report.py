"""The Table-1 report (Hinton, Vinyals & Dean 2015, table 1) for an experiment dir.

The report is told what it reports: a *systems manifest* (``EXP_DIR/systems.tsv``, written by the
recipe) lists one system per line, tab-separated::

    # key      kind      model               compare          label
    mono       gmm       mono                -                GMM monophone
    model1     single    teachers/model1     -                single DNN 1
    ensemble   ensemble  teachers            single           DNN ensemble
    control    control   control             single           same-size DNN, hard targets ...
    distill    student   distill             single,control   distilled DNN (same size)

- ``kind``: gmm | single | ensemble | student (distilled) | control (hard targets) | other.
  Rows of kind ``single`` are aggregated into "mean ± std" and "best" rows; ``single`` is also
  the key of their mean in ``compare``.
- ``model``: the system's dir (relative to EXP_DIR, or absolute); its scores are read from
  ``MODEL/decode_<test set>/``.
- ``compare``: keys this system is compared with (paired differences); for a ``student`` the
  first one is its own-size baseline, against which its share of the ensemble's gain is computed.

Per decode dir (``asrkd decode`` writes them): ``score.json`` / ``wer`` (WER), ``per_utt``
(per-utterance errors), ``frame_acc`` and ``frame_acc_per_utt`` (per-utterance correct frames),
``acwt`` (the acoustic scale used). Speakers come from ``DATA/<test set>/utt2spk`` (``--data``),
else from the utterance id's prefix up to the first ``-`` (the LibriSpeech convention).

Intervals (asrkd.bootstrap): per-speaker bootstrap, 95 % percentile intervals from a fixed
seed, the same draws for every system (paired). The mean single model is the mean of the singles
on each draw. "Gain recovered" = (system - its own-size baseline) / (ensemble - mean single), per
draw; for frame accuracy on every student row, for WER only where the ensemble's WER gain over
the mean single is itself significant (its interval excludes zero), and never for other rows.

A *train set* (``write_report(train_set=NAME)``, `asrkd report --train-set`) adds a "train frame
acc" column from ``MODEL/decode_<NAME>/`` (e.g. written by `asrkd frame-accuracy --utts` on the
utterances a model was trained on: the paper's table 5), bootstrapped over that set's speakers.

Outputs: EXP_DIR/results.md, results.json (same figures), results.png (frame accuracy and WER
per system with intervals), curves.png (validation frame accuracy per epoch).

Where we deviate from the paper's table: we add GMM rows, a control row and small students, and
report the single models as mean ± sample std over seeds plus the best one (best frame accuracy
and best WER are taken separately, so they may come from different seeds).
"""

import csv
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from asrkd.bootstrap import DEFAULT_RESAMPLES, SpeakerBootstrap, excludes_zero, interval
from asrkd.errors import UserError
from asrkd.table import atomic_path, read_table

KINDS = ("gmm", "single", "ensemble", "student", "control", "other")
MANIFEST = "systems.tsv"
METRICS = ("frame_acc", "wer")  # higher is better for frame_acc, lower for wer


@dataclass(frozen=True)
class System:
    key: str
    kind: str
    model: str  # relative to EXP_DIR or absolute
    compare: tuple = ()
    label: str = ""


# ---------------------------------------------------------------------------------------------
# Manifest


def read_manifest(path):
    """[System] from a systems.tsv (see the module docstring); UserError on a malformed line."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no systems manifest (the recipe writes one; see asrkd.report)")
    systems, keys = [], set()
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 4:
                raise UserError(f"{path}:{n}: want `key<TAB>kind<TAB>model<TAB>compare"
                                f"[<TAB>label]`, got {line!r}")
            key, kind, model, compare = (x.strip() for x in fields[:4])
            label = fields[4].strip() if len(fields) > 4 else key
            if kind not in KINDS:
                raise UserError(f"{path}:{n}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
            if key in keys or key == "single":
                raise UserError(f"{path}:{n}: key {key!r} is used twice (or reserved)")
            keys.add(key)
            comp = tuple(c for c in compare.split(",") if c and c != "-")
            systems.append(System(key, kind, model, comp, label))
    for s in systems:
        for c in s.compare:
            if c != "single" and c not in keys:
                raise UserError(f"{path}: {s.key} is compared with unknown system {c!r}")
    return systems


def write_manifest(path, systems):
    """Write [System] as a systems.tsv."""
    lines = ["# key\tkind\tmodel\tcompare\tlabel"]
    lines += [f"{s.key}\t{s.kind}\t{s.model}\t{','.join(s.compare) or '-'}\t{s.label}"
              for s in systems]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Reading a decode dir


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


def _read_counts(path, cols):
    """{utt: (num, den)} from a per-utterance file; None if absent."""
    if not os.path.isfile(path):
        return None
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.split()
            try:
                out[fields[0]] = cols(fields)
            except (IndexError, ValueError):
                raise UserError(f"{path}:{n}: malformed line {line.strip()!r}") from None
    return out


def read_per_utt(decode_dir, metric):
    """Per-utterance (num, den) of a metric: frame_acc (correct, frames) from
    frame_acc_per_utt, wer (sub + del + ins, words) from per_utt; None if absent."""
    if metric == "frame_acc":
        return _read_counts(os.path.join(decode_dir, "frame_acc_per_utt"),
                            lambda f: (int(f[1]), int(f[2])))
    return _read_counts(os.path.join(decode_dir, "per_utt"),
                        lambda f: (int(f[2]) + int(f[3]) + int(f[4]), int(f[1])))


def read_acwt(decode_dir):
    """The acoustic scale a decode dir was decoded with (its ``acwt`` file); None if absent."""
    path = os.path.join(decode_dir, "acwt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(f.read().split()[0])


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


def count_params(model_dir, kind):
    """Parameters of model_dir/final.pt (an ensemble: of all model*/final.pt); None if none."""
    import glob

    paths = (sorted(glob.glob(os.path.join(model_dir, "model*", "final.pt")))
             if kind == "ensemble" else [os.path.join(model_dir, "final.pt")])
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        return None
    try:
        from asrkd.models import load_model

        return sum(sum(p.numel() for p in load_model(path).parameters()) for path in paths)
    except Exception:  # noqa: BLE001 - the report must not fail on an odd checkpoint
        return None


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
        "kept_mass": (meta.get("kept_mass") or {}).get("mean"),
        "on_the_fly": "teachers" in d and "soft_dir" not in d,
        "transfer_utts": d.get("transfer_utts"), "transfer_frames": d.get("transfer_frames"),
    }.items() if v is not None}


def read_utt2spk(data_root, test_set, utts):
    """{utt: speaker}: DATA_ROOT/<test_set>/utt2spk when there is one, else the id's prefix."""
    if data_root:
        path = os.path.join(data_root, test_set, "utt2spk")
        if os.path.isfile(path):
            return read_table(path)
    return {u: u.split("-")[0] for u in utts}


# ---------------------------------------------------------------------------------------------
# Collecting one test set


def _model_dir(exp_dir, system):
    return system.model if os.path.isabs(system.model) else os.path.join(exp_dir, system.model)


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def _ci(samples):
    return list(interval(samples)) if samples is not None else None


def collect(exp_dir, systems, test_set="test", data_root=None, resamples=DEFAULT_RESAMPLES):
    """All figures of the report for one test set as a dict (what results.json holds)."""
    if not os.path.isdir(exp_dir):
        raise UserError(f"{exp_dir}: not a directory")
    measured = []
    for s in systems:
        mdir = _model_dir(exp_dir, s)
        d = os.path.join(mdir, "decode_" + test_set)
        m = {"key": s.key, "label": s.label, "kind": s.kind, "model_dir": s.model,
             "compare": list(s.compare), "decode_dir": os.path.relpath(d, exp_dir),
             "present": os.path.isdir(d), "frame_acc": read_frame_acc(d), "wer": read_wer(d),
             "acwt": read_acwt(d), "params": count_params(mdir, s.kind)}
        if s.kind in ("student", "control", "other"):
            m["distill"] = read_distill_info(mdir)
        m["_per_utt"] = {k: read_per_utt(d, k) for k in METRICS}
        m["_curve"] = read_curve(mdir) if s.kind != "gmm" else None
        measured.append(m)

    # one bootstrap per metric, over the speakers of that metric's scored utterances
    boots, notes = {}, []
    for metric in METRICS:
        utts = set()
        for m in measured:
            if m["_per_utt"][metric]:
                utts |= set(m["_per_utt"][metric])
        if not utts:
            continue
        u2s = read_utt2spk(data_root, test_set, utts)
        boot = SpeakerBootstrap({u2s.get(u, u.split("-")[0]) for u in utts}, resamples)
        boots[metric] = (boot, u2s)
        for m in measured:
            pu = m["_per_utt"][metric]
            m.setdefault("_samples", {})[metric] = None
            if not pu:
                continue
            try:
                num, den = boot.per_speaker(pu, u2s, what=m["key"])
            except UserError as e:
                notes.append(f"{metric}: {e}; no interval")
                continue
            point, samples = boot.ratio(num, den)
            m[metric] = point
            m["_samples"][metric] = samples
            m[metric + "_ci"] = _ci(samples)

    singles = [m for m in measured if m["kind"] == "single"]
    rows = []
    single_samples = {}
    for m in measured:
        if m["kind"] == "single":
            continue
        rows.append(m)
    if singles:
        # singles not decoded on this test set are left out of the mean (n counts the rest)
        singles = [m for m in singles if m["present"]] or singles
        agg = {"key": "single", "label": "single DNN, mean ± std", "kind": "single",
               "n": sum(m["present"] for m in singles),
               "present": any(m["present"] for m in singles),
               "params": next((m["params"] for m in singles if m["params"]), None),
               "compare": [], "_samples": {}}
        best = {"key": "single_best", "label": "single DNN, best", "kind": "single",
                "n": agg["n"], "present": agg["present"], "params": agg["params"],
                "compare": []}
        acwts = sorted({m["acwt"] for m in singles if m["acwt"] is not None})
        agg["acwt"] = acwts[0] if len(acwts) == 1 else None
        agg["acwt_range"] = [acwts[0], acwts[-1]] if acwts else None
        for metric in METRICS:
            vals = [m[metric] for m in singles]
            agg[metric], agg[metric + "_std"] = _mean_std(vals)
            ok = [v for v in vals if v is not None]
            best[metric] = (max(ok) if metric == "frame_acc" else min(ok)) if ok else None
            samp = [m.get("_samples", {}).get(metric) for m in singles]
            if samp and all(x is not None for x in samp):
                single_samples[metric] = np.mean(samp, axis=0)
                agg["_samples"][metric] = single_samples[metric]
                agg[metric + "_ci"] = _ci(single_samples[metric])
        gmm = [r for r in rows if r["kind"] == "gmm"]
        rows = gmm + [agg, best] + [r for r in rows if r["kind"] != "gmm"]
    by_key = {r["key"]: r for r in rows}

    # paired differences (system - other) and the recovered share
    ens = next((r for r in rows if r["kind"] == "ensemble"), None)
    if ens is not None and singles:
        ens["label"] = f"{len(singles)}x {ens['label']}" if not ens["label"][0].isdigit() \
            else ens["label"]
    for r in rows:
        r["vs"] = {}
        for other in r.get("compare", []):
            o = by_key.get(other)
            if o is None:
                continue
            r["vs"][other] = {metric: _difference(r, o, metric) for metric in METRICS}
    denom = {}
    if ens is not None and "single" in by_key:
        for metric in METRICS:
            denom[metric] = _difference(ens, by_key["single"], metric)
    for r in rows:
        if r["kind"] != "student" or not r.get("compare") or not denom:
            continue
        base = by_key.get(r["compare"][0])
        if base is None:
            continue
        r["baseline"] = base["key"]
        for metric in METRICS:
            d = denom.get(metric)
            if metric == "wer" and not (d and d["significant"]):
                r["gain_wer"] = None
                r["gain_wer_note"] = "ensemble's WER gain not significant"
                continue
            r["gain_" + metric], r["gain_" + metric + "_ci"] = _share(r, base, ens, by_key,
                                                                     metric)
    curves = {m["key"]: m["_curve"] for m in measured if m.get("_curve")}
    out_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    out_singles = [{k: v for k, v in m.items() if not k.startswith("_")} for m in singles]
    return {
        "exp_dir": os.path.abspath(exp_dir),
        "test_set": test_set,
        "bootstrap": {metric: {"speakers": len(b.speakers), "resamples": len(b.weights),
                               "utterances": len({u for m in measured
                                                  for u in (m["_per_utt"][metric] or {})})}
                      for metric, (b, _) in boots.items()},
        "notes": notes,
        "systems": out_rows,
        "singles": out_singles,
        "curves": {k: {"epoch": e, "valid_frame_acc": a} for k, (e, a) in curves.items()},
    }


def _difference(a, b, metric):
    """Paired difference a - b of a metric: {"diff", "ci", "significant"}; None if unscored."""
    if a.get(metric) is None or b.get(metric) is None:
        return None
    sa, sb = a.get("_samples", {}).get(metric), b.get("_samples", {}).get(metric)
    ci = _ci(sa - sb) if sa is not None and sb is not None else None
    return {"diff": a[metric] - b[metric], "ci": ci, "significant": excludes_zero(ci)}


def _share(row, base, ens, by_key, metric):
    """100 * (row - base) / (ensemble - mean single) and its interval (per draw)."""
    single = by_key["single"]
    vals = [row.get(metric), base.get(metric), ens.get(metric), single.get(metric)]
    if any(v is None for v in vals) or abs(vals[2] - vals[3]) < 1e-9:
        return None, None
    point = 100.0 * (vals[0] - vals[1]) / (vals[2] - vals[3])
    s = [x.get("_samples", {}).get(metric) for x in (row, base, ens, single)]
    if any(x is None for x in s):
        return point, None
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = 100.0 * (s[0] - s[1]) / (s[2] - s[3])
    return point, _ci(draws)


# ---------------------------------------------------------------------------------------------
# Rendering


def _fmt(v, std=None, digits=2):
    if v is None:
        return "-"
    return f"{v:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{v:.{digits}f}"


def _fmt_ci(ci, digits=2, signed=False):
    if not ci:
        return ""
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f" [{f.format(ci[0])}, {f.format(ci[1])}]"


def _fmt_params(n):
    if not n:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _fmt_acwt(r):
    if r.get("acwt") is not None:
        return f"{r['acwt']:g}"
    rng = r.get("acwt_range")
    return f"{rng[0]:g}-{rng[1]:g}" if rng else "-"


def _fmt_diff(d, digits=2):
    if not d:
        return "-"
    star = " *" if d["significant"] else ""
    return f"{d['diff']:+.{digits}f}{_fmt_ci(d['ci'], digits, signed=True)}{star}"


def render_markdown(results, charts, timings):
    """results: one collect() dict per test set; charts: {test set: PNG file name}."""
    res = results[0]
    lines = [
        "# Results: knowledge distillation of a DNN-HMM ensemble",
        "",
        f"Experiment: `{res['exp_dir']}`. Frame accuracy is on the forced-alignment pdf targets "
        "of the test set. Brackets: 95% intervals from a per-speaker bootstrap (paired across "
        "systems). Gain recovered = (system - its own-size baseline) / (ensemble - mean "
        "single); for WER only where the ensemble's WER gain is significant.",
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
            kept = (f", keeping {100 * d['kept_mass']:.2f}% of the mass on average (the rest "
                    "is a term of its own)" if "kept_mass" in d else "")
            parts.append(f"top-{d['topk']} soft targets{kept}, {d['bytes_per_frame']} "
                         f"bytes/frame (dense float32: {d['dense_bytes_per_frame']})")
        notes.append(f"- {r['label']}: " + ", ".join(p for p in parts if p))
    if notes:
        lines += ["", "Distillation settings:", ""] + notes
    if res["curves"]:
        lines += ["", "![validation frame accuracy per epoch](curves.png)"]
    if timings:
        lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---:|"]
        for name, secs in timings:
            lines.append(f"| {name} | {secs:.1f} |")
        total = sum(t for _, t in timings)
        lines.append(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def _render_test_set(res, chart):
    b = res["bootstrap"]
    sizes = "; ".join(f"{'frame accuracy' if k == 'frame_acc' else 'WER'}: {v['utterances']} "
                      f"utterances of {v['speakers']} speakers" for k, v in b.items())
    train = res.get("train_set")
    tb = (train or {}).get("bootstrap", {}).get("frame_acc")
    lines = [
        "",
        f"## Test set `{res['test_set']}`",
        "",
        (f"Scored on {sizes}; {next(iter(b.values()))['resamples']} bootstrap resamples."
         if b else "No per-utterance scores: no intervals."),
    ]
    if train:
        lines.append(f"Train frame accuracy: on `{train['name']}`"
                     + (f", {tb['utterances']} utterances of {tb['speakers']} speakers."
                        if tb else "."))
    lines += [
        "",
        "| system | params | acwt |" + (" train frame acc % |" if train else "")
        + " frame acc % | WER % | gain recovered (acc) | gain recovered (WER) |",
        "|---|---:|---:|" + ("---:|" if train else "") + "---:|---:|---:|---:|",
    ]
    for r in res["systems"]:
        if not r["present"]:
            lines.append(f"| {r['label']} | missing | - |" + (" - |" if train else "")
                         + " - | - | | |")
            continue
        acc = _fmt(r["frame_acc"], r.get("frame_acc_std")) + _fmt_ci(r.get("frame_acc_ci"))
        if train:
            t = train["systems"].get(r["key"], {})
            acc = (_fmt(t.get("frame_acc"), t.get("frame_acc_std"))
                   + _fmt_ci(t.get("frame_acc_ci")) + " | " + acc)
        wer = _fmt(r["wer"], r.get("wer_std")) + _fmt_ci(r.get("wer_ci"))
        g_acc = g_wer = ""
        if r["kind"] == "student" and "baseline" in r:
            if r.get("gain_frame_acc") is not None:
                g_acc = f"{r['gain_frame_acc']:.1f}%" + _fmt_ci(r.get("gain_frame_acc_ci"), 1)
            g_wer = (f"{r['gain_wer']:.1f}%" + _fmt_ci(r.get("gain_wer_ci"), 1)
                     if r.get("gain_wer") is not None else "n.s." if r["wer"] is not None
                     else "")  # a row scored for frame accuracy only (no decoding)
        lines.append(f"| {r['label']} | {_fmt_params(r['params'])} | {_fmt_acwt(r)} | {acc} "
                     f"| {wer} | {g_acc} | {g_wer} |")
    by_key = {r["key"]: r for r in res["systems"]}
    diffs = [(r, o, d) for r in res["systems"] for o, d in r.get("vs", {}).items()]
    if diffs:
        lines += ["", "Paired differences (row minus the system it is compared with; * : the "
                  "interval excludes zero):", "",
                  "| comparison | frame acc (points) | WER (points) |", "|---|---:|---:|"]
        for r, o, d in diffs:
            lines.append(f"| {r['label']} - {by_key[o]['label']} | {_fmt_diff(d['frame_acc'])} "
                         f"| {_fmt_diff(d['wer'])} |")
    summary = _control_summary(res["systems"], by_key)
    if summary:
        lines += ["", summary]
    for n in res.get("notes", []):
        lines.append(f"\nNote: {n}")
    if res["singles"]:
        lines += ["", "Single models:", "", "| model | acwt | frame acc % | WER % |",
                  "|---|---:|---:|---:|"]
        for m in res["singles"]:
            lines.append(f"| {m['label']} | {_fmt_acwt(m)} | {_fmt(m['frame_acc'])} "
                         f"| {_fmt(m['wer'])} |")
    lines += ["", f"![frame accuracy and WER per system]({chart})"]
    return lines


def _control_summary(rows, by_key):
    """One line: how much of a student's frame-accuracy gain over the singles its soft targets
    account for (student - control), for each student compared with a control."""
    out = []
    for r in rows:
        if r["kind"] != "student":
            continue
        ctrl = next((o for o in r.get("compare", []) if by_key.get(o, {}).get("kind") ==
                     "control"), None)
        vs = r.get("vs", {})
        if ctrl is None or "single" not in vs or not vs[ctrl]["frame_acc"] \
                or not vs["single"]["frame_acc"]:
            continue
        total, soft = vs["single"]["frame_acc"], vs[ctrl]["frame_acc"]
        c = by_key[ctrl]
        rest = c.get("vs", {}).get("single", {}).get("frame_acc")
        out.append(
            f"{r['label']}: {total['diff']:+.2f}{_fmt_ci(total['ci'], signed=True)} frame-accuracy "
            f"points over the mean single model, of which the soft targets (student - control: "
            f"same model, schedule and regularisation on hard targets) account for "
            f"{soft['diff']:+.2f}{_fmt_ci(soft['ci'], signed=True)}"
            + (f" and the student's training recipe (control - mean single) for "
               f"{rest['diff']:+.2f}{_fmt_ci(rest['ci'], signed=True)}" if rest else "") + ".")
    return "\n\n".join(out)


COLORS = {"gmm": "0.6", "single": "tab:blue", "ensemble": "tab:green", "student": "tab:orange",
          "control": "tab:purple", "other": "tab:brown"}


def plot_systems(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["systems"] if r["present"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 2))
    for ax, key, title in ((axes[0], "frame_acc", f"{res['test_set']}: frame accuracy (%)"),
                           (axes[1], "wer", f"{res['test_set']}: WER (%)")):
        sel = [r for r in rows if r.get(key) is not None]
        labels = [r["label"] for r in sel]
        vals = [r[key] for r in sel]
        lo_err = [v - r[key + "_ci"][0] if r.get(key + "_ci") else 0.0 for v, r in zip(vals, sel)]
        hi_err = [r[key + "_ci"][1] - v if r.get(key + "_ci") else 0.0 for v, r in zip(vals, sel)]
        ax.barh(range(len(sel)), vals, xerr=[lo_err, hi_err], capsize=3,
                color=[COLORS[r["kind"]] for r in sel])
        ax.set_yticks(range(len(sel)), labels)
        ax.invert_yaxis()
        ax.set_title(title + " with 95% intervals")
        if vals:
            lo = min(v - e for v, e in zip(vals, lo_err))
            hi = max(v + e for v, e in zip(vals, hi_err))
            pad = max(0.5, 0.15 * (hi - lo))
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
            for i, (v, e) in enumerate(zip(vals, hi_err)):
                ax.text(v + e, i, f" {v:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_curves(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    single_keys = {m["key"] for m in res["singles"]}
    teacher_labelled = False
    other_colors = iter(["tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:olive",
                         "tab:cyan", "tab:pink"] * 4)
    for name, c in sorted(res["curves"].items()):
        if name in single_keys:
            ax.plot(c["epoch"], c["valid_frame_acc"], color="tab:blue", alpha=0.4, lw=1,
                    label=None if teacher_labelled else "single DNNs (teachers)")
            teacher_labelled = True
        else:
            ax.plot(c["epoch"], c["valid_frame_acc"], lw=2, marker="o", ms=3, label=name,
                    color=next(other_colors))
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


def find_test_sets(exp_dir, systems):
    """Test sets decoded by any system (decode_* dirs, dev* excluded); ["test"] if none."""
    names = set()
    for s in systems:
        mdir = _model_dir(exp_dir, s)
        if not os.path.isdir(mdir):
            continue
        for d in os.listdir(mdir):
            if d.startswith("decode_") and os.path.isdir(os.path.join(mdir, d)):
                name = d[len("decode_"):]
                if not name.startswith("dev") and not name.startswith("acwt"):
                    names.add(name)
    return sorted(names, key=lambda n: (n != "test", n)) or ["test"]


def write_report(exp_dir, test_sets=None, manifest=None, data_root=None,
                 resamples=DEFAULT_RESAMPLES, train_set=None):
    """Write EXP_DIR/results.{md,json,png} (+ curves.png); return the collected figures.

    ``manifest``: the systems.tsv (default EXP_DIR/systems.tsv). ``test_sets``: names of the
    decode_<name> dirs to report (default: all found, ``test`` first). The first one's figures
    are the top level of results.json and results.png; every set's figures are under
    ``by_test_set`` (charts ``results_<name>.png`` for the others). ``train_set``: the name of
    the decode_<name> dirs holding frame accuracy on training data: a column of every table
    (``train_set`` in results.json: each system's figures there, by key).
    """
    if not os.path.isdir(exp_dir):
        raise UserError(f"{exp_dir}: not a directory")
    systems = read_manifest(manifest or os.path.join(exp_dir, MANIFEST))
    sets = list(test_sets) if test_sets else [t for t in find_test_sets(exp_dir, systems)
                                              if t != train_set]
    results = [collect(exp_dir, systems, t, data_root, resamples) for t in sets]
    if train_set:
        tr = collect(exp_dir, systems, train_set, data_root, resamples)
        train = {"name": train_set, "bootstrap": tr["bootstrap"], "notes": tr["notes"],
                 "systems": {r["key"]: {k: r.get(k) for k in ("frame_acc", "frame_acc_std",
                                                               "frame_acc_ci")}
                             for r in tr["systems"] if r["present"]}}
        for r in results:
            r["train_set"] = train
    charts = {t: "results.png" if i == 0 else f"results_{t}.png" for i, t in enumerate(sets)}
    for r in results:
        plot_systems(r, os.path.join(exp_dir, charts[r["test_set"]]))
    res = dict(results[0])
    if res["curves"]:
        plot_curves(res, os.path.join(exp_dir, "curves.png"))
    timings = read_timings(os.path.join(exp_dir, "timings.tsv"))
    res["timings"] = [{"stage": n, "seconds": t} for n, t in timings]
    res["total_seconds"] = sum(t for _, t in timings) if timings else None
    res["by_test_set"] = {r["test_set"]: {k: r[k] for k in ("systems", "singles", "bootstrap",
                                                           "notes")} for r in results}
    with atomic_path(os.path.join(exp_dir, "results.json")) as tmp, open(tmp, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    md = render_markdown(results, charts, timings)
    with atomic_path(os.path.join(exp_dir, "results.md")) as tmp, open(tmp, "w") as f:
        f.write(md)
    return res


# ---------------------------------------------------------------------------------------------
# Several runs (seeds) side by side

RUN_COLUMNS = (
    # (header, system key, what): what is a metric, "diff:<other>" or "gain"
    ("single DNN (mean) acc %", "single", "frame_acc"),
    ("ensemble acc %", "ensemble", "frame_acc"),
    ("ensemble - single", "ensemble", "diff:single"),
    ("control acc %", "control", "frame_acc"),
    ("distilled acc %", "distill", "frame_acc"),
    ("distilled - control", "distill", "diff:control"),
    ("gain recovered", "distill", "gain"),
    ("single WER %", "single", "wer"),
    ("ensemble WER %", "ensemble", "wer"),
    ("distilled WER %", "distill", "wer"),
)


def _run_cell(by_key, key, what):
    r = by_key.get(key)
    if r is None or not r.get("present", True):
        return "-"
    if what == "gain":
        if r.get("gain_frame_acc") is None:
            return "-"
        return f"{r['gain_frame_acc']:.1f}%{_fmt_ci(r.get('gain_frame_acc_ci'), 1)}"
    if what.startswith("diff:"):
        d = r.get("vs", {}).get(what[5:], {}).get("frame_acc")
        return _fmt_diff(d) if d else "-"
    v = r.get(what)
    if v is None:
        return "-"
    cell = _fmt(v, r.get(what + "_std") if key == "single" else None)
    ci = r.get(what + "_ci")
    return f"{cell}{_fmt_ci(ci)}"


def runs_table(runs):
    """Markdown table of several runs' headline figures, one row a run.

    ``runs``: (name, results) pairs, results as `write_report` returns them (results.json).
    Frame accuracy with its interval, the paired differences that carry the claims
    (ensemble - mean single, distilled - control; * where the interval excludes zero), the
    distilled model's share of the ensemble's gain, and the WERs.
    """
    head = "| run | " + " | ".join(h for h, _, _ in RUN_COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(RUN_COLUMNS)]
    for name, res in runs:
        by_key = {r["key"]: r for r in res["systems"]}
        cells = [_run_cell(by_key, key, what) for _, key, what in RUN_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_runs(exp_dirs, names=None):
    """The runs_table of EXP_DIR/results.json for each dir (name: the dir's name, or ``names``)."""
    runs = []
    for i, d in enumerate(exp_dirs):
        path = os.path.join(d, "results.json")
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file (run `asrkd report {d}` first)")
        with open(path) as f:
            res = json.load(f)
        runs.append((names[i] if names else os.path.basename(os.path.normpath(d)), res))
    return runs_table(runs)
