"""Specialist models on HMM states: a generalist plus specialists for confusable pdf sets.

Hinton, Vinyals & Dean (2015), section 5, applied to tied triphone states (pdfs):

- Confusable sets: the covariance of the generalist's predicted distributions over training
  frames (P x P, accumulated in batches, ``CovarianceAccumulator``) is clustered by on-line
  k-means on its columns (``online_kmeans``): pdfs that are predicted together fall in one set.
  Overlap (the paper's sets overlapped): the K sets come from ``clusterings`` k-means runs with
  different seeds (``confusable_sets``), so with 2 runs every pdf is in up to 2 sets.
- A specialist per set S_m: the generalist's architecture, initialised from its weights, with
  outputs over S_m plus one dustbin class for every other pdf; by default the dustbin's logit is
  the log-sum-exp of a full output layer's logits outside S_m (``pooled_dustbin``), so that an
  untrained specialist gives exactly the generalist's collapsed distribution (one output row for
  the dustbin can only approximate it). Its training frames
  (``specialist_frames``): all frames aligned to a pdf of S_m plus as many drawn at random from
  the rest. The dustbin is undersampled by the factor f = (rest frames) / (drawn rest frames), so
  at inference its logit gets + log f (``dustbin_log_correction``) and its probability matches the
  real class frequencies. Soft targets: the generalist's distribution collapsed onto S_m + dustbin
  (``collapse``), shifted to the sample's class frequencies (dustbin mass / f, renormalised) so that
  soft and hard targets (``hard_targets=True``) both need the same correction.
- Inference (``combine``): a frame's generalist top-n pdfs choose the active specialists (those
  whose set meets them); q minimises KL(p_g || q) + sum_active KL(p_m || q), where p_m is spread
  over S_m and its dustbin mass over the rest of the pdfs in proportion to q. Solved by gradient
  descent on q's logits, a few steps, batched over frames (torch; CPU or GPU).

A specialists dir (``train_specialists``) is one MODEL for ``asrkd decode``: ``specialists.json``
(sets, corrections, inference settings), ``generalist.pt`` (a copy) and ``spec{m}/final.pt``;
the decoder divides the combined posteriors by the generalist's priors.

Where we deviate from the paper: k-means runs on the covariance columns scaled to unit length
(otherwise the columns of rare pdfs, near zero, form one set whatever they are confused with);
the paper's specialists were trained on hard targets (soft ones as a regulariser in its sec. 6);
here soft targets are the default. The gradient descent starts from one EM step (the dustbin
masses spread over the rest in proportion to p_g), which already solves the case of a single
specialist with a one-pdf dustbin.
"""

import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from asrkd.alignment import AlignmentDir
from asrkd.config import DictConfig
from asrkd.errors import UserError
from asrkd.ensemble import Scorer
from asrkd.table import atomic_path


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
# (a) Confusable sets


class CovarianceAccumulator:
    """Covariance over frames of predicted distributions, accumulated batch by batch.

    ``add(probs)`` takes (N, P) rows; ``covariance()`` returns (P, P) float64, the population
    covariance sum_n (p_n - mean)(p_n - mean)^T / N. Batch products run in float32 (fast) and are
    summed in float64.
    """

    def __init__(self, num_pdfs):
        self.n = 0
        self.sum = np.zeros(num_pdfs)
        self.outer = np.zeros((num_pdfs, num_pdfs))

    def add(self, probs):
        p = torch.as_tensor(probs, dtype=torch.float32)
        self.n += p.shape[0]
        self.sum += p.sum(0).double().cpu().numpy()
        self.outer += (p.T @ p).double().cpu().numpy()

    @property
    def mean(self):
        return self.sum / max(self.n, 1)

    def covariance(self):
        if self.n == 0:
            raise UserError("covariance of no frames")
        m = self.mean
        return self.outer / self.n - np.outer(m, m)


