"""Acoustic scorers for decoding, behind one ``make_scorer(MODEL, ...)``.

A scorer is any callable ``utt -> np.float32 (T, num_pdfs)`` of per-pdf log-likelihoods, what
asrkd.decode searches HCLG with. ``make_scorer`` tells from MODEL which one it is:

- a generalist + specialists dir (``specialists.json``, `asrkd train-specialists`):
  asrkd.specialists' scorer;
- a GMM model dir (``final.mdl``): ``GmmScorer``, per-pdf GMM log-likelihoods on MFCC + deltas
  + mean CMVN;
- an ``.onnx`` file from `asrkd export-onnx`: ``OnnxScorer``, run by onnxruntime;
- else DNN checkpoint(s), a dir with ``final.pt`` or an ensemble dir of ``*/final.pt``:
  asrkd.ensemble's ``Scorer``, log(mean posteriors) - log(prior), on fbank + the checkpoints'
  CMVN mode (the paper's: mean and variance).

DNN and ONNX scorers also give ``log_posteriors(utt)`` (frame accuracy is measured on those);
a scorer of a known tree carries ``tree_id`` and ``source`` for ``check_scorer_tree``.
"""

import os

import numpy as np

from asrkd.ensemble import Ensemble, Scorer, log_priors, resolve_checkpoints
from asrkd.errors import UserError
from asrkd.export import OnnxModel
from asrkd.features import FeatureReader
from asrkd.gmm import PackedGmm, load_gmm
from asrkd.identity import check_tree, tree_id
from asrkd.priors import KINDS as PRIOR_KINDS
from asrkd.priors import read_priors
from asrkd.specialists.scorer import is_specialists_dir
from asrkd.specialists.scorer import make_scorer as make_specialist_scorer


class GmmScorer:
    """utt -> per-pdf GMM log-likelihoods (T, num_pdfs) for a feature mapping."""

    def __init__(self, model, feats):
        self.packed = PackedGmm(model.am)
        self.feats = feats

    def __call__(self, utt):
        x = self.feats[utt]
        if x.shape[1] != self.packed.dim:
            raise UserError(f"{utt}: {x.shape[1]}-dim features but the GMMs take "
                            f"{self.packed.dim} (MFCC + deltas: decode the *_mfcc data dir)")
        return self.packed.pdf_loglikes(x)


class OnnxScorer(Scorer):
    """utt -> np.float32 (T, P) hybrid scores of an ONNX model, as the ensemble's Scorer (a
    subclass, so that frame accuracy reads its posteriors): ``log_posteriors(utt) - log(prior)``."""

    def __init__(self, onnx_model, feature_reader):
        self.model, self.reader = onnx_model, feature_reader
        self.log_prior = log_priors(onnx_model.pdf_counts)

    def log_posteriors(self, utt):
        return self.model.log_posteriors(self.reader[utt])


def onnx_scorer(path, data_dir=None, feats=None):
    """OnnxScorer over DATA_DIR's features (with the model's CMVN mode) or a given mapping."""
    model = OnnxModel(path)
    if feats is None:
        feats = FeatureReader(data_dir, cmvn=model.cmvn)
    elif getattr(feats, "cmvn", model.cmvn) != model.cmvn:
        raise UserError(f"{path} was trained with cmvn={model.cmvn!r} but the feature reader "
                        f"applies {feats.cmvn!r}")
    return OnnxScorer(model, feats)


def gmm_scorer(model_dir, data_dir=None, feats=None):
    """GmmScorer of a GMM model dir over DATA_DIR's MFCC + deltas + mean CMVN, or ``feats``."""
    m = load_gmm(model_dir)
    if m.am is None:
        raise UserError(f"{model_dir}: model has no GMMs")
    scorer = GmmScorer(m, feats if feats is not None else
                       FeatureReader(data_dir, cmvn="mean", deltas=2))
    scorer.tree_id, scorer.source = tree_id(model_dir), model_dir
    return scorer


