"""The priors a hybrid model divides its posteriors by: alignment counts or its own posteriors.

A DNN's hybrid score is ``log p(pdf | x) - log p(pdf)``. By default p(pdf) is the training
alignment's pdf frequencies (``pdf_counts`` in the checkpoint). Kaldi's nnet3 instead
re-estimates it from the network's own average posterior over training data
(``nnet3-am-adjust-priors``): a model trained on soft targets or extra audio is calibrated
differently from its alignment, and dividing by counts it does not match biases the search.

`asrkd adjust-priors MODEL DATA` writes ``MODEL/priors_posterior`` (the mean posterior of MODEL,
a single model or an ensemble dir, over DATA's utterances: one line of P floats) and
``MODEL/priors_posterior.json`` (data dir, utterances, frames); ``asrkd decode --priors
posterior`` divides by it. Every model keeps its counts: the choice is per decode.
"""

import os
import sys

import numpy as np

from asrkd.errors import UserError
from asrkd.table import atomic_path, write_json

PRIORS_FILE = "priors_posterior"
KINDS = ("counts", "posterior")


def priors_path(model):
    """Where MODEL's posterior priors live: MODEL itself if it is a dir, else the checkpoint's
    dir. A list of checkpoints (an ad-hoc ensemble) has no place: UserError."""
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise UserError("posterior priors belong to one model dir (an ensemble: its dir of "
                            "model*/final.pt), not to a list of checkpoints")
        model = model[0]
    model = os.fspath(model)
    if model.endswith(".onnx"):
        raise UserError(f"{model}: an ONNX model carries its own priors (export-onnx)")
    return os.path.join(model if os.path.isdir(model) else os.path.dirname(model), PRIORS_FILE)


def resolve_priors(model, priors):
    """``priors`` as make_scorer takes it: "auto" is "posterior" where MODEL (a DNN model or
    ensemble dir) holds adjust-priors' file, or MODEL (an ONNX file) was exported with them,
    else "counts"."""
    if priors != "auto":
        return priors
    if os.fspath(model).endswith(".onnx"):
        import onnx

        try:
            keys = {p.key for p in onnx.load(model, load_external_data=False).metadata_props}
        except Exception:  # not readable: the ONNX scorer says why
            return "counts"
        return "posterior" if "priors_posterior" in keys else "counts"
    return "posterior" if os.path.isfile(priors_path(model)) else "counts"


def read_priors(model, num_pdfs):
    """(P,) float64 posterior priors of MODEL (UserError if absent or of another size)."""
    path = priors_path(model)
    if isinstance(model, (list, tuple)):
        model = model[0]  # priors_path allows one
    if not os.path.isfile(path):
        raise UserError(f"{path}: no posterior priors; run `asrkd adjust-priors {model} "
                        "TRAIN_DATA` first (or decode with --priors counts)")
    try:
        with open(path) as f:
            priors = np.array(f.read().split(), dtype=np.float64)
    except ValueError:
        raise UserError(f"{path}: not a line of numbers; run adjust-priors again") from None
    if priors.shape != (num_pdfs,) or not np.all(np.isfinite(priors)) or (priors < 0).any():
        raise UserError(f"{path}: {priors.size} priors for a model of {num_pdfs} pdfs (or not "
                        "finite and >= 0); run adjust-priors again")
    return priors


def select_utts(utts, max_frames, lengths):
    """Every k-th utterance (sorted ids), k chosen so that about ``max_frames`` frames are kept:
    a spread over speakers, the same on every run. ``lengths``: utt -> frames."""
    utts = sorted(utts)
    total = sum(lengths[u] for u in utts)
    if max_frames <= 0 or total <= max_frames:
        return utts
    step = total / max_frames
    return utts[::max(1, int(np.ceil(step)))]


def estimate_priors(scorer, utts, progress=True):
    """(P,) float64 mean posterior of ``scorer`` (its ``log_posteriors(utt)``) over every frame
    of ``utts``, and the number of frames."""
    total, frames = None, 0
    for i, u in enumerate(utts):
        post = np.exp(scorer.log_posteriors(u).astype(np.float64))
        total = post.sum(axis=0) if total is None else total + post.sum(axis=0)
        frames += len(post)
        if progress and (i + 1) % 100 == 0:
            print(f"adjust-priors: {i + 1}/{len(utts)} utterances", file=sys.stderr)
    if not frames:
        raise UserError("no frames to estimate priors on")
    return total / frames, frames


def write_priors(model, priors, meta):
    """MODEL/priors_posterior (one line) and its .json record ``meta``; returns the path."""
    path = priors_path(model)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(" ".join(f"{p:.9g}" for p in priors) + "\n")
    write_json(path + ".json", meta)
    return path
