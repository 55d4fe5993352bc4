"""Acoustic model classes: shapes, edge handling, checkpoint round trip, scorer."""

import numpy as np
import pytest
import torch

from asrkd.errors import UserError
from asrkd.models import (DNNAcousticModel, ModelConfig, TDNNAcousticModel, build_model,
                          load_model)

D, P = 6, 11


def _config(family, **kw):
    return ModelConfig(family=family, feat_dim=D, num_pdfs=P, hidden_dims=[16, 16, 12], **kw)


@pytest.mark.parametrize("family,cls", [("dnn", DNNAcousticModel), ("tdnn", TDNNAcousticModel)])
def test_shapes_and_utterance_logits_match_windows(family, cls):
    torch.manual_seed(0)
    model = build_model(_config(family)).eval()
    assert isinstance(model, cls)
    c = model.config.context
    x = torch.randn(5, c, D)
    assert model(x).shape == (5, P)
    assert torch.allclose(model(x.reshape(5, -1)), model(x), atol=1e-6)
    feats = torch.randn(23, D)
    out = model.utterance_logits(feats, chunk=7)  # chunking must not change the result
    assert out.shape == (23, P)
    # Frame t's logits equal the model on its window with edge frames repeated.
    for t in (0, 1, 11, 22):
        idx = np.clip(np.arange(t - model.left_context, t + model.right_context + 1), 0, 22)
        assert torch.allclose(out[t], model(feats[idx][None])[0], atol=1e-5)
    # Runs of frames (chunk training) give the same logits as independent windows.
    runs = torch.randn(3, 4 + model.left_context + model.right_context, D)
    chunked = model.chunk_logits(runs)
    assert chunked.shape == (3, 4, P)
    for j in range(4):
        assert torch.allclose(chunked[:, j], model(runs[:, j:j + c]), atol=1e-5)


def test_tdnn_context_from_offsets():
    cfg = ModelConfig(family="tdnn", feat_dim=D, num_pdfs=P, hidden_dims=[8, 8, 8],
                      tdnn_offsets=[[-2, -1, 0, 1, 2], [-1, 0, 1], [-3, 0, 3]])
    assert (cfg.left_context, cfg.right_context, cfg.context) == (6, 6, 13)
    with pytest.raises(UserError):
        ModelConfig(family="tdnn", hidden_dims=[8], tdnn_offsets=[[-2, 0, 1]])
    with pytest.raises(UserError):
        ModelConfig(family="rnn")


@pytest.mark.parametrize("family", ["dnn", "tdnn"])
def test_checkpoint_round_trip_weights_only(tmp_path, family):
    torch.manual_seed(1)
    model = build_model(_config(family, dropout=0.1, batchnorm=True))
    model.pdf_counts.copy_(torch.arange(1, P + 1))
    with torch.no_grad():  # non-trivial batchnorm statistics must survive too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
    path = tmp_path / "m.pt"
    model.save(str(path))
    loaded = load_model(str(path))
    assert type(loaded) is type(model) and loaded.config == model.config
    ckpt = torch.load(str(path), weights_only=True)  # must not need pickle
    assert ckpt["model_config"]["family"] == family
    model.eval()
    feats = torch.randn(17, D)
    assert torch.equal(model.utterance_logits(feats), loaded.utterance_logits(feats))
    assert torch.equal(loaded.pdf_counts, torch.arange(1, P + 1))
    assert type(model).from_checkpoint(str(path)).config == model.config


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path):
    """The checkpoint's zip records no temporary file name (torch names them after the file)."""
    from asrkd.models import ModelConfig, build_model

    torch.manual_seed(0)
    m = build_model(ModelConfig(feat_dim=4, num_pdfs=3, hidden_dims=[8]))
    m.save(tmp_path / "a.pt")
    m.save(tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()




def test_dir_lists_the_lazy_top_level_names():
    """dir(asrkd) shows the names the package exports lazily, each of which resolves, and
    listing them does not import torch."""
    import subprocess
    import sys

    import asrkd
    from asrkd import models

    names = dir(asrkd)
    for name in ("DNNAcousticModel", "TDNNAcousticModel", "ModelConfig", "load_model"):
        assert name in names
        assert getattr(asrkd, name) is getattr(models, name)
    assert "__version__" in names and names == sorted(names)
    code = ("import sys, asrkd; d = dir(asrkd); "
            "print('DNNAcousticModel' in d, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_dropout_rate_scale_seeding_and_eval():
    from asrkd.models import Dropout
    drop = Dropout(0.2)
    x = torch.ones(512, 256)
    torch.manual_seed(3)
    a = drop(x)
    kept = (a != 0).float().mean().item()
    assert abs(kept - 0.8) < 0.005  # 131k draws: sd of the kept share 0.0011
    assert torch.allclose(a[a != 0], torch.tensor(65536 / (65536 - 13107)))
    assert abs(a.mean().item() - 1.0) < 0.01  # the expectation kept
    torch.manual_seed(3)
    assert torch.equal(drop(x), a)  # the same torch seed, the same mask
    assert not torch.equal(drop(x), a)  # the stream moves on
    b = drop(torch.ones(4, 3, 5))
    assert b.shape == (4, 3, 5)
    drop.eval()
    assert drop(x) is x
    with pytest.raises(UserError):
        Dropout(1.0)


def test_dropout_gradient_is_the_mask():
    from asrkd.models import Dropout
    drop = Dropout(0.5)
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    y.sum().backward()
    keep = (y.detach() != 0)
    assert torch.allclose(x.grad[keep], torch.tensor(2.0))
    assert (x.grad[~keep] == 0).all()
