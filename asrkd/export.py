"""ONNX export of acoustic models, and the exported models run with onnxruntime.

``export_onnx`` writes one self-contained graph per MODEL (a DNN or TDNN checkpoint, a student,
or an ensemble dir, whose members are averaged inside the graph):

    input  ``feats``          float32 (T, D)  CMVN'd features of one utterance
    output ``log_posteriors`` float32 (T, P)  log of the (members' mean) softmax, floored

The splicing (edge frames repeated, as ``utterance_logits``) is part of the graph, so a caller
needs nothing but features. The metadata (``metadata_props``, strings) carry what decoding
needs besides the weights: ``asrkd_format``, ``pdf_counts`` (JSON list: the priors), ``cmvn``,
``feature_config`` (JSON: FbankConfig options), ``num_pdfs``, ``feat_dim``, ``left_context``,
``right_context``, ``members`` (JSON list of model configs) and, when known, ``acwt``; and
``metadata_sha256``, a hash over all of them (``metadata_hash``): a model whose metadata were
edited after export (sample rate, CMVN mode, frame shift, acoustic scale) is refused on loading,
as a checkpoint's recorded feature config is checked (asrkd.identity).

The verb checks parity before it returns: onnxruntime and PyTorch log-posteriors on real
features of a data dir must agree within ``tolerance`` (max absolute difference; float32
rounding gives ~1e-5 here). The legacy TorchScript exporter is used: it needs no onnxscript.
The members are averaged by asrkd.ensemble's ``log_mean_posteriors``, traced into the graph, as
`asrkd decode` averages them on checkpoints; ``asrkd.scorer.OnnxScorer`` decodes with the graph.
"""

import hashlib
import json
import os
import sys
import warnings

import numpy as np
import torch
from torch import nn

from asrkd.ensemble import Ensemble, Scorer, log_mean_posteriors, resolve_checkpoints
from asrkd.errors import UserError
from asrkd.featconf import FbankConfig, config_from_dict
from asrkd.features import FeatureReader, check_feature_config
from asrkd.models import load_checkpoint

ONNX_FORMAT = "asrkd-onnx-1"
DEFAULT_TOLERANCE = 1e-3
OPSET = 17


class _UtteranceGraph(nn.Module):
    """feats (T, D) -> log mean_m softmax(member_m(feats)) (T, P), splicing inside.

    Each member pads the utterance by its own context (edge frames repeated), then a DNN sees
    (T, C * D) windows and a TDNN runs its convolutions once along the padded sequence.
    """

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, feats):
        t = feats.shape[0]
        logits = []
        for m in self.members:
            left, right = m.config.left_context, m.config.right_context
            idx = (torch.arange(t + left + right) - left).clamp(min=0)
            idx = torch.minimum(idx, (t - 1) * torch.ones_like(idx))
            padded = feats.index_select(0, idx)  # (T + left + right, D)
            if m.config.family == "tdnn":
                logits.append(m.chunk_logits(padded.unsqueeze(0))[0])  # (T, P)
            else:
                win = torch.arange(t).unsqueeze(1) + torch.arange(m.config.context).unsqueeze(0)
                x = padded[win]  # (T, C, D)
                logits.append(m(x.reshape(x.shape[0], -1)))  # (T, P)
        return log_mean_posteriors(torch.stack(logits))  # (M, T, P) -> (T, P)


def find_acwt(model):
    """The acoustic scale MODEL was evaluated with, or None: its decode dirs' ``acwt`` (written by
    `asrkd decode`; a dev decode's ``best_acwt`` first). Differing values: the dev one wins."""
    d = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    if not os.path.isdir(d):
        return None
    found = []
    for sub in sorted(os.listdir(d)):
        for name in ("best_acwt", "acwt"):
            p = os.path.join(d, sub, name)
            if sub.startswith("decode") and os.path.isfile(p):
                with open(p) as f:
                    found.append((name != "best_acwt", sub, float(f.read().split()[0])))
                break
    return min(found)[2] if found else None


