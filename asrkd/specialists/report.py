"""`asrkd specialist-report`: what the specialists of a dir buy, and at what cost.

Gain: the combination's frame accuracy minus the generalist's on the same frames, with a paired
95% interval from the speaker bootstrap (asrkd.bootstrap), and the same for WER where both were
decoded (SPEC_DIR/decode_NAME and the generalist's dir's decode_NAME, their ``per_utt``).
Coverage (the paper's Table 4): frames grouped by how many active specialists have the correct
pdf in their set, with the generalist's and the combination's frame accuracy per group. Training:
each specialist's updates and the epoch kept, and which ended at epoch 0 (the generalist itself:
such a specialist changes nothing). Costs: training time of all specialists against one ensemble
member, and inference time per frame of the generalist, the combination and an ensemble.
"""

import csv
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from asrkd.alignment import AlignmentDir
from asrkd.bootstrap import SpeakerBootstrap, excludes_zero, interval
from asrkd.data import DataDir
from asrkd.ensemble import Ensemble, average_posteriors, find_teachers
from asrkd.errors import UserError
from asrkd.report.artefacts import read_per_utt
from asrkd.specialists.scorer import is_specialists_dir, make_scorer
from asrkd.table import atomic_path


def specialist_report(spec_dir, data_dir, ali_dir, ensemble_dir=None, name=None,
                      timing_frames=3000):
    """`asrkd specialist-report`: coverage table and costs of a specialists dir on a data set.

    Coverage (the paper's Table 4): the aligned frames of data_dir grouped by how many active
    specialists have the correct pdf in their set, with the generalist's and the combination's
    frame accuracy and the relative gain per group. Costs: training time of all specialists
    against one ensemble member (``ensemble_dir``/model1/train_log.csv), and inference time per
    frame (one thread, on the first ``timing_frames`` frames) of the generalist, the combination
    and the ensemble, with the mean number of network evaluations per frame.
    Writes spec_dir/report_<name>.json and .md (name: data_dir's basename). Returns the dict.
    """
    if not is_specialists_dir(spec_dir):
        raise UserError(f"{spec_dir}: not a specialists dir (no specialists.json)")
    name = name or os.path.basename(os.path.normpath(data_dir))
    ali = AlignmentDir(ali_dir).check()
    pdf_scp, num_pdfs = ali.pdf_scp, ali.num_pdfs
    scorer = make_scorer(spec_dir, data_dir)
    if scorer.generalist.config.num_pdfs != num_pdfs:
        raise UserError(f"{spec_dir} scores {scorer.generalist.config.num_pdfs} pdfs, {ali_dir} "
                        f"has {num_pdfs}")
    data = DataDir(data_dir)
    utt2spk = data.utt2spk
    utts = [u for u in data.utts if u in pdf_scp]
    if not utts:
        raise UserError(f"{ali_dir}: no aligned utterance of {data_dir}")
    k = len(scorer.sets)
    groups, per_spk, active_total = _coverage(scorer, utts, pdf_scp, utt2spk)
    frames = int(groups[:, 0].sum())
    rows = _coverage_rows(groups, frames)
    g_acc, c_acc = groups[:, 1].sum() / frames, groups[:, 2].sum() / frames
    cost = _costs(scorer, utts, timing_frames, 1 + active_total / frames, ensemble_dir)
    report = {"data_dir": os.path.abspath(data_dir), "ali_dir": os.path.abspath(ali_dir),
              "num_specialists": k, "top_n": scorer.top_n, "frames": frames,
              "generalist_frame_acc": float(g_acc), "combined_frame_acc": float(c_acc),
              "frame_acc_diff": _frame_acc_difference(per_spk),
              "wer": _wer_difference(spec_dir, scorer.manifest, name, utt2spk),
              "mean_active": active_total / frames, "coverage": rows, "cost": cost,
              "training": _training(scorer.manifest),
              "per_speaker": {s: {"frames": v[0], "generalist_acc": v[1] / v[0],
                                  "combined_acc": v[2] / v[0]} for s, v in sorted(per_spk.items())}}
    with atomic_path(os.path.join(spec_dir, f"report_{name}.json")) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with atomic_path(os.path.join(spec_dir, f"report_{name}.md")) as tmp, open(tmp, "w") as f:
        f.write(_report_markdown(report, name))
    return report


def _paired(a_num, b_num, den_a, den_b, speakers):
    """{"diff", "ci", "significant"}: 100 * (a_num / den_a - b_num / den_b) over the speakers
    (per-speaker arrays), the interval from the speaker bootstrap's paired draws."""
    boot = SpeakerBootstrap(speakers)
    a, sa = boot.ratio(a_num, den_a)
    b, sb = boot.ratio(b_num, den_b)
    ci = interval(sa - sb)
    return {"a": a, "b": b, "diff": a - b, "ci": list(ci) if ci else None,
            "significant": excludes_zero(ci), "speakers": len(boot.speakers)}


