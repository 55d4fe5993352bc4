"""Training the specialists (Hinton, Vinyals & Dean 2015, section 5): ``train_specialists``.

A specialist per confusable set S_m (asrkd.specialists.sets): the generalist's architecture,
initialised from its weights (``specialist_from_generalist``), with outputs over S_m plus one
dustbin class for every other pdf; by default the dustbin's logit is the log-sum-exp of a full
output layer's logits outside S_m (``pooled_dustbin``), so that an untrained specialist gives
exactly the generalist's collapsed distribution (one output row for the dustbin can only
approximate it). Its training frames (``specialist_frames``): all frames aligned to a pdf of S_m
plus as many drawn at random from the rest. The dustbin is undersampled by the factor
f = (rest frames) / (drawn rest frames), so at inference its logit gets + log f
(asrkd.specialists.combine) and its probability matches the real class frequencies. Soft
targets: the generalist's distribution collapsed onto S_m + dustbin (``collapse``), shifted to
the sample's class frequencies (dustbin mass / f, renormalised) so that soft and hard targets
(``hard_targets=True``) both need the same correction.

Training (``_train_specialist_job``): asrkd.train's loop (``train_epochs``, with the
specialist's TrainHooks) under a ``BestLoss`` schedule (asrkd.schedule): Adam at a fixed rate for
``epochs`` epochs, a new draw of the frames each epoch, and the epoch with the lowest validation
loss (set + dustbin on all validation frames, corrected) kept; with the pooled dustbin the
untrained specialist competes as epoch 0. As in every run of that loop, dropout (of a generalist
that has it) is seeded per epoch from (seed, epoch).

A specialists dir is one MODEL for ``asrkd decode`` (asrkd.specialists.scorer):
``specialists.json`` (sets, corrections, inference settings), ``generalist.pt`` (a copy) and
``spec{m}/final.pt`` (with ``spec{m}/train_log.csv``).

Where we deviate from the paper: the paper's specialists were trained on hard targets (soft ones
as a regulariser in its sec. 6); here soft targets are the default.
"""

import dataclasses
import glob
import json
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
from asrkd.frames import FrameCache, build_frame_cache, split_by_speaker
from asrkd.jobs import run_jobs
from asrkd.models import ModelConfig, build_model, load_checkpoint, load_model
from asrkd.schedule import BestLoss
from asrkd.specialists.combine import (collapse, corrected_logits, dustbin_log_correction,
                                       specialist_logits)
from asrkd.specialists.sets import (confusable_sets, generalist_covariance, pdf_states,
                                    sets_markdown)
from asrkd.table import atomic_path, invalidate, write_json
from asrkd.train import TrainConfig, TrainHooks, TrainRun, train_epochs


@dataclasses.dataclass
class SpecialistConfig(DictConfig):
    """Settings of ``train_specialists``; stored in ``specialists.json``."""

    num_sets: int = 8  # K specialists in all
    set_size_max: int = 0  # pdfs per set at most (0: no bound); the farthest pdfs are left out
    clusterings: int = 2  # k-means runs (seeds seed, seed + 1, ...) the K sets are split over
    kmeans_epochs: int = 10
    cov_frames: int = 0  # training frames the covariance is accumulated on (0: all)
    hard_targets: bool = False  # train on alignment labels instead of the collapsed generalist
    # dustbin logit = log-sum-exp of a full output layer's logits outside the set (training
    # starts from exactly the generalist); False: one output row for the dustbin
    pooled_dustbin: bool = True
    epochs: int = 3  # the best on the validation speakers is kept (pooled: epoch 0 competes)
    batch_size: int = 512
    lr: float = 0.0003  # Adam; small because training starts from the generalist
    top_n: int = 1  # the generalist's n best pdfs of a frame choose its specialists
    gd_steps: int = 10  # gradient steps of the combination
    gd_lr: float = 2.0  # step size, in units of 1 / (1 + active specialists)
    combine_method: str = "gd"  # or "em" (see combine)
    seed: int = 0
    num_threads: int = 0  # 0: the cores split between the jobs

    def __post_init__(self):
        if self.clusterings < 1:
            raise UserError(f"clusterings must be >= 1, got {self.clusterings}")
        if self.num_sets < 2 * self.clusterings:
            raise UserError(f"--num-sets {self.num_sets} is too few for {self.clusterings} "
                            "clusterings (each needs at least 2 sets)")
        if self.combine_method not in ("gd", "em"):
            raise UserError(f"combine_method must be 'gd' or 'em', got {self.combine_method!r}")
        if self.set_size_max < 0 or self.top_n < 1 or self.epochs < 1 or self.gd_steps < 0:
            raise UserError("set_size_max must be >= 0, top_n and epochs >= 1, gd_steps >= 0")


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


