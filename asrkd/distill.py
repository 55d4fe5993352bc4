"""Knowledge distillation: the KD loss and student training on soft and hard targets.

The soft targets are the teacher ensemble's temperature-softened distributions
(``asrkd.ensemble``), stored by ``asrkd.softtargets`` or computed on the fly from each batch.

Transfer set (paper sec. 2): utterances of the data dir that have soft targets but no alignment
(e.g. an unlabeled corpus combined with the training data) are trained on the soft term alone.

Loss (paper sec. 2 and 4): ``alpha * T^2 * CE(soft targets at T, student softmax at T)
+ (1 - alpha) * CE(hard alignment targets, student softmax at T=1)``. The T^2 factor keeps the
soft term's gradient magnitude independent of T. The paper weighted the hard term 0.5, hence
``alpha=0.5`` by default. Each term is a mean over the frames that have it: the soft CE over
every frame, the hard CE over the labelled frames only, so that a batch with transfer-set frames
keeps the weights alpha and 1 - alpha (a hard CE divided by all frames would shrink the hard
weight in proportion to the unlabelled share).

Where we deviate from the paper:
- Soft targets are sparse: per frame the top-k probabilities and the *rest*, the mass of the
  other pdfs (asrkd.softtargets; the paper kept dense targets). The soft CE is
  ``-sum_k p_k log q[id_k] - rest * log(1 - sum_k q[id_k])`` with q = softmax(z/T): the exact
  cross-entropy of the teachers' distribution with the other pdfs merged into one class, so the
  student is never told that the tail has probability 0 (renormalizing the top k would).
- The soft term uses the stored (already tempered) ensemble distribution; the temperature the
  student is trained at must equal the one the targets were made at (checked).
"""

import os
import sys

import torch
import torch.nn.functional as F

from asrkd.alignment import AlignmentDir
from asrkd.data import DataDir
from asrkd.distributed import init_world
from asrkd.ensemble import Ensemble, average_posteriors, check_members, find_teachers
from asrkd.errors import UserError
from asrkd.identity import check_tree
from asrkd.softtargets import PackedTargets, SoftTargetStore, sparsify
from asrkd.table import write_json
from asrkd.train import TrainHooks, train_model


# ---------------------------------------------------------------------------------------------
# Loss


def kd_loss(logits, hard, soft_ids, soft_probs, temperature, alpha, soft_rest=None,
            hard_norm=None):
    """Distillation loss over a batch of frames.

    Args:
        logits: (N, P) student logits.
        hard: (N,) int64 hard pdf targets (forced alignment); -1 marks a frame with none (a
            transfer-set frame), which gets the soft term only.
        soft_ids: (N, K) int64 pdf ids of the soft targets (K may equal P for dense targets).
        soft_probs: (N, K) float soft target probabilities of those pdfs.
        temperature: T used both for the soft targets and the student's soft term.
        alpha: weight of the soft term; 0 gives plain cross-entropy on ``hard``.
        soft_rest: (N,) float mass of the pdfs outside ``soft_ids`` (None: 0, i.e. each row of
            ``soft_probs`` sums to one).
        hard_norm: the hard CE sum's divisor under data parallelism (``batch["hard_norm"]``,
            asrkd.distributed.with_world_counts); None: this batch's labelled frames.
    Returns:
        scalar tensor: alpha * T^2 * (soft CE averaged over all N frames) + (1 - alpha) *
        (hard CE averaged over the frames with a hard target; 0 if there are none).

    One pass of the softmax serves both terms and the gradient is written out (_KDLoss): the
    same loss and gradient as composing log_softmax, gather and a logsumexp over the pdfs
    outside the top k (tests/test_distill.py checks it against that composition), about a
    quarter of its time on a CPU (512 frames of 500 pdfs, top 50: 1 against 4.6 ms).
    """
    rest = soft_rest if soft_rest is not None and alpha > 0 else None
    return _KDLoss.apply(logits, hard, soft_ids, soft_probs, rest, float(temperature),
                         float(alpha), hard_norm)


