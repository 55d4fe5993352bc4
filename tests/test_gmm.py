"""The GMM-HMM model (asrkd.gmm): bit-exact storage, rejection of what is not a model, and
vectorized per-pdf log-likelihoods."""

import os

import numpy as np
import pytest

from asrkd.errors import UserError
from asrkd.gmm import GmmModel, PackedGmm, am_from_arrays, load_gmm, save_gmm
from asrkd.gmmtrain import train_mono
from test_gmmtrain import make_corpus


@pytest.fixture(scope="module")
def mono(tmp_path_factory):
    train, _, lang = make_corpus(str(tmp_path_factory.mktemp("corpus")))
    d = str(tmp_path_factory.mktemp("mono"))
    train_mono(train, lang, d, num_iters=10, num_gauss=100)
    return d


def random_am(rng, num_pdfs, dim, max_gauss=4):
    w, iv, mi = [], [], []
    for _ in range(num_pdfs):
        k = int(rng.integers(1, max_gauss + 1))
        ww = rng.random(k) + 0.1
        w.append(ww / ww.sum())
        iv.append(1.0 / (0.5 + rng.random((k, dim))))
        mi.append(rng.normal(size=(k, dim)) * iv[-1])
    return am_from_arrays(w, iv, mi)


def test_model_reload_bit_exact(mono, tmp_path):
    m = load_gmm(mono)
    save_gmm(m, str(tmp_path))
    m2 = load_gmm(str(tmp_path))
    assert str(m2.tm) == str(m.tm)
    assert np.array_equal(np.asarray(m2.tm.log_probs), np.asarray(m.tm.log_probs))
    s1, s2 = m.am.__getstate__(), m2.am.__getstate__()
    assert len(s1) == len(s2) and all(np.array_equal(a, b) for a, b in zip(s1, s2))
    assert all(np.array_equal(m.am.get_pdf(p).gconsts, m2.am.get_pdf(p).gconsts)
               for p in range(m.am.num_pdfs))
    assert m2.ctx.__getstate__() == m.ctx.__getstate__()
    with open(os.path.join(mono, "final.mdl"), "rb") as a, \
            open(os.path.join(tmp_path, "final.mdl"), "rb") as b:
        assert a.read() == b.read()
    # the tree file is Kaldi binary
    with open(os.path.join(mono, "tree"), "rb") as f:
        assert f.read(20).startswith(b"\0BContextDependency")


def test_load_rejects_non_model(tmp_path):
    (tmp_path / "final.mdl").write_bytes(b"not a model")
    with pytest.raises(UserError):
        load_gmm(str(tmp_path))
    with pytest.raises(UserError):
        load_gmm(str(tmp_path / "nope"))


def test_pdf_subset_loglikes_equal_full():
    rng = np.random.default_rng(3)
    am = random_am(rng, 12, 5, max_gauss=7)
    packed = PackedGmm(am)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    full = packed.pdf_loglikes(x)
    assert full.shape == (40, 12)
    for p in range(12):
        assert full[3, p] == pytest.approx(am.log_likelihood(p, x[3]), abs=2e-3)
    sub = np.array([7, 2, 11, 2, 0])
    np.testing.assert_allclose(packed.pdf_loglikes(x, sub), full[:, sub], rtol=1e-6)


def test_model_without_gmms():
    assert isinstance(GmmModel(None, None).am, type(None))
