"""Frame-level cross-entropy training of an acoustic model on alignment pdf ids.

Data: the frames and pdf targets come from the frame cache (asrkd.frames), written once per data
dir + alignment dir and memory-mapped. A minibatch is a set of shuffled global frame indices.
Validation: a deterministic 10% of speakers (``asrkd.frames.split_by_speaker``: the same for
every seed, so ensemble members are comparable), scored on whole utterances as in decoding.
``chunk_size > 1`` trains on shuffled runs of consecutive frames instead of single frames, so a
TDNN computes its convolutions once per run (Kaldi's chunk training).

Schedule: ``Newbob`` (asrkd.schedule), Kaldi nnet1's newbob on the validation cross-entropy or
frame accuracy (``newbob_metric``), with rejection of an epoch that does not improve
(``reject_worse``), or a fixed halving schedule (``halving_from_epoch``). ``final.pt`` is the best
epoch. Frame accuracy is logged either way.

Resume: every epoch writes ``epoch{N}.pt`` (model, optimizer, schedule, history) atomically; a
rerun continues after the last one. Each epoch's shuffling and dropout are seeded from
(seed, epoch), so an interrupted-and-resumed run ends with the same weights as an uninterrupted one.

The loop: ``train_model`` sets a run up (``TrainRun``: frame cache, train/valid split, model,
optimizer, schedule, resumed state) and hands it to ``train_epochs``, which runs one epoch of
minibatch updates, validates, asks the schedule, and checkpoints, until the schedule is done
(a trainer with a model and frames of its own may build a TrainRun and call train_epochs).
What a trainer built on it (distillation, the specialists) changes is a ``TrainHooks``; every
field defaults to plain cross-entropy training:
- ``targets``: utt -> (T, ...) array of per-frame rows (soft targets), memory-mapped in cache
  frame order and batched as ``batch["extra"]``;
- ``forward(model, batch) -> logits``: the (N, K) logits that the loss and the logged training
  accuracy are on (a specialist's over its set + dustbin); default the model's over the pdfs;
- ``labels(y) -> y``: ``batch["y"]`` (pdf ids, -1 for none) as classes of those logits;
- ``loss(logits, batch) -> scalar``: replaces cross-entropy on ``batch["y"]``; ``batch["x"]``
  is the model input (N, C, D), or (B, chunk + left + right, D) with ``batch["chunk"]``;
- ``unlabeled``: utterances without an alignment are trained on too, with ``batch["y"] == -1``
  (the loss must handle it); they are never in the validation split;
- ``frames(epoch, train_frames) -> order``: the epoch's frames (chunk starts with
  ``chunk_size > 1``) in batching order; default: a permutation seeded by (seed, epoch), cut to
  ``max_frames_per_epoch``;
- ``evaluate(model) -> (valid loss, valid acc)``: default the CE and frame accuracy on the
  validation utterances (``_evaluate_world``);
- ``schedule``: an object with Newbob's interface (asrkd.schedule; ``BestEpoch`` is another);
  default ``Newbob(train_config)``;
- ``on_epoch_end(epoch)``: called on rank 0 after each epoch's checkpoint is written.

Deviation from the paper: the paper trained with asynchronous distributed SGD on ~700M frames; here
plain minibatch SGD or Adam on one machine (or data-parallel ranks, asrkd.distributed).
"""

import csv
import dataclasses
import glob
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from asrkd.alignment import AlignmentDir
from asrkd.config import DictConfig
from asrkd.distributed import (World, all_reduce_gradients, all_reduce_sums, barrier,
                               broadcast_parameters, init_world, local_part, rank_seed,
                               with_world_counts)
from asrkd.errors import UserError, reading
from asrkd.featconf import feature_config
from asrkd.frames import FrameCache, PageBudget, build_frame_cache, extra_memmap, split_by_speaker
from asrkd.identity import check_features, check_tree
from asrkd.models import PRECISIONS, ModelConfig, autocast, build_model, load_checkpoint
from asrkd.schedule import Newbob
from asrkd.score import write_utt_list
from asrkd.table import atomic_path


