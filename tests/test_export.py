"""ONNX export: DNN, TDNN and ensemble graphs agree with PyTorch (onnxruntime), carry their
priors and feature config, and decode a data dir to PyTorch's hypotheses."""

import io
import json
import os

import numpy as np
import onnx
import pytest
import torch

from asrkd.cli import main
from asrkd.decode import decode
from asrkd.errors import UserError
from asrkd.export import OnnxModel, export_onnx
from asrkd.features import FeatureReader
from asrkd.models import ModelConfig, build_model, load_model
from asrkd.scorer import make_scorer
from asrkd.table import read_table
from asrkd.transcribe import transcribe


def _random_model(path, family, seed, num_pdfs, counts):
    torch.manual_seed(seed)
    cfg = ModelConfig(family=family, feat_dim=40, num_pdfs=num_pdfs, hidden_dims=[48, 48],
                      tdnn_offsets=[[-2, 0, 2], [-1, 0, 1]], batchnorm=family == "tdnn")
    net = build_model(cfg).eval()
    if cfg.batchnorm:  # non-trivial running statistics, as after training
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    net.pdf_counts.copy_(counts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    net.save(path)
    return path


@pytest.mark.parametrize("kind", ["dnn", "tdnn", "ensemble"])
def test_export_matches_pytorch(kind, tiny_hybrid, tiny_data, tmp_path):
    trained = load_model(os.path.join(tiny_hybrid["model"], "final.pt"))
    counts = trained.pdf_counts
    if kind == "ensemble":
        model = str(tmp_path / "ens")
        for i, fam in enumerate(["dnn", "tdnn"], 1):
            _random_model(str(tmp_path / "ens" / f"model{i}" / "final.pt"), fam, i,
                          trained.config.num_pdfs, counts)
    else:
        model = _random_model(str(tmp_path / kind / "final.pt"), kind, 3, trained.config.num_pdfs,
                              counts)
    out = str(tmp_path / f"{kind}.onnx")
    res = export_onnx(model, out, data_dir=tiny_data["dev"], num_utts=2)
    assert res["max_abs_diff"] <= 1e-3 and res["frames"] > 100
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["pdf_counts"]) == [float(c) for c in counts]
    assert json.loads(meta["feature_config"])["num_mel_bins"] == 40
    assert json.loads(meta["cmvn"]) == "meanvar"
    assert len(json.loads(meta["members"])) == (2 if kind == "ensemble" else 1)
    # utterances the export did not check, through the decode scorers of both runtimes
    feats = FeatureReader(tiny_data["test"], cmvn="meanvar")
    ours = make_scorer(out, tiny_data["test"])
    ref = make_scorer(model, tiny_data["test"])
    for utt in feats.utts[:3]:
        a, b = ours(utt), ref(utt)
        assert a.shape == b.shape == (feats.num_frames(utt), trained.config.num_pdfs)
        assert np.abs(a - b).max() < 1e-3


def test_onnx_decodes_like_pytorch(tiny_hybrid, tiny_data, tmp_path, capsys):
    model = tiny_hybrid["model"]
    out = str(tmp_path / "dnn.onnx")
    assert main(["export-onnx", model, out, "--data-dir", tiny_data["dev"], "--acwt", "0.25"]) == 0
    assert "max |diff|" in capsys.readouterr().err
    assert OnnxModel(out).acwt == 0.25
    hyps = {}
    for name, m in (("pt", model), ("onnx", out)):
        d = str(tmp_path / f"decode_{name}")
        decode(tiny_hybrid["graph"], tiny_data["test"], m, d, acwt=0.25, nj=2)
        hyps[name] = read_table(os.path.join(d, "hyp.txt"))
        hyps[name + "_wer"] = open(os.path.join(d, "wer")).read()
    assert hyps["pt"] == hyps["onnx"] and hyps["pt_wer"] == hyps["onnx_wer"]
    assert any(hyps["pt"].values())
    # transcribe runs it too, the acoustic scale taken from the ONNX metadata
    res = transcribe(out, tiny_hybrid["graph"], [os.path.join(tiny_data["test"], "wav.scp")],
                     out=io.StringIO())
    assert res["acwt"] == 0.25
    assert {k: v.strip() for k, v in res["hyps"].items()} == \
        {k: v.strip() for k, v in hyps["pt"].items()}


