"""Data-parallel training (torchrun, gloo on CPU) equals one process with the same global batch."""

import os
import subprocess
import sys

import numpy as np
import torch

from test_distill import make_learnable_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two ranks sum the same gradients in another order (the frame-weighted mean of two half-batch
# means instead of one mean): float32 rounding, amplified a little by Adam over ~40 steps
# (measured: 4e-8 to 8e-8 on these runs).
TOLERANCE = 1e-5

CONF = """model:
  left_context: 2
  right_context: 2
  hidden_dims: [32, 32]
train:
  epochs: 3
  min_epochs: 3
  batch_size: 48
  lr: 0.003
  num_threads: 1
  tensorboard: false
  reject_worse: false
"""


def _env():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _asrkd(args, nproc=1):
    launcher = [sys.executable, "-m", "asrkd"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "asrkd"]
    r = subprocess.run(launcher + args, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_gloo_ranks_equal_one_process_and_resume(tmp_path):
    data, ali = make_learnable_data(tmp_path, num_spk=4, utts_per_spk=6, num_pdfs=6, dim=8)
    conf = tmp_path / "dnn.yaml"
    conf.write_text(CONF)
    common = [str(data), str(ali)]
    _asrkd(["train", "--conf", str(conf), "--seed", "3", *common, str(tmp_path / "one")])
    r = _asrkd(["train", "--conf", str(conf), "--seed", "3", *common, str(tmp_path / "two")],
               nproc=2)
    assert "rank 1 of 2" in r.stderr
    one, two = _weights(tmp_path / "one/final.pt"), _weights(tmp_path / "two/final.pt")
    assert _max_diff(one, two) < TOLERANCE
    # the weights did move: the comparison is not between two untrained models
    init = _weights(tmp_path / "one/epoch1.pt")
    assert _max_diff(one, init) > 100 * TOLERANCE
    ck1 = torch.load(tmp_path / "one/epoch3.pt", weights_only=True)
    ck2 = torch.load(tmp_path / "two/epoch3.pt", weights_only=True)
    assert ck2["world_size"] == 2 and ck1["world_size"] == 1
    for h1, h2 in zip(ck1["history"], ck2["history"]):
        assert h1["accepted"] == h2["accepted"]
        assert abs(h1["valid_loss"] - h2["valid_loss"]) < 1e-4
        assert abs(h1["train_loss"] - h2["train_loss"]) < 1e-4
    # only rank 0 wrote: one log, one set of epoch checkpoints
    assert sorted(p.name for p in (tmp_path / "two").glob("epoch*.pt")) == [
        "epoch1.pt", "epoch2.pt", "epoch3.pt"]

    # resume under 2 ranks: stopped after epoch 2, continued, bit-identical to the uninterrupted
    part = tmp_path / "part"
    part.mkdir()
    for name in ("epoch1.pt", "epoch2.pt"):
        (part / name).write_bytes((tmp_path / "two" / name).read_bytes())
    r = _asrkd(["train", "--conf", str(conf), "--seed", "3", *common, str(part)], nproc=2)
    assert "resuming after epoch 2" in r.stderr
    assert _max_diff(_weights(part / "final.pt"), two) == 0.0


def test_two_gloo_ranks_reject_epochs_as_one_process(tmp_path):
    """reject_worse (the default): after a rejected epoch every rank goes back to the best one,
    and no rank reads an epoch checkpoint before rank 0 has written it."""
    data, ali = make_learnable_data(tmp_path, num_spk=4, utts_per_spk=6, num_pdfs=6, dim=8)
    conf = tmp_path / "dnn.yaml"
    conf.write_text(CONF.replace("reject_worse: false", "reject_worse: true\n  optimizer: sgd")
                    .replace("lr: 0.003", "lr: 0.3").replace("epochs: 3", "epochs: 4"))
    common = ["train", "--conf", str(conf), "--seed", "3", str(data), str(ali)]
    _asrkd(common + [str(tmp_path / "one")])
    _asrkd(common + [str(tmp_path / "two")], nproc=2)
    h1, h2 = (torch.load(tmp_path / d / "epoch4.pt", weights_only=True)["history"]
              for d in ("one", "two"))
    assert [h["accepted"] for h in h1] == [h["accepted"] for h in h2] == [True, True, False,
                                                                          False]
    one, two = _weights(tmp_path / "one/final.pt"), _weights(tmp_path / "two/final.pt")
    assert _max_diff(one, two) < TOLERANCE


def test_distill_on_two_gloo_ranks_equals_one_process(tmp_path):
    from asrkd.softtargets import save_soft_targets

    data, ali = make_learnable_data(tmp_path, num_spk=4, utts_per_spk=6, num_pdfs=6, dim=8)
    conf = tmp_path / "dnn.yaml"
    conf.write_text(CONF.replace("epochs: 3", "epochs: 2").replace("min_epochs: 3",
                                                                   "min_epochs: 2"))
    rng = np.random.default_rng(0)
    nf = dict(line.split() for line in (data / "utt2num_frames").read_text().splitlines())
    probs = {u: rng.dirichlet(np.ones(6), size=int(n)) for u, n in nf.items()}
    save_soft_targets(tmp_path / "soft", probs, temperature=1.0, topk=3)
    args = ["distill", "--conf", str(conf), "--seed", "2", str(data), str(ali),
            str(tmp_path / "soft")]
    _asrkd(args + [str(tmp_path / "one")])
    _asrkd(args + [str(tmp_path / "two")], nproc=2)
    one, two = _weights(tmp_path / "one/final.pt"), _weights(tmp_path / "two/final.pt")
    assert _max_diff(one, two) < TOLERANCE
    assert _max_diff(one, _weights(tmp_path / "one/epoch1.pt")) > 100 * TOLERANCE


def test_distill_with_a_transfer_set_on_two_gloo_ranks_equals_one_process(tmp_path):
    """Utterances without alignment (soft term only) fall unevenly on the ranks: the hard term
    is still the mean over the global batch's labelled frames, as in one process."""
    from asrkd.softtargets import save_soft_targets
    from asrkd.table import ArkWriter, read_scp

    data, ali = make_learnable_data(tmp_path, num_spk=4, utts_per_spk=6, num_pdfs=6, dim=8)
    conf = tmp_path / "dnn.yaml"
    conf.write_text(CONF.replace("epochs: 3", "epochs: 2").replace("min_epochs: 3",
                                                                   "min_epochs: 2"))
    rng = np.random.default_rng(0)
    nf = dict(line.split() for line in (data / "utt2num_frames").read_text().splitlines())
    probs = {u: rng.dirichlet(np.ones(6), size=int(n)) for u, n in nf.items()}
    save_soft_targets(tmp_path / "soft", probs, temperature=2.0, topk=3)
    part = tmp_path / "ali_part"  # speaker 103 has no alignment: the transfer set
    part.mkdir()
    pdfs = read_scp(ali / "pdf.scp")
    with ArkWriter(part / "pdf.ark", part / "pdf.scp") as w:
        for utt in sorted(pdfs):
            if not utt.startswith("103-"):
                w[utt] = np.asarray(pdfs[utt])
    for name in ("pdf_counts", "num_pdfs"):
        (part / name).write_text((ali / name).read_text())
    args = ["distill", "--conf", str(conf), "--seed", "2", str(data), str(part),
            str(tmp_path / "soft")]
    r = _asrkd(args + [str(tmp_path / "one")])
    assert "6 utterances" in r.stderr and "no alignment" in r.stderr
    _asrkd(args + [str(tmp_path / "two")], nproc=2)
    one, two = _weights(tmp_path / "one/final.pt"), _weights(tmp_path / "two/final.pt")
    assert _max_diff(one, two) < TOLERANCE
    assert _max_diff(one, _weights(tmp_path / "one/epoch1.pt")) > 100 * TOLERANCE


def test_local_part_covers_each_global_batch_once():
    from asrkd.distributed import World, local_part

    batch = np.arange(11)
    parts = [local_part(batch, World(rank=r, size=3)) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), batch)
    assert [len(p) for p in parts] == [4, 4, 3]
    assert len(local_part(np.arange(1), World(rank=1, size=2))) == 0
