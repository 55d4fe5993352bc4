"""Hybrid DNN-HMM acoustic models: frames in context -> logits over pdfs (tied HMM states).

Two families share one input/output contract so that training, distillation and decoding never
look at the family:

- ``DNNAcousticModel``: the paper's model (Hinton, Vinyals & Dean 2015, section 4: 26 frames of
  40 fbank, 8 x 2560 ReLU, ~14k states) at any size: spliced frames -> fully connected ReLU layers.
- ``TDNNAcousticModel``: dilated 1-D convolutions over time (Kaldi nnet3 TDNN style splicing such
  as {-2..2}, {-1,0,1}, {-3,0,3}); its total context is the sum of the layers' offsets.

Input of ``forward``: ``x`` (N, C, D) windows of C = left + 1 + right CMVN'd frames centred on the
frame to classify (a DNN also takes them flattened, (N, C * D)). Output: logits (N, num_pdfs),
not normalised. ``utterance_logits(feats (T, D)) -> (T, num_pdfs)`` repeats the first/last frame
at the utterance edges, as Kaldi's splicing does.

A checkpoint is a plain dict loadable with ``torch.load(weights_only=True)`` (no pickle):
``model_config`` (dict), ``state_dict``, ``pdf_counts`` (int64 tensor: the training alignment's
counts, i.e. the priors for hybrid decoding) and, from training, ``train_config``, history,
``tree_id`` and ``feature_config`` (what the model's pdfs and inputs are; see asrkd.identity).

Deviations from Kaldi: no LDA/fixed affine input layer, no nnet3 xconfig; priors come from the
alignment counts (Kaldi nnet3 re-estimates them from the network's posteriors).
"""

import contextlib
import dataclasses
import io
import os
import pickle
import zipfile

import numpy as np
import torch
from torch import nn

from asrkd.config import DictConfig
from asrkd.errors import UserError
from asrkd.finite import check_finite
from asrkd.table import atomic_path

CHECKPOINT_FORMAT = "asrkd-acoustic-model-1"
# The largest model a checkpoint may declare, in bytes of parameters and buffers (the paper's
# 8 x 2560 DNN over 14k pdfs is ~0.35 GB); ASRKD_MAX_MODEL_BYTES overrides it. A few-KB file can
# declare terabytes (a huge model_config with zero-stride tensors): checked before allocation.
MAX_MODEL_BYTES = 8 * 2**30
PRECISIONS = ("fp32", "bf16")


