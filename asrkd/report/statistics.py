"""The report's figures for one test set: ``collect`` (what results.json holds).

Intervals (asrkd.bootstrap): per-speaker bootstrap, 95 % percentile intervals from a fixed
seed, the same draws for every system (paired). The mean single model is the mean of the singles
on each draw. "Gain recovered" = (system - its own-size baseline) / (ensemble - mean single), per
draw; for frame accuracy on every student row, for WER only where the ensemble's WER gain over
the mean single is itself significant (its interval excludes zero), and never for other rows.

Rows of kind ``single`` are aggregated into "mean ± std" and "best" rows (best frame accuracy and
best WER are taken separately, so they may come from different seeds).
"""

import math
import os

import numpy as np

from asrkd.bootstrap import (DEFAULT_RESAMPLES, DEFAULT_SEED, SpeakerBootstrap, excludes_zero,
                             interval)
from asrkd.errors import UserError
from asrkd.report.artefacts import (METRICS, count_params, model_dir, read_acwt, read_curve,
                                    read_decode_setup, read_distill_info, read_frame_acc,
                                    read_per_utt, read_specialists_info, read_training,
                                    read_utt2spk, read_wer)


def collect(exp_dir, systems, test_set="test", data_root=None, resamples=DEFAULT_RESAMPLES):
    """All figures of the report for one test set as a dict (what results.json holds)."""
    if not os.path.isdir(exp_dir):
        raise UserError(f"{exp_dir}: not a directory")
    measured = [_measure(exp_dir, s, test_set) for s in systems]
    boots, notes = _bootstrap(measured, test_set, data_root, resamples)
    singles = [m for m in measured if m["kind"] == "single"]
    rows = [m for m in measured if m["kind"] != "single"]
    if singles:
        # singles not decoded on this test set are left out of the mean (n counts the rest)
        singles = [m for m in singles if m["present"]] or singles
        agg, best = _single_rows(singles)
        gmm = [r for r in rows if r["kind"] == "gmm"]
        rows = gmm + [agg, best] + [r for r in rows if r["kind"] != "gmm"]
    by_key = {r["key"]: r for r in rows}
    ens = next((r for r in rows if r["kind"] == "ensemble"), None)
    if ens is not None and singles:
        ens["label"] = f"{len(singles)}x {ens['label']}" if not ens["label"][0].isdigit() \
            else ens["label"]
    _paired_differences(rows, by_key)
    _gains_recovered(rows, by_key, ens)
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


def _measure(exp_dir, s, test_set):
    """One system's point figures on a test set; per-utterance counts and the validation curve
    under ``_per_utt`` and ``_curve`` (keys with ``_`` stay out of results.json)."""
    mdir = model_dir(exp_dir, s)
    d = os.path.join(mdir, "decode_" + test_set)
    m = {"key": s.key, "label": s.label, "kind": s.kind, "model_dir": s.model,
         "compare": list(s.compare), "decode_dir": os.path.relpath(d, exp_dir),
         "present": os.path.isdir(d), "frame_acc": read_frame_acc(d), "wer": read_wer(d),
         "acwt": read_acwt(d), "params": count_params(mdir, s.kind),
         "training": read_training(mdir, s.kind) if s.kind != "gmm" else None,
         **read_decode_setup(mdir, d)}
    if s.kind in ("student", "control", "other"):
        m["distill"] = read_distill_info(mdir)
    if s.kind == "other":
        m["specialists"] = read_specialists_info(mdir)
    m["_per_utt"] = {k: read_per_utt(d, k) for k in METRICS}
    m["_curve"] = read_curve(mdir) if s.kind != "gmm" else None
    return m


def _bootstrap(measured, test_set, data_root, resamples):
    """One bootstrap per metric, over the speakers of that metric's scored utterances: each
    system's figure becomes the per-speaker ratio, with its draws (``_samples``) and interval.
    Returns ({metric: (SpeakerBootstrap, utt2spk)}, notes)."""
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
    return boots, notes