def online_kmeans(points, k, seed=0, epochs=10, max_size=0, restarts=4):
    """On-line (MacQueen) k-means of the rows of ``points`` (n, d) into ``k`` clusters.

    Centroids start from greedy k-means++ seeding; each epoch visits the points in a random order
    and moves the nearest centroid towards each by 1 / (its visits this epoch + 1). Of
    ``restarts`` runs (seeds drawn from ``seed``) the one with the least squared distance to the
    centroids is kept. The final assignment is to the nearest centroid; with ``max_size`` > 0 a
    cluster keeps only its ``max_size`` nearest points and the others get -1 (in no set: never
    forced into a cluster they are not near). Returns labels (n,) int64.
    """
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise UserError(f"cannot make {k} clusters of {n} points")
    best = None
    for r in range(max(1, restarts)):
        cent = _online_kmeans_run(x, k, np.random.default_rng([seed, r]), epochs)
        dist = ((x ** 2).sum(1)[:, None] - 2 * x @ cent.T + (cent ** 2).sum(1)[None])  # (n, k)
        inertia = dist.min(1).sum()
        if best is None or inertia < best[0]:
            best = (inertia, dist)
    dist = best[1]
    nearest = dist.argmin(1).astype(np.int64)
    if max_size <= 0 or np.bincount(nearest, minlength=k).max() <= max_size:
        return nearest
    labels = np.full(n, -1, dtype=np.int64)
    for j in range(k):  # each cluster keeps its max_size nearest members
        members = np.flatnonzero(nearest == j)
        keep = members[np.argsort(dist[members, j], kind="stable")[:max_size]]
        labels[keep] = j
    return labels


def _online_kmeans_run(x, k, rng, epochs):
    """One seeding + on-line k-means run; returns the centroids (k, d)."""
    n = len(x)
    # greedy k-means++ seeding: of a few candidates drawn with probability ~ squared distance
    # to the nearest seed, keep the one that leaves the smallest total (plain k-means++ often
    # puts two seeds in one cluster, which the updates then never separate)
    cent = [x[rng.integers(n)]]
    d2 = ((x - cent[0]) ** 2).sum(1)
    for _ in range(1, k):
        if d2.sum() <= 0:
            cand = rng.integers(n, size=1)
        else:
            cand = rng.choice(n, size=2 + int(np.log(k)), p=d2 / d2.sum())
        new = np.minimum(d2[None], ((x[None] - x[cand][:, None]) ** 2).sum(2))  # (c, n)
        best = int(np.argmin(new.sum(1)))
        cent.append(x[cand[best]].copy())
        d2 = new[best]
    cent = np.array(cent)
    for _ in range(epochs):
        visits = np.ones(k)
        for i in rng.permutation(n):
            j = int(np.argmin(((cent - x[i]) ** 2).sum(1)))
            visits[j] += 1
            cent[j] += (x[i] - cent[j]) / visits[j]
    return cent


def confusable_sets(cov, num_sets, clusterings=2, set_size_max=0, seed=0, epochs=10):
    """K confusable pdf sets from a (P, P) covariance: ``clusterings`` k-means runs on its
    unit-length columns with seeds seed, seed + 1, ..., the K sets split evenly between them.

    Returns a list of dicts {"pdfs": sorted int list, "clustering": r}, empty sets dropped.
    """
    from asrkd.jobs import split_evenly

    cov = np.asarray(cov, dtype=np.float64)
    cols = cov / np.maximum(np.linalg.norm(cov, axis=0), 1e-12)[None]
    points = cols.T  # one point per pdf (its column)
    sets = []
    for r, chunk in enumerate(split_evenly(range(num_sets), clusterings)):
        k = len(chunk)
        if k < 1:
            continue
        labels = online_kmeans(points, min(k, len(points)), seed=seed + r, epochs=epochs,
                               max_size=set_size_max)
        for j in range(k):
            pdfs = np.flatnonzero(labels == j)
            if len(pdfs):
                sets.append({"pdfs": pdfs.tolist(), "clustering": r})
    return sets


# ---------------------------------------------------------------------------------------------
# (b) Dustbin targets


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


def dustbin_log_correction(rest_frames, drawn_rest_frames):
    """log f, f = rest_frames / drawn_rest_frames: added to the dustbin logit at inference."""
    if drawn_rest_frames <= 0:
        return 0.0
    return float(np.log(rest_frames / drawn_rest_frames))


def local_labels(set_pdfs, num_pdfs):
    """(P,) int64 map pdf -> specialist class: its index in the set, or len(set) (the dustbin)."""
    lut = np.full(num_pdfs, len(set_pdfs), dtype=np.int64)
    lut[np.asarray(set_pdfs, dtype=np.int64)] = np.arange(len(set_pdfs))
    return lut