class _KDLoss(torch.autograd.Function):
    """kd_loss with its gradient in closed form, computed in float32 (or float64).

    With s = z / T, q = softmax(s), p the soft targets on ``ids`` and r the rest mass (merged
    into one class with the student's mass outside ``ids``, Q_out), the soft CE is
    ``-sum_k p_k log q[id_k] - r log Q_out`` and its gradient in s is
    ``q * (sum p + r) - p (on ids) - r * q / Q_out (outside ids)``; the hard CE's in z is
    ``softmax(z) - onehot(hard)``.
    """

    @staticmethod
    def forward(ctx, logits, hard, ids, probs, rest, T, alpha, hard_norm):
        z = logits if logits.dtype == torch.float64 else logits.float()
        n = z.shape[0]
        loss = z.new_zeros(())
        labelled = hard >= 0 if alpha < 1 else None
        count = int(labelled.sum()) if alpha < 1 else 0
        w = (1 - alpha) / float(count if hard_norm is None else hard_norm) if count else 0.0
        if count:  # the labelled rows and their targets (none needed at alpha = 1)
            rows, y = labelled.nonzero().squeeze(1), hard[labelled]
        grad = None
        if alpha > 0:
            s = z / T if T != 1 else z
            m = s.amax(dim=1, keepdim=True)
            e = (s - m).exp_()  # (N, P)
            sum_e = e.sum(dim=1, keepdim=True)
            log_sum = sum_e.log()
            p = probs.to(z.dtype)
            soft = -(p * (s.gather(1, ids) - m - log_sum)).sum(dim=1)  # (N,)
            q = e.div_(sum_e)  # softmax(s), in place of e
            k = alpha * T / n  # d(alpha T^2 mean soft CE)/ds, divided by T for z
            a_row = k * p.sum(dim=1)  # the coefficient of q, per row
            if rest is not None:
                r = rest.to(z.dtype).clamp_min(0)
                q_out = q.scatter(1, ids, 0.0)  # the student's mass outside ids, per pdf
                mass_out = q_out.sum(dim=1)
                # log Q_out; a row whose targets cover every pdf (or give no rest) adds 0
                use = (r > 0) & (mass_out > 0)
                safe = torch.where(use, mass_out, torch.ones_like(mass_out))
                r = torch.where(use, r, torch.zeros_like(r))
                soft = soft - r * safe.log()
                a_row = a_row + k * r
                b_row = k * r / safe  # outside ids: q * (a - b)
            loss = loss + alpha * T * T / n * soft.sum()
            if count and T == 1:  # softmax(z) is q: the hard term shares it
                loss = loss - w * (s[rows, y] - m[rows, 0] - log_sum[rows, 0]).sum()
                a_row = a_row.index_add(0, rows, torch.full_like(rows, 1, dtype=z.dtype),
                                        alpha=w)
            if rest is not None:
                grad = q_out.mul_((a_row - b_row)[:, None])
                grad.scatter_add_(1, ids, q.gather(1, ids) * a_row[:, None] - k * p)
            else:
                grad = q.mul_(a_row[:, None])
                grad.scatter_add_(1, ids, -k * p)
            if count and T == 1:
                grad.index_put_((rows, y), torch.tensor(-w, dtype=z.dtype, device=z.device),
                                accumulate=True)
        if count and (alpha == 0 or T != 1):
            log_q1 = torch.log_softmax(z.index_select(0, rows), dim=1)
            loss = loss - w * log_q1.gather(1, y[:, None]).sum()
            g1 = log_q1.exp_()
            g1[torch.arange(len(rows), device=z.device), y] -= 1.0
            grad = torch.zeros_like(z) if grad is None else grad
            grad.index_add_(0, rows, g1, alpha=w)
        ctx.save_for_backward(torch.zeros_like(z) if grad is None else grad)
        ctx.dtype = logits.dtype
        return loss  # float32 (float64) whatever the logits' dtype, as log_softmax's would be

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        if g.numel() != 1 or float(g) != 1.0:  # a loss scaled or summed with others
            grad = grad * g
        return grad.to(ctx.dtype), None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Student training



class StoredKDLoss:
    """loss_fn for train_model: KD loss with soft targets from batch["extra"] (packed)."""

    def __init__(self, temperature, alpha, topk):
        self.temperature, self.alpha, self.topk = temperature, alpha, topk

    def __call__(self, logits, batch):
        extra = batch["extra"]  # (N, 2K + 1)
        k = self.topk
        ids = extra[:, :k].long()
        probs = extra[:, k:2 * k].to(logits.dtype)
        rest = extra[:, 2 * k].to(logits.dtype)
        return kd_loss(logits, batch["y"], ids, probs, self.temperature, self.alpha, rest,
                       batch.get("hard_norm"))


class OnTheFlyKDLoss:
    """loss_fn for train_model: the teachers are run on batch["x"] (no stored targets).

    batch["x"] holds the student's windows (N, C, D) of ``left + 1 + right`` frames; each teacher
    sees the centred sub-window of its own context, so a teacher may not need more context than
    the student has.
    """

    def __init__(self, ensemble, temperature, alpha, combine="arith", topk=0,
                 student_context=None):
        self.ens, self.temperature, self.alpha = ensemble, temperature, alpha
        self.combine, self.topk = combine, topk
        self.crops = []
        for m, path in zip(ensemble.models, ensemble.paths):
            lt, rt = m.config.left_context, m.config.right_context
            if student_context is None:
                self.crops.append(None)
                continue
            ls, rs = student_context
            if lt > ls or rt > rs:
                raise UserError(
                    f"teacher {path} needs context -{lt}..+{rt} but the student has -{ls}..+{rs}; "
                    "store soft targets with `asrkd soft-targets` instead"
                )
            self.crops.append((ls - lt, ls + 1 + rt))

    @torch.no_grad()
    def teacher_logits(self, x):
        """x (N, C, D) student windows -> (M, N, P) teacher logits."""
        out = []
        for m, crop in zip(self.ens.models, self.crops):
            out.append(m(x if crop is None else x[:, crop[0]:crop[1]]))
        return torch.stack(out)

    def __call__(self, logits, batch):
        teacher = self.teacher_logits(batch["x"])
        probs = average_posteriors(teacher, self.temperature, self.combine)
        ids, probs, rest = sparsify(probs, self.topk)
        return kd_loss(logits, batch["y"], ids, probs, self.temperature, self.alpha, rest,
                       batch.get("hard_norm"))