def _frame_acc_difference(per_spk):
    """Combined - generalist frame accuracy (points) with its paired interval."""
    spk = sorted(per_spk)
    v = np.array([per_spk[s] for s in spk], dtype=np.float64)  # frames, gen, combined
    return _paired(v[:, 2], v[:, 1], v[:, 0], v[:, 0], spk)


def _wer_difference(spec_dir, manifest, name, utt2spk):
    """Combined - generalist WER (points) with its paired interval on the utterances both
    decoded (SPEC_DIR/decode_NAME, GENERALIST_DIR/decode_NAME); None unless both are there."""
    gen_dir = os.path.dirname(manifest.get("generalist_source", ""))
    spec = read_per_utt(os.path.join(spec_dir, f"decode_{name}"), "wer")
    gen = read_per_utt(os.path.join(gen_dir, f"decode_{name}"), "wer") if gen_dir else None
    if not spec or not gen:
        return None
    utts = sorted(set(spec) & set(gen))
    spk = sorted({utt2spk[u] for u in utts})
    index = {s: i for i, s in enumerate(spk)}
    acc = np.zeros((len(spk), 3))  # combined errors, generalist errors, words
    for u in utts:
        i = index[utt2spk[u]]
        acc[i] += (spec[u][0], gen[u][0], spec[u][1])
    out = _paired(acc[:, 0], acc[:, 1], acc[:, 2], acc[:, 2], spk)
    out["utterances"] = len(utts)
    return out


def _training(manifest):
    """Per specialist: set size, updates, the epoch kept; and which ended at epoch 0."""
    rows = [{"specialist": i + 1, "pdfs": len(s["set"]), "updates": s.get("updates"),
             "updates_to_best": s.get("updates_to_best"), "best_epoch": s["best_epoch"],
             "kept_generalist": s.get("kept_generalist", s["best_epoch"] == 0),
             "valid_frames": s.get("valid_frames"),
             "generalist_valid_acc": s.get("generalist_valid_acc"), "valid_acc": s["valid_acc"]}
            for i, s in enumerate(manifest["specialists"])]
    return {"targets": manifest["config"].get("targets",
                                              "hard" if manifest["config"].get("hard_targets")
                                              else "generalist"),
            "specialists": rows,
            "kept_generalist": [r["specialist"] for r in rows if r["kept_generalist"]]}


def _coverage(scorer, utts, pdf_scp, utt2spk):
    """Frames by how many active specialists cover the correct pdf: (K + 1, 3) counts of
    (frames, generalist correct, combined correct); the same three per speaker; and the active
    specialists summed over frames."""
    k = len(scorer.sets)
    groups = np.zeros((k + 1, 3), dtype=np.int64)  # frames, generalist correct, combined correct
    per_spk, active_total = {}, 0
    member_t = scorer.member.T.cpu()
    for u in tqdm(utts, desc="coverage", unit="utt", file=sys.stderr, disable=None):
        st = scorer.frame_stats(scorer.reader[u])
        y = torch.as_tensor(np.asarray(pdf_scp[u]), dtype=torch.long)
        if len(y) != len(st["p_g"]):
            raise UserError(f"{u}: {len(st['p_g'])} scored frames but {len(y)} aligned")
        g = (st["p_g"].argmax(1) == y).numpy()
        c = (st["log_q"].argmax(1) == y).numpy()
        cover = (st["active"] & member_t[y]).sum(1).numpy()
        np.add.at(groups, (cover, 0), 1)
        np.add.at(groups, (cover, 1), g)
        np.add.at(groups, (cover, 2), c)
        active_total += int(st["active"].sum())
        s = per_spk.setdefault(utt2spk[u], [0, 0, 0])
        s[0], s[1], s[2] = s[0] + len(y), s[1] + int(g.sum()), s[2] + int(c.sum())
    return groups, per_spk, active_total


def _coverage_rows(groups, frames):
    """The rows of the coverage table: the groups that have frames."""
    rows = []
    for n_cov in range(len(groups)):
        f, gc, cc = (int(v) for v in groups[n_cov])
        if f == 0:
            continue
        rows.append({"covering": n_cov, "frames": f, "share": f / frames,
                     "generalist_acc": gc / f, "combined_acc": cc / f, "correct_gained": cc - gc,
                     "relative_gain": (cc - gc) / gc if gc else None})
    return rows


