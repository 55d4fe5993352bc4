"""The report rendered: results.md (``render_markdown``), the charts (``plot_systems``,
``plot_curves``) and several runs side by side (``runs_table``), from the figures ``collect``
gives (asrkd.report.statistics) or results.json holds.

matplotlib is imported only when a chart is drawn.
"""

from asrkd.table import atomic_path

# ---------------------------------------------------------------------------------------------
# Figures as text


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
    edge = " (edge)" if r.get("acwt_edge") else ""
    if r.get("acwt") is not None:
        return f"{r['acwt']:g}{edge}"
    rng = r.get("acwt_range")
    return f"{rng[0]:g}-{rng[1]:g}{edge}" if rng else "-"


def _fmt_updates(r):
    t = r.get("training")
    if not t:
        return "-"
    return f"{t['updates'] / 1e3:.1f}k / {t['frames'] / 1e6:.1f}M"


def _fmt_diff(d, digits=2):
    if not d:
        return "-"
    star = " *" if d["significant"] else ""
    return f"{d['diff']:+.{digits}f}{_fmt_ci(d['ci'], digits, signed=True)}{star}"


# ---------------------------------------------------------------------------------------------
# results.md


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
    notes = _distill_notes(res["systems"])
    if notes:
        lines += ["", "Distillation settings:", ""] + notes
    notes = specialist_notes(res["systems"])
    if notes:
        lines += ["", "Specialists (`specialist-report` in each dir: coverage, costs):", ""] + notes
    if res["curves"]:
        lines += ["", "![validation frame accuracy per epoch](curves.png)"]
    if timings:
        lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---:|"]
        for name, secs in timings:
            lines.append(f"| {name} | {secs:.1f} |")
        total = sum(t for _, t in timings)
        lines.append(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def _distill_notes(systems):
    """One line per distilled row: its temperature, weights, soft-target storage, ..."""
    notes = []
    for r in systems:
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
    return notes


def specialist_notes(systems):
    """One line per specialists row: K, targets, set sizes, updates, and which specialists
    ended at epoch 0 (the generalist itself, changing nothing)."""
    notes = []
    for r in systems:
        d = r.get("specialists")
        if not d:
            continue
        k, kept, up, sz = (d["num_specialists"], d["kept_generalist"], d["updates"],
                           d["set_sizes"])
        notes.append(
            f"- {r['label']}: {k} specialists, {d['targets']} targets, sets of "
            f"{min(sz, default=0)}-{max(sz, default=0)} pdfs ({d['set_method']})"
            + (f", {min(up)}-{max(up)} updates each" if up else "")
            + (f"; {len(kept)} of {k} ended at epoch 0, i.e. are the generalist "
               f"(specialist {', '.join(map(str, kept))})" if kept else
               "; none ended at epoch 0"))
    return notes


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
        "| system | params | updates / frames | acwt |" + (" train frame acc % |" if train
                                                             else "")
        + " frame acc % | WER % | gain recovered (acc) | gain recovered (WER) |",
        "|---|---:|---:|---:|" + ("---:|" if train else "") + "---:|---:|---:|---:|",
    ]
    lines += [_system_row(r, train) for r in res["systems"]]
    by_key = {r["key"]: r for r in res["systems"]}
    diffs = [(r, o, d) for r in res["systems"] for o, d in r.get("vs", {}).items()]
    if diffs:
        lines += ["", "Paired differences (row minus the system it is compared with; * : the "
                  "interval excludes zero):", "",
                  "| comparison | frame acc (points) | WER (points) |", "|---|---:|---:|"]
        for r, o, d in diffs:
            lines.append(f"| {r['label']} - {by_key[o]['label']} | {_fmt_diff(d['frame_acc'])} "
                         f"| {_fmt_diff(d['wer'])} |")
    lines += _setup_notes(res)
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


def _setup_notes(res):
    """What the table's columns rest on: training updates, priors, acoustic-scale grids."""
    rows = res["systems"] + res["singles"]
    out = ["", "Updates / frames: optimizer updates and training frames over every epoch run "
           "(the mean single: one model's; the ensemble: all members')."]
    agg = next((r for r in res["systems"] if r.get("key") == "single"), None)
    if agg and agg.get("n_wer") and agg.get("n_frame_acc") and agg["n_wer"] < agg["n_frame_acc"]:
        out.append(f"The single models: WER of the first {agg['n_wer']} of {agg['n_frame_acc']} "
                   "(decoded on dev and test), frame accuracy of all of them; the mean single "
                   "model's WER, its interval and the WER differences to it are over those "
                   f"{agg['n_wer']}.")
    priors = sorted({r["priors"] for r in rows if r.get("priors")})
    if priors:
        out.append("DNN posteriors divided by: " + " and ".join(
            {"counts": "the training alignment's pdf counts",
             "posterior": "each model's own mean posterior on training data (adjust-priors)"}
            .get(p, p) for p in priors) + ".")
    edge = [r["label"] for r in rows if r.get("acwt_edge") and r.get("key") != "single"]
    shared = [r for r in rows if r.get("acwt_shared")]
    if shared and all(r["acwt_shared"].get("systems") == 1 for r in shared):
        out.append("Acoustic scales: each DNN system its own, the least word errors on its dev "
                   "decode (`asrkd choose-acwt`; its lattices, searched once, read at every "
                   "value of the grid widened 4 steps past each edge); " + (
                       "at an edge of those values for: " + ", ".join(
                           r["label"] for r in shared if r.get("acwt_edge")) + "." if any(
                           r.get("acwt_edge") for r in shared) else "every one inside them.")
                   + " The GMMs: each its own, chosen on dev from a grid widened past an edge"
                   " while the best value was there.")
        return out
    if shared:
        n = shared[0]["acwt_shared"].get("systems")
        vals = sorted({r["acwt"] for r in shared if r.get("acwt") is not None})
        out.append("Acoustic scales: one for every DNN system (" + ", ".join(f"{v:g}" for v in
                   vals) + "), the value of least word errors summed over the dev decodes of "
                   + (f"{n} DNN systems" if n else "the DNN systems") + " (`asrkd choose-acwt`"
                   "; each system's lattices read at every value of the grid widened 4 steps "
                   "past each edge); " + ("it is at an edge of those values." if any(
                       r.get("acwt_edge") for r in shared) else "inside those values.")
                   + " The GMMs: each its own, chosen on dev from a grid widened past an edge"
                   " while the best value was there.")
        edge = [r["label"] for r in rows if r.get("acwt_edge") and not r.get("acwt_shared")
                and r.get("key") != "single"]
        if edge:
            out.append(f"Still at an edge: {', '.join(edge)}.")
        return out
    out.append("Acoustic scales: chosen on dev from a grid widened past an edge while the best "
               "value was there; " + (f"still at an edge for: {', '.join(edge)}." if edge else
                                      "every system's best scale is inside its grid."))
    return out


