"""Training options for scale: bf16 autocast (the CPU path), and memory-bounded frame storage."""

import numpy as np
import pytest
import torch

from asrkd.errors import UserError
from test_distill import make_learnable_data


def test_bf16_autocast_trains_on_cpu(tmp_path):
    from asrkd.models import ModelConfig, load_checkpoint
    from asrkd.train import TrainConfig, train_model

    data, ali = make_learnable_data(tmp_path, num_spk=3, utts_per_spk=6, num_pdfs=5, dim=6)
    mc = ModelConfig(left_context=1, right_context=1, hidden_dims=[32])
    runs = {}
    for prec in ("fp32", "bf16"):
        tc = TrainConfig(epochs=3, min_epochs=3, batch_size=32, lr=0.01, tensorboard=False,
                         num_threads=1, reject_worse=False, precision=prec)
        ckpt = load_checkpoint(train_model(str(data), str(ali), str(tmp_path / prec), mc, tc,
                                           seed=1))
        runs[prec] = ckpt
        assert all(v.dtype != torch.bfloat16 for v in ckpt["state_dict"].values())
    h32, h16 = runs["fp32"]["valid_acc"], runs["bf16"]["valid_acc"]
    assert h16 > 0.6 and abs(h16 - h32) < 0.1  # learns the task about as well as float32
    w32, w16 = runs["fp32"]["state_dict"], runs["bf16"]["state_dict"]
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)  # bfloat16 did run
    with pytest.raises(UserError, match="precision"):
        TrainConfig(precision="fp16")


def test_npy_row_writer_streams_rows_and_zero_fills(tmp_path):
    from asrkd.train import NpyRowWriter

    path = tmp_path / "a.npy"
    w = NpyRowWriter(path, np.float32, (7, 3))
    w.write(np.ones((2, 3)))
    w.skip_to(4)
    w.write(np.full((1, 3), 5.0))
    with pytest.raises(ValueError, match="do not fit"):
        w.write(np.ones((3, 3)))
    w.close()
    a = np.load(path, mmap_mode="r")
    want = np.zeros((7, 3), np.float32)
    want[:2], want[4] = 1, 5
    assert a.dtype == np.float32 and np.array_equal(a, want)


def _rss_file_kb():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("RssFile"))


def test_released_pages_leave_the_resident_set(tmp_path):
    from asrkd.train import release_pages

    path = tmp_path / "big.npy"
    np.save(path, np.ones((4096, 1024), np.float32))  # 16 MB
    a = np.load(path, mmap_mode="r")
    before = _rss_file_kb()
    assert float(a[::64].sum()) == 64 * 1024  # touches every page
    touched = _rss_file_kb()
    release_pages(a)
    assert touched - before > 12_000  # the mapping was resident ...
    assert _rss_file_kb() - before < 2_000  # ... and is no longer
    assert float(a[::64].sum()) == 64 * 1024  # still readable (from the page cache)


def test_soft_target_store_keeps_few_shards_mapped(tmp_path):
    from asrkd.distill import OPEN_SHARDS, SoftTargetStore, _finish_store, _write_shard

    rng = np.random.default_rng(0)
    indexes = []
    for shard in range(1, 6):
        items = [(f"u{shard}{i}", rng.integers(0, 9, (4, 2)), np.full((4, 2), 0.5))
                 for i in range(3)]
        indexes.append(_write_shard(str(tmp_path), shard, items, 9))
    _finish_store(str(tmp_path), indexes, 9, 1.0, "arith", 2, [])
    store = SoftTargetStore(tmp_path)
    for utt in sorted(store):
        ids, probs = store[utt]
        assert ids.shape == (4, 2) and len(store._shards) <= OPEN_SHARDS
    assert np.allclose(store["u11"][1], 0.5)  # a dropped shard is mapped again on demand
