"""Ensembles of acoustic models: members evaluated together and their distributions averaged.

One average serves every use of an ensemble (``average_posteriors``): soft targets for
distillation, hybrid decoding scores (``Scorer``), the exported ONNX graph and frame accuracy.
Hinton, Vinyals & Dean (2015, sec. 2) combine the members' temperature-softened distributions
over pdfs either as the arithmetic mean of the members' tempered softmaxes (``arith``, the
paper's choice) or as their normalized geometric mean (``geo`` = softmax(mean_m z_m / T)).
Decoding and frame accuracy use ``arith`` at T = 1: the mean posterior.

``Ensemble`` holds the members (one tree, one CMVN mode) and runs them over an utterance with
one feature pass (``ensemble_chunks``); ``Scorer`` turns it into the hybrid scorer
``utt -> log(mean_m softmax_m) - log(prior)``, the prior being the members' mean training
alignment counts.

An ensemble dir is ``model*/final.pt`` (``train-ensemble``); ``resolve_checkpoints`` also takes
one checkpoint or a model dir with ``final.pt``.
"""

import glob
import os

import numpy as np
import torch
from torch import nn

from asrkd.errors import UserError
from asrkd.features import FeatureReader
from asrkd.identity import check_features, check_tree
from asrkd.models import DNNAcousticModel, autocast, load_model

COMBINES = ("arith", "geo")
LOG_FLOOR = 1e-30  # mean posteriors are floored here before the log: scores stay finite


def average_posteriors(logits, temperature=1.0, combine="arith"):
    """The ensemble's distribution at temperature T from stacked member logits.

    Args:
        logits: (M, T, P) logits of M members (any leading frame shape after M).
    Returns:
        (T, P) probabilities: ``arith`` = mean_m softmax(z_m / T); ``geo`` =
        softmax(mean_m z_m / T), the normalized geometric mean of the tempered distributions.
    """
    if combine == "arith":
        return torch.softmax(logits / temperature, dim=-1).mean(dim=0)
    if combine == "geo":
        return torch.softmax(logits.mean(dim=0) / temperature, dim=-1)
    raise UserError(f"unknown combine {combine!r}; use one of {', '.join(COMBINES)}")


def log_mean_posteriors(logits):
    """(M, T, P) member logits -> (T, P) log of the mean posterior (arith, T = 1), floored."""
    return torch.log(average_posteriors(logits).clamp_min(LOG_FLOOR))


def log_priors(pdf_counts):
    """log p(pdf) from alignment counts; unseen pdfs floored to a count of 1 (finite scores)."""
    counts = np.maximum(np.asarray(pdf_counts, dtype=np.float64), 1.0)
    return np.log(counts / counts.sum()).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Finding and checking members


def find_teachers(teachers_dir):
    """Checkpoints TEACHERS_DIR/model*/final.pt, sorted; a UserError if there are none."""
    paths = sorted(glob.glob(os.path.join(teachers_dir, "model*", "final.pt")))
    if not paths:
        raise UserError(f"{teachers_dir}: no teacher checkpoints model*/final.pt")
    return paths


def resolve_checkpoints(model):
    """MODEL (a checkpoint, a dir with final.pt, a dir of */final.pt, or a list of these) ->
    checkpoint paths."""
    ckpts = []
    for m in [model] if isinstance(model, (str, os.PathLike)) else model:
        if os.path.isdir(m):
            found = sorted(os.path.join(m, d, "final.pt") for d in os.listdir(m)
                           if os.path.isfile(os.path.join(m, d, "final.pt")))
            if os.path.isfile(os.path.join(m, "final.pt")):
                found = [os.path.join(m, "final.pt")]
            if not found:
                raise UserError(f"{m}: neither a GMM dir (final.mdl) nor DNN checkpoints "
                                "(final.pt or */final.pt)")
            ckpts += found
        elif os.path.isfile(m):
            ckpts.append(m)
        else:
            raise UserError(f"{m}: no such model file or directory")
    return ckpts