def collapse(probs, set_pdfs, log_correction=0.0):
    """The generalist's (N, P) distributions collapsed onto S + dustbin: (N, |S| + 1).

    With ``log_correction`` = log f the dustbin mass is divided by f and the rows renormalised:
    the posterior under the specialist's training sample, in which the dustbin is undersampled
    f times (Bayes: p_sample(c | x) ~ p(c | x) * sample frequency / real frequency).
    """
    ids = torch.as_tensor(set_pdfs, dtype=torch.long, device=probs.device)
    inside = probs[:, ids]
    dust = (1.0 - inside.sum(1, keepdim=True)).clamp_min(0.0) * float(np.exp(-log_correction))
    out = torch.cat([inside, dust], dim=1)
    return out / out.sum(1, keepdim=True)


def corrected_logits(logits, log_correction):
    """A specialist's (N, |S| + 1) logits with log f added to the dustbin's (the last column)."""
    out = logits.clone()
    out[:, -1] += log_correction
    return out


# ---------------------------------------------------------------------------------------------
# (c) The KL combination


def membership(sets, num_pdfs, device="cpu"):
    """(K, P) bool: pdf p is in set m."""
    a = torch.zeros(len(sets), num_pdfs, dtype=torch.bool, device=device)
    for m, s in enumerate(sets):
        a[m, torch.as_tensor(s, dtype=torch.long, device=device)] = True
    return a


def active_specialists(p_g, member, top_n=1):
    """(N, K) bool: specialist m is active on a frame if its set holds one of the generalist's
    ``top_n`` pdfs there. p_g: (N, P); member: (K, P) bool."""
    top = p_g.topk(min(top_n, p_g.shape[1]), dim=1).indices  # (N, n)
    return member.T[top].any(dim=1)


def _targets(p_g, spec_probs, sets, active):
    """T (N, P): p_g plus the active specialists' in-set probabilities; D (N, K): their dustbin
    masses (0 where inactive)."""
    t = p_g.clone()
    d = p_g.new_zeros(p_g.shape[0], len(sets))
    for m, (s, p) in enumerate(zip(sets, spec_probs)):
        if p is None:
            continue
        w = active[:, m].to(p_g.dtype)
        ids = torch.as_tensor(s, dtype=torch.long, device=p_g.device)
        t[:, ids] += w[:, None] * p[:, :-1]
        d[:, m] = w * p[:, -1]
    return t, d


def combination_objective(q, p_g, spec_probs, sets, active, eps=1e-30):
    """(N,) sum of KL(p_g || q) + sum_active KL(p_m || q): p_m's dustbin mass spread over the
    pdfs outside S_m in proportion to q. q: (N, P) probabilities."""
    member = membership(sets, p_g.shape[1], p_g.device)
    lq = q.clamp_min(eps).log()
    kl = (p_g * (p_g.clamp_min(eps).log() - lq)).sum(1)
    for m, (s, p) in enumerate(zip(sets, spec_probs)):
        rest = (q * (~member[m]).to(q.dtype)).sum(1).clamp_min(eps)
        ins = p[:, :-1]
        k = (ins * (ins.clamp_min(eps).log() - lq[:, s])).sum(1)
        k = k + p[:, -1] * (p[:, -1].clamp_min(eps).log() - rest.log())
        kl = kl + active[:, m].to(q.dtype) * k
    return kl