def _start_specialist(cache_dir, generalist_path, set_pdfs, pooled, train_frames, seed):
    """The untrained specialist (specialist_from_generalist), the labels of the training
    frames and the set's (P,) bool membership."""
    cache = FrameCache(cache_dir)
    gen = load_model(generalist_path)
    gen.requires_grad_(False)
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


def _evaluate(sp, valid_frames, valid_y, generalist=False):
    """(CE, accuracy) over set + dustbin on all validation frames (the real mix), of the
    corrected specialist or (``generalist``) of the generalist's collapsed distribution."""
    sp.model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for s in range(0, len(valid_frames), 4096):
            x = sp.windows(valid_frames[s:s + 4096])
            y = sp.lut[torch.from_numpy(valid_y[s:s + 4096])]
            if generalist:
                z = collapse(torch.softmax(sp.gen(x), 1), sp.ids).clamp_min(1e-30).log()
            else:
                z = corrected_logits(specialist_logits(sp.model, x, sp.ids, sp.pooled), sp.corr)
            loss += F.cross_entropy(z, y, reduction="sum").item()
            correct += (z.argmax(1) == y).sum().item()
    n = max(len(valid_frames), 1)
    return loss / n, correct / n


def _hooks(sp, cfg, labels, in_set, valid_frames, valid_y, seed, drawn):
    """The specialist's TrainHooks (asrkd.train): each epoch a new draw of its frames, seeded by
    (seed, epoch) (``drawn``: epoch -> their number); logits, labels and targets over set +
    dustbin (the training sample's, uncorrected); validation as ``_evaluate``."""

    def frames(epoch, train_frames):
        idx, _ = specialist_frames(labels, in_set, np.random.default_rng([seed, epoch]))
        drawn[epoch] = len(idx)
        return train_frames[idx]

    def hard_loss(logits, batch):  # CE with the aligned class (batch["y"], mapped by labels)
        return F.cross_entropy(logits, batch["y"])

    def soft_loss(logits, batch):  # CE with the generalist's collapsed distribution
        with torch.no_grad():
            target = collapse(torch.softmax(sp.gen(batch["x"]), 1), sp.ids, sp.corr)
        return -(target * F.log_softmax(logits, 1)).sum(1).mean()

    return TrainHooks(
        forward=lambda model, batch: specialist_logits(model, batch["x"], sp.ids, sp.pooled),
        labels=lambda y: sp.lut[y], loss=hard_loss if cfg.hard_targets else soft_loss,
        frames=frames, evaluate=lambda model: _evaluate(sp, valid_frames, valid_y))


