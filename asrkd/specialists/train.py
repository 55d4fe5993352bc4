"""Training the specialists (Hinton, Vinyals & Dean 2015, section 5): ``train_specialists``.

A specialist per confusable set S_m (asrkd.specialists.sets): the generalist's architecture,
initialised from its weights (``specialist_from_generalist``), with outputs over S_m plus one
dustbin class for every other pdf; by default the dustbin's logit is the log-sum-exp of a full
output layer's logits outside S_m (``pooled_dustbin``), so that an untrained specialist gives
exactly the generalist's collapsed distribution (one output row for the dustbin can only
approximate it). Its training frames (``specialist_frames``, the paper's 5.2): all frames aligned
to a pdf of S_m plus as many drawn at random from the rest, a new draw each epoch. The dustbin
is undersampled by the factor f = (rest frames) / (drawn rest frames), so at inference its logit
gets + log f (asrkd.specialists.combine) and its probability matches the real class frequencies.

Targets (``targets``): "hard" (the paper's 5.2, the default): the alignment's pdf, every pdf
outside S_m merged into the dustbin. "soft" (the paper's 6.1, soft targets as a regulariser):
``soft_weight`` x CE with the ensemble's stored soft targets (asrkd.softtargets, at T = 1)
collapsed onto S_m + dustbin and shifted to the sample's class frequencies (dustbin mass / f)
+ (1 - ``soft_weight``) x CE with the hard labels. These targets carry what the ensemble knows
and the generalist does not; the generalist's own collapsed distribution would not (a pooled
specialist starts at its minimum and has nothing to learn).

Training (``_train_specialist_job``): asrkd.train's loop (``train_epochs``, with the
specialist's TrainHooks) under a ``BestEpoch`` schedule (asrkd.schedule): Adam at a fixed rate for
``epochs`` epochs. Early stopping is on what the specialist is for: after each epoch the
generalist + this specialist are combined (asrkd.specialists.combine) on the validation frames
where it is active (the generalist's top-n pdfs meet S_m), and the epoch whose combination has
the highest frame accuracy against the alignment there is kept (``select="loss"``: the lowest
CE; with hard labels the CE of the combination only rose on the demo while its accuracy rose,
so six of eight specialists stayed the generalist). With the pooled dustbin the untrained
specialist (for which the combination is exactly the generalist) competes as epoch 0; a
specialist that ends there is marked (``kept_generalist``) in specialists.json and the reports.
The number of updates each specialist made is recorded. As in every run of that loop, dropout
(of a generalist that has it) is seeded per epoch from (seed, epoch).

A specialists dir is one MODEL for ``asrkd decode`` (asrkd.specialists.scorer):
``specialists.json`` (sets, corrections, inference settings), ``generalist.pt`` (a copy) and
``spec{m}/final.pt`` (with ``spec{m}/train_log.csv``).

Where we deviate from the paper: early stopping on the combination's validation accuracy (or
CE) on the frames where the specialist is active (the paper does not say how it stopped); the pooled
dustbin (an exact start from the generalist).
"""

import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from asrkd.alignment import AlignmentDir
from asrkd.config import DictConfig
from asrkd.distributed import World
from asrkd.errors import UserError
from asrkd.frames import FrameCache, build_frame_cache, extra_memmap, split_by_speaker
from asrkd.identity import check_tree
from asrkd.jobs import run_jobs
from asrkd.models import ModelConfig, build_model, load_checkpoint, load_model
from asrkd.schedule import BestEpoch
from asrkd.softtargets import PackedTargets, SoftTargetStore
from asrkd.specialists.combine import (active_specialists, collapse_sparse, combine,
                                       corrected_logits, dustbin_log_correction, membership,
                                       specialist_logits)
from asrkd.specialists.sets import (confusable_sets, confusion_sets, default_set_size,
                                    generalist_statistics, pdf_states, sets_markdown)
