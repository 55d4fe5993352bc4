"""Soft targets: top-k + rest sparsification, the store (round trip, damaged shards, frame
counts, mapped shards) and the ensemble's targets computed over a data dir."""

import json

import numpy as np
import pytest
import torch

from asrkd.distill import StoredKDLoss, kd_loss
from asrkd.ensemble import average_posteriors
from asrkd.errors import UserError
from asrkd.features import FeatureReader
from asrkd.models import ModelConfig, build_model, load_model
from asrkd.softtargets import (OPEN_SHARDS, PackedTargets, SoftTargetStore, _finish_store,
                               _write_shard, bytes_per_frame, compute_soft_targets,
                               save_soft_targets, sparsify)
from test_distill import make_learnable_data


def test_sparsify_keeps_the_rest_mass():
    p = torch.tensor([[0.5, 0.1, 0.3, 0.1], [0.0, 0.0, 1.0, 0.0]])
    ids, vals, rest = sparsify(p, 2)
    assert ids[0].tolist() == [0, 2] and ids[1, 0] == 2
    assert torch.allclose(vals[0], torch.tensor([0.5, 0.3]))  # not renormalized
    assert torch.allclose(rest, torch.tensor([0.2, 0.0]))
    ids, vals, rest = sparsify(p, 0)  # 0 keeps all
    assert ids.shape == (2, 4) and torch.all(rest == 0)


def _random_probs(rng, t, p):
    x = rng.random((t, p)) ** 4
    return (x / x.sum(1, keepdims=True)).astype(np.float32)


def test_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    P, K = 50, 4
    dense = {"1-1-0001": _random_probs(rng, 7, P), "1-1-0000": _random_probs(rng, 3, P)}
    meta = save_soft_targets(tmp_path / "soft", dense, temperature=2.0, combine="geo", topk=K)
    assert meta["bytes_per_frame"] == K * (2 + 2) and meta["dense_bytes_per_frame"] == P * 4
    with open(tmp_path / "soft" / "meta.json") as f:
        on_disk = json.load(f)
    assert on_disk["temperature"] == 2.0 and on_disk["combine"] == "geo" and on_disk["topk"] == K
    assert on_disk["num_pdfs"] == P and on_disk["num_frames"] == 10
    assert np.load(tmp_path / "soft" / "ids.1.npy").dtype == np.uint16
    assert np.load(tmp_path / "soft" / "probs.1.npy").dtype == np.float16

    store = SoftTargetStore(tmp_path / "soft", utt2num_frames={"1-1-0000": 3, "1-1-0001": 7})
    assert sorted(store) == ["1-1-0000", "1-1-0001"] and store.temperature == 2.0
    kept = []
    for utt, p in dense.items():
        ids, probs = store[utt]
        assert ids.shape == (p.shape[0], K) and probs.dtype == np.float32
        want_ids = np.argsort(-p, axis=1)[:, :K]
        assert (np.sort(ids, 1) == np.sort(want_ids, 1)).all()
        want = np.take_along_axis(p, ids, 1)
        np.testing.assert_allclose(probs, want, atol=2e-3)  # float16 storage, not renormalized
        np.testing.assert_allclose(store.rest(utt), 1.0 - want.sum(1), atol=1e-5)
        np.testing.assert_allclose(probs.sum(1) + store.rest(utt), 1.0, atol=3e-3)
        kept += list(want.sum(1))
    assert on_disk["kept_mass"]["mean"] == pytest.approx(np.mean(kept), abs=1e-6)
    assert on_disk["kept_mass"]["min"] == pytest.approx(np.min(kept), abs=1e-6)
    assert store.kept_mass < 1.0

    packed = PackedTargets(store)["1-1-0001"]
    assert packed.shape == (7, 2 * K + 1) and packed.dtype == np.float32
    loss = StoredKDLoss(2.0, 0.5, K)
    batch = {"y": torch.zeros(7, dtype=torch.long), "extra": torch.from_numpy(packed)}
    ids, probs = store["1-1-0001"]
    want = kd_loss(torch.zeros(7, P), batch["y"], torch.from_numpy(ids), torch.from_numpy(probs),
                   2.0, 0.5, torch.from_numpy(store.rest("1-1-0001")))
    assert loss(torch.zeros(7, P), batch).item() == pytest.approx(want.item())


@pytest.mark.parametrize("damage", ["nan", "negative", "sum", "id", "truncated"])
def test_store_rejects_damaged_shards(tmp_path, damage):
    rng = np.random.default_rng(3)
    save_soft_targets(tmp_path / "soft", {"a": _random_probs(rng, 6, 10)}, 1.0, topk=3)
    d = tmp_path / "soft"
    probs = np.load(d / "probs.1.npy")
    if damage == "nan":
        probs[2, 1] = np.nan
    elif damage == "negative":
        probs[3, 0] = -0.5
    elif damage == "sum":
        probs[1] *= 3
    if damage in ("nan", "negative", "sum"):
        np.save(d / "probs.1.npy", probs)
    elif damage == "id":
        ids = np.load(d / "ids.1.npy")
        ids[0, 0] = 10
        np.save(d / "ids.1.npy", ids)
    else:
        raw = (d / "probs.1.npy").read_bytes()
        (d / "probs.1.npy").write_bytes(raw[:len(raw) - 7])
    want = {"nan": "non-finite", "negative": "negative", "sum": "sum to", "id": "outside",
            "truncated": "probs.1.npy"}[damage]
    with pytest.raises(UserError, match=want):
        SoftTargetStore(d, utt2num_frames={"a": 6})["a"]


