"""What the report reads from an experiment dir: the systems manifest and each system's files.

Per decode dir (``asrkd decode`` writes them): ``score.json`` / ``wer`` (WER), ``per_utt``
(per-utterance errors), ``frame_acc`` and ``frame_acc_per_utt`` (per-utterance correct frames),
``acwt`` (the acoustic scale used). Speakers come from ``DATA/<test set>/utt2spk`` (``--data``),
else from the utterance id's prefix up to the first ``-`` (the LibriSpeech convention).
Per model dir: ``train_log.csv`` (validation frame accuracy per epoch), ``final.pt`` (parameter
count), ``distill.json`` (a distilled student's settings). Per experiment dir: ``systems.tsv``
(the manifest, see asrkd.report) and ``timings.tsv`` (seconds per recipe stage).
"""

import csv
import glob
import json
import os
import re
from dataclasses import dataclass

from asrkd.errors import UserError
from asrkd.models import load_model
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


def read_training(model_dir, kind):
    """{"updates", "frames", "epochs"}: the optimizer updates and training frames of every epoch
    run (model_dir/train_log.csv; an ensemble: all its members' together); None where no log
    records them (a GMM, a run of an older version)."""
    dirs = (sorted(glob.glob(os.path.join(model_dir, "model*"))) if kind == "ensemble"
            else [model_dir])
    total = {"updates": 0, "frames": 0, "epochs": 0}
    for d in dirs:
        path = os.path.join(d, "train_log.csv")
        if not os.path.isfile(path):
            return None
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            total["updates"] += sum(int(r["updates"]) for r in rows)
            total["frames"] += sum(int(r["frames"]) for r in rows)
        except (KeyError, TypeError, ValueError):
            return None
        total["epochs"] += len(rows)
    return total if dirs else None


def read_decode_setup(model_dir, decode_dir):
    """{"priors": what the DNN's posteriors were divided by (decode_dir/priors; None if not
    recorded), "acwt_edge": True when a grid decode of the model (its decode_*/acwt_edge)
    ended with its best scale still at an edge of the widened grid, or, for a scale chosen for
    several systems, when that choice did, "acwt_shared": None, or {"dir": where the scale
    was chosen (decode_dir/acwt_from), "systems": how many dev decodes it pooled}}."""
    priors = None
    path = os.path.join(decode_dir, "priors")
    if os.path.isfile(path):
        with open(path) as f:
            priors = f.read().strip() or None
    edge, shared = False, None
    path = os.path.join(decode_dir, "acwt_from")
    if os.path.isfile(path):  # a scale chosen for several systems (asrkd choose-acwt)
        with open(path) as f:
            shared = f.read().strip()
        edges = [os.path.join(shared, "acwt_edge")]
        n = os.path.join(shared, "systems")
        if os.path.isfile(n):
            with open(n) as f:
                shared = {"dir": shared, "systems": sum(1 for line in f if line.strip())}
        else:
            shared = {"dir": shared, "systems": None}
    else:
        edges = glob.glob(os.path.join(model_dir, "decode_*", "acwt_edge"))
    for p in edges:
        if os.path.isfile(p):
            with open(p) as f:
                edge = edge or f.read().strip() == "edge"
    return {"priors": priors, "acwt_edge": edge, "acwt_shared": shared}


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
    paths = (sorted(glob.glob(os.path.join(model_dir, "model*", "final.pt")))
             if kind == "ensemble" else [os.path.join(model_dir, "final.pt")])
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        return None
    try:
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


def read_specialists_info(model_dir):
    """A specialists dir's training in brief (model_dir/specialists.json): K, targets, set
    sizes, updates per specialist and which ended at epoch 0; None if not such a dir."""
    path = os.path.join(model_dir, "specialists.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        m = json.load(f)
    specs = m.get("specialists", [])
    cfg = m.get("config", {})
    updates = [s["updates"] for s in specs if s.get("updates") is not None]
    return {"num_specialists": len(specs), "targets": cfg.get("targets", "generalist"),
            "set_method": cfg.get("set_method", "kmeans"),
            "set_sizes": [len(s["set"]) for s in specs], "updates": updates,
            "kept_generalist": [i + 1 for i, s in enumerate(specs)
                                if s.get("kept_generalist", s.get("best_epoch") == 0)]}


def read_utt2spk(data_root, test_set, utts):
    """{utt: speaker}: DATA_ROOT/<test_set>/utt2spk when there is one, else the id's prefix."""
    if data_root:
        path = os.path.join(data_root, test_set, "utt2spk")
        if os.path.isfile(path):
            return read_table(path)
    return {u: u.split("-")[0] for u in utts}


# ---------------------------------------------------------------------------------------------
# Where a system's files are


def model_dir(exp_dir, system):
    """A system's model dir: its ``model`` relative to exp_dir (or absolute)."""
    return system.model if os.path.isabs(system.model) else os.path.join(exp_dir, system.model)


def find_test_sets(exp_dir, systems):
    """Test sets decoded by any system (decode_* dirs, dev* excluded); ["test"] if none."""
    names = set()
    for s in systems:
        mdir = model_dir(exp_dir, s)
        if not os.path.isdir(mdir):
            continue
        for d in os.listdir(mdir):
            if d.startswith("decode_") and os.path.isdir(os.path.join(mdir, d)):
                name = d[len("decode_"):]
                if not name.startswith("dev") and not name.startswith("acwt"):
                    names.add(name)
    return sorted(names, key=lambda n: (n != "test", n)) or ["test"]