def distill(data_dir, ali_dir, soft_dir, exp_dir, model_config, train_config, temperature=None,
            alpha=0.5, seed=0, teachers_dir=None, combine="arith", topk=0, train_fraction=1.0,
            init_from=None, cache_dir=None, aligned_only=False):
    """Train a student on soft (ensemble) and hard (alignment) targets; return its checkpoint.

    Exactly one of ``soft_dir`` (stored targets; ``temperature`` defaults to theirs and must
    match) and ``teachers_dir`` (ensemble run on the fly on each batch; ``combine``/``topk``
    apply, topk=0 keeps the dense distribution) is given. Utterances of ``data_dir`` with no
    alignment in ``ali_dir`` form the transfer set: soft targets only, never validated on;
    ``aligned_only`` leaves them out (the student sees the utterances the teachers trained on).
    """
    if (soft_dir is None) == (teachers_dir is None):
        raise UserError("give exactly one of a soft-target dir and a teachers dir")
    if not 0 <= alpha <= 1:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
    ali = AlignmentDir(ali_dir)
    num_pdfs = ali.num_pdfs if ali.has_num_pdfs else None
    info = {"alpha": alpha, "seed": seed, "train_fraction": train_fraction}
    if soft_dir is not None:
        utt2nf = DataDir(data_dir).utt2num_frames
        store = SoftTargetStore(soft_dir, utt2num_frames=utt2nf)
        if temperature is None:
            temperature = store.temperature
        elif abs(temperature - store.temperature) > 1e-6:
            raise UserError(
                f"--temperature {temperature} differs from the soft targets' "
                f"{store.temperature} ({soft_dir}/meta.json)"
            )
        if num_pdfs is not None and store.num_pdfs != num_pdfs:
            raise UserError(f"soft targets have {store.num_pdfs} pdfs, {ali_dir} has {num_pdfs}")
        check_tree(f"the soft targets {soft_dir}", store.meta.get("tree_id"), ali_dir,
                   ali.tree_id)
        hooks = TrainHooks(targets=PackedTargets(store),
                           loss=StoredKDLoss(temperature, alpha, store.topk), unlabeled=True)
        info.update(soft_dir=os.path.abspath(soft_dir), soft_meta=store.meta)
    else:
        temperature = 1.0 if temperature is None else temperature
        if temperature <= 0:
            raise UserError(f"temperature must be positive, got {temperature}")
        _, device = init_world(train_config.device)  # this rank's GPU under torchrun
        ens = Ensemble(find_teachers(teachers_dir), device=device,
                       precision=train_config.precision)
        check_members(ens.models, data_dir)
        check_tree(ens.models[0].source, ens.models[0].tree_id, ali_dir, ali.tree_id)
        if ens.cmvn != model_config.cmvn:
            raise UserError(f"teachers use cmvn={ens.cmvn!r}, the student {model_config.cmvn!r}")
        context = (model_config.left_context, model_config.right_context)
        hooks = TrainHooks(loss=OnTheFlyKDLoss(ens, temperature, alpha, combine, topk,
                                               student_context=context), unlabeled=True)
        info.update(teachers=ens.paths, combine=combine, topk=topk)
    info["temperature"] = float(temperature)
    data = DataDir(data_dir)
    aligned = ali.pdf_scp
    unlab = [u for u in data.utts if u not in aligned]
    nf = data.utt2num_frames if data.has("utt2num_frames") else {}
    if aligned_only:
        hooks.unlabeled = False
        if unlab:
            print(f"distill: {len(unlab)} utterances of {data_dir} have no alignment: left out "
                  "(--aligned-only)", file=sys.stderr)
        info["left_out_utts"], unlab = len(unlab), []
    info["transfer_utts"] = len(unlab)
    info["transfer_frames"] = int(sum(nf.get(u, 0) for u in unlab))
    if unlab:
        print(f"distill: {len(unlab)} utterances of {data_dir} have no alignment: soft targets "
              f"only ({info['transfer_frames']} frames)", file=sys.stderr)
    os.makedirs(exp_dir, exist_ok=True)
    write_json(os.path.join(exp_dir, "distill.json"), info)
    return train_model(data_dir, ali_dir, exp_dir, model_config, train_config, seed,
                       init_from=init_from, train_fraction=train_fraction, cache_dir=cache_dir,
                       hooks=hooks)