from asrkd.table import atomic_path, invalidate, write_json
from asrkd.train import TrainConfig, TrainHooks, TrainRun, train_epochs

SET_METHODS = ("confusion", "kmeans")
TARGETS = ("hard", "soft")


@dataclasses.dataclass
class SpecialistConfig(DictConfig):
    """Settings of ``train_specialists``; stored in ``specialists.json``."""

    num_sets: int = 8  # K specialists in all
    set_method: str = "confusion"  # or "kmeans" (on the covariance; asrkd.specialists.sets)
    set_size_max: int = 0  # pdfs per set at most (0: default_set_size, ~P / K, <= P / 2)
    clusterings: int = 2  # kmeans: k-means runs (seeds seed, seed + 1, ...) the sets come from
    kmeans_epochs: int = 10
    cov_frames: int = 0  # training frames the confusions are accumulated on (0: all)
    targets: str = "hard"  # "hard" (the paper's 5.2) or "soft" (6.1: + the ensemble's)
    soft_weight: float = 0.5  # "soft": weight of the soft-target CE (the rest: hard labels)
    # dustbin logit = log-sum-exp of a full output layer's logits outside the set (training
    # starts from exactly the generalist); False: one output row for the dustbin
    pooled_dustbin: bool = True
    epochs: int = 8  # the best epoch by `select` is kept (pooled: epoch 0, the generalist, too)
    # "acc": the combination's accuracy on the validation frames where the specialist is
    # active; "loss": its cross-entropy there
    select: str = "acc"
    batch_size: int = 256
    lr: float = 0.001  # Adam
    top_n: int = 1  # the generalist's n best pdfs of a frame choose its specialists
    gd_steps: int = 10  # gradient steps of the combination
    gd_lr: float = 2.0  # step size, in units of 1 / (1 + active specialists)
    combine_method: str = "gd"  # or "em" (see combine)
    seed: int = 0
    num_threads: int = 0  # 0: the cores split between the jobs

    def __post_init__(self):
        if self.set_method not in SET_METHODS:
            raise UserError(f"set_method must be one of {', '.join(SET_METHODS)}, got "
                            f"{self.set_method!r}")
        if self.targets not in TARGETS:
            raise UserError(f"targets must be one of {', '.join(TARGETS)}, got "
                            f"{self.targets!r}")
        if self.clusterings < 1:
            raise UserError(f"clusterings must be >= 1, got {self.clusterings}")
        if self.set_method == "kmeans" and self.num_sets < 2 * self.clusterings:
            raise UserError(f"--num-sets {self.num_sets} is too few for {self.clusterings} "
                            "clusterings (each needs at least 2 sets)")
        if self.num_sets < 1:
            raise UserError(f"--num-sets {self.num_sets} is too few (at least 1)")
        if self.select not in ("acc", "loss"):
            raise UserError(f"select must be 'acc' or 'loss', got {self.select!r}")
        if self.combine_method not in ("gd", "em"):
            raise UserError(f"combine_method must be 'gd' or 'em', got {self.combine_method!r}")
        if self.set_size_max < 0 or self.top_n < 1 or self.epochs < 1 or self.gd_steps < 0:
            raise UserError("set_size_max must be >= 0, top_n and epochs >= 1, gd_steps >= 0")
        if not 0 <= self.soft_weight <= 1:
            raise UserError(f"soft_weight must be in [0, 1], got {self.soft_weight}")


# ---------------------------------------------------------------------------------------------
# Training frames and the specialist's model