def _costs(scorer, utts, timing_frames, evaluations_per_frame, ensemble_dir):
    """Inference time per frame (one thread, on the first ``timing_frames`` frames) of the
    generalist, the combination and (``ensemble_dir``) the ensemble; the training times."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timing, n = [], 0
        for u in utts:
            timing.append(u)
            n += scorer.reader.num_frames(u)
            if n >= timing_frames:
                break
        def gen_fn(x):
            return torch.softmax(scorer.generalist.utterance_logits(torch.from_numpy(x)), 1)

        cost = {"timing_frames": n,
                "generalist_us": 1e6 * _time_per_frame(gen_fn, timing, scorer.reader),
                "combined_us": 1e6 * _time_per_frame(scorer.frame_stats, timing, scorer.reader),
                "evaluations_per_frame": evaluations_per_frame}
        if ensemble_dir is not None:
            ens = Ensemble(find_teachers(ensemble_dir))

            def ens_fn(x):  # the ensemble as decoding runs it: one feature pass, one average
                return average_posteriors(ens.utterance_logits(torch.from_numpy(x)))

            cost["ensemble_size"] = len(ens.models)
            cost["ensemble_us"] = 1e6 * _time_per_frame(ens_fn, timing, scorer.reader)
    finally:
        torch.set_num_threads(torch_threads)
    secs = scorer.manifest["seconds"]
    cost["specialists_train_seconds"] = secs["train_sum"]
    cost["specialists_train_wall_seconds"] = secs["train_wall"]
    cost["sets_seconds"] = secs["sets"]
    member = _ensemble_member_seconds(ensemble_dir) if ensemble_dir else None
    cost["ensemble_member_train_seconds"] = member
    return cost


def _time_per_frame(fn, utts, reader):
    """Best of two passes: seconds per frame of fn(feats) over the utterances."""
    frames = sum(reader.num_frames(u) for u in utts)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for u in utts:
            fn(reader[u])
        best = min(best, time.perf_counter() - t0)
    return best / max(frames, 1)


def _ensemble_member_seconds(ensemble_dir):
    path = os.path.join(ensemble_dir, "model1", "train_log.csv")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(sum(float(r["seconds"]) for r in csv.DictReader(f)))


def _fmt_diff(d):
    ci = "" if d["ci"] is None else f" [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
    return f"{d['diff']:+.2f}{ci}{' *' if d['significant'] else ''}"


def _report_markdown(r, name):
    c, t = r["cost"], r["training"]
    d = r["frame_acc_diff"]
    out = [f"# Generalist + {r['num_specialists']} specialists on {name}", "",
           f"Frame accuracy: generalist {100 * r['generalist_frame_acc']:.2f}%, with specialists "
           f"{100 * r['combined_frame_acc']:.2f}%: {_fmt_diff(d)} points (paired 95% interval "
           f"over {d['speakers']} speakers; * excludes 0; {r['frames']} frames; specialists "
           f"chosen by the generalist's top {r['top_n']}, {r['mean_active']:.2f} active per "
           "frame)."]
    if r.get("wer"):
        w = r["wer"]
        out.append(f"WER: generalist {w['b']:.2f}%, with specialists {w['a']:.2f}%: "
                   f"{_fmt_diff(w)} points ({w['utterances']} decoded utterances, "
                   f"{w['speakers']} speakers).")
    out += ["", "Frames by how many active specialists cover the correct pdf (the paper's "
            "Table 4):", "", "| covering | frames | % of frames | generalist acc % | with "
            "specialists % | correct gained | relative gain % |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["coverage"]:
        rel = "-" if row["relative_gain"] is None else f"{100 * row['relative_gain']:+.1f}"
        out.append(f"| {row['covering']} | {row['frames']} | {100 * row['share']:.1f} | "
                   f"{100 * row['generalist_acc']:.2f} | {100 * row['combined_acc']:.2f} | "
                   f"{row['correct_gained']:+d} | {rel} |")
    kept = t["kept_generalist"]
    out += ["", f"Training ({t['targets']} targets): " + (
        f"{len(kept)} of {len(t['specialists'])} specialists ended at epoch 0, i.e. are the "
        f"generalist itself (specialist {', '.join(map(str, kept))})." if kept else
        "no specialist ended at epoch 0 (the generalist itself)."), "",
        "| specialist | pdfs | updates | epoch kept (updates to it) | valid frames active | "
        "valid acc % there: generalist | combined |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in t["specialists"]:
        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}"
        out.append(f"| {s['specialist']} | {s['pdfs']} | {s['updates'] or '-'} | "
                   f"{s['best_epoch']} ({s['updates_to_best'] or 0}) | "
                   f"{s['valid_frames'] or '-'} | {pct(s['generalist_valid_acc'])} | "
                   f"{pct(s['valid_acc'])} |")
    out += ["", "Cost:", "",
            f"- training: all specialists {c['specialists_train_seconds']:.0f} s of job time "
            f"({c['specialists_train_wall_seconds']:.0f} s wall), sets {c['sets_seconds']:.0f} s"
            + (f"; one ensemble member {c['ensemble_member_train_seconds']:.0f} s "
               f"(ratio {c['specialists_train_seconds'] / c['ensemble_member_train_seconds']:.2f})"
               if c.get("ensemble_member_train_seconds") else ""),
            f"- inference, one thread, per frame ({c['timing_frames']} frames): generalist "
            f"{c['generalist_us']:.1f} us, generalist + specialists {c['combined_us']:.1f} us "
            f"({c['combined_us'] / c['generalist_us']:.2f}x)"
            + (f", {c['ensemble_size']}-model ensemble {c['ensemble_us']:.1f} us "
               f"({c['ensemble_us'] / c['generalist_us']:.2f}x)" if "ensemble_us" in c else ""),
            f"- network evaluations per frame: {c['evaluations_per_frame']:.2f}"
            + (f" (ensemble: {c['ensemble_size']})" if "ensemble_size" in c else ""), ""]
    return "\n".join(out)
