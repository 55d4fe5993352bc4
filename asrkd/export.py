"""ONNX export of acoustic models, and hybrid scoring with onnxruntime.

``export_onnx`` writes one self-contained graph per MODEL (a DNN or TDNN checkpoint, a student,
or an ensemble dir, whose members are averaged inside the graph):

    input  ``feats``          float32 (T, D)  CMVN'd features of one utterance
    output ``log_posteriors`` float32 (T, P)  log of the (members' mean) softmax

The splicing (edge frames repeated, as ``utterance_logits``) is part of the graph, so a caller
needs nothing but features. The metadata (``metadata_props``, strings) carry what decoding
needs besides the weights: ``asrkd_format``, ``pdf_counts`` (JSON list: the priors), ``cmvn``,
``feature_config`` (JSON: FbankConfig options), ``num_pdfs``, ``feat_dim``, ``left_context``,
``right_context``, ``members`` (JSON list of model configs) and, when known, ``acwt``.

The verb checks parity before it returns: onnxruntime and PyTorch log-posteriors on real
features of a data dir must agree within ``tolerance`` (max absolute difference; float32
rounding gives ~1e-5 here). The legacy TorchScript exporter is used: it needs no onnxscript.
"""

import json
import os
import sys
import warnings

import numpy as np
import torch
from torch import nn

from asrkd.errors import UserError
from asrkd.models import Scorer, log_priors

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
        probs = None
        for m in self.members:
            left, right = m.config.left_context, m.config.right_context
            idx = (torch.arange(t + left + right) - left).clamp(min=0)
            idx = torch.minimum(idx, (t - 1) * torch.ones_like(idx))
            padded = feats.index_select(0, idx)  # (T + left + right, D)
            if m.config.family == "tdnn":
                logits = m.chunk_logits(padded.unsqueeze(0))[0]  # (T, P)
            else:
                win = torch.arange(t).unsqueeze(1) + torch.arange(m.config.context).unsqueeze(0)
                x = padded[win]  # (T, C, D)
                logits = m(x.reshape(x.shape[0], -1))  # (T, P)
            p = torch.softmax(logits, dim=-1)
            probs = p if probs is None else probs + p
        probs = probs / len(self.members)
        return torch.log(probs.clamp_min(1e-30))


def resolve_checkpoints(model):
    """MODEL (a checkpoint, a dir with final.pt, or a dir of model*/final.pt) -> [paths]."""
    from asrkd.decode import _dnn_checkpoints

    return _dnn_checkpoints([model] if isinstance(model, (str, os.PathLike)) else model)


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
    dir and of ``data_dir`` (features.check_feature_config). ``acwt``: stored in the metadata (default: find_acwt).
    Returns {"path", "bytes", "max_abs_diff", "frames", "tolerance"}.
    """
    import onnx

    from asrkd.featconf import FbankConfig
    from asrkd.features import FeatureReader, check_feature_config
    from asrkd.models import load_checkpoint, load_model

    if not tolerance >= 0:
        raise UserError(f"the parity tolerance must be >= 0, got {tolerance}")
    ckpts = resolve_checkpoints(model)
    members = [load_model(p) for p in ckpts]
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
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "asrkd"
    onnx.checker.check_model(proto)
    onnx.save(proto, tmp)
    # Parity on utterances other than the traced one too (dynamic T, other lengths).
    sess = OnnxModel(tmp)
    worst, frames = 0.0, 0
    torch_scorer = Scorer(members, reader)  # what `asrkd decode` runs on the checkpoints
    with torch.no_grad():
        for utt in reader.utts[:max(1, num_utts)]:
            ref = torch_scorer.log_posteriors(utt)
            got = sess.log_posteriors(reader[utt])
            if got.shape != ref.shape:
                os.unlink(tmp)
                raise UserError(f"{utt}: ONNX output {got.shape} but PyTorch {ref.shape}")
            worst = max(worst, float(np.abs(got - ref).max()))
            frames += len(ref)
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
        self.path, self.num_threads = path, num_threads
        self.pdf_counts = np.asarray(json.loads(self.meta["pdf_counts"]), dtype=np.float64)
        self.cmvn = json.loads(self.meta["cmvn"])
        self.num_pdfs = int(self.meta["num_pdfs"])
        self.feat_dim = int(self.meta["feat_dim"])
        self.acwt = float(self.meta["acwt"]) if "acwt" in self.meta else None
        self._session = None

    @property
    def feature_config(self):
        from asrkd.featconf import config_from_dict

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


class OnnxScorer(Scorer):
    """utt -> np.float32 (T, P) hybrid scores of an ONNX model, as models.Scorer (a subclass, so
    that frame accuracy reads its posteriors): ``log_posteriors(utt) - log(prior)``."""

    def __init__(self, onnx_model, feature_reader):
        self.model, self.reader = onnx_model, feature_reader
        self.log_prior = log_priors(onnx_model.pdf_counts)

    def log_posteriors(self, utt):
        return self.model.log_posteriors(self.reader[utt])

    def __call__(self, utt):
        return (self.log_posteriors(utt) - self.log_prior).astype(np.float32)


def onnx_scorer(path, data_dir=None, feats=None):
    """OnnxScorer over DATA_DIR's features (with the model's CMVN mode) or a given mapping."""
    from asrkd.features import FeatureReader

    model = OnnxModel(path)
    if feats is None:
        feats = FeatureReader(data_dir, cmvn=model.cmvn)
    elif getattr(feats, "cmvn", model.cmvn) != model.cmvn:
        raise UserError(f"{path} was trained with cmvn={model.cmvn!r} but the feature reader "
                        f"applies {feats.cmvn!r}")
    return OnnxScorer(model, feats)