def specialist_frames(labels, in_set, rng):
    """A specialist's training frames: every frame whose label is in the set, plus as many
    (or all, if fewer) drawn without replacement from the rest.

    Args:
        labels: (F,) pdf of each candidate frame. in_set: (P,) bool membership of the set.
        rng: a numpy Generator (a new draw each epoch).
    Returns:
        (indices into labels (int64, shuffled), log of the dustbin's undersampling factor).
    """
    labels = np.asarray(labels)
    inside = np.flatnonzero(in_set[labels])
    rest = np.flatnonzero(~in_set[labels])
    n = min(len(inside), len(rest))
    drawn = rng.choice(rest, size=n, replace=False) if n < len(rest) else rest
    return rng.permutation(np.concatenate([inside, drawn])), dustbin_log_correction(len(rest), n)


def local_labels(set_pdfs, num_pdfs):
    """(P,) int64 map pdf -> specialist class: its index in the set, or len(set) (the dustbin)."""
    lut = np.full(num_pdfs, len(set_pdfs), dtype=np.int64)
    lut[np.asarray(set_pdfs, dtype=np.int64)] = np.arange(len(set_pdfs))
    return lut


def specialist_from_generalist(generalist, set_pdfs, log_correction=0.0, pooled=True):
    """A specialist initialised from the generalist: logits (N, |S| + 1) via specialist_logits
    (asrkd.specialists.combine).

    ``pooled``: a copy of the generalist whose dustbin logit is the log-sum-exp of its logits
    outside the set (their biases lowered by ``log_correction``, the undersampled dustbin), so
    that before training it gives exactly the generalist's collapsed distribution. Otherwise an
    output layer over the set + one dustbin row: the set's rows are the generalist's, the
    dustbin's the mean of the others with bias mean + log(count) - log_correction (about the
    log-sum-exp of their logits).
    """
    ids = torch.as_tensor(set_pdfs, dtype=torch.long)
    rest = torch.ones(generalist.config.num_pdfs, dtype=torch.bool)
    rest[ids] = False
    if pooled:
        model = build_model(ModelConfig.from_dict(generalist.config.to_dict()))
        model.load_state_dict(generalist.state_dict())
        with torch.no_grad():
            model.output.bias[rest] -= log_correction
        return model
    cfg = ModelConfig.from_dict({**generalist.config.to_dict(), "num_pdfs": len(set_pdfs) + 1})
    model = build_model(cfg)
    src = {k: v for k, v in generalist.state_dict().items()
           if not k.startswith("output.") and k != "pdf_counts"}
    model.load_state_dict(src, strict=False)
    gw, gb = generalist.output.weight.detach(), generalist.output.bias.detach()
    with torch.no_grad():
        model.output.weight[:-1] = gw[ids]
        model.output.bias[:-1] = gb[ids]
        if rest.any():
            model.output.weight[-1] = gw[rest].mean(0)
            model.output.bias[-1] = gb[rest].mean() + np.log(int(rest.sum())) - log_correction
        else:  # a set of every pdf: the dustbin can never be right
            model.output.weight[-1] = 0.0
            model.output.bias[-1] = -30.0
    return model


# ---------------------------------------------------------------------------------------------
# One specialist


@dataclasses.dataclass
class _Specialist:
    """One specialist in training: what it reads (frame cache, frozen generalist, set) and its
    model."""

    cache: FrameCache
    gen: torch.nn.Module
    ids: torch.Tensor  # (|S|,) the set's pdfs
    lut: torch.Tensor  # (P,) pdf -> class: its index in the set, |S| for the dustbin
    corr: float  # log f: the dustbin is undersampled f times
    pooled: bool
    model: torch.nn.Module

    def windows(self, frames):
        """(N, C, D) float32 windows of the cache's frames, with the generalist's context."""
        return torch.from_numpy(self.cache.windows(frames, self.gen.left_context,
                                                   self.gen.right_context))

    def probs(self, x):
        """(N, |S| + 1) the specialist's corrected distribution (real class frequencies)."""
        z = specialist_logits(self.model, x, self.ids, self.pooled)
        return torch.softmax(corrected_logits(z, self.corr), 1)


