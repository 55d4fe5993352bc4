"""Finite-value guards: NaN or Inf is stopped where data enters and where models leave.

One NaN audio sample becomes NaN features, then NaN CMVN stats for the whole speaker, then NaN
weights that training writes out with exit 0. So every stage that reads numbers from a file
(audio, features, CMVN stats, GMM and DNN parameters) or produces them (a training loss) checks
them here and stops with one line naming the file or utterance and how many values are bad.
"""

import numpy as np

from asrkd.errors import UserError


def count_nonfinite(array):
    """Number of NaN/Inf entries of a numpy array or torch tensor (0 for integer arrays)."""
    if hasattr(array, "detach"):  # torch tensor
        # imported here, where a tensor means it is loaded already: numpy-only callers (the
        # feature readers, the GMM stages) start without loading torch
        import torch

        if not torch.is_floating_point(array):
            return 0
        return int((~torch.isfinite(array.detach())).sum())
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def check_finite(array, what, hint=""):
    """Raise a UserError ``"<what>: N of M values are NaN or Inf[; hint]"`` if any are."""
    bad = count_nonfinite(array)
    if bad:
        size = array.numel() if hasattr(array, "numel") else np.asarray(array).size
        raise UserError(f"{what}: {bad} of {size} values are NaN or Inf"
                        + (f"; {hint}" if hint else ""))
    return array
