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

What each decode dir holds and where speakers come from: asrkd.report.artefacts; intervals and
"gain recovered" (a student's share of the ensemble's gain): asrkd.report.statistics.

A *train set* (``write_report(train_set=NAME)``, `asrkd report --train-set`) adds a "train frame
acc" column from ``MODEL/decode_<NAME>/`` (e.g. written by `asrkd frame-accuracy --utts` on the
utterances a model was trained on: the paper's table 5), bootstrapped over that set's speakers.

Outputs: EXP_DIR/results.md, results.json (same figures), results.png (frame accuracy and WER
per system with intervals), curves.png (validation frame accuracy per epoch).

Where we deviate from the paper's table: we add GMM rows, a control row and small students, and
report the single models as mean ± sample std over seeds plus the best one (best frame accuracy
and best WER are taken separately, so they may come from different seeds).

The package: ``artefacts`` reads a run's files (manifest, decode dirs, logs), ``statistics``
turns them into the figures of one test set (``collect``), ``render`` writes markdown, charts
and the several-runs table; ``write_report`` and ``compare_runs`` here put them together.
"""

import json
import os

from asrkd.bootstrap import DEFAULT_RESAMPLES
from asrkd.errors import UserError
from asrkd.report.artefacts import (MANIFEST, METRICS, find_test_sets, read_manifest,
                                    read_timings)
from asrkd.report.render import (POOLED_COMPARISONS, plot_curves, plot_systems,
                                 pooled_table, render_markdown, runs_table)
from asrkd.report.statistics import collect, pooled_difference
from asrkd.table import atomic_path


def write_report(exp_dir, test_sets=None, manifest=None, data_root=None,
                 resamples=DEFAULT_RESAMPLES, train_set=None, dev_set=None):
    """Write EXP_DIR/results.{md,json,png} (+ curves.png); return the collected figures.

    ``manifest``: the systems.tsv (default EXP_DIR/systems.tsv). ``test_sets``: names of the
    decode_<name> dirs to report (default: all found, ``test`` first). The first one's figures
    are the top level of results.json and results.png; every set's figures are under
    ``by_test_set`` (charts ``results_<name>.png`` for the others). ``train_set``: the name of
    the decode_<name> dirs holding frame accuracy on training data: a column of every table
    (``train_set`` in results.json: each system's figures there, by key). ``dev_set``: the set
    the acoustic scales were tuned on; a test set of that name is flagged in its notes.
    """
    if not os.path.isdir(exp_dir):
        raise UserError(f"{exp_dir}: not a directory")
    systems = read_manifest(manifest or os.path.join(exp_dir, MANIFEST))
    sets = list(test_sets) if test_sets else [t for t in find_test_sets(exp_dir, systems)
                                              if t != train_set]
    results = [collect(exp_dir, systems, t, data_root, resamples) for t in sets]
    for r in results:
        if dev_set is not None and r["test_set"] == dev_set:
            r["notes"].insert(0, f"`{dev_set}` is the dev set: every acoustic scale was tuned "
                              "on it, so its WERs are optimistic (not a held-out test)")
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


def compare_runs(exp_dirs, names=None, pooled=False, test_set="test"):
    """The runs_table of EXP_DIR/results.json for each dir (name: the dir's name, or ``names``).

    ``pooled``: a second table, the claims' paired differences pooled over the runs' test
    speakers (statistics.pooled_difference, from each run's manifest and decode dirs).
    """
    runs = []
    for i, d in enumerate(exp_dirs):
        path = os.path.join(d, "results.json")
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such file (run `asrkd report {d}` first)")
        with open(path) as f:
            res = json.load(f)
        runs.append((names[i] if names else os.path.basename(os.path.normpath(d)), res))
    out = runs_table(runs)
    if pooled:
        manifests = [(d, read_manifest(os.path.join(d, MANIFEST))) for d in exp_dirs]
        rows = [(label, {m: pooled_difference(manifests, a, b, m, test_set) for m in METRICS})
                for label, a, b in POOLED_COMPARISONS]
        out += ("\nPooled over the runs' test speakers (each run's speakers drawn within it: "
                "the speakers' noise, not the models'):\n\n" + pooled_table(rows))
    return out