@dataclasses.dataclass
class TrainConfig(DictConfig):
    """Optimisation settings; stored in every checkpoint."""

    epochs: int = 8  # maximum
    min_epochs: int = 2
    batch_size: int = 256
    optimizer: str = "adam"  # or "sgd" (with momentum)
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    newbob_metric: str = "loss"  # "loss": validation CE (relative fall); "acc": frame accuracy
    start_halving_impr: float = 0.01  # (absolute gain for "acc")
    end_halving_impr: float = 0.001
    halving_factor: float = 0.5
    reject_worse: bool = True
    # > 0: a fixed schedule instead of newbob's: the learning rate halves (halving_factor) after
    # each epoch from this one on, whatever the validation says, and training runs all epochs.
    halving_from_epoch: int = 0
    valid_fraction: float = 0.1  # of speakers
    max_frames_per_epoch: int = 0  # 0: all training frames each epoch
    # > 0: an epoch is this many frames, drawn in passes over the training frames (each pass a
    # new permutation): the updates an epoch makes, e.g. a control given as many updates per
    # epoch as a student distilled on more data (0: one pass)
    frames_per_epoch: int = 0
    # > 1: minibatches of runs of consecutive frames (a TDNN shares its convolutions within a
    # run, as Kaldi's chunk training); batch["x"] is then (B, chunk + left + right, D).
    chunk_size: int = 1
    num_threads: int = 0  # 0: leave torch's setting
    tensorboard: bool = True
    device: str = "cpu"  # e.g. "cuda"; bit-identical reruns are promised on CPU only
    # "bf16": forward pass and loss under torch.autocast (bfloat16 matmuls, float32 weights and
    # optimizer); "fp32": plain float32.
    precision: str = "fp32"

    # Fields that may change between a run and its resumption.
    RESUMABLE = ("epochs", "min_epochs", "num_threads", "tensorboard", "device", "precision")

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise UserError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.batch_size < 1 or not self.lr > 0 or self.epochs < 1:  # (a NaN lr too)
            raise UserError("batch_size, lr and epochs must be positive")
        if self.chunk_size < 1:
            raise UserError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.frames_per_epoch < 0 or self.max_frames_per_epoch < 0:
            raise UserError("frames_per_epoch and max_frames_per_epoch must be >= 0")
        if self.halving_from_epoch < 0:
            raise UserError(f"halving_from_epoch must be >= 0, got {self.halving_from_epoch}")
        if self.newbob_metric not in ("loss", "acc"):
            raise UserError(f"newbob_metric must be 'loss' or 'acc', got {self.newbob_metric!r}")
        if not 0 <= self.valid_fraction < 1:
            raise UserError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                            f"{self.precision!r}")


def load_conf(path, **train_overrides):
    """YAML with optional ``model:`` and ``train:`` sections -> (ModelConfig, TrainConfig).

    ``train_overrides`` (e.g. ``num_threads=1`` from a command line) replace TrainConfig fields;
    ``None`` values are ignored.
    """
    model, train = _read_conf(path)
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    return model, dataclasses.replace(train, **overrides) if overrides else train


def _read_conf(path):
    if path is None:
        return ModelConfig(), TrainConfig()
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such config file")
    with open(path) as f, reading(path, "not valid YAML", (yaml.YAMLError,)):
        d = yaml.safe_load(f) or {}
    unknown = set(d) - {"model", "train"}
    if unknown:
        raise UserError(f"{path}: unknown sections {sorted(unknown)} (expected model:, train:)")
    try:
        return (ModelConfig.from_dict(d.get("model") or {}),
                TrainConfig.from_dict(d.get("train") or {}))
    except TypeError as e:
        raise UserError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# Hooks and run


@dataclasses.dataclass
class TrainHooks:
    """What a trainer built on this loop changes (see the module docstring); None: default."""

    targets: Optional[Mapping] = None  # utt -> (T, ...) per-frame rows: batch["extra"]
    forward: Optional[Callable] = None  # forward(model, batch) -> logits (N, K)
    labels: Optional[Callable] = None  # labels(y) -> batch["y"] as classes of those logits
    loss: Optional[Callable] = None  # loss(logits, batch) -> scalar
    unlabeled: bool = False  # train on utterances without alignment too (batch["y"] == -1)
    frames: Optional[Callable] = None  # frames(epoch, train_frames) -> the epoch's order
    evaluate: Optional[Callable] = None  # evaluate(model) -> (valid loss, valid acc)
    schedule: Any = None  # an object like Newbob
    on_epoch_end: Optional[Callable] = None  # on_epoch_end(epoch), after its checkpoint