@dataclasses.dataclass
class _Validation:
    """The validation frames where the specialist is active, with the generalist's posteriors
    there (computed once) and its figures."""

    frames: np.ndarray  # (V,) cache frame indices
    y: torch.Tensor  # (V,) aligned pdfs
    p_g: torch.Tensor  # (V, P)
    loss: float  # the generalist's CE and accuracy on them
    acc: float
    total: int  # all validation frames (active or not)


def _start_specialist(cache_dir, generalist_path, set_pdfs, pooled, train_frames, seed):
    """The untrained specialist (specialist_from_generalist), the labels of the training
    frames and the set's (P,) bool membership."""
    cache = FrameCache(cache_dir)
    gen = load_model(generalist_path)
    gen.requires_grad_(False)
    gen.eval()
    num_pdfs = gen.config.num_pdfs
    in_set = np.zeros(num_pdfs, dtype=bool)
    in_set[set_pdfs] = True
    lut = torch.from_numpy(local_labels(set_pdfs, num_pdfs))
    ids = torch.as_tensor(set_pdfs, dtype=torch.long)
    labels = np.asarray(cache.pdf[train_frames], dtype=np.int64)
    _, corr = specialist_frames(labels, in_set, np.random.default_rng([seed, 0]))
    torch.manual_seed(seed)
    model = specialist_from_generalist(gen, set_pdfs, corr, pooled)
    if not pooled:  # (pooled: the generalist's own counts stay)
        counts = np.bincount(lut.numpy()[labels], minlength=len(set_pdfs) + 1)
        model.pdf_counts.copy_(torch.from_numpy(counts.astype(np.int64)))
    return _Specialist(cache, gen, ids, lut, corr, pooled, model), labels, in_set


def _validation(sp, valid_frames, top_n):
    """_Validation of a specialist: the frames of ``valid_frames`` where the generalist's
    ``top_n`` pdfs meet its set."""
    member = membership([sp.ids.tolist()], sp.gen.config.num_pdfs)
    keep, p_gs = [], []
    with torch.no_grad():
        for s in range(0, len(valid_frames), 4096):
            p_g = torch.softmax(sp.gen(sp.windows(valid_frames[s:s + 4096])), 1)
            act = active_specialists(p_g, member, top_n)[:, 0]
            keep.append(valid_frames[s:s + 4096][act.numpy()])
            p_gs.append(p_g[act])
    frames = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    p_g = torch.cat(p_gs) if p_gs else torch.zeros(0, sp.gen.config.num_pdfs)
    y = torch.from_numpy(np.asarray(sp.cache.pdf[frames], dtype=np.int64))
    n = max(len(frames), 1)
    loss = F.nll_loss(p_g.clamp_min(1e-30).log(), y, reduction="sum").item() / n
    acc = (p_g.argmax(1) == y).sum().item() / n
    return _Validation(frames, y, p_g, loss, acc, len(valid_frames))


def _evaluate(sp, val, cfg):
    """(CE, accuracy) of the generalist + this specialist combined (asrkd.specialists.combine)
    on the validation frames where it is active: what early stopping looks at."""
    sp.model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for s in range(0, len(val.frames), 4096):
            p_g = val.p_g[s:s + 4096]
            y = val.y[s:s + 4096]
            p_m = sp.probs(sp.windows(val.frames[s:s + 4096]))
            active = torch.ones(len(y), 1, dtype=torch.bool)
            log_q = combine(p_g, [p_m], [sp.ids.tolist()], active, cfg.gd_steps, cfg.gd_lr,
                            method=cfg.combine_method)
            loss += F.nll_loss(log_q, y, reduction="sum").item()
            correct += (log_q.argmax(1) == y).sum().item()
    n = max(len(val.frames), 1)
    return loss / n, correct / n