def autocast(device, precision):
    """Context for a forward pass: bfloat16 autocast for ``precision="bf16"`` (weights stay
    float32), else a no-op."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _default_tdnn_offsets():
    return [[-2, -1, 0, 1, 2], [-1, 0, 1], [-3, 0, 3]]


@dataclasses.dataclass
class ModelConfig(DictConfig):
    """Architecture of an acoustic model; stored (as a dict) inside every checkpoint.

    ``feat_dim`` and ``num_pdfs`` are 0 until training fills them from the data and alignment.
    For ``family="tdnn"`` the context is derived from ``tdnn_offsets`` (one list of evenly spaced
    frame offsets per layer, ``hidden_dims`` giving each layer's width).
    """

    family: str = "dnn"
    feat_dim: int = 0
    num_pdfs: int = 0
    left_context: int = 5
    right_context: int = 5
    hidden_dims: list = dataclasses.field(default_factory=lambda: [384, 384, 384])
    tdnn_offsets: list = dataclasses.field(default_factory=_default_tdnn_offsets)
    dropout: float = 0.0
    batchnorm: bool = False  # after each ReLU, as Kaldi's relu-batchnorm layers
    cmvn: str = "meanvar"

    def __post_init__(self):
        if self.family not in ("dnn", "tdnn"):
            raise UserError(f"model family must be 'dnn' or 'tdnn', got {self.family!r}")
        self.hidden_dims = [int(h) for h in self.hidden_dims]
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise UserError(f"hidden_dims must be positive sizes, got {self.hidden_dims}")
        if self.family == "tdnn":
            self.tdnn_offsets = [[int(o) for o in layer] for layer in self.tdnn_offsets]
            if len(self.tdnn_offsets) != len(self.hidden_dims):
                raise UserError(f"tdnn_offsets has {len(self.tdnn_offsets)} layers but "
                                f"hidden_dims has {len(self.hidden_dims)}")
            for layer in self.tdnn_offsets:
                steps = {b - a for a, b in zip(layer, layer[1:])}
                if not layer or len(steps) > 1 or (steps and min(steps) < 1):
                    raise UserError(f"TDNN offsets {layer} must be increasing and evenly spaced")
            self.left_context = sum(-layer[0] for layer in self.tdnn_offsets)
            self.right_context = sum(layer[-1] for layer in self.tdnn_offsets)
        if self.left_context < 0 or self.right_context < 0:
            raise UserError("left/right context must be >= 0")
        if self.cmvn not in (None, "mean", "meanvar"):
            raise UserError(f"cmvn must be None, 'mean' or 'meanvar', got {self.cmvn!r}")
        if not 0 <= self.dropout < 1:  # (NaN too)
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def context(self):
        """Frames per input window, C = left + 1 + right."""
        return self.left_context + 1 + self.right_context


def _nonlinearity(dim, config):
    """ReLU, then optional batch norm and dropout: what follows every hidden layer."""
    layers = [nn.ReLU()]
    if config.batchnorm:
        layers.append(nn.BatchNorm1d(dim))
    if config.dropout > 0:
        layers.append(Dropout(config.dropout))
    return layers


class Dropout(nn.Module):
    """Dropout whose masks come from 16-bit draws of a PCG64 stream (numpy) seeded from torch's
    generator: the same seeds give the same masks, 4x faster on a CPU than torch's per-element
    bernoulli draws (a fifth of a small model's update time); on an accelerator, torch's own.
    A unit is dropped when its draw is below round(p * 65536), so p is kept to within 1/131072
    (0.2: 0.199997).

    Args:
        x: any shape. Returns the same shape: x unchanged in eval mode; in training, each
        element zeroed with probability p, the rest scaled by 1 / (1 - p).
    """

    def __init__(self, p):
        super().__init__()
        if not 0 <= p < 1:
            raise UserError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 65536)

    def forward(self, x):
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":  # an accelerator's own dropout is fast
            return nn.functional.dropout(x, self.p, True)
        n = x.numel()
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())  # torch's generator: seeded runs
        draws = np.random.PCG64(seed).random_raw(-(-n // 4)).view(np.uint16)[:n]
        keep = torch.from_numpy(draws >= self.threshold).view(x.shape).to(x.device)
        return x * (keep.to(x.dtype) * (65536 / (65536 - self.threshold)))

    def extra_repr(self):
        return f"p={self.p}"


class _AcousticModel(nn.Module):
    """Shared parts: config, checkpoint IO, whole-utterance evaluation."""

    def __init__(self, config):
        super().__init__()
        if config.feat_dim < 1 or config.num_pdfs < 1:
            raise UserError(f"model needs feat_dim and num_pdfs > 0, got {config.feat_dim}, "
                            f"{config.num_pdfs}")
        self.config = config
        # The training alignment's pdf counts travel with the model (priors for decoding).
        self.register_buffer("pdf_counts", torch.zeros(config.num_pdfs, dtype=torch.int64))

    @property
    def left_context(self):
        return self.config.left_context

    @property
    def right_context(self):
        return self.config.right_context

    def splice(self, feats):
        """feats (T, D) -> windows (T, C, D), edge frames repeated."""
        t = feats.shape[0]
        offsets = torch.arange(-self.left_context, self.right_context + 1, device=feats.device)
        idx = (torch.arange(t, device=feats.device)[:, None] + offsets).clamp_(0, t - 1)
        return feats[idx]

    @torch.no_grad()
    def utterance_logits(self, feats, chunk=4096):
        """feats (T, D) CMVN'd frames of one utterance -> logits (T, num_pdfs)."""
        feats = torch.as_tensor(feats, dtype=torch.float32)
        out = []
        for s in range(0, feats.shape[0], chunk):
            # A chunk with its context taken from the neighbouring frames, edges repeated.
            t = feats.shape[0]
            idx = torch.arange(s - self.left_context, min(s + chunk, t) + self.right_context)
            window = feats[idx.clamp(0, t - 1)]
            out.append(self._sequence_logits(window))
        return torch.cat(out) if out else feats.new_zeros(0, self.config.num_pdfs)

    def _sequence_logits(self, padded):
        """padded (T + left + right, D) -> (T, P)."""
        return self(self.splice(padded)[self.left_context: padded.shape[0] - self.right_context])

    def chunk_logits(self, x):
        """x (B, c + left + right, D) runs of frames with their context -> logits (B, c, P)."""
        b, c = x.shape[0], x.shape[1] - self.left_context - self.right_context
        offsets = torch.arange(self.config.context, device=x.device)
        win = x[:, torch.arange(c, device=x.device)[:, None] + offsets]  # (B, c, C, D)
        return self(win.reshape(b * c, self.config.context, -1)).reshape(b, c, -1)

    def checkpoint(self, **extra):
        """A weights_only-loadable dict holding everything needed to rebuild the model."""
        return {"format": CHECKPOINT_FORMAT, "model_config": self.config.to_dict(),
                "state_dict": self.state_dict(), **extra}

    def save(self, path, **extra):
        # serialised in memory, written by Python: a full disk is then an OSError (ENOSPC)
        # with the file's name, not torch's internal "unexpected pos" RuntimeError
        buf = io.BytesIO()
        torch.save(self.checkpoint(**extra), buf)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buf.getbuffer())

    @classmethod
    def from_checkpoint(cls, path_or_dict):
        """Rebuild a model (any family) from a checkpoint path or loaded dict."""
        return load_model(path_or_dict)


class DNNAcousticModel(_AcousticModel):
    """Feed-forward DNN over spliced frames.

    Args:
        x: (N, C, D) windows of C = left + 1 + right frames, or the same flattened (N, C * D).
    Returns:
        logits (N, num_pdfs) (apply log_softmax for log-posteriors).
    """

    def __init__(self, config):
        super().__init__(config)
        layers, dim = [], config.context * config.feat_dim
        for h in config.hidden_dims:
            layers += [nn.Linear(dim, h)] + _nonlinearity(h, config)
            dim = h
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(dim, config.num_pdfs)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)  # (N, C * D)
        return self.output(self.hidden(x))  # (N, P)