def check_members(models, data_dir=None, dim=None):
    """UserError unless the models share one tree and (given a data dir) fit its features;
    returns their tree id. ``dim``: the data's feature dim (default: read from its features)."""
    for m in models[1:]:
        check_tree(models[0].source, models[0].tree_id, m.source, m.tree_id)
    if data_dir is not None:
        if dim is None:
            dim = FeatureReader(data_dir, cmvn=None).dim
        for m in models:
            check_features(m.source, m.feature_config, m.config.feat_dim, data_dir, dim)
    return models[0].tree_id


# ---------------------------------------------------------------------------------------------
# One feature pass for all members


def ensemble_utterance_logits(models, feats, chunk=4096, batched=None):
    """All members on one utterance, its features spliced once: feats (T, D) -> (M, T, P).

    Equal to stacking the members' ``utterance_logits`` (up to float rounding when batched);
    see ``ensemble_chunks``.
    """
    parts = list(ensemble_chunks(models, feats, chunk, batched))
    if not parts:
        return torch.zeros(len(models), 0, models[0].config.num_pdfs)
    return torch.cat(parts, dim=1)


def ensemble_chunks(models, feats, chunk=4096, batched=None):
    """Yield the members' logits (M, t, P) on successive chunks of t <= ``chunk`` frames.

    One feature pass: members are grouped by context and a group of DNNs shares each chunk's
    windows (t, C, D) instead of splicing per member. ``batched`` (default: on a CUDA device)
    runs a group of same-shaped DNNs without batch norm as one batched matmul per layer,
    (M, t, C*D) @ (M, C*D, H), which a GPU runs at a far higher share of its peak than M small
    products. Other members (TDNNs) run their own ``utterance_logits`` once per utterance.
    """
    models = list(models)
    feats = torch.as_tensor(feats, dtype=torch.float32)
    device = next(models[0].parameters()).device
    feats = feats.to(device)
    batched = device.type == "cuda" if batched is None else batched
    t = feats.shape[0]
    groups, own = {}, {}
    for i, m in enumerate(models):
        if isinstance(m, DNNAcousticModel):
            groups.setdefault((m.left_context, m.right_context), []).append(i)
        else:
            own[i] = m.utterance_logits(feats)
    stacks = {key: _stack_dnns([models[i] for i in members]) if batched else None
              for key, members in groups.items()}
    with torch.no_grad():
        for s in range(0, t, chunk):
            e = min(s + chunk, t)
            out = [None] * len(models)
            for i, z in own.items():
                out[i] = z[s:e]
            for (left, right), members in groups.items():
                idx = torch.arange(s, e, device=device)[:, None] + torch.arange(
                    -left, right + 1, device=device)
                win = feats[idx.clamp_(0, t - 1)]  # (t, C, D), shared by the group
                stack = stacks[(left, right)]
                if stack is not None:
                    for j, z in zip(members, _stacked_forward(stack, win.reshape(e - s, -1))):
                        out[j] = z
                else:
                    for j in members:
                        out[j] = models[j](win)
            yield torch.stack(out)


def _stack_dnns(dnns):
    """[(W (M, in, out), b (M, 1, out))] per layer for same-shaped DNNs, else None."""
    first = dnns[0].config
    if first.batchnorm or any(m.config.hidden_dims != first.hidden_dims
                              or m.config.num_pdfs != first.num_pdfs for m in dnns):
        return None
    linears = [[mod for mod in list(m.hidden) + [m.output] if isinstance(mod, nn.Linear)]
               for m in dnns]
    return [(torch.stack([ls[k].weight.t() for ls in linears]),
             torch.stack([ls[k].bias[None] for ls in linears])) for k in range(len(linears[0]))]


def _stacked_forward(stack, x):
    """x (N, C*D) -> (M, N, P) through stacked layers (ReLU between; dropout is off in eval)."""
    h = x.expand(stack[0][0].shape[0], *x.shape)
    for k, (w, b) in enumerate(stack):
        h = torch.baddbmm(b, h, w)
        if k < len(stack) - 1:
            h = torch.relu(h)
    return h


# ---------------------------------------------------------------------------------------------
# The ensemble and its hybrid scorer