def _hooks(sp, cfg, labels, in_set, val, seed, drawn, topk):
    """The specialist's TrainHooks (asrkd.train): each epoch a new draw of its frames, seeded by
    (seed, epoch) (``drawn``: epoch -> their number); logits and labels over set + dustbin (the
    training sample's, uncorrected); the loss of ``cfg.targets``; validation as ``_evaluate``.
    ``topk``: the stored soft targets' (batch["extra"] packed [ids | probs | rest])."""

    def frames(epoch, train_frames):
        idx, _ = specialist_frames(labels, in_set, np.random.default_rng([seed, epoch]))
        drawn[epoch] = len(idx)
        return train_frames[idx]

    def hard_loss(logits, batch):  # CE with the aligned class (batch["y"], mapped by labels)
        return F.cross_entropy(logits, batch["y"])

    def soft_loss(logits, batch):  # + CE with the ensemble's targets collapsed onto S + dustbin
        extra = batch["extra"]
        target = collapse_sparse(extra[:, :topk].long(), extra[:, topk:2 * topk].float(),
                                 extra[:, 2 * topk].float(), sp.lut, len(sp.ids) + 1, sp.corr)
        soft = -(target * F.log_softmax(logits, 1)).sum(1).mean()
        return cfg.soft_weight * soft + (1 - cfg.soft_weight) * hard_loss(logits, batch)

    return TrainHooks(
        forward=lambda model, batch: specialist_logits(model, batch["x"], sp.ids, sp.pooled),
        labels=lambda y: sp.lut[y], loss=soft_loss if cfg.targets == "soft" else hard_loss,
        frames=frames, evaluate=lambda model: _evaluate(sp, val, cfg))


def _train_specialist_job(cache_dir, generalist_path, set_pdfs, out_dir, cfg_dict, train_frames,
                          valid_frames, seed, soft=None):
    """Train one specialist into out_dir/final.pt (module docstring); returns its summary.
    ``soft``: (path of the packed soft targets in cache frame order, their top k), or None."""
    cfg = SpecialistConfig.from_dict(cfg_dict)
    final = os.path.join(out_dir, "final.pt")
    if os.path.isfile(final):
        ck = torch.load(final, map_location="cpu", weights_only=True)
        if ck.get("specialist", {}).get("set") == list(set_pdfs):
            return ck["specialist"]
    os.makedirs(out_dir, exist_ok=True)
    sp, labels, in_set = _start_specialist(cache_dir, generalist_path, set_pdfs,
                                           cfg.pooled_dustbin, train_frames, seed)
    model = sp.model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    val = _validation(sp, valid_frames, cfg.top_n)
    print(f"generalist on the {len(val.frames)} of {val.total} validation frames where the "
          f"specialist is active: loss {val.loss:.4f} acc {val.acc:.4f}", file=sys.stderr)
    t_start = time.time()
    schedule = BestEpoch(cfg.lr, cfg.epochs, by=cfg.select)
    if sp.pooled:  # epoch 0 (the combination is exactly the generalist) competes
        schedule = BestEpoch(cfg.lr, cfg.epochs, val.loss, val.acc, by=cfg.select)
        model.save(final, epoch=0)
    tc = TrainConfig(epochs=cfg.epochs, min_epochs=1, batch_size=cfg.batch_size, lr=cfg.lr,
                     tensorboard=False)
    run = TrainRun(out_dir, tc, seed, World(), "cpu", sp.cache, model, opt, schedule, [],
                   train_frames, [], {"seed": int(seed)})
    if soft is not None:
        run.extra = np.load(soft[0], mmap_mode="r")
    drawn = {}
    train_epochs(run, _hooks(sp, cfg, labels, in_set, val, seed, drawn,
                             soft[1] if soft else 0))
    model.load_state_dict(load_checkpoint(final)["state_dict"])  # the best epoch
    best = schedule.state
    history = [{**h, "frames": drawn[h["epoch"]],
                "updates": math.ceil(drawn[h["epoch"]] / cfg.batch_size)} for h in run.history]
    info = {"set": [int(p) for p in set_pdfs], "log_correction": sp.corr,
            "num_pdfs": sp.gen.config.num_pdfs, "targets": cfg.targets,
            "best_epoch": best["best_epoch"], "kept_generalist": best["best_epoch"] == 0,
            "select": cfg.select,
            "valid_loss": best["best_loss"], "valid_acc": best["best_acc"],
            "valid_frames": len(val.frames), "valid_frames_all": val.total,
            "generalist_valid_loss": val.loss, "generalist_valid_acc": val.acc,
            "updates": int(sum(h["updates"] for h in history)),
            "updates_to_best": int(sum(h["updates"] for h in history
                                       if h["epoch"] <= best["best_epoch"])),
            "train_seconds": time.time() - t_start, "history": history}
    model.save(final, specialist=info)
    for p in glob.glob(os.path.join(out_dir, "epoch*.pt")):
        os.remove(p)  # a specialist does not resume: an unfinished one is trained anew
    return info