def ensemble_scorer(ckpts, data_dir=None, feats=None, device="cpu", precision="fp32"):
    """Scorer of DNN checkpoint(s) (an ensemble) over DATA_DIR's features, read with the
    checkpoints' CMVN mode, or over ``feats`` (a FeatureReader or any mapping utt -> (T, D))."""
    if isinstance(ckpts, (str, os.PathLike)):
        ckpts = [ckpts]
    if not ckpts:
        raise UserError("no model checkpoints given")
    ens = Ensemble(ckpts, device=device, precision=precision)
    if feats is None:
        feats = FeatureReader(data_dir, cmvn=ens.cmvn)
    elif getattr(feats, "cmvn", ens.cmvn) != ens.cmvn:
        raise UserError(f"models were trained with cmvn={ens.cmvn!r} but the "
                        f"feature reader applies {feats.cmvn!r}")
    data = getattr(feats, "data", None)  # a FeatureReader over a data dir, or not
    if data is not None:
        ens.check(data.path, feats.dim)
    else:
        ens.check()
    scorer = Scorer(ens, feats)
    scorer.tree_id, scorer.source = ens.models[0].tree_id, ens.models[0].source
    return scorer


def make_scorer(model, data_dir=None, feats=None, device="cpu", precision="fp32",
                priors="counts"):
    """Scorer for MODEL (a specialists dir, a GMM model dir with final.mdl, DNN checkpoint(s)/an
    ensemble dir, or an .onnx file from export-onnx, run by onnxruntime) on data_dir's features,
    or on ``feats`` (a mapping utt -> features, normalised as MODEL needs). DNNs run on
    ``device``, with "bf16" ``precision`` under autocast. ``priors``: what a DNN's posteriors
    are divided by: "counts" (the training alignment's, in the checkpoint) or "posterior" (the
    model's own mean posterior, asrkd.priors: `asrkd adjust-priors`)."""
    if priors not in PRIOR_KINDS:
        raise UserError(f"priors must be one of {list(PRIOR_KINDS)}, got {priors!r}")
    models = model if isinstance(model, (list, tuple)) else [model]
    if priors == "posterior":
        if len(models) == 1 and os.path.isfile(os.path.join(models[0], "final.mdl")):
            raise UserError(f"{models[0]}: posterior priors are for DNN models, ensembles and "
                            "specialists dirs")
        scorer = make_scorer(model, data_dir, feats, device, precision)
        if isinstance(scorer, OnnxScorer):  # an ONNX file carries them in its metadata
            post = scorer.model.priors_posterior
            if post is None:
                raise UserError(f"{models[0]}: exported without posterior priors (export-onnx "
                                "a model dir that `asrkd adjust-priors` has written them into)")
        else:
            post = read_priors(models, len(scorer.log_prior))
        scorer.log_prior = log_posterior_priors(post)
        return scorer
    if len(models) == 1 and is_specialists_dir(models[0]):
        return make_specialist_scorer(models[0], data_dir, feats)
    if len(models) == 1 and os.path.isfile(os.path.join(models[0], "final.mdl")):
        return gmm_scorer(models[0], data_dir, feats)
    if len(models) == 1 and os.fspath(models[0]).endswith(".onnx"):
        return onnx_scorer(models[0], data_dir, feats)
    return ensemble_scorer(resolve_checkpoints(models), data_dir, feats, device=device,
                           precision=precision)


def log_posterior_priors(priors, floor=1e-20):
    """(P,) mean posteriors -> float32 log priors, renormalised; a pdf never predicted is floored
    (its scores stay finite)."""
    p = np.maximum(np.asarray(priors, dtype=np.float64), floor)
    return np.log(p / p.sum()).astype(np.float32)


def check_scorer_tree(scorer, graph_dir, ali_dir=None):
    """UserError unless the scorer's model has the tree of the graph (and of the alignments)."""
    for other in (graph_dir, ali_dir):
        if other is not None and getattr(scorer, "tree_id", None) is not None:
            check_tree(scorer.source, scorer.tree_id, other, tree_id(other))