@dataclasses.dataclass
class TrainRun:
    """What the epochs of one training run work on (train_model's setup builds it)."""

    exp_dir: str
    config: TrainConfig
    seed: int
    world: World
    device: str
    cache: FrameCache
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    schedule: Any  # Newbob or an object like it
    train_utts: list  # utterance indices of the cache
    train_frames: np.ndarray  # their global frame indices
    valid_utts: list
    common: dict  # what every checkpoint holds besides the weights
    history: list = dataclasses.field(default_factory=list)  # one row per epoch
    extra: Optional[np.ndarray] = None  # hooks.targets memmapped in cache frame order


# --------------------------------------------------------------------------------------------
# Training


def _make_optimizer(model, tc):
    if tc.optimizer == "adam":
        # fused: one kernel for all parameters (on a CPU a third of the per-tensor loop's time)
        return torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                fused=True)
    return torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum,
                           weight_decay=tc.weight_decay)


def _set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def _epoch_seed(seed, epoch):
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


def _chunk_starts(cache, frames, chunk):
    """Start frames of ``chunk``-frame pieces covering the utterances of ``frames``.

    A last piece that would overrun its utterance is moved back to end with it (a few frames are
    then seen twice per epoch), so every piece stays inside one utterance.
    """
    starts = frames[(frames - cache.offsets[cache.utt_of(frames)]) % chunk == 0]
    ends = cache.offsets[cache.utt_of(starts) + 1]
    lo = cache.offsets[cache.utt_of(starts)]
    return np.maximum(np.minimum(starts, ends - chunk), lo)