def _train_specialist_job(cache_dir, generalist_path, set_pdfs, out_dir, cfg_dict, train_frames,
                          valid_frames, seed):
    """Train one specialist into out_dir/final.pt (module docstring); returns its summary."""
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
    valid_y = np.asarray(sp.cache.pdf[valid_frames], dtype=np.int64)
    gen_loss, gen_acc = _evaluate(sp, valid_frames, valid_y, generalist=True)
    print(f"generalist on set + dustbin: valid loss {gen_loss:.4f} acc {gen_acc:.4f}",
          file=sys.stderr)
    t_start = time.time()
    schedule = BestLoss(cfg.lr, cfg.epochs)
    if sp.pooled:  # epoch 0 (the generalist itself) competes: a specialist never ends up worse
        schedule = BestLoss(cfg.lr, cfg.epochs, gen_loss, gen_acc)
        model.save(final, epoch=0)
    tc = TrainConfig(epochs=cfg.epochs, min_epochs=1, batch_size=cfg.batch_size, lr=cfg.lr,
                     tensorboard=False)
    run = TrainRun(out_dir, tc, seed, World(), "cpu", sp.cache, model, opt, schedule, [],
                   train_frames, [], {"seed": int(seed)})
    drawn = {}
    train_epochs(run, _hooks(sp, cfg, labels, in_set, valid_frames, valid_y, seed, drawn))
    model.load_state_dict(load_checkpoint(final)["state_dict"])  # the best epoch
    best = schedule.state
    info = {"set": [int(p) for p in set_pdfs], "log_correction": sp.corr,
            "num_pdfs": sp.gen.config.num_pdfs,
            "best_epoch": best["best_epoch"], "valid_loss": best["best_loss"],
            "valid_acc": best["best_acc"],
            "generalist_valid_loss": gen_loss, "generalist_valid_acc": gen_acc,
            "train_seconds": time.time() - t_start,
            "history": [{**h, "frames": drawn[h["epoch"]]} for h in run.history]}
    model.save(final, specialist=info)
    for p in glob.glob(os.path.join(out_dir, "epoch*.pt")):
        os.remove(p)  # a specialist does not resume: an unfinished one is trained anew
    return info


# ---------------------------------------------------------------------------------------------
# All specialists of a generalist


def train_specialists(generalist, data_dir, ali_dir, exp_dir, config=None, nj=1, lang_dir=None,
                      cache_dir=None):
    """`asrkd train-specialists`: confusable sets from the generalist, then one specialist per
    set, trained in ``nj`` parallel jobs. Returns the path of ``exp_dir/specialists.json``.

    Writes exp_dir: sets.json and sets.md (the sets with their phones/states), generalist.pt (a
    copy of GENERALIST), spec{m}/final.pt, log/train.{m}.log and specialists.json. Finished
    specialists (same set) are not retrained.
    """
    config = config or SpecialistConfig()
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
    train_frames, valid_frames = _train_valid_frames(cache)
    sets, cov_seconds = _load_or_make_sets(exp_dir, config, gen, cache, train_frames)
    _write_sets_md(exp_dir, gpath, sets, config, num_pdfs, cache, train_frames, ali_dir,
                   lang_dir)

    gcopy = os.path.join(exp_dir, "generalist.pt")
    if not os.path.isfile(gcopy):
        with atomic_path(gcopy) as tmp:
            shutil.copyfile(gpath, tmp)
    nj, threads = _jobs_and_threads(nj, len(sets), config)
    dirs = [os.path.join(exp_dir, f"spec{m + 1}") for m in range(len(sets))]
    cfg = config.to_dict()
    args = [(cache.dir, gcopy, s["pdfs"], d, cfg, train_frames, valid_frames,
             config.seed * 1000 + m + 1) for m, (s, d) in enumerate(zip(sets, dirs))]
    t0 = time.time()
    infos = run_jobs(_train_specialist_job, args, nj, os.path.join(exp_dir, "log"), "train",
                     desc="train-specialists", threads_per_job=threads)
    train_wall = time.time() - t0
    seconds = {"sets": cov_seconds, "train_wall": train_wall,
               "train_sum": float(sum(i["train_seconds"] for i in infos)),
               "total": time.time() - t_start, "nj": nj, "threads_per_job": threads}
    out = os.path.join(exp_dir, "specialists.json")
    write_json(out, _manifest(gpath, num_pdfs, config, dirs, sets, infos, seconds), indent=1,
               sort_keys=False)
    return out


def _resolve_checkpoint(path):
    p = os.path.join(path, "final.pt") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise UserError(f"{path}: no DNN checkpoint (a final.pt or a dir holding one)")
    return p


