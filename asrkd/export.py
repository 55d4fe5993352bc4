"""ONNX export of acoustic models, and the exported models run with onnxruntime.

``export_onnx`` writes one self-contained graph per MODEL (a DNN or TDNN checkpoint, a student,
or an ensemble dir, whose members are averaged inside the graph):

    input  ``feats``          float32 (T, D)  CMVN'd features of one utterance
    output ``log_posteriors`` float32 (T, P)  log of the (members' mean) softmax, clamped
                                              below at log(1e-30) = -69.08 (ensemble.LOG_FLOOR)

The clamp keeps every score finite: a posterior under 1e-30 reads as 1e-30, so the output is
never below -69.08 and is not an exact log-softmax there (a caller wanting logits should not
invert it).

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

``quantize="int8"`` (`--quantize int8`) also writes ``OUT.int8.onnx`` beside the float graph:
onnxruntime's dynamic quantization (``quantize_dynamic``): the weights of the Gemm/MatMul/Conv
layers stored as 8-bit integers with a scale and zero point per output channel (the uint8
representation, see ``_quantize_int8``), activations quantized on the fly per utterance, biases
kept in float. Its metadata are the float graph's plus ``quantization`` = ``int8``. It is
parity-checked too, against ``int8_tolerance``: 8-bit weights move the log-posteriors by far
more than float rounding (the demo's 3 x 256 DNN, 40 test utterances: max |diff| 0.68 over all
pdfs, mean 0.05), so the bound is looser; WER is the real check (bench/export.py).
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
from asrkd.priors import read_priors, resolve_priors

ONNX_FORMAT = "asrkd-onnx-1"
DEFAULT_TOLERANCE = 1e-3
DEFAULT_INT8_TOLERANCE = 2.0
QUANTIZE_KINDS = ("int8",)
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
                feature_config=None, acwt=None, quantize=None,
                int8_tolerance=DEFAULT_INT8_TOLERANCE, priors="auto"):
    """`asrkd export-onnx`: write MODEL as one ONNX graph; check parity on DATA_DIR's features.

    ``data_dir``: an fbank data dir with feats.scp and cmvn.scp (default: the checkpoint's own
    training data dir). ``feature_config``: FbankConfig stored in the metadata (default: the
    recipe's, i.e. FbankConfig()); it must recompute the features of the model's training data
    dir and of ``data_dir`` (features.check_feature_config). ``acwt``: stored in the metadata
    (default: find_acwt). ``quantize``: None, or "int8": also write ``int8_path(out_path)``
    (dynamic int8 quantization), parity-checked against ``int8_tolerance``.
    The graph's output is clamped below at log(1e-30) (see the module docstring).
    ``priors``: "auto" also stores MODEL's own mean posterior (``priors_posterior``, written
    by `asrkd adjust-priors`, as the recipe decodes with) where it has one, which the ONNX
    scorer then divides by; "counts" stores the alignment counts alone.
    Returns {"path", "bytes", "max_abs_diff", "frames", "tolerance", "acwt"} and, with
    ``quantize``, "int8": {"path", "bytes", "max_abs_diff", "tolerance"}.
    """
    if not tolerance >= 0 or not int8_tolerance >= 0:
        raise UserError(f"the parity tolerance must be >= 0, got {tolerance}, {int8_tolerance}")
    if quantize is not None and quantize not in QUANTIZE_KINDS:
        raise UserError(f"quantize must be one of {list(QUANTIZE_KINDS)}, got {quantize!r}")
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
    meta = _metadata(members, counts, fc, acwt)
    if priors not in ("auto", "counts"):
        raise UserError(f"priors must be auto or counts, got {priors!r}")
    if priors == "auto" and resolve_priors(model, "auto") == "posterior":
        meta["priors_posterior"] = json.dumps([float(p) for p in read_priors(model,
                                                                              len(counts))])
        meta["metadata_sha256"] = metadata_hash(meta)
    _set_metadata(tmp, meta)
    # Parity on utterances other than the traced one too (dynamic T, other lengths).
    scorer, utts = Scorer(ensemble, reader), reader.utts[:max(1, num_utts)]
    worst, frames = _checked_parity(tmp, scorer, utts, tolerance, data_dir)
    res = {"path": out_path, "bytes": os.path.getsize(tmp), "max_abs_diff": worst,
           "frames": frames, "tolerance": tolerance, "acwt": acwt}
    if quantize == "int8":
        q_path = int8_path(out_path)
        q_tmp = q_path + ".tmp"
        try:
            _quantize_int8(tmp, q_tmp, dict(meta))
        except Exception:
            for p in (tmp, q_tmp):
                if os.path.exists(p):
                    os.unlink(p)
            raise
        q_worst, _ = _checked_parity(q_tmp, scorer, utts, int8_tolerance, data_dir, also=tmp)
        os.replace(q_tmp, q_path)
        res["int8"] = {"path": q_path, "bytes": os.path.getsize(q_path),
                       "max_abs_diff": q_worst, "tolerance": int8_tolerance}
    os.replace(tmp, out_path)
    print(f"export-onnx: {out_path}: {len(members)} model(s), {res['bytes'] / 1e6:.2f} MB; parity "
          f"with PyTorch on {frames} frames of {data_dir}: max |diff| {worst:.2e} (tolerance "
          f"{tolerance:g})" + (f"; acwt {acwt:g}" if acwt is not None else ""), file=sys.stderr)
    if "int8" in res:
        q = res["int8"]
        print(f"export-onnx: {q['path']}: int8, {q['bytes'] / 1e6:.2f} MB "
              f"({q['bytes'] / res['bytes']:.2f} of float); max |diff| {q['max_abs_diff']:.2e} "
              f"(tolerance {int8_tolerance:g})", file=sys.stderr)
    return res


def int8_path(out_path):
    """Where `--quantize int8` writes the int8 graph: OUT.onnx -> OUT.int8.onnx."""
    out_path = os.fspath(out_path)
    stem = out_path[:-len(".onnx")] if out_path.endswith(".onnx") else out_path
    return stem + ".int8.onnx"


def _set_metadata(path, meta):
    """Replace the ONNX file's metadata_props by ``meta`` (checked, saved in place)."""
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "asrkd"
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _quantize_int8(float_path, out_path, meta):
    """Dynamic int8 quantization of the float graph (weights int8, activations per call);
    the metadata are the float graph's plus ``quantization`` (re-hashed)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run shape-inference pre-processing first
    try:
        # Per output channel, 8-bit weights stored unsigned: on the demo's DNN (40 test
        # utterances) the arg max pdf agreed with the float graph's on 98.3% of frames, against
        # 95.2% for signed per-tensor weights and 89.8% for signed per-channel ones (which
        # saturate in x86's u8 x s8 kernels unless the range is reduced, 97.0% then).
        quantize_dynamic(float_path, out_path, per_channel=True, weight_type=QuantType.QUInt8)
    finally:
        root.setLevel(level)
    meta.pop("metadata_sha256", None)
    meta["quantization"] = "int8"
    meta["metadata_sha256"] = metadata_hash(meta)
    _set_metadata(out_path, meta)


def _checked_parity(path, torch_scorer, utts, tolerance, data_dir, also=None):
    """_parity of the ONNX file at ``path``; on failure ``path`` (and ``also``) are removed and
    UserError is raised. Returns (max |diff|, frames)."""
    try:
        worst, frames = _parity(OnnxModel(path), torch_scorer, utts)
        if not worst <= tolerance:
            raise UserError(f"ONNX parity failed ({os.path.basename(path).removesuffix('.tmp')}): "
                            f"max |log-posterior difference| {worst:.3g} > {tolerance:g} on "
                            f"{frames} frames of {data_dir}")
    except UserError:
        for p in (path, also):
            if p is not None and os.path.exists(p):
                os.unlink(p)
        raise
    return worst, frames


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
        post = self.meta.get("priors_posterior")  # None: exported with the counts alone
        self.priors_posterior = None if post is None else np.asarray(json.loads(post),
                                                                     dtype=np.float64)
        self.cmvn = json.loads(self.meta["cmvn"])
        self.num_pdfs = int(self.meta["num_pdfs"])
        self.feat_dim = int(self.meta["feat_dim"])
        self.acwt = float(self.meta["acwt"]) if "acwt" in self.meta else None
        self.quantization = self.meta.get("quantization")  # None (float32) or "int8"
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