def _batches(cache, frames, model, batch_size, extra=None, device="cpu", chunk=1, world=None):
    """Minibatches of the frames in the given order (chunk > 1: ``frames`` are chunk starts).

    chunk == 1: x (N, C, D) one window per frame. chunk > 1: x (B, chunk + left + right, D), the
    frames of B pieces in order (N = B * chunk rows of y/extra), and batch["chunk"] = chunk.
    ``world`` (distributed training): ``batch_size`` is the global batch and only this rank's
    part of each one is read and yielded (it may be empty).
    """
    world = world or World()
    left, right = model.left_context, model.right_context
    step = batch_size if chunk == 1 else max(1, batch_size // chunk)
    budget = PageBudget(cache.feats, cache.pdf, extra)
    row_bytes = cache.feats.shape[1] * cache.feats.itemsize * (left + 1 + right)
    if extra is not None:
        row_bytes += int(np.prod(extra.shape[1:])) * extra.itemsize
    for s in range(0, len(frames), step):
        if chunk == 1:
            idx = local_part(frames[s:s + step], world)
            x = cache.windows(idx, left, right)
        else:
            starts = local_part(frames[s:s + step], world)
            u = cache.utt_of(starts)
            lo, hi = cache.offsets[u][:, None], cache.offsets[u + 1][:, None] - 1
            idx = np.clip(starts[:, None] + np.arange(chunk), lo, hi).ravel()
            win = np.clip(starts[:, None] + np.arange(-left, chunk + right), lo, hi)
            x = cache.feats[win]
        batch = {"x": torch.from_numpy(x),
                 "y": torch.from_numpy(np.asarray(cache.pdf[idx], dtype=np.int64))}
        if extra is not None:
            batch["extra"] = torch.from_numpy(np.asarray(extra[idx]))
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["frames"] = idx  # numpy, for naming the utterances of a batch that goes wrong
        budget.add(len(idx), row_bytes)
        if chunk > 1:
            batch["chunk"] = chunk
        yield with_world_counts(batch, world)
    budget.release()


class NonFiniteLoss(UserError):
    """A training loss went NaN/Inf: the epoch stops before any update or checkpoint from it."""

    def __init__(self, epoch, utts, exp_dir):
        if utts is None:
            where = " on the validation set"
        else:
            rows, utts = utts
            where = ("; non-finite values in the batch rows of " if rows else
                     f" in a batch of {len(utts)} utterance(s): ") + ", ".join(utts[:5]) + (
                         ", ..." if len(utts) > 5 else "")
        super().__init__(f"{exp_dir}: epoch {epoch}: the loss is NaN or Inf{where}; no "
                         "checkpoint of this epoch was written (check those utterances' "
                         "features and targets, or lower the learning rate)")


def _batch_utts(cache, batch, logits):
    """(True, utterances of the rows holding NaN/Inf inputs, targets or logits), or (False,
    all utterances of the batch) when no row does (the loss itself overflowed)."""
    n = len(batch["frames"])
    bad = np.zeros(n, dtype=bool)
    for k, v in (("x", batch["x"]), ("extra", batch.get("extra")), ("logits", logits)):
        if v is not None and torch.is_floating_point(v):
            finite = torch.isfinite(v.detach().reshape(v.shape[0], -1)).all(1).cpu().numpy()
            if k == "x" and "chunk" in batch:  # (B, chunk + context, D): B pieces of frames
                finite = np.repeat(finite, batch["chunk"])
            bad |= ~finite
    idx = batch["frames"][bad] if bad.any() else batch["frames"]
    return bool(bad.any()), [cache.utts[u] for u in np.unique(cache.utt_index[idx])]


def _forward(model, batch):
    """Logits (N, P) for a batch from ``_batches``."""
    if "chunk" in batch:
        return model.chunk_logits(batch["x"]).reshape(-1, model.config.num_pdfs)
    return model(batch["x"])


@torch.no_grad()
def _evaluate(model, cache, utt_ids, device="cpu"):
    """(CE loss, frame accuracy) on hard targets, whole utterances as in decoding."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    budget = PageBudget(cache.feats, cache.pdf)
    for u in utt_ids:
        a, b = cache.offsets[u], cache.offsets[u + 1]
        logits = model.utterance_logits(torch.from_numpy(np.array(cache.feats[a:b])).to(device))
        y = torch.from_numpy(np.asarray(cache.pdf[a:b], dtype=np.int64)).to(device)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        n += int(b - a)
        budget.add(b - a, cache.feats.shape[1] * cache.feats.itemsize)
    budget.release()
    n = max(n, 1)
    return float(loss / n), float(correct / n)


def _evaluate_world(model, cache, utt_ids, device, world):
    """_evaluate over all ranks: each scores every world.size-th utterance, sums all-reduced."""
    if not world.distributed:
        return _evaluate(model, cache, utt_ids, device)
    mine = list(utt_ids)[world.rank::world.size]
    n = int(sum(cache.offsets[u + 1] - cache.offsets[u] for u in mine))
    loss, acc = _evaluate(model, cache, mine, device) if mine else (0.0, 0.0)
    tot_loss, tot_correct, tot_n = all_reduce_sums([loss * n, acc * n, n], world, device)
    return float(tot_loss / max(tot_n, 1)), float(tot_correct / max(tot_n, 1))


def _last_epoch_checkpoint(exp_dir):
    best = None
    for p in glob.glob(os.path.join(exp_dir, "epoch*.pt")):
        m = re.fullmatch(r"epoch(\d+)\.pt", os.path.basename(p))
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best[1] if best else None


def _load_epoch_checkpoint(path):
    """An epoch{N}.pt, with the keys resuming reads checked (a tampered file is named)."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "schedule", "history", "train_config", "seed")
               if k not in ckpt]
    if missing:
        raise UserError(f"{path}: not an epoch checkpoint (no {', '.join(missing)}); delete it "
                        "to retrain that epoch")
    return ckpt


def is_finished(exp_dir):
    """True if ``exp_dir`` holds a completed training run (final.pt and a stopping epoch)."""
    last = _last_epoch_checkpoint(exp_dir)
    if last is None or not os.path.isfile(os.path.join(exp_dir, "final.pt")):
        return False
    ckpt = _load_epoch_checkpoint(last)
    s = ckpt["schedule"]
    return bool(s["stop"] or s["epoch"] >= ckpt["train_config"]["epochs"])