def export_onnx(model, out_path, data_dir=None, num_utts=3, tolerance=DEFAULT_TOLERANCE,
                feature_config=None, acwt=None):
    """`asrkd export-onnx`: write MODEL as one ONNX graph; check parity on DATA_DIR's features.

    ``data_dir``: an fbank data dir with feats.scp and cmvn.scp (default: the checkpoint's own
    training data dir). ``feature_config``: FbankConfig stored in the metadata (default: the
    recipe's, i.e. FbankConfig()); it must recompute the features of the model's training data
    dir and of ``data_dir`` (features.check_feature_config). ``acwt``: stored in the metadata
    (default: find_acwt).
    Returns {"path", "bytes", "max_abs_diff", "frames", "tolerance"}.
    """
    import onnx

    if not tolerance >= 0:
        raise UserError(f"the parity tolerance must be >= 0, got {tolerance}")
    ckpts = resolve_checkpoints(model)
    ensemble = Ensemble(ckpts)
    members = ensemble.models
    if len({m.config.num_pdfs for m in members}) != 1 or len({m.config.cmvn for m in members}) != 1:
        raise UserError(f"{model}: members disagree on the number of pdfs or the CMVN mode")
    counts = np.mean([m.pdf_counts.numpy() for m in members], axis=0)
    if not counts.any():
        raise UserError(f"{model}: checkpoint holds no pdf counts (priors)")
    fc = feature_config if feature_config is not None else FbankConfig()
    if fc.dim != members[0].config.feat_dim:
        raise UserError(f"the feature config gives {fc.dim}-dim features but the model takes "
                        f"{members[0].config.feat_dim}: pass the one it was trained with")
    train_dir = load_checkpoint(ckpts[0]).get("data_dir")
    check_feature_config(fc, train_dir)  # the config stored must be the model's own
    if data_dir is None:
        data_dir = train_dir
    else:
        check_feature_config(fc, data_dir)
        if not data_dir or not os.path.isdir(data_dir):
            raise UserError("the parity check needs real features: pass --data-dir DIR")
    reader = FeatureReader(data_dir, cmvn=members[0].config.cmvn)
    graph = _UtteranceGraph(members).eval()
    if acwt is None:
        acwt = find_acwt(model)
    example = torch.from_numpy(np.ascontiguousarray(reader[reader.utts[0]]))
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(graph, (example,), tmp, dynamo=False, input_names=["feats"],
                          output_names=["log_posteriors"], opset_version=OPSET,
                          dynamic_axes={"feats": {0: "T"}, "log_posteriors": {0: "T"}})
    proto = onnx.load(tmp)
    del proto.metadata_props[:]
    for k, v in _metadata(members, counts, fc, acwt).items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "asrkd"
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp)
    # Parity on utterances other than the traced one too (dynamic T, other lengths).
    try:
        worst, frames = _parity(OnnxModel(tmp), Scorer(ensemble, reader),
                                reader.utts[:max(1, num_utts)])
    except UserError:
        os.unlink(tmp)
        raise
    if not worst <= tolerance:
        os.unlink(tmp)
        raise UserError(f"ONNX parity failed: max |log-posterior difference| {worst:.3g} > "
                        f"{tolerance:g} on {frames} frames of {data_dir}")
    os.replace(tmp, out_path)
    size = os.path.getsize(out_path)
    print(f"export-onnx: {out_path}: {len(members)} model(s), {size / 1e6:.2f} MB; parity with "
          f"PyTorch on {frames} frames of {data_dir}: max |diff| {worst:.2e} (tolerance "
          f"{tolerance:g})" + (f"; acwt {acwt:g}" if acwt is not None else ""), file=sys.stderr)
    return {"path": out_path, "bytes": size, "max_abs_diff": worst, "frames": frames,
            "tolerance": tolerance, "acwt": acwt}


def _metadata(members, counts, fc, acwt):
    """The graph's metadata_props (strings): what decoding needs besides the weights."""
    meta = {
        "asrkd_format": ONNX_FORMAT,
        "pdf_counts": json.dumps([float(c) for c in counts]),
        "cmvn": json.dumps(members[0].config.cmvn),
        "feature_config": json.dumps(fc.to_dict()),
        "num_pdfs": str(members[0].config.num_pdfs),
        "feat_dim": str(members[0].config.feat_dim),
        "left_context": str(max(m.config.left_context for m in members)),
        "right_context": str(max(m.config.right_context for m in members)),
        "members": json.dumps([m.config.to_dict() for m in members]),
    }
    if acwt is not None:
        meta["acwt"] = f"{acwt:g}"
    meta["metadata_sha256"] = metadata_hash(meta)
    return meta


def metadata_hash(meta):
    """sha256 (hex) of the metadata other than ``metadata_sha256`` itself, keys sorted."""
    body = json.dumps({k: v for k, v in meta.items() if k != "metadata_sha256"}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@torch.no_grad()
def _parity(onnx_model, torch_scorer, utts):
    """(max |log-posterior difference|, frames) of an OnnxModel against the PyTorch Scorer (what
    `asrkd decode` runs on the checkpoints) on ``utts`` of the scorer's reader."""
    worst, frames = 0.0, 0
    for utt in utts:
        ref = torch_scorer.log_posteriors(utt)
        got = onnx_model.log_posteriors(torch_scorer.reader[utt])
        if got.shape != ref.shape:
            raise UserError(f"{utt}: ONNX output {got.shape} but PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
        frames += len(ref)
    return worst, frames


class OnnxModel:
    """An exported model run with onnxruntime on CPU: features (T, D) -> log-posteriors (T, P).

    The session is made on first use in each process (decode's forked jobs each get their own)
    with ``num_threads`` intra-op threads.
    """

    def __init__(self, path, num_threads=1):
        import onnx

        if not os.path.isfile(path):
            raise UserError(f"{path}: no such ONNX model")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"{path}: not an ONNX model ({e})") from None
        self.meta = {p.key: p.value for p in proto.metadata_props}
        if self.meta.get("asrkd_format") != ONNX_FORMAT:
            raise UserError(f"{path}: not an asrkd acoustic model (no asrkd_format metadata); "
                            "export it with `asrkd export-onnx`")
        want = self.meta.get("metadata_sha256")  # None: exported before the hash
        if want is not None and metadata_hash(self.meta) != want:
            raise UserError(f"{path}: its metadata (feature config, CMVN, priors, acwt) were "
                            "changed after export (metadata_sha256 differs); export it again")
        self.path, self.num_threads = path, num_threads
        self.pdf_counts = np.asarray(json.loads(self.meta["pdf_counts"]), dtype=np.float64)
        self.cmvn = json.loads(self.meta["cmvn"])
        self.num_pdfs = int(self.meta["num_pdfs"])
        self.feat_dim = int(self.meta["feat_dim"])
        self.acwt = float(self.meta["acwt"]) if "acwt" in self.meta else None
        self._session = None

    @property
    def feature_config(self):
        return config_from_dict(json.loads(self.meta["feature_config"]))

    def _sess(self):
        if self._session is None or self._session[0] != os.getpid():
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.num_threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
            self._session = (os.getpid(), sess)
        return self._session[1]

    def log_posteriors(self, feats):
        x = np.ascontiguousarray(feats, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feat_dim:
            raise UserError(f"{self.path}: features of shape {x.shape}, the model takes "
                            f"(T, {self.feat_dim})")
        return self._sess().run(["log_posteriors"], {"feats": x})[0]