def combine(p_g, spec_probs, sets, active, steps=10, lr=2.0, init="em", method="gd"):
    """The frames' combined distributions: argmin_q KL(p_g || q) + sum_active KL(p_m || q).

    Args:
        p_g: (N, P) generalist probabilities.
        spec_probs: K tensors (N, |S_m| + 1): specialist m's dustbin-corrected probabilities
            (rows of frames where it is inactive are ignored; None: inactive everywhere).
        sets: K pdf lists. active: (N, K) bool.
        steps: gradient steps on q's logits; lr: step size in units of 1 / (1 + active).
        init: "em" (one EM step from p_g: the dustbin masses spread in proportion to p_g) or
            "generalist" (q = p_g).
        method: "gd" (the paper's gradient descent) or "em": each step spreads the dustbin
            masses over the rest in proportion to the current q and renormalises (the fixed
            point of the same objective; monotone, and much faster on small probabilities).
    Returns:
        (N, P) log q. A frame with no active specialist gets log p_g.

    With z the logits, L = -sum_i T_i log q_i - sum_m D_m log R_m (+ const), R_m = q's mass
    outside S_m, whose gradient is dL/dz = q * (sum T + sum D) - T - q * (sum_m D_m / R_m B_m),
    B_m the pdfs outside S_m; each step is z -= lr * grad / (sum T + sum D).
    """
    eps = 1e-30
    t, d = _targets(p_g, spec_probs, sets, active)
    rest = (~membership(sets, p_g.shape[1], p_g.device)).to(p_g.dtype)  # (K, P)
    w = t.sum(1, keepdim=True) + d.sum(1, keepdim=True)  # (N, 1) = 1 + active
    if init == "em":
        r = (p_g @ rest.T).clamp_min(eps)
        q = (t + p_g * ((d / r) @ rest)) / w
    elif init == "generalist":
        q = p_g
    else:
        raise ValueError(f"init must be 'em' or 'generalist', got {init!r}")
    if method == "em":
        for _ in range(steps):
            r = (q @ rest.T).clamp_min(eps)
            q = (t + q * ((d / r) @ rest)) / w
        return torch.log_softmax(q.clamp_min(eps).log(), dim=1)
    if method != "gd":
        raise ValueError(f"method must be 'gd' or 'em', got {method!r}")
    z = q.clamp_min(eps).log()
    for _ in range(steps):
        q = torch.softmax(z, dim=1)
        r = (q @ rest.T).clamp_min(eps)  # (N, K)
        grad = q * w - t - q * ((d / r) @ rest)
        z = z - lr * grad / w
    return torch.log_softmax(z, dim=1)


# ---------------------------------------------------------------------------------------------
# Specialist models


def specialist_from_generalist(generalist, set_pdfs, log_correction=0.0, pooled=True):
    """A specialist initialised from the generalist: logits (N, |S| + 1) via specialist_logits.

    ``pooled``: a copy of the generalist whose dustbin logit is the log-sum-exp of its logits
    outside the set (their biases lowered by ``log_correction``, the undersampled dustbin), so
    that before training it gives exactly the generalist's collapsed distribution. Otherwise an
    output layer over the set + one dustbin row: the set's rows are the generalist's, the
    dustbin's the mean of the others with bias mean + log(count) - log_correction (about the
    log-sum-exp of their logits).
    """
    from asrkd.models import ModelConfig, build_model

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


def specialist_logits(model, x, set_pdfs, pooled=True):
    """(N, |S| + 1) logits over set + dustbin of a specialist from specialist_from_generalist
    (with the same ``pooled``)."""
    z = model(x)
    if not pooled:
        return z
    ids = torch.as_tensor(set_pdfs, dtype=torch.long, device=z.device)
    rest = torch.ones(z.shape[1], dtype=torch.bool, device=z.device)
    rest[ids] = False
    return torch.cat([z[:, ids], torch.logsumexp(z[:, rest], 1, keepdim=True)], 1)