# ---------------------------------------------------------------------------------------------
# All specialists of a generalist


def train_specialists(generalist, data_dir, ali_dir, exp_dir, config=None, nj=1, lang_dir=None,
                      cache_dir=None, soft_dir=None):
    """`asrkd train-specialists`: confusable sets from the generalist, then one specialist per
    set, trained in ``nj`` parallel jobs. Returns the path of ``exp_dir/specialists.json``.

    ``soft_dir``: the ensemble's stored soft targets (`asrkd soft-targets`, T = 1) of data_dir,
    needed (and only allowed) with ``config.targets == "soft"``. Writes exp_dir: sets.json and
    sets.md (the sets with their phones/states), generalist.pt (a copy of GENERALIST),
    spec{m}/final.pt, log/train.{m}.log and specialists.json. Finished specialists (same set)
    are not retrained.
    """
    config = config or SpecialistConfig()
    if (soft_dir is not None) != (config.targets == "soft"):
        raise UserError("soft targets (--soft-targets DIR) go with --targets soft, and only "
                        "with it")
    t_start = time.time()
    gpath = _resolve_checkpoint(generalist)
    gen = load_model(gpath)
    ali = AlignmentDir(ali_dir).check()
    num_pdfs = ali.num_pdfs
    if gen.config.num_pdfs != num_pdfs:
        raise UserError(f"{gpath} has {gen.config.num_pdfs} pdfs, {ali_dir} has {num_pdfs}")
    os.makedirs(exp_dir, exist_ok=True)
    # the manifest is written last: a killed rerun must not read as the old run's whole
    invalidate(os.path.join(exp_dir, "specialists.json"))
    cache = build_frame_cache(data_dir, ali_dir, cache_dir or os.path.join(exp_dir, "frames"),
                              cmvn=gen.config.cmvn)
    train_utts, train_frames, valid_frames = _train_valid_frames(cache)
    soft = None
    if soft_dir is not None:
        soft = _pack_soft_targets(soft_dir, ali, num_pdfs, cache, train_utts, exp_dir)
    sets, confusion, set_seconds = _load_or_make_sets(exp_dir, config, gen, cache, train_frames)
    _write_sets_md(exp_dir, gpath, sets, config, num_pdfs, cache, train_frames, ali_dir,
                   lang_dir, confusion)

    gcopy = os.path.join(exp_dir, "generalist.pt")
    if not os.path.isfile(gcopy):
        with atomic_path(gcopy) as tmp:
            shutil.copyfile(gpath, tmp)
    nj, threads = _jobs_and_threads(nj, len(sets), config)
    dirs = [os.path.join(exp_dir, f"spec{m + 1}") for m in range(len(sets))]
    cfg = config.to_dict()
    args = [(cache.dir, gcopy, s["pdfs"], d, cfg, train_frames, valid_frames,
             config.seed * 1000 + m + 1, soft) for m, (s, d) in enumerate(zip(sets, dirs))]
    t0 = time.time()
    infos = run_jobs(_train_specialist_job, args, nj, os.path.join(exp_dir, "log"), "train",
                     desc="train-specialists", threads_per_job=threads)
    train_wall = time.time() - t0
    seconds = {"sets": set_seconds, "train_wall": train_wall,
               "train_sum": float(sum(i["train_seconds"] for i in infos)),
               "total": time.time() - t_start, "nj": nj, "threads_per_job": threads}
    out = os.path.join(exp_dir, "specialists.json")
    write_json(out, _manifest(gpath, num_pdfs, config, dirs, sets, infos, seconds, soft_dir),
               indent=1, sort_keys=False)
    return out