class TDNNAcousticModel(_AcousticModel):
    """Time-delay network: per layer a dilated 1-D convolution over the layer's frame offsets.

    Args:
        x: (N, C, D) windows, C = left + 1 + right (the sum of all layers' offsets).
    Returns:
        logits (N, num_pdfs). On a whole utterance the convolutions run once over the sequence.
    """

    def __init__(self, config):
        super().__init__(config)
        layers, dim = [], config.feat_dim
        for offsets, h in zip(config.tdnn_offsets, config.hidden_dims):
            dilation = offsets[1] - offsets[0] if len(offsets) > 1 else 1
            layers += [nn.Conv1d(dim, h, kernel_size=len(offsets), dilation=dilation)]
            layers += _nonlinearity(h, config)
            dim = h
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(dim, config.num_pdfs)

    def forward(self, x):
        if x.dim() == 2:
            x = x.reshape(x.shape[0], self.config.context, self.config.feat_dim)
        h = self.hidden(x.transpose(1, 2))  # (N, H, 1)
        return self.output(h[:, :, -1])  # (N, P)

    def _sequence_logits(self, padded):
        return self.chunk_logits(padded[None])[0]

    def chunk_logits(self, x):
        """x (B, c + left + right, D) -> logits (B, c, P), convolutions shared along the run."""
        h = self.hidden(x.transpose(1, 2))  # (B, H, c)
        return self.output(h.transpose(1, 2))  # (B, c, P)


FAMILIES = {"dnn": DNNAcousticModel, "tdnn": TDNNAcousticModel}


def build_model(config):
    """A freshly initialised model of ``config.family`` (torch's default init; seed beforehand)."""
    return FAMILIES[config.family](config)


def load_checkpoint(path):
    """Load a checkpoint dict without unpickling code (weights_only); a UserError names the
    file and what is wrong with it."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, i.e. running the file's code
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path}: not a torch checkpoint (garbage or truncated)") from None
        raise UserError(f"{path}: holds pickled Python objects, not just tensors; refusing "
                        "to load it (an asrkd checkpoint never does)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UserError(f"{path}: truncated or corrupt checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an asrkd acoustic model checkpoint")
    for key, kind in (("model_config", dict), ("state_dict", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise UserError(f"{path}: checkpoint has no {key}")
    ckpt["path"] = os.fspath(path)
    return ckpt


def check_model_size(where, nbytes):
    """UserError if a model of ``nbytes`` exceeds MAX_MODEL_BYTES (or ASRKD_MAX_MODEL_BYTES)."""
    limit = os.environ.get("ASRKD_MAX_MODEL_BYTES", "")
    try:
        limit = int(float(limit)) if limit else MAX_MODEL_BYTES
    except ValueError:
        raise UserError(f"ASRKD_MAX_MODEL_BYTES={limit!r} is not a number of bytes") from None
    if nbytes > limit:
        raise UserError(f"{where}: the model_config declares a model of {nbytes / 2**30:.3g} GiB "
                        f"(limit {limit / 2**30:.3g} GiB, ASRKD_MAX_MODEL_BYTES); not loading it")


def load_model(path_or_dict):
    """Checkpoint path (or loaded dict) -> model of the right family, in eval mode.

    The model's size (parameters x bytes, from a weightless "meta" copy) is checked against
    MAX_MODEL_BYTES, and the config and the stored tensor shapes against each other, before
    anything is allocated; the weights must be finite.
    The model gets ``tree_id``, ``feature_config`` and ``source`` (the file) from the checkpoint.
    """
    ckpt = load_checkpoint(path_or_dict) if not isinstance(path_or_dict, dict) else path_or_dict
    where = ckpt.get("path", "checkpoint")
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except (UserError, TypeError) as e:
        raise UserError(f"{where}: bad model_config: {e}") from None
    with torch.device("meta"):
        meta = build_model(config).state_dict()
    shapes = {k: tuple(v.shape) for k, v in meta.items()}
    state = ckpt["state_dict"]
    for k in sorted(set(shapes) | set(state)):
        got = tuple(state[k].shape) if isinstance(state.get(k), torch.Tensor) else None
        if got != shapes.get(k):
            want = "no such tensor" if k not in shapes else f"shape {shapes[k]}"
            raise UserError(f"{where}: state_dict[{k!r}] is "
                            f"{'missing' if got is None else f'shape {got}'}, the model_config "
                            f"gives {want}")
    check_model_size(where, sum(v.numel() * v.element_size() for v in meta.values()))
    for k in sorted(state):
        check_finite(state[k], f"{where}: state_dict[{k!r}]")
    model = build_model(config)
    model.load_state_dict(state)
    model.tree_id = ckpt.get("tree_id")
    model.feature_config = ckpt.get("feature_config")
    model.source = where
    return model.eval()