def test_writing_bad_soft_targets_is_refused(tmp_path):
    p = np.full((2, 4), 0.25, dtype=np.float32)
    p[1, 2] = np.nan
    with pytest.raises(UserError, match="non-finite"):
        save_soft_targets(tmp_path / "soft", {"a": p}, 1.0, topk=2)


def test_store_frame_mismatch_is_an_error(tmp_path):
    rng = np.random.default_rng(1)
    save_soft_targets(tmp_path / "soft", {"a": _random_probs(rng, 5, 8)}, 1.0, topk=3)
    with pytest.raises(UserError, match="5 frames"):
        SoftTargetStore(tmp_path / "soft", utt2num_frames={"a": 6})
    with pytest.raises(UserError, match="no soft targets for b"):
        SoftTargetStore(tmp_path / "soft", utt2num_frames={"a": 5, "b": 2})
    with pytest.raises(UserError, match="meta.json"):
        SoftTargetStore(tmp_path)


def test_bytes_per_frame_large_pdf_sets():
    assert bytes_per_frame(10, 70000) == (10 * 6, 280000)
    assert bytes_per_frame(0, 100) == (100 * 4, 400)  # dense top-k: all pdfs, uint16 ids


def _save_random_teachers(tdir, feat_dim, num_pdfs, n=2, hidden=(16,)):
    for m in range(n):
        torch.manual_seed(m)
        cfg = ModelConfig(feat_dim=feat_dim, num_pdfs=num_pdfs, left_context=1, right_context=1,
                          hidden_dims=list(hidden))
        model = build_model(cfg)
        model.pdf_counts.fill_(1)
        (tdir / f"model{m + 1}").mkdir(parents=True)
        model.save(str(tdir / f"model{m + 1}" / "final.pt"))


@pytest.mark.parametrize("combine", ["arith", "geo"])
def test_compute_soft_targets_matches_the_ensemble(tmp_path, combine):
    data, _ = make_learnable_data(tmp_path, utts_per_spk=3, num_pdfs=6, dim=8)
    _save_random_teachers(tmp_path / "teachers", 8, 6, n=3)
    meta = compute_soft_targets(str(data), str(tmp_path / "teachers"), str(tmp_path / "soft"),
                                temperature=2.0, combine=combine, topk=3, nj=2)
    assert meta["topk"] == 3 and meta["bytes_per_frame"] == 12 and len(meta["teachers"]) == 3
    store = SoftTargetStore(tmp_path / "soft", utt2num_frames=str(data))
    reader = FeatureReader(str(data), cmvn="meanvar")
    models = [load_model(str(tmp_path / "teachers" / f"model{i}" / "final.pt")) for i in (1, 2, 3)]
    utt = reader.utts[4]
    z = torch.stack([m.utterance_logits(torch.from_numpy(reader[utt])) for m in models])
    want_ids, want_p, want_rest = sparsify(average_posteriors(z, 2.0, combine), 3)
    ids, probs = store[utt]
    assert (ids == want_ids.numpy()).all()
    np.testing.assert_allclose(probs, want_p.numpy(), atol=1e-3)
    np.testing.assert_allclose(store.rest(utt), want_rest.numpy(), atol=1e-6)
    assert 0 < meta["kept_mass"]["min"] <= meta["kept_mass"]["mean"] < 1
    # a data dir whose frame counts disagree with the stored targets is refused
    nf = (data / "utt2num_frames").read_text().splitlines()
    nf[0] = nf[0].split()[0] + " 999"
    (data / "utt2num_frames").write_text("\n".join(nf) + "\n")
    with pytest.raises(UserError, match="999"):
        SoftTargetStore(tmp_path / "soft", utt2num_frames=str(data))


def test_soft_target_store_keeps_few_shards_mapped(tmp_path):
    rng = np.random.default_rng(0)
    indexes = []
    for shard in range(1, 6):
        items = [(f"u{shard}{i}", rng.integers(0, 9, (4, 2)), np.full((4, 2), 0.5),
                  np.zeros(4)) for i in range(3)]
        indexes.append(_write_shard(str(tmp_path), shard, items, 9))
    _finish_store(str(tmp_path), indexes, 9, 1.0, "arith", 2, [])
    store = SoftTargetStore(tmp_path)
    for utt in sorted(store):
        ids, probs = store[utt]
        assert ids.shape == (4, 2) and len(store._shards) <= OPEN_SHARDS
    assert np.allclose(store["u11"][1], 0.5)  # a dropped shard is mapped again on demand