def _system_row(r, train):
    """A row of the systems table (``train``: the train set's figures, a column of their own)."""
    if not r["present"]:
        return f"| {r['label']} | missing | - | - |" + (" - |" if train else "") + " - | - | | |"
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
    return (f"| {r['label']} | {_fmt_params(r['params'])} | {_fmt_updates(r)} | {_fmt_acwt(r)} "
            f"| {acc} | {wer} | {g_acc} | {g_wer} |")


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


# ---------------------------------------------------------------------------------------------
# Charts

COLORS = {"gmm": "0.6", "single": "tab:blue", "ensemble": "tab:green", "student": "tab:orange",
          "control": "tab:purple", "other": "tab:brown"}


def plot_systems(res, path):
    """A PNG of frame accuracy and WER per system of one test set, with their intervals."""
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
    """A PNG of the validation frame accuracy per epoch of every model with a training log."""
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


# ---------------------------------------------------------------------------------------------
# Several runs (seeds) side by side

RUN_COLUMNS = (
    # (header, system key, what): what is a metric, "diff:<other>" (frame accuracy),
    # "diffwer:<other>" (WER) or "gain"; "<a>|<b>": the first of these the run has
    ("single DNN (mean) acc %", "single", "frame_acc"),
    ("ensemble acc %", "ensemble", "frame_acc"),
    ("ensemble - single", "ensemble", "diff:single"),
    ("distilled acc %", "distill", "frame_acc"),
    ("distilled - control", "distill", "diff:control_matched|control"),
    ("gain recovered", "distill", "gain"),
    ("train-only distilled - control", "distill_train", "diff:control"),
    ("single WER %", "single", "wer"),
    ("ensemble WER %", "ensemble", "wer"),
    ("distilled WER %", "distill", "wer"),
    ("ensemble - single (WER)", "ensemble", "diffwer:single"),
    ("distilled - control (WER)", "distill", "diffwer:control_matched|control"),
    ("train-only distilled - control (WER)", "distill_train", "diffwer:control"),
)


def _run_cell(by_key, key, what):
    r = by_key.get(key)
    if r is None or not r.get("present", True):
        return "-"
    if what == "gain":
        if r.get("gain_frame_acc") is None:
            return "-"
        return f"{r['gain_frame_acc']:.1f}%{_fmt_ci(r.get('gain_frame_acc_ci'), 1)}"
    if what.startswith("diff"):
        kind, others = what.split(":")
        metric = "wer" if kind == "diffwer" else "frame_acc"
        vs = r.get("vs", {})
        other = next((o for o in others.split("|") if o in vs), None)
        d = vs[other].get(metric) if other else None
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
    Frame accuracy with its interval, the paired differences that carry the claims in frame
    accuracy and in WER (ensemble - mean single, distilled - its control, the train-only student
    - its control; * where the interval excludes zero), the distilled model's share of the
    ensemble's gain, and the WERs.
    """
    head = "| run | " + " | ".join(h for h, _, _ in RUN_COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(RUN_COLUMNS)]
    for name, res in runs:
        by_key = {r["key"]: r for r in res["systems"]}
        cells = [_run_cell(by_key, key, what) for _, key, what in RUN_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The pooled comparisons of several runs (`compare-runs --pooled`): the claims of RUN_COLUMNS
POOLED_COMPARISONS = (
    ("ensemble - single", "ensemble", "single"),
    ("distilled - control", "distill", "control_matched|control"),
    ("train-only distilled - control", "distill_train", "control"),
)


def pooled_table(pooled):
    """Markdown table of pooled paired differences: ``pooled`` is [(label, {metric: result of
    statistics.pooled_difference or None})]."""
    lines = ["| comparison (pooled) | runs | speakers | frame acc (points) | WER (points) |",
             "|---|---:|---:|---:|---:|"]
    for label, by_metric in pooled:
        any_r = next((r for r in by_metric.values() if r), None)
        if any_r is None:
            continue
        cells = [_fmt_diff(by_metric.get(metric)) for metric in ("frame_acc", "wer")]
        lines.append(f"| {label} | {any_r['runs']} | {any_r['speakers']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