def _single_rows(singles):
    """The "single DNN, mean ± std" and "single DNN, best" rows of the single models; the mean's
    draws are the mean of the singles' draws."""
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
    agg["acwt_edge"] = any(m.get("acwt_edge") for m in singles)
    agg["acwt_shared"] = next((m["acwt_shared"] for m in singles if m.get("acwt_shared")), None)
    trained = [m["training"] for m in singles if m.get("training")]
    if trained:  # the mean single's training: each single's, on average
        agg["training"] = {k: round(sum(t[k] for t in trained) / len(trained))
                           for k in trained[0]}
    for metric in METRICS:
        # each metric over the singles that have it (the recipe's --wer-singles N: the first N
        # decoded for WER, every one measured in frame accuracy)
        have = [m for m in singles if m[metric] is not None]
        agg[metric], agg[metric + "_std"] = _mean_std([m[metric] for m in have])
        agg["n_" + metric] = len(have)
        ok = [m[metric] for m in have]
        best[metric] = (max(ok) if metric == "frame_acc" else min(ok)) if ok else None
        samp = [m.get("_samples", {}).get(metric) for m in have]
        if samp and all(x is not None for x in samp):
            agg["_samples"][metric] = np.mean(samp, axis=0)
            agg[metric + "_ci"] = _ci(agg["_samples"][metric])
    return agg, best


def _paired_differences(rows, by_key):
    """Each row's ``vs``: {other key: {metric: paired difference}} for the keys it compares with."""
    for r in rows:
        r["vs"] = {}
        for other in r.get("compare", []):
            o = by_key.get(other)
            if o is None:
                continue
            r["vs"][other] = {metric: _difference(r, o, metric) for metric in METRICS}


def _gains_recovered(rows, by_key, ens):
    """A student's ``baseline`` and ``gain_<metric>`` (+ ``_ci``): its share of the ensemble's
    gain over the mean single; for WER only where that gain is significant."""
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


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def _ci(samples):
    return list(interval(samples)) if samples is not None else None


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


def pooled_difference(runs, a, b, metric, test_set="test", resamples=DEFAULT_RESAMPLES):
    """Paired difference a - b of ``metric`` pooled over several runs' test speakers.

    ``runs``: [(exp_dir, [System])]; ``a``, ``b``: system keys, each may be "x|y" (the first
    the run has) and "single" is the mean of the run's single models (per utterance, their mean
    counts). Each run is resampled over its own speakers (a bootstrap per run, drawn within it:
    the speakers' noise, not the models'); a draw's figure is the ratio of the counts summed
    over every run. Runs without both systems are left out. Returns {"diff", "ci",
    "significant", "runs", "speakers", "a", "b"} or None when no run has both.
    """
    draws, tot, speakers, used = None, np.zeros(4), 0, set()
    for i, (exp_dir, systems) in enumerate(runs):
        ka, pa = _pooled_per_utt(exp_dir, systems, a, metric, test_set)
        kb, pb = _pooled_per_utt(exp_dir, systems, b, metric, test_set)
        if pa is None or pb is None:
            continue
        u2s = read_utt2spk(None, test_set, set(pa) | set(pb))
        boot = SpeakerBootstrap(set(u2s.values()), resamples, seed=DEFAULT_SEED + i)
        (na, da), (nb, db) = (boot.per_speaker(p, u2s, what=f"{exp_dir}: {k}")
                              for k, p in ((ka, pa), (kb, pb)))
        arr = np.stack([na, nb, da, db], axis=1)
        run_draws = boot.weights @ arr  # (B, 4): this run's resampled counts of a and b
        draws = run_draws if draws is None else draws + run_draws
        tot += arr.sum(axis=0)
        speakers += len(boot.speakers)
        used.add((ka, kb, i))
    if draws is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = 100.0 * (draws[:, 0] / draws[:, 2] - draws[:, 1] / draws[:, 3])
    ci = _ci(samples)
    return {"diff": 100.0 * (tot[0] / tot[2] - tot[1] / tot[3]), "ci": ci,
            "significant": excludes_zero(ci), "runs": len(used), "speakers": speakers,
            "a": sorted({k for k, _, _ in used}), "b": sorted({k for _, k, _ in used})}


def _pooled_per_utt(exp_dir, systems, key, metric, test_set):
    """(the key used, {utt: (num, den)}) of one system of a run (the first of "x|y" it has;
    "single": the singles' mean counts), or (key, None) when the run has none of them."""
    by_key = {s.key: s for s in systems}
    for k in key.split("|"):
        chosen = [s for s in systems if s.kind == "single"] if k == "single" else \
            [by_key[k]] if k in by_key else []
        per = [read_per_utt(os.path.join(model_dir(exp_dir, s), "decode_" + test_set), metric)
               for s in chosen]
        per = [p for p in per if p]
        if not per:
            continue
        if any(set(p) != set(per[0]) for p in per):
            raise UserError(f"{exp_dir}: the single models are scored on different utterances")
        return k, {u: (np.mean([p[u][0] for p in per]), np.mean([p[u][1] for p in per]))
                   for u in per[0]}
    return key, None