def _train_valid_frames(cache):
    """The cache's labelled frames split by speaker: (train frames, validation frames)."""
    labeled = np.flatnonzero(cache.labeled)
    train_utts, valid_utts = split_by_speaker([cache.spk[i] for i in labeled], 0.1)
    train_frames = cache.frames_of(labeled[train_utts].tolist())
    valid_frames = cache.frames_of(labeled[valid_utts].tolist())
    if len(valid_frames) == 0:
        valid_frames = train_frames[:: max(1, len(train_frames) // 2000)]
    return train_frames, valid_frames


def _load_or_make_sets(exp_dir, config, gen, cache, train_frames):
    """(sets, seconds it took): exp_dir/sets.json if made with the same settings, else the
    confusable sets of the generalist's covariance on the training frames (then saved)."""
    sets_path = os.path.join(exp_dir, "sets.json")
    if os.path.isfile(sets_path):
        with open(sets_path) as f:
            saved = json.load(f)
        if saved.get("config") != _set_fields(config):
            raise UserError(f"{exp_dir} holds sets made with other settings; use a new dir")
        return saved["sets"], saved["seconds"]
    t0 = time.time()
    cov_frames = train_frames
    if 0 < config.cov_frames < len(cov_frames):
        cov_frames = np.sort(np.random.default_rng(config.seed).choice(
            cov_frames, config.cov_frames, replace=False))
    acc = generalist_covariance(gen, cache, cov_frames)
    sets = confusable_sets(acc.covariance(), config.num_sets, config.clusterings,
                           config.set_size_max, config.seed, config.kmeans_epochs)
    cov_seconds = time.time() - t0
    write_json(sets_path, {"config": _set_fields(config), "sets": sets, "seconds": cov_seconds,
                           "frames": int(acc.n)}, indent=1, sort_keys=False)
    return sets, cov_seconds


def _write_sets_md(exp_dir, gpath, sets, config, num_pdfs, cache, train_frames, ali_dir,
                   lang_dir):
    """exp_dir/sets.md: the sets with their share of the training frames, phones and states."""
    labels = np.asarray(cache.pdf[train_frames], dtype=np.int64)
    frame_counts = np.bincount(labels, minlength=num_pdfs)
    share = [frame_counts[s["pdfs"]].sum() / max(len(labels), 1) for s in sets]
    with atomic_path(os.path.join(exp_dir, "sets.md")) as tmp, open(tmp, "w") as f:
        covered = len({p for s in sets for p in s["pdfs"]})
        f.write(f"# Confusable sets of {gpath}\n\n{len(sets)} sets from {config.clusterings} "
                f"k-means clusterings of the covariance of the generalist's posteriors; "
                f"{covered} of {num_pdfs} pdfs covered.\n\n")
        f.write(sets_markdown(sets, pdf_states(ali_dir, lang_dir), share))


def _jobs_and_threads(nj, num_sets, config):
    """(parallel jobs, CPU threads per job): at most one job per set, the cores split."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    nj = max(1, min(nj, num_sets))
    return nj, config.num_threads or max(1, cores // nj)


def _manifest(gpath, num_pdfs, config, dirs, sets, infos, seconds):
    """What specialists.json holds (what asrkd.specialists.scorer reads)."""
    return {
        "format": "asrkd-specialists-1", "generalist": "generalist.pt",
        "generalist_source": os.path.abspath(gpath), "num_pdfs": int(num_pdfs),
        "top_n": config.top_n, "gd_steps": config.gd_steps, "gd_lr": config.gd_lr,
        "combine_method": config.combine_method,
        "config": config.to_dict(),
        "specialists": [{"dir": os.path.basename(d), "set": s["pdfs"],
                         "clustering": s["clustering"], "log_correction": i["log_correction"],
                         "valid_acc": i["valid_acc"], "best_epoch": i["best_epoch"],
                         "generalist_valid_acc": i.get("generalist_valid_acc"),
                         "valid_loss": i["valid_loss"],
                         "generalist_valid_loss": i.get("generalist_valid_loss"),
                         "train_seconds": i["train_seconds"]}
                        for d, s, i in zip(dirs, sets, infos)],
        "seconds": seconds,
    }


def _set_fields(config):
    keys = ("num_sets", "set_size_max", "clusterings", "kmeans_epochs", "cov_frames", "seed")
    return {k: getattr(config, k) for k in keys}
