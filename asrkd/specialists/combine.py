"""The KL combination of a generalist and its specialists (Hinton, Vinyals & Dean 2015,
section 5), and the dustbin class it rests on.

A specialist's outputs are its set S_m plus one dustbin class for every other pdf
(``specialist_logits``). Its training sample undersamples the dustbin by a factor f, so at
inference its logit gets + log f (``dustbin_log_correction``, ``corrected_logits``) and its
probability matches the real class frequencies; soft targets are a distribution collapsed onto
S_m + dustbin (``collapse``, ``collapse_sparse`` for stored top-k targets), shifted the same way.

Inference (``combine``): a frame's generalist top-n pdfs choose the active specialists
(``active_specialists``: those whose set meets them); q minimises KL(p_g || q) + sum_active
KL(p_m || q) (``combination_objective``), where p_m is spread over S_m and its dustbin mass over
the rest of the pdfs in proportion to q. Solved by gradient descent on q's logits, a few steps,
batched over frames (torch; CPU or GPU).

Where we deviate from the paper: the gradient descent starts from one EM step (the dustbin
masses spread over the rest in proportion to p_g), which already solves the case of a single
specialist with a one-pdf dustbin.
"""

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# The dustbin


def dustbin_log_correction(rest_frames, drawn_rest_frames):
    """log f, f = rest_frames / drawn_rest_frames: added to the dustbin logit at inference."""
    if drawn_rest_frames <= 0:
        return 0.0
    return float(np.log(rest_frames / drawn_rest_frames))


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


def collapse_sparse(ids, probs, rest, lut, num_classes, log_correction=0.0):
    """Sparse (top-k + rest) distributions collapsed onto S + dustbin, as ``collapse``.

    Args:
        ids: (N, K) int64 pdf ids; probs: (N, K) their probabilities; rest: (N,) the mass of
            the other pdfs (counted in the dustbin: at top-k the few set pdfs among them are
            lost to it). lut: (P,) int64 pdf -> class (index in S, |S| for the dustbin);
            num_classes: |S| + 1.
        log_correction: log f, the dustbin's undersampling in the training sample.
    Returns:
        (N, |S| + 1) rows summing to one.
    """
    out = probs.new_zeros(probs.shape[0], num_classes).scatter_add_(1, lut[ids], probs)
    out[:, -1] = (out[:, -1] + rest) * float(np.exp(-log_correction))
    return out / out.sum(1, keepdim=True).clamp_min(1e-30)


def corrected_logits(logits, log_correction):
    """A specialist's (N, |S| + 1) logits with log f added to the dustbin's (the last column)."""
    out = logits.clone()
    out[:, -1] += log_correction
    return out


def specialist_logits(model, x, set_pdfs, pooled=True):
    """(N, |S| + 1) logits over set + dustbin of a specialist from specialist_from_generalist
    (asrkd.specialists.train; with the same ``pooled``)."""
    z = model(x)
    if not pooled:
        return z
    ids = torch.as_tensor(set_pdfs, dtype=torch.long, device=z.device)
    rest = torch.ones(z.shape[1], dtype=torch.bool, device=z.device)
    rest[ids] = False
    return torch.cat([z[:, ids], torch.logsumexp(z[:, rest], 1, keepdim=True)], 1)


# ---------------------------------------------------------------------------------------------
# The KL combination


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