def _check_same_run(ckpt, model_config, train_config, seed, exp_dir):
    # (a field added since the run began counts as its default)
    old_tc = {k: v for k, v in {**TrainConfig().to_dict(), **ckpt["train_config"]}.items()
              if k not in TrainConfig.RESUMABLE}
    new_tc = {k: v for k, v in train_config.to_dict().items() if k not in TrainConfig.RESUMABLE}
    if ckpt["model_config"] != model_config.to_dict() or old_tc != new_tc \
            or ckpt["seed"] != seed:
        raise UserError(f"{exp_dir} holds a run with a different config or seed; "
                        "use a new exp dir (or delete its epoch*.pt)")


def _write_log(exp_dir, history):
    with atomic_path(os.path.join(exp_dir, "train_log.csv")) as tmp, open(tmp, "w") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc",
                    "seconds", "accepted", "frames", "updates"])
        for h in history:
            w.writerow([h["epoch"], f"{h['lr']:.6g}", f"{h['train_loss']:.5f}",
                        f"{h['train_acc']:.5f}", f"{h['valid_loss']:.5f}",
                        f"{h['valid_acc']:.5f}", f"{h['seconds']:.1f}", int(h["accepted"]),
                        h.get("frames", ""), h.get("updates", "")])


def train_model(data_dir, ali_dir, exp_dir, model_config, train_config, seed, init_from=None,
                train_fraction=1.0, cache_dir=None, hooks=None):
    """Train one acoustic model; return the path of ``exp_dir/final.pt`` (the best epoch).

    ``model_config.feat_dim``/``num_pdfs`` are filled from the data and alignment.
    ``init_from``: checkpoint whose weights start the training. ``train_fraction``: use that
    fraction of the training utterances (chosen by ``seed``). ``cache_dir``: where the frame
    cache lives (default ``exp_dir/frames``). ``hooks``: a TrainHooks (soft targets, another
    loss, ...; see the module docstring); None trains on cross-entropy with the hard targets.
    A finished run is not redone; an interrupted one resumes after its last epoch checkpoint.
    Under torchrun every process is one rank of a data-parallel run (asrkd.distributed):
    ``train_config.batch_size`` is then the global batch, shared out between the ranks.
    """
    hooks = hooks or TrainHooks()
    run = _setup(data_dir, ali_dir, exp_dir, model_config, train_config, seed, init_from,
                 train_fraction, cache_dir, hooks.unlabeled, hooks.schedule)
    final = os.path.join(exp_dir, "final.pt")
    if run.schedule.done:
        if not os.path.isfile(final):
            raise UserError(f"{exp_dir}: training finished but final.pt is missing")
        return final
    if hooks.targets is not None:
        extra_path = os.path.join(exp_dir, "extra_targets.npy")
        if run.world.is_main:
            run.extra = extra_memmap(run.cache, run.train_utts, hooks.targets, extra_path)
        barrier(run.world)
        if not run.world.is_main:
            run.extra = np.load(extra_path, mmap_mode="r")
    return train_epochs(run, hooks)