def test_parity_failure_and_bad_files_are_user_errors(tiny_hybrid, tiny_data, tmp_path):
    with pytest.raises(UserError, match="parity failed"):
        export_onnx(tiny_hybrid["model"], str(tmp_path / "x.onnx"), data_dir=tiny_data["dev"],
                    tolerance=1e-12)  # float32 kernels differ by ~1e-6
    assert not os.path.exists(tmp_path / "x.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError):
        OnnxModel(str(bad))


def test_edited_onnx_metadata_are_refused(tiny_hybrid, tiny_data, tmp_path, capsys):
    """Metadata edited after export (sample rate, CMVN, acwt) decoded with exit 0 at a WER of
    up to 185%: the hash over them written at export no longer matches, in one line."""
    out = str(tmp_path / "dnn.onnx")
    export_onnx(tiny_hybrid["model"], out, data_dir=tiny_data["dev"], acwt=0.25)
    OnnxModel(out)
    proto = onnx.load(out)
    for key, edit in (("acwt", "2.5"), ("cmvn", '"mean"'),
                      ("feature_config", None)):
        p = onnx.load(out)
        for prop in p.metadata_props:
            if prop.key == key:
                prop.value = edit if edit is not None else prop.value.replace(
                    '"sample_rate": 16000', '"sample_rate": 8000')
                assert prop.value != {q.key: q.value for q in proto.metadata_props}[key]
        bad = str(tmp_path / f"bad_{key}.onnx")
        onnx.save(p, bad)
        with pytest.raises(UserError, match=r"bad_.*onnx: its metadata .* were changed after "
                                            r"export \(metadata_sha256 differs\)"):
            OnnxModel(bad)
    capsys.readouterr()
    assert main(["decode", tiny_hybrid["graph"], tiny_data["test"], bad,
                 str(tmp_path / "dec")]) == 1
    err = capsys.readouterr().err
    assert err.count("metadata_sha256 differs") == 1 and "Traceback" not in err


def test_int8_export_is_smaller_close_and_decodes(tiny_hybrid, tiny_data, tmp_path, capsys):
    """`--quantize int8` writes OUT.int8.onnx beside OUT: a fraction of the float file's size,
    log-posteriors near the float graph's, and it decodes through the ONNX scorer."""
    model = tiny_hybrid["model"]
    out = str(tmp_path / "dnn.onnx")
    assert main(["export-onnx", model, out, "--data-dir", tiny_data["dev"], "--acwt", "0.25",
                 "--quantize", "int8"]) == 0
    assert "int8" in capsys.readouterr().err
    q_out = str(tmp_path / "dnn.int8.onnx")
    assert os.path.isfile(out) and os.path.isfile(q_out)
    # a 440 x 64 x P DNN: the weights are most of the file (int8: 0.33 of the float bytes;
    # float biases and the graph are the rest)
    assert os.path.getsize(q_out) < 0.35 * os.path.getsize(out)
    flt, q = OnnxModel(out), OnnxModel(q_out)
    assert (flt.quantization, q.quantization, q.acwt) == (None, "int8", 0.25)
    assert np.array_equal(q.pdf_counts, flt.pdf_counts)
    feats = FeatureReader(tiny_data["test"], cmvn="meanvar")
    ours, ref = make_scorer(q_out, tiny_data["test"]), make_scorer(out, tiny_data["test"])
    agree = frames = 0
    for utt in feats.utts[:4]:
        a, b = q.log_posteriors(feats[utt]), flt.log_posteriors(feats[utt])
        assert a.shape == b.shape and a.min() >= np.log(1e-30) - 1e-4
        assert np.abs(a - b).max() < 0.5  # measured 0.11 here (4 utterances)
        assert np.abs(ours(utt) - ref(utt)).max() < 0.5  # the same priors are subtracted
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        frames += len(a)
    assert agree / frames > 0.9  # measured 0.98
    d = str(tmp_path / "decode_int8")
    decode(tiny_hybrid["graph"], tiny_data["test"], q_out, d, acwt=0.25, nj=1)
    hyps = read_table(os.path.join(d, "hyp.txt"))
    assert set(hyps) == set(feats.utts) and any(hyps.values())
    assert open(os.path.join(d, "wer")).read().startswith("%WER")