def _train_specialist_job(cache_dir, generalist_path, set_pdfs, out_dir, cfg_dict, train_frames,
                          valid_frames, seed):
    """Train one specialist into out_dir/final.pt; returns its summary dict."""
    from asrkd.models import load_model
    from asrkd.train import FrameCache

    cfg = SpecialistConfig.from_dict(cfg_dict)
    final = os.path.join(out_dir, "final.pt")
    if os.path.isfile(final):
        ck = torch.load(final, map_location="cpu", weights_only=True)
        if ck.get("specialist", {}).get("set") == list(set_pdfs):
            return ck["specialist"]
    os.makedirs(out_dir, exist_ok=True)
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
    pooled = cfg.pooled_dustbin
    model = specialist_from_generalist(gen, set_pdfs, corr, pooled)
    if not cfg.pooled_dustbin:  # (pooled: the generalist's own counts stay)
        counts = np.bincount(lut.numpy()[labels], minlength=len(set_pdfs) + 1)
        model.pdf_counts.copy_(torch.from_numpy(counts.astype(np.int64)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    left, right = gen.left_context, gen.right_context
    valid_y = np.asarray(cache.pdf[valid_frames], dtype=np.int64)

    def evaluate(generalist=False):
        """(CE, accuracy) over set + dustbin on all validation frames (the real mix), of the
        corrected specialist or (``generalist``) of the generalist's collapsed distribution."""
        model.eval()
        loss = correct = 0.0
        with torch.no_grad():
            for s in range(0, len(valid_frames), 4096):
                x = torch.from_numpy(cache.windows(valid_frames[s:s + 4096], left, right))
                y = lut[torch.from_numpy(valid_y[s:s + 4096])]
                if generalist:
                    z = collapse(torch.softmax(gen(x), 1), ids).clamp_min(1e-30).log()
                else:
                    z = corrected_logits(specialist_logits(model, x, ids, pooled), corr)
                loss += F.cross_entropy(z, y, reduction="sum").item()
                correct += (z.argmax(1) == y).sum().item()
        n = max(len(valid_frames), 1)
        return loss / n, correct / n

    gen_loss, gen_acc = evaluate(generalist=True)
    print(f"generalist on set + dustbin: valid loss {gen_loss:.4f} acc {gen_acc:.4f}",
          file=sys.stderr)
    best = (float("inf"), 0.0, None, 0)
    if pooled:  # epoch 0 (the generalist itself) competes: a specialist never ends up worse
        best = (gen_loss, gen_acc, {k: v.clone() for k, v in model.state_dict().items()}, 0)
    history, t_start = [], time.time()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        idx, _ = specialist_frames(labels, in_set, np.random.default_rng([seed, epoch]))
        frames = train_frames[idx]
        model.train()
        tot, n = 0.0, 0
        for s in range(0, len(frames), cfg.batch_size):
            f = frames[s:s + cfg.batch_size]
            x = torch.from_numpy(cache.windows(f, left, right))
            logits = specialist_logits(model, x, ids, pooled)
            if cfg.hard_targets:
                y = lut[torch.from_numpy(np.asarray(cache.pdf[f], dtype=np.int64))]
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    target = collapse(torch.softmax(gen(x), 1), ids, corr)
                loss = -(target * F.log_softmax(logits, 1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(f)
            n += len(f)
        vloss, vacc = evaluate()
        history.append({"epoch": epoch, "train_loss": tot / max(n, 1), "valid_loss": vloss,
                        "valid_acc": vacc, "frames": int(n), "seconds": time.time() - t0})
        print(f"epoch {epoch}: train loss {tot / max(n, 1):.4f} | valid loss {vloss:.4f} acc "
              f"{vacc:.4f} (set + dustbin, corrected) | {time.time() - t0:.1f}s", file=sys.stderr)
        if vloss < best[0]:
            best = (vloss, vacc, {k: v.clone() for k, v in model.state_dict().items()}, epoch)
    model.load_state_dict(best[2])
    info = {"set": [int(p) for p in set_pdfs], "log_correction": corr, "num_pdfs": num_pdfs,
            "best_epoch": best[3], "valid_loss": best[0], "valid_acc": best[1],
            "generalist_valid_loss": gen_loss, "generalist_valid_acc": gen_acc,
            "train_seconds": time.time() - t_start, "history": history}
    model.save(final, specialist=info)
    return info


def _resolve_checkpoint(path):
    p = os.path.join(path, "final.pt") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise UserError(f"{path}: no DNN checkpoint (a final.pt or a dir holding one)")
    return p


def generalist_covariance(model, cache, frames, batch_size=4096):
    """CovarianceAccumulator of the model's posteriors over the given frames of a FrameCache."""
    acc = CovarianceAccumulator(model.config.num_pdfs)
    left, right = model.left_context, model.right_context
    with torch.no_grad():
        for s in tqdm(range(0, len(frames), batch_size), desc="covariance", unit="batch",
                      file=sys.stderr, disable=None):
            x = torch.from_numpy(cache.windows(frames[s:s + batch_size], left, right))
            acc.add(torch.softmax(model(x), 1))
    return acc


def pdf_states(ali_dir, lang_dir=None):
    """pdf -> sorted ["PHONE/state", ...] from ali_dir/final.mdl (and lang_dir/phones.txt for
    the names; phone ids without it). None if ali_dir has no final.mdl."""
    if not os.path.isfile(os.path.join(ali_dir, "final.mdl")):
        return None
    from asrkd.gmm import load_model
    from asrkd.tree import transition_tables

    names = {}
    if lang_dir is not None:
        from asrkd.lang import read_symbols

        names = {i: p for p, i in read_symbols(os.path.join(lang_dir, "phones.txt")).items()}
    out = {}
    for phone, state, fwd, loop in transition_tables(load_model(ali_dir).tm).tuples:
        for pdf in {fwd, loop}:
            out.setdefault(pdf, set()).add(f"{names.get(phone, phone)}/{state}")
    return {p: sorted(v) for p, v in out.items()}


def sets_markdown(sets, states=None, frame_share=None):
    """A readable table of the sets: size, share of training frames, phones and states."""
    lines = ["| set | clustering | pdfs | train frames % | phones/states (pdfs) |",
             "|---:|---:|---:|---:|---|"]
    for m, s in enumerate(sets, 1):
        desc = ""
        if states is not None:
            count = {}
            for p in s["pdfs"]:
                for ps in states.get(p, [f"pdf{p}"]):
                    count[ps] = count.get(ps, 0) + 1
            desc = ", ".join(f"{k} ({v})" for k, v in
                             sorted(count.items(), key=lambda kv: (-kv[1], kv[0])))
        else:
            desc = "pdfs " + " ".join(map(str, s["pdfs"][:50])) + (" ..." if len(s["pdfs"]) > 50
                                                                    else "")
        share = f"{100 * frame_share[m - 1]:.1f}" if frame_share is not None else "-"
        lines.append(f"| {m} | {s['clustering'] + 1} | {len(s['pdfs'])} | {share} | {desc} |")
    return "\n".join(lines) + "\n"


def train_specialists(generalist, data_dir, ali_dir, exp_dir, config=None, nj=1, lang_dir=None,
                      cache_dir=None):
    """`asrkd train-specialists`: confusable sets from the generalist, then one specialist per
    set, trained in ``nj`` parallel jobs. Returns the path of ``exp_dir/specialists.json``.

    Writes exp_dir: sets.json and sets.md (the sets with their phones/states), generalist.pt (a
    copy of GENERALIST), spec{m}/final.pt, log/train.{m}.log and specialists.json. Finished
    specialists (same set) are not retrained.
    """
    from asrkd.jobs import run_jobs
    from asrkd.models import load_model
    from asrkd.train import build_frame_cache, split_by_speaker

    config = config or SpecialistConfig()
    t_start = time.time()
    gpath = _resolve_checkpoint(generalist)
    gen = load_model(gpath)
    ali = AlignmentDir(ali_dir).check()
    num_pdfs = ali.num_pdfs
    if gen.config.num_pdfs != num_pdfs:
        raise UserError(f"{gpath} has {gen.config.num_pdfs} pdfs, {ali_dir} has {num_pdfs}")
    os.makedirs(exp_dir, exist_ok=True)
    cache = build_frame_cache(data_dir, ali_dir, cache_dir or os.path.join(exp_dir, "frames"),
                              cmvn=gen.config.cmvn)
    labeled = np.flatnonzero(cache.labeled)
    train_utts, valid_utts = split_by_speaker([cache.spk[i] for i in labeled], 0.1)
    train_frames = cache.frames_of(labeled[train_utts].tolist())
    valid_frames = cache.frames_of(labeled[valid_utts].tolist())
    if len(valid_frames) == 0:
        valid_frames = train_frames[:: max(1, len(train_frames) // 2000)]

    sets_path = os.path.join(exp_dir, "sets.json")
    if os.path.isfile(sets_path):
        with open(sets_path) as f:
            saved = json.load(f)
        if saved.get("config") != _set_fields(config):
            raise UserError(f"{exp_dir} holds sets made with other settings; use a new dir")
        sets, cov_seconds = saved["sets"], saved["seconds"]
    else:
        t0 = time.time()
        cov_frames = train_frames
        if 0 < config.cov_frames < len(cov_frames):
            cov_frames = np.sort(np.random.default_rng(config.seed).choice(
                cov_frames, config.cov_frames, replace=False))
        acc = generalist_covariance(gen, cache, cov_frames)
        sets = confusable_sets(acc.covariance(), config.num_sets, config.clusterings,
                               config.set_size_max, config.seed, config.kmeans_epochs)
        cov_seconds = time.time() - t0
        _write_json(sets_path, {"config": _set_fields(config), "sets": sets,
                                "seconds": cov_seconds, "frames": int(acc.n)})
    labels = np.asarray(cache.pdf[train_frames], dtype=np.int64)
    frame_counts = np.bincount(labels, minlength=num_pdfs)
    share = [frame_counts[s["pdfs"]].sum() / max(len(labels), 1) for s in sets]
    with atomic_path(os.path.join(exp_dir, "sets.md")) as tmp, open(tmp, "w") as f:
        covered = len({p for s in sets for p in s["pdfs"]})
        f.write(f"# Confusable sets of {gpath}\n\n{len(sets)} sets from {config.clusterings} "
                f"k-means clusterings of the covariance of the generalist's posteriors; "
                f"{covered} of {num_pdfs} pdfs covered.\n\n")
        f.write(sets_markdown(sets, pdf_states(ali_dir, lang_dir), share))

    gcopy = os.path.join(exp_dir, "generalist.pt")
    if not os.path.isfile(gcopy):
        with atomic_path(gcopy) as tmp:
            shutil.copyfile(gpath, tmp)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    nj = max(1, min(nj, len(sets)))
    threads = config.num_threads or max(1, cores // nj)
    dirs = [os.path.join(exp_dir, f"spec{m + 1}") for m in range(len(sets))]
    cfg = config.to_dict()
    args = [(cache.dir, gcopy, s["pdfs"], d, cfg, train_frames, valid_frames,
             config.seed * 1000 + m + 1) for m, (s, d) in enumerate(zip(sets, dirs))]
    t0 = time.time()
    infos = run_jobs(_train_specialist_job, args, nj, os.path.join(exp_dir, "log"), "train",
                     desc="train-specialists", threads_per_job=threads)
    train_wall = time.time() - t0
    manifest = {
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
        "seconds": {"sets": cov_seconds, "train_wall": train_wall,
                    "train_sum": float(sum(i["train_seconds"] for i in infos)),
                    "total": time.time() - t_start, "nj": nj, "threads_per_job": threads},
    }
    out = os.path.join(exp_dir, "specialists.json")
    _write_json(out, manifest)
    return out


def _set_fields(config):
    keys = ("num_sets", "set_size_max", "clusterings", "kmeans_epochs", "cov_frames", "seed")
    return {k: getattr(config, k) for k in keys}


def _write_json(path, obj):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def is_specialists_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "specialists.json"))


# ---------------------------------------------------------------------------------------------
# Inference


class SpecialistScorer(Scorer):
    """utt -> (T, P) hybrid scores of a generalist + specialists dir: log q - log prior, q the
    KL combination; ``log_posteriors(utt)`` gives log q (frame accuracy), ``frame_stats(feats)``
    also the generalist's posteriors and the active specialists."""

    def __init__(self, spec_dir, feature_reader, device="cpu"):
        from asrkd.models import load_model

        with open(os.path.join(spec_dir, "specialists.json")) as f:
            self.manifest = json.load(f)
        self.generalist = load_model(os.path.join(spec_dir, self.manifest["generalist"]))
        super().__init__([self.generalist], feature_reader)
        self.device = device
        self.specialists = [load_model(os.path.join(spec_dir, s["dir"], "final.pt")).to(device)
                            for s in self.manifest["specialists"]]
        self.generalist.to(device)
        self.sets = [s["set"] for s in self.manifest["specialists"]]
        self.corrections = [s["log_correction"] for s in self.manifest["specialists"]]
        self.member = membership(self.sets, self.generalist.config.num_pdfs, device)
        self.top_n = self.manifest["top_n"]
        self.steps, self.lr = self.manifest["gd_steps"], self.manifest["gd_lr"]
        self.method = self.manifest.get("combine_method", "gd")
        self.pooled = self.manifest["config"].get("pooled_dustbin", False)

    @torch.no_grad()
    def frame_stats(self, feats, chunk=2048):
        """feats (T, D) -> {"log_q" (T, P), "p_g" (T, P), "active" (T, K) bool}."""
        feats = torch.as_tensor(np.ascontiguousarray(feats), dtype=torch.float32,
                                device=self.device)
        windows = self.generalist.splice(feats)  # (T, C, D): every model shares the context
        out = {"log_q": [], "p_g": [], "active": []}
        for s in range(0, windows.shape[0], chunk):
            x = windows[s:s + chunk]
            p_g = torch.softmax(self.generalist(x), 1)
            active = active_specialists(p_g, self.member, self.top_n)
            probs = []
            for m, model in enumerate(self.specialists):
                idx = active[:, m].nonzero().squeeze(1)
                if len(idx) == 0:
                    probs.append(None)
                    continue
                p = p_g.new_zeros(len(x), len(self.sets[m]) + 1)
                z = specialist_logits(model, x[idx], self.sets[m], self.pooled)
                p[idx] = torch.softmax(corrected_logits(z, self.corrections[m]), 1)
                probs.append(p)
            out["log_q"].append(combine(p_g, probs, self.sets, active, self.steps, self.lr,
                                          method=self.method))
            out["p_g"].append(p_g)
            out["active"].append(active)
        return {k: torch.cat(v).cpu() if v else torch.zeros(0) for k, v in out.items()}

    def log_posteriors(self, utt):
        return self.frame_stats(self.reader[utt])["log_q"].numpy()


def make_scorer(spec_dir, data_dir, feats=None, device="cpu"):
    """SpecialistScorer of a specialists dir on data_dir's fbank features."""
    from asrkd.features import FeatureReader
    from asrkd.models import load_model

    if feats is None:
        with open(os.path.join(spec_dir, "specialists.json")) as f:
            gname = json.load(f)["generalist"]
        cmvn = load_model(os.path.join(spec_dir, gname)).config.cmvn
        feats = FeatureReader(data_dir, cmvn=cmvn)
    return SpecialistScorer(spec_dir, feats, device)


# ---------------------------------------------------------------------------------------------
# Coverage (the paper's Table 4) and costs


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
    import csv

    path = os.path.join(ensemble_dir, "model1", "train_log.csv")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(sum(float(r["seconds"]) for r in csv.DictReader(f)))


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
    from asrkd.data import DataDir
    from asrkd.ensemble import find_teachers
    from asrkd.models import load_model

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
    frames = int(groups[:, 0].sum())
    rows = []
    for n_cov in range(k + 1):
        f, gc, cc = (int(v) for v in groups[n_cov])
        if f == 0:
            continue
        rows.append({"covering": n_cov, "frames": f, "share": f / frames,
                     "generalist_acc": gc / f, "combined_acc": cc / f, "correct_gained": cc - gc,
                     "relative_gain": (cc - gc) / gc if gc else None})
    g_acc, c_acc = groups[:, 1].sum() / frames, groups[:, 2].sum() / frames

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
                "evaluations_per_frame": 1 + active_total / frames}
        if ensemble_dir is not None:
            members = [load_model(p) for p in find_teachers(ensemble_dir)]

            def ens_fn(x):
                x = torch.from_numpy(x)
                return sum(torch.softmax(m.utterance_logits(x), 1) for m in members)

            cost["ensemble_size"] = len(members)
            cost["ensemble_us"] = 1e6 * _time_per_frame(ens_fn, timing, scorer.reader)
    finally:
        torch.set_num_threads(torch_threads)
    secs = scorer.manifest["seconds"]
    cost["specialists_train_seconds"] = secs["train_sum"]
    cost["specialists_train_wall_seconds"] = secs["train_wall"]
    cost["sets_seconds"] = secs["sets"]
    member = _ensemble_member_seconds(ensemble_dir) if ensemble_dir else None
    cost["ensemble_member_train_seconds"] = member
    report = {"data_dir": os.path.abspath(data_dir), "ali_dir": os.path.abspath(ali_dir),
              "num_specialists": k, "top_n": scorer.top_n, "frames": frames,
              "generalist_frame_acc": float(g_acc), "combined_frame_acc": float(c_acc),
              "mean_active": active_total / frames, "coverage": rows, "cost": cost,
              "per_speaker": {s: {"frames": v[0], "generalist_acc": v[1] / v[0],
                                  "combined_acc": v[2] / v[0]} for s, v in sorted(per_spk.items())}}
    _write_json(os.path.join(spec_dir, f"report_{name}.json"), report)
    with atomic_path(os.path.join(spec_dir, f"report_{name}.md")) as tmp, open(tmp, "w") as f:
        f.write(_report_markdown(report, name))
    return report


def _report_markdown(r, name):
    c = r["cost"]
    out = [f"# Generalist + {r['num_specialists']} specialists on {name}", "",
           f"Frame accuracy: generalist {100 * r['generalist_frame_acc']:.2f}%, with specialists "
           f"{100 * r['combined_frame_acc']:.2f}% ({r['frames']} frames; specialists chosen by "
           f"the generalist's top {r['top_n']}, {r['mean_active']:.2f} active per frame).", "",
           "Frames by how many active specialists cover the correct pdf (the paper's Table 4):",
           "", "| covering | frames | % of frames | generalist acc % | with specialists % | "
           "correct gained | relative gain % |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["coverage"]:
        rel = "-" if row["relative_gain"] is None else f"{100 * row['relative_gain']:+.1f}"
        out.append(f"| {row['covering']} | {row['frames']} | {100 * row['share']:.1f} | "
                   f"{100 * row['generalist_acc']:.2f} | {100 * row['combined_acc']:.2f} | "
                   f"{row['correct_gained']:+d} | {rel} |")
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