def _setup(data_dir, ali_dir, exp_dir, model_config, train_config, seed, init_from,
           train_fraction, cache_dir, unlabeled, schedule):
    """A TrainRun: frame cache, train/valid split, model and optimizer, resumed if begun."""
    model_config = ModelConfig.from_dict(model_config.to_dict())  # a copy we may fill in
    os.makedirs(exp_dir, exist_ok=True)
    if train_config.num_threads > 0:
        torch.set_num_threads(train_config.num_threads)
    if not 0 < train_fraction <= 1:
        raise UserError(f"train_fraction must be in (0, 1], got {train_fraction}")
    world, device = init_world(train_config.device)
    # glibc's mmap threshold is left alone here (unlike the soft-target pass): a training step's
    # temporaries have the same sizes every batch, so the heap reuses them; a fixed 128 kB
    # threshold mapped and zero-filled every activation anew and made epochs 50% slower.

    ali = AlignmentDir(ali_dir).check()
    pdf_counts = ali.pdf_counts
    cache = _open_cache(data_dir, ali_dir, ali.num_pdfs, cache_dir or os.path.join(
        exp_dir, "frames"), model_config, unlabeled, world)
    train_utts, valid_utts = _split_utts(cache, train_config.valid_fraction, seed,
                                         train_fraction)
    train_frames, valid_frames = cache.frames_of(train_utts), cache.frames_of(valid_utts)
    # which utterances the model saw: its training-set frame accuracy is measured on them
    # (with --train-fraction a small subset, the paper's table 5)
    write_utt_list(os.path.join(exp_dir, "train_utts"), [cache.utts[i] for i in train_utts])
    if len(valid_frames) == 0:
        raise UserError(f"{data_dir}: too few speakers for a validation split "
                        f"(valid_fraction {train_config.valid_fraction})")
    n_unlab = int((~cache.labeled[train_utts]).sum())
    print(f"train: {len(train_utts)} utts / {len(train_frames)} frames"
          + (f" (rank {world.rank} of {world.size})" if world.distributed else "")
          + (f" ({n_unlab} utts with no hard targets)" if n_unlab else "")
          + f", valid: {len(valid_utts)} utts / {len(valid_frames)} frames, skipped (no "
          f"alignment): {cache.meta['skipped_unaligned']}", file=sys.stderr)

    model, opt = _build_model(model_config, train_config, pdf_counts, seed, device)
    ali_tree = ali.tree_id
    common = {"pdf_counts": torch.from_numpy(pdf_counts), "train_config": train_config.to_dict(),
              "seed": int(seed), "data_dir": os.path.abspath(data_dir),
              "ali_dir": os.path.abspath(ali_dir), "tree_id": ali_tree,
              "feature_config": feature_config(data_dir), "world_size": world.size}
    run = TrainRun(exp_dir, train_config, seed, world, device, cache, model, opt,
                   schedule or Newbob(train_config), train_utts, train_frames, valid_utts,
                   common)
    _resume(run, model_config, data_dir, ali_dir, ali_tree, init_from)
    broadcast_parameters(model, world)
    return run


def _open_cache(data_dir, ali_dir, num_pdfs, cache_root, model_config, unlabeled, world):
    """The frame cache (rank 0 writes it, the others wait); fills model_config's dimensions."""
    if not world.is_main:  # rank 0 writes the cache; the others open it once it is there
        barrier(world)
    cache = build_frame_cache(data_dir, ali_dir, cache_root, cmvn=model_config.cmvn,
                              unaligned="keep" if unlabeled else "skip")
    if world.is_main:
        barrier(world)
    if model_config.num_pdfs not in (0, num_pdfs):
        raise UserError(f"model config says {model_config.num_pdfs} pdfs, {ali_dir} has "
                        f"{num_pdfs}")
    if model_config.feat_dim not in (0, cache.dim):
        raise UserError(f"model config says feat_dim {model_config.feat_dim}, features have "
                        f"{cache.dim}")
    model_config.num_pdfs, model_config.feat_dim = num_pdfs, cache.dim
    return cache


def _split_utts(cache, valid_fraction, seed, train_fraction):
    """(train, valid) utterance indices of the cache; ``train_fraction`` < 1 draws a subset."""
    # validation speakers are drawn from the labeled utterances only (the same as the teachers')
    labeled = np.flatnonzero(cache.labeled)
    train_utts, valid_utts = split_by_speaker([cache.spk[i] for i in labeled], valid_fraction)
    train_utts = sorted(labeled[train_utts].tolist()
                        + np.flatnonzero(~cache.labeled).tolist())
    valid_utts = labeled[valid_utts].tolist()
    if train_fraction < 1:
        # Labeled utterances are drawn exactly as a hard-target run of the same seed draws
        # them, so a student and its hard-target baseline share their small training set (the
        # paper's table 5); utterances with no alignment (a transfer set) by a draw of their own.
        lab = [u for u in train_utts if cache.labeled[u]]
        unlab = [u for u in train_utts if not cache.labeled[u]]
        rng = np.random.default_rng([int(seed), 7])
        n = max(1, int(round(train_fraction * len(lab)))) if lab else 0
        picked = rng.choice(lab, size=n, replace=False).tolist() if lab else []
        if unlab:
            n = max(1, int(round(train_fraction * len(unlab))))
            picked += np.random.default_rng([int(seed), 8]).choice(
                unlab, size=n, replace=False).tolist()
        train_utts = sorted(picked)
    return train_utts, valid_utts


