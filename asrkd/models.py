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

import dataclasses
import os

import numpy as np
import torch
from torch import nn

from asrkd.config import DictConfig
from asrkd.errors import UserError

CHECKPOINT_FORMAT = "asrkd-acoustic-model-1"
PRECISIONS = ("fp32", "bf16")


def autocast(device, precision):
    """Context for a forward pass: bfloat16 autocast for ``precision="bf16"`` (weights stay
    float32), else a no-op."""
    import contextlib

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
        layers.append(nn.Dropout(config.dropout))
    return layers


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
        import io

        from asrkd.table import atomic_path

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
    import pickle
    import zipfile

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


def load_model(path_or_dict):
    """Checkpoint path (or loaded dict) -> model of the right family, in eval mode.

    The config and the stored tensor shapes are checked against each other on a weightless
    ("meta") copy of the model before anything is allocated, and the weights must be finite.
    The model gets ``tree_id``, ``feature_config`` and ``source`` (the file) from the checkpoint.
    """
    from asrkd.finite import check_finite

    ckpt = load_checkpoint(path_or_dict) if not isinstance(path_or_dict, dict) else path_or_dict
    where = ckpt.get("path", "checkpoint")
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except (UserError, TypeError) as e:
        raise UserError(f"{where}: bad model_config: {e}") from None
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    state = ckpt["state_dict"]
    for k in sorted(set(shapes) | set(state)):
        got = tuple(state[k].shape) if isinstance(state.get(k), torch.Tensor) else None
        if got != shapes.get(k):
            want = "no such tensor" if k not in shapes else f"shape {shapes[k]}"
            raise UserError(f"{where}: state_dict[{k!r}] is "
                            f"{'missing' if got is None else f'shape {got}'}, the model_config "
                            f"gives {want}")
        check_finite(state[k], f"{where}: state_dict[{k!r}]")
    model = build_model(config)
    model.load_state_dict(state)
    model.tree_id = ckpt.get("tree_id")
    model.feature_config = ckpt.get("feature_config")
    model.source = where
    return model.eval()


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


def log_priors(pdf_counts):
    """log p(pdf) from alignment counts; unseen pdfs floored to a count of 1 (finite scores)."""
    counts = np.maximum(np.asarray(pdf_counts, dtype=np.float64), 1.0)
    return np.log(counts / counts.sum()).astype(np.float32)


class Scorer:
    """utt -> np.float32 (T, P) hybrid pseudo log-likelihoods of one model or an ensemble.

    ``scorer(utt) = log(mean_m softmax_m) - log(prior)``; ``scorer.log_posteriors(utt)`` gives the
    first term alone (what frame accuracy is measured on).
    """

    def __init__(self, models, feature_reader, device="cpu", precision="fp32"):
        self.models = [m.to(device) for m in models]
        self.reader = feature_reader
        self.device, self.precision = device, precision
        counts = [m.pdf_counts.cpu().numpy() for m in self.models]
        if any(c.shape != counts[0].shape for c in counts):
            raise UserError("ensemble members disagree on the number of pdfs")
        if not counts[0].any():
            raise UserError("checkpoint holds no pdf counts (priors); was it trained by asrkd?")
        self.log_prior = log_priors(np.mean(counts, axis=0))

    @torch.no_grad()
    def log_posteriors(self, utt):
        feats = torch.from_numpy(np.ascontiguousarray(self.reader[utt], dtype=np.float32))
        out = []
        # one feature pass for all members; chunks keep (M, t, P) small with thousands of pdfs
        with autocast(self.device, self.precision):
            for logits in ensemble_chunks(self.models, feats, chunk=1024):  # (M, t, P)
                probs = torch.softmax(logits.float(), dim=-1).mean(dim=0)
                out.append(torch.log(probs.clamp_min(1e-30)))
        if not out:
            return np.zeros((0, self.log_prior.shape[0]), dtype=np.float32)
        return torch.cat(out).cpu().numpy()

    def __call__(self, utt):
        return (self.log_posteriors(utt) - self.log_prior).astype(np.float32)


def check_members(models, data_dir=None, dim=None):
    """UserError unless the models share one tree and (given a data dir) fit its features;
    returns their tree id."""
    from asrkd.identity import check_features, check_tree

    for m in models[1:]:
        check_tree(models[0].source, models[0].tree_id, m.source, m.tree_id)
    if data_dir is not None:
        for m in models:
            check_features(m.source, m.feature_config, m.config.feat_dim, data_dir, dim)
    return models[0].tree_id


def make_scorer(ckpt_paths, feature_reader, device="cpu", precision="fp32"):
    """Checkpoint path(s) + a FeatureReader -> Scorer (callable utt -> np.float32 (T, P))."""
    if isinstance(ckpt_paths, (str, os.PathLike)):
        ckpt_paths = [ckpt_paths]
    if not ckpt_paths:
        raise UserError("no model checkpoints given")
    models = [load_model(p) for p in ckpt_paths]
    cmvn = {m.config.cmvn for m in models}
    if len(cmvn) > 1:
        raise UserError(f"ensemble members use different CMVN modes {sorted(map(str, cmvn))}")
    reader_cmvn = getattr(feature_reader, "cmvn", models[0].config.cmvn)
    if reader_cmvn != models[0].config.cmvn:
        raise UserError(f"models were trained with cmvn={models[0].config.cmvn!r} but the "
                        f"feature reader applies {reader_cmvn!r}")
    data = getattr(feature_reader, "data", None)  # a FeatureReader over a data dir, or not
    if data is not None:
        check_members(models, data.path, feature_reader.dim)
    else:
        check_members(models)
    scorer = Scorer(models, feature_reader, device=device, precision=precision)
    scorer.tree_id, scorer.source = models[0].tree_id, models[0].source
    return scorer