class Ensemble:
    """M acoustic models evaluated together on an utterance: logits (M, T, P).

    ``members``: checkpoint paths (loaded here, eval mode, frozen) or models. An utterance is
    read, normalised and spliced once for all members (``ensemble_chunks``); ``device`` and
    ``precision`` ("bf16": autocast) say where and how the members run.
    """

    def __init__(self, members, device="cpu", precision="fp32"):
        members = list(members)
        self.paths = [os.fspath(p) if isinstance(p, (str, os.PathLike))
                      else getattr(p, "source", None) for p in members]
        self.models = []
        for m in members:
            if isinstance(m, (str, os.PathLike)):
                m = load_model(m).eval().requires_grad_(False)
            self.models.append(m.to(device))
        self.device, self.precision = device, precision

    @property
    def cmvn(self):
        """The members' common CMVN mode (UserError if they differ)."""
        modes = {m.config.cmvn for m in self.models}
        if len(modes) != 1:
            raise UserError(f"ensemble members use different CMVN modes {sorted(map(str, modes))}")
        return modes.pop()

    @property
    def pdf_counts(self):
        """(P,) float64 mean of the members' training alignment counts (their priors)."""
        counts = [m.pdf_counts.cpu().numpy() for m in self.models]
        if any(c.shape != counts[0].shape for c in counts):
            raise UserError("ensemble members disagree on the number of pdfs")
        if not counts[0].any():
            raise UserError("checkpoint holds no pdf counts (priors); was it trained by asrkd?")
        return np.mean(counts, axis=0)

    def check(self, data_dir=None, dim=None):
        """check_members of this ensemble; returns the tree id."""
        return check_members(self.models, data_dir, dim)

    @torch.no_grad()
    def utterance_logits(self, feats):
        """feats (T, D) -> (M, T, P) float32 logits (on the CPU)."""
        with autocast(self.device, self.precision):
            return ensemble_utterance_logits(self.models, feats).float().cpu()

    def posteriors(self, feats, temperature=1.0, combine="arith"):
        """feats (T, D) -> (T, P) the ensemble's distribution at ``temperature`` (on the CPU)."""
        return average_posteriors(self.utterance_logits(feats), temperature, combine)

    @torch.no_grad()
    def log_posteriors(self, feats, chunk=1024):
        """feats (T, D) -> np.float32 (T, P) log of the members' mean posteriors."""
        out = []
        # chunks keep (M, t, P) small with thousands of pdfs
        with autocast(self.device, self.precision):
            for logits in ensemble_chunks(self.models, feats, chunk=chunk):  # (M, t, P)
                out.append(log_mean_posteriors(logits.float()))
        if not out:
            return np.zeros((0, self.models[0].config.num_pdfs), dtype=np.float32)
        return torch.cat(out).cpu().numpy()


class Scorer:
    """utt -> np.float32 (T, P) hybrid pseudo log-likelihoods of one model or an ensemble.

    ``scorer(utt) = log(mean_m softmax_m) - log(prior)``; ``scorer.log_posteriors(utt)`` gives the
    first term alone (what frame accuracy is measured on). ``models``: an Ensemble or a list of
    models (run on ``device`` at ``precision``).
    """

    def __init__(self, models, feature_reader, device="cpu", precision="fp32"):
        if not isinstance(models, Ensemble):
            models = Ensemble(models, device=device, precision=precision)
        self.ensemble, self.models = models, models.models
        self.reader = feature_reader
        self.device, self.precision = models.device, models.precision
        self.log_prior = log_priors(models.pdf_counts)

    def log_posteriors(self, utt):
        feats = torch.from_numpy(np.ascontiguousarray(self.reader[utt], dtype=np.float32))
        return self.ensemble.log_posteriors(feats)

    def __call__(self, utt):
        return self.pseudo_loglikes(self.log_posteriors(utt))

    def pseudo_loglikes(self, log_posteriors):
        """log_posteriors (T, P) -> float32 (T, P) log-posteriors minus log-priors."""
        return (log_posteriors - self.log_prior).astype(np.float32)