def _build_model(model_config, train_config, pdf_counts, seed, device):
    """The model (initialised from ``seed``) on ``device``, and its optimizer."""
    torch.manual_seed(int(seed))
    model = build_model(model_config)
    model.pdf_counts.copy_(torch.from_numpy(pdf_counts))
    try:  # before the optimizer exists, so its loaded state lands on the same device
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"device {device!r}: {e}") from None
    return model, _make_optimizer(model, train_config)


def _resume(run, model_config, data_dir, ali_dir, ali_tree, init_from):
    """Continue after the last epoch{N}.pt of the exp dir, or start from ``init_from``."""
    last = _last_epoch_checkpoint(run.exp_dir)
    if last is not None:
        ckpt = _load_epoch_checkpoint(last)
        _check_same_run(ckpt, model_config, run.config, run.seed, run.exp_dir)
        check_tree(last, ckpt.get("tree_id"), ali_dir, ali_tree)
        check_features(last, ckpt.get("feature_config"), None, data_dir)
        run.model.load_state_dict(ckpt["state_dict"])
        run.opt.load_state_dict(ckpt["optimizer"])
        run.schedule.state, run.history = dict(ckpt["schedule"]), list(ckpt["history"])
        print(f"resuming after epoch {run.schedule.epoch} ({last})", file=sys.stderr)
    elif init_from is not None:
        src = load_checkpoint(init_from)
        check_tree(init_from, src.get("tree_id"), ali_dir, ali_tree)
        try:
            run.model.load_state_dict(src["state_dict"])
        except RuntimeError as e:
            raise UserError(f"{init_from}: does not fit the model config: "
                            f"{str(e).splitlines()[0]}") from None
        run.model.pdf_counts.copy_(run.common["pdf_counts"])


def train_epochs(run, hooks):
    """Train ``run`` until its schedule is done; return the path of its final.pt."""
    world = run.world
    loss_fn = hooks.loss or _cross_entropy
    evaluate = hooks.evaluate or (
        lambda model: _evaluate_world(model, run.cache, run.valid_utts, run.device, world))
    writer = None
    if run.config.tensorboard and world.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(run.exp_dir, "tensorboard"),
                               purge_step=run.schedule.epoch + 1)
    try:
        while not run.schedule.done:
            epoch = run.schedule.epoch + 1
            t0 = time.time()
            tot_loss, tot_correct, tot_n, tot_labeled, updates = _train_epoch(run, hooks, epoch,
                                                                              loss_fn)
            train_seconds = time.time() - t0
            valid_loss, valid_acc = evaluate(run.model)
            if not np.isfinite(valid_loss):
                raise NonFiniteLoss(epoch, None, run.exp_dir)
            lr = run.schedule.lr
            accepted = run.schedule.update(epoch, valid_loss, valid_acc)
            row = {"epoch": epoch, "lr": lr, "train_loss": tot_loss / max(tot_n, 1),
                   "train_acc": tot_correct / max(tot_labeled, 1), "valid_loss": valid_loss,
                   "valid_acc": valid_acc, "seconds": time.time() - t0, "accepted": accepted,
                   "train_frames_per_second": tot_n / max(train_seconds, 1e-9),
                   "frames": int(tot_n), "updates": updates}
            run.history.append(row)
            if world.is_main:
                print(f"epoch {epoch}: lr {lr:.3g} train loss {row['train_loss']:.4f} "
                      f"acc {row['train_acc']:.4f} | valid loss {valid_loss:.4f} acc "
                      f"{valid_acc:.4f}{_mark(accepted, run.schedule)} | "
                      f"{row['seconds']:.1f}s", file=sys.stderr)
            _checkpoint(run, epoch, accepted)
            if writer is not None:
                for k in ("lr", "train_loss", "train_acc", "valid_loss", "valid_acc"):
                    writer.add_scalar(k, row[k], epoch)
                writer.flush()
            if hooks.on_epoch_end is not None and world.is_main:
                hooks.on_epoch_end(epoch)
    finally:
        if writer is not None:
            writer.close()
    return os.path.join(run.exp_dir, "final.pt")


def _mark(accepted, schedule):
    """The log's note on an epoch that is not final.pt: rejected (the best epoch is put back)
    or just not the best (training goes on from it)."""
    if accepted:
        return ""
    return " (rejected)" if schedule.reload_rejected else " (not best)"