def _resolve_checkpoint(path):
    p = os.path.join(path, "final.pt") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise UserError(f"{path}: no DNN checkpoint (a final.pt or a dir holding one)")
    return p


def _train_valid_frames(cache):
    """The cache's labelled frames split by speaker: (train utterance indices, train frames,
    validation frames)."""
    labeled = np.flatnonzero(cache.labeled)
    train_utts, valid_utts = split_by_speaker([cache.spk[i] for i in labeled], 0.1)
    train_utts = labeled[train_utts].tolist()
    train_frames = cache.frames_of(train_utts)
    valid_frames = cache.frames_of(labeled[valid_utts].tolist())
    if len(valid_frames) == 0:
        valid_frames = train_frames[:: max(1, len(train_frames) // 2000)]
    return train_utts, train_frames, valid_frames


def _pack_soft_targets(soft_dir, ali, num_pdfs, cache, train_utts, exp_dir):
    """The stored soft targets of the training utterances packed [ids | probs | rest] in cache
    frame order (exp_dir/soft_targets.npy, what every specialist job memory-maps): (path,
    top k)."""
    store = SoftTargetStore(soft_dir)
    if abs(store.temperature - 1.0) > 1e-6:
        raise UserError(f"{soft_dir}: soft targets at T = {store.temperature}; specialists take "
                        "them at T = 1 (the dustbin correction assumes real probabilities)")
    if store.num_pdfs != num_pdfs:
        raise UserError(f"{soft_dir} has {store.num_pdfs} pdfs, the alignment {num_pdfs}")
    check_tree(f"the soft targets {soft_dir}", store.meta.get("tree_id"), ali.path,
               ali.tree_id)
    path = os.path.join(exp_dir, "soft_targets.npy")
    invalidate(path)
    extra_memmap(cache, train_utts, PackedTargets(store), path)
    return path, int(store.topk or num_pdfs)


def _load_or_make_sets(exp_dir, config, gen, cache, train_frames):
    """(sets, the generalist's (P, P) confusion matrix on the training frames, seconds it took):
    exp_dir/sets.json if made with the same settings, else the sets of ``config.set_method``
    (asrkd.specialists.sets), then saved (the confusion matrix as exp_dir/confusion.npy)."""
    sets_path = os.path.join(exp_dir, "sets.json")
    conf_path = os.path.join(exp_dir, "confusion.npy")
    if os.path.isfile(sets_path) and os.path.isfile(conf_path):
        with open(sets_path) as f:
            saved = json.load(f)
        if saved.get("config") != _set_fields(config):
            raise UserError(f"{exp_dir} holds sets made with other settings; use a new dir")
        return saved["sets"], np.load(conf_path), saved["seconds"]
    t0 = time.time()
    stat_frames = train_frames
    if 0 < config.cov_frames < len(stat_frames):
        stat_frames = np.sort(np.random.default_rng(config.seed).choice(
            stat_frames, config.cov_frames, replace=False))
    cov, conf = generalist_statistics(gen, cache, stat_frames)
    num_pdfs = gen.config.num_pdfs
    size = config.set_size_max or default_set_size(num_pdfs, config.num_sets)
    if config.set_method == "confusion":
        sets = confusion_sets(conf.confusion, config.num_sets, size)
    else:
        sets = confusable_sets(cov.covariance(), config.num_sets, config.clusterings, size,
                               config.seed, config.kmeans_epochs)
    seconds = time.time() - t0
    with atomic_path(conf_path) as tmp, open(tmp, "wb") as f:
        np.save(f, conf.confusion)
    write_json(sets_path, {"config": _set_fields(config), "set_size_max": size, "sets": sets,
                           "seconds": seconds, "frames": int(cov.n)}, indent=1, sort_keys=False)
    return sets, conf.confusion, seconds


def _write_sets_md(exp_dir, gpath, sets, config, num_pdfs, cache, train_frames, ali_dir,
                   lang_dir, confusion):
    """exp_dir/sets.md: the sets with their share of the training frames and of the
    generalist's confusions, phones and states."""
    labels = np.asarray(cache.pdf[train_frames], dtype=np.int64)
    frame_counts = np.bincount(labels, minlength=num_pdfs)
    share = [frame_counts[s["pdfs"]].sum() / max(len(labels), 1) for s in sets]
    size = config.set_size_max or default_set_size(num_pdfs, config.num_sets)
    how = ("greedy growth on the generalist's confusion matrix (training frames)"
           if config.set_method == "confusion" else
           f"{config.clusterings} k-means clusterings of the covariance of the generalist's "
           "posteriors")
    with atomic_path(os.path.join(exp_dir, "sets.md")) as tmp, open(tmp, "w") as f:
        covered = len({p for s in sets for p in s["pdfs"]})
        f.write(f"# Confusable sets of {gpath}\n\n{len(sets)} sets of at most {size} pdfs by "
                f"{how}; {covered} of {num_pdfs} pdfs covered. \"confusion held\": the share of "
                "the generalist's confusion mass (probability on a wrong pdf, training frames) "
                "between two pdfs of the set.\n\n")
        f.write(sets_markdown(sets, pdf_states(ali_dir, lang_dir), share, confusion))


def _jobs_and_threads(nj, num_sets, config):
    """(parallel jobs, CPU threads per job): at most one job per set, the cores split."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    nj = max(1, min(nj, num_sets))
    return nj, config.num_threads or max(1, cores // nj)


def _manifest(gpath, num_pdfs, config, dirs, sets, infos, seconds, soft_dir):
    """What specialists.json holds (what asrkd.specialists.scorer and .report read)."""
    return {
        "format": "asrkd-specialists-1", "generalist": "generalist.pt",
        "generalist_source": os.path.abspath(gpath), "num_pdfs": int(num_pdfs),
        "top_n": config.top_n, "gd_steps": config.gd_steps, "gd_lr": config.gd_lr,
        "combine_method": config.combine_method,
        "config": config.to_dict(),
        "soft_targets": os.path.abspath(soft_dir) if soft_dir else None,
        "specialists": [{"dir": os.path.basename(d), "set": s["pdfs"],
                         "clustering": s["clustering"], "log_correction": i["log_correction"],
                         "best_epoch": i["best_epoch"],
                         "kept_generalist": i.get("kept_generalist", i["best_epoch"] == 0),
                         "updates": i.get("updates"), "updates_to_best": i.get("updates_to_best"),
                         "valid_frames": i.get("valid_frames"),
                         "valid_acc": i["valid_acc"], "valid_loss": i["valid_loss"],
                         "generalist_valid_acc": i.get("generalist_valid_acc"),
                         "generalist_valid_loss": i.get("generalist_valid_loss"),
                         "train_seconds": i["train_seconds"]}
                        for d, s, i in zip(dirs, sets, infos)],
        "seconds": seconds,
    }


def _set_fields(config):
    keys = ("num_sets", "set_method", "set_size_max", "clusterings", "kmeans_epochs",
            "cov_frames", "seed")
    return {k: getattr(config, k) for k in keys}