def _cross_entropy(logits, batch):
    return F.cross_entropy(logits, batch["y"], ignore_index=-1)


def _shuffled_frames(run, epoch, train_frames):
    """The default frame order of an epoch: a permutation seeded by (seed, epoch) of the
    training frames (of chunk starts with chunk_size > 1), cut to max_frames_per_epoch."""
    chunk = run.config.chunk_size
    units = train_frames if chunk == 1 else _chunk_starts(run.cache, train_frames, chunk)
    rng = np.random.default_rng(_epoch_seed(run.seed, epoch))
    frames = rng.permutation(units)
    if run.config.frames_per_epoch > 0:
        want = max(1, run.config.frames_per_epoch // chunk)
        passes = [frames] + [rng.permutation(units) for _ in range(-(-want // len(units)) - 1)]
        frames = np.concatenate(passes)[:want]
    if run.config.max_frames_per_epoch > 0:
        frames = frames[:max(1, run.config.max_frames_per_epoch // chunk)]
    return frames


def _train_epoch(run, hooks, epoch, loss_fn):
    """One epoch of minibatch updates; (loss sum, correct, frames, labeled frames) of all ranks
    and the number of updates."""
    tc, world, model, opt = run.config, run.world, run.model, run.opt
    torch.manual_seed(rank_seed(_epoch_seed(run.seed, epoch), world))
    frames = (hooks.frames or (lambda e, f: _shuffled_frames(run, e, f)))(epoch, run.train_frames)
    forward = hooks.forward or _forward
    _set_lr(opt, run.schedule.lr)
    model.train()
    tot_loss, tot_correct, tot_n, tot_labeled, updates = 0.0, 0, 0, 0, 0
    bar = tqdm(total=len(frames) * tc.chunk_size, desc=f"epoch {epoch}", unit="frame",
               file=sys.stderr, disable=None if world.is_main else True, unit_scale=True)
    for batch in _batches(run.cache, frames, model, tc.batch_size, run.extra, run.device,
                          tc.chunk_size, world):
        if hooks.labels is not None:
            batch["y"] = hooks.labels(batch["y"])
        n = len(batch["y"])
        opt.zero_grad(set_to_none=True)
        if n:  # a rank's part of a short last batch may be empty
            with autocast(run.device, tc.precision):
                logits = forward(model, batch)
                loss = loss_fn(logits, batch)
            if not torch.isfinite(loss.detach()).item():
                raise NonFiniteLoss(epoch, _batch_utts(run.cache, batch, logits), run.exp_dir)
            loss.backward()
            tot_loss += loss.item() * n
            tot_correct += (logits.detach().argmax(-1) == batch["y"]).sum().item()
            tot_labeled += (batch["y"] >= 0).sum().item()
            tot_n += n
        n_global = all_reduce_gradients(model, n, world)
        opt.step()
        updates += 1
        bar.update(n_global)
    bar.close()
    return (*all_reduce_sums([tot_loss, tot_correct, tot_n, tot_labeled], world, run.device),
            updates)


def _checkpoint(run, epoch, accepted):
    """final.pt of an accepted epoch, the best epoch back after a rejected one (when the
    schedule says so), then epoch{N}.pt and train_log.csv (rank 0 writes, all wait)."""
    model, opt, world, row = run.model, run.opt, run.world, run.history[-1]
    if accepted:  # on every rank (the other ranks must not reload: epoch{N}.pt is not there)
        if world.is_main:
            model.save(os.path.join(run.exp_dir, "final.pt"), epoch=epoch,
                       valid_acc=row["valid_acc"], **run.common)
    elif run.schedule.reload_rejected:
        best = load_checkpoint(os.path.join(run.exp_dir, f"epoch{run.schedule.best_epoch}.pt"))
        model.load_state_dict(best["state_dict"])
        opt.load_state_dict(best["optimizer"])
    if world.is_main:
        model.save(os.path.join(run.exp_dir, f"epoch{epoch}.pt"), optimizer=opt.state_dict(),
                   schedule=dict(run.schedule.state), history=run.history, **run.common)
        _write_log(run.exp_dir, run.history)
    barrier(world)  # epoch{N}.pt is on disk before any rank may need it (rejection)
