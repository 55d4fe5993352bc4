"""Training: learnability, schedules, determinism, resume, hooks, errors, configs."""

import csv
import os

import numpy as np
import pytest
import torch

from asrkd.errors import UserError
from asrkd.models import ModelConfig, load_model
from asrkd.table import ArkWriter, write_table
from test_distill import make_learnable_data
from asrkd.frames import build_frame_cache, split_by_speaker
from asrkd.score import frame_accuracy, read_utt_list
from asrkd.train import TrainConfig, TrainHooks, load_conf, train_model

D, P = 8, 6


def make_corpus(root, num_spk=6, utts_per_spk=4, seed=0, drop_ali=(), bad_len=()):
    """A data dir with fbank-like features whose pdf targets are learnable from the frames.

    Each pdf has a mean vector; a frame is its pdf's mean + noise + a per-speaker offset (which
    CMVN should remove). Targets come in runs of 3-8 frames, like HMM states.
    """
    rng = np.random.default_rng(seed)
    data, ali = os.path.join(root, "data"), os.path.join(root, "ali")
    os.makedirs(data)
    os.makedirs(ali)
    means = rng.normal(scale=2.0, size=(P, D))
    feats, pdfs, utt2spk = {}, {}, {}
    for s in range(num_spk):
        spk = f"{100 + s}"
        offset = rng.normal(scale=3.0, size=D)
        for u in range(utts_per_spk):
            utt = f"{spk}-1-{u:04d}"
            runs = []
            while sum(map(len, runs)) < 60:
                runs.append([rng.integers(P)] * rng.integers(3, 9))
            y = np.concatenate(runs).astype(np.int32)
            feats[utt] = (means[y] + rng.normal(scale=1.0, size=(len(y), D)) + offset)
            pdfs[utt] = y
            utt2spk[utt] = spk
    with ArkWriter(os.path.join(root, "feats.ark"), os.path.join(data, "feats.scp")) as w:
        for utt in sorted(feats):
            w[utt] = feats[utt]
    spk2utt = {}
    for utt, spk in utt2spk.items():
        spk2utt.setdefault(spk, []).append(utt)
    with ArkWriter(os.path.join(root, "cmvn.ark"), os.path.join(data, "cmvn.scp")) as w:
        for spk, us in sorted(spk2utt.items()):
            x = np.concatenate([feats[u] for u in us]).astype(np.float32).astype(np.float64)
            st = np.zeros((2, D + 1))
            st[0, :D], st[1, :D], st[0, D] = x.sum(0), (x * x).sum(0), len(x)
            w[spk] = st
    write_table(os.path.join(data, "utt2spk"), utt2spk)
    write_table(os.path.join(data, "spk2utt"), {k: sorted(v) for k, v in spk2utt.items()})
    write_table(os.path.join(data, "utt2num_frames"), {u: len(f) for u, f in feats.items()})
    write_table(os.path.join(data, "text"), {u: "A" for u in feats})
    counts = np.zeros(P, dtype=np.int64)
    with ArkWriter(os.path.join(ali, "pdf.ark"), os.path.join(ali, "pdf.scp")) as w:
        for utt in sorted(pdfs):
            if utt in drop_ali:
                continue
            y = pdfs[utt][:-1] if utt in bad_len else pdfs[utt]
            w[utt] = y
            counts += np.bincount(y, minlength=P)
    with open(os.path.join(ali, "pdf_counts"), "w") as f:
        f.write(" ".join(map(str, counts)) + "\n")
    with open(os.path.join(ali, "num_pdfs"), "w") as f:
        f.write(f"{P}\n")
    return data, ali


MC = ModelConfig(left_context=2, right_context=2, hidden_dims=[32, 32])
TC = TrainConfig(epochs=4, min_epochs=4, batch_size=64, lr=0.01, tensorboard=False,
                 valid_fraction=0.2, start_halving_impr=-1.0, num_threads=1)


def _weights(path):
    return load_model(path).state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trains_beyond_chance_and_logs(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"), drop_ali=("100-1-0001",))
    exp = str(tmp_path / "exp")
    tc = TrainConfig(**{**TC.to_dict(), "tensorboard": True})
    final = train_model(data, ali, exp, MC, tc, seed=1)
    model = load_model(final)
    assert model.config.feat_dim == D and model.config.num_pdfs == P
    assert model.pdf_counts.sum() > 0
    acc = frame_accuracy(model, data, ali)
    assert acc > 0.7, acc  # chance is ~1/6
    assert abs(frame_accuracy(final, data, ali) - acc) < 1e-9
    with open(os.path.join(exp, "train_log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["valid_acc"]) > 0.7
    assert os.listdir(os.path.join(exp, "tensorboard"))
    cache = build_frame_cache(data, ali, os.path.join(exp, "frames"))
    assert cache.meta["skipped_unaligned"] == 1 and "100-1-0001" not in cache.utts


def test_frames_per_epoch_sets_the_updates_and_one_pass_is_the_default(tmp_path):
    """An epoch of frames_per_epoch frames makes ceil(N / batch) updates over several passes
    (each frame seen as often as the passes say); 0 is one pass over the training frames."""
    data, ali = make_corpus(str(tmp_path / "c"))
    tc = TrainConfig(**{**TC.to_dict(), "epochs": 2, "min_epochs": 2})
    train_model(data, ali, str(tmp_path / "one"), MC, tc, seed=1)
    with open(tmp_path / "one" / "train_log.csv") as f:
        one = list(csv.DictReader(f))
    n = int(one[0]["frames"])
    assert int(one[0]["updates"]) == -(-n // tc.batch_size) and int(one[1]["frames"]) == n
    want = 2 * n + 50
    tc2 = TrainConfig(**{**tc.to_dict(), "frames_per_epoch": want})
    train_model(data, ali, str(tmp_path / "more"), MC, tc2, seed=1)
    with open(tmp_path / "more" / "train_log.csv") as f:
        more = list(csv.DictReader(f))
    assert [int(r["frames"]) for r in more] == [want, want]
    assert [int(r["updates"]) for r in more] == [-(-want // tc.batch_size)] * 2
    with pytest.raises(UserError, match="frames_per_epoch"):
        TrainConfig(frames_per_epoch=-1)


def test_fixed_schedule_halves_from_its_epoch_and_keeps_every_epoch(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"))
    # newbob would halve at once and stop: every epoch's gain is below these thresholds
    tc = TrainConfig(**{**TC.to_dict(), "epochs": 5, "min_epochs": 1, "halving_from_epoch": 3,
                        "reject_worse": False, "start_halving_impr": 10.0,
                        "end_halving_impr": 10.0})
    final = train_model(data, ali, str(tmp_path / "exp"), MC, tc, seed=1)
    with open(os.path.join(str(tmp_path / "exp"), "train_log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in rows] == [0.01, 0.01, 0.01, 0.005, 0.0025]
    assert all(r["accepted"] == "1" for r in rows)
    assert _same(_weights(final), _weights(os.path.join(str(tmp_path / "exp"), "epoch5.pt")))
    newbob = TrainConfig(**{**tc.to_dict(), "halving_from_epoch": 0})
    train_model(data, ali, str(tmp_path / "nb"), MC, newbob, seed=1)
    with open(os.path.join(str(tmp_path / "nb"), "train_log.csv")) as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == [0.01, 0.005]


def test_same_seed_same_model_different_seed_differs(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"))
    tc = TrainConfig(**{**TC.to_dict(), "epochs": 2, "min_epochs": 2})
    mc = ModelConfig(**{**MC.to_dict(), "dropout": 0.2})
    a = train_model(data, ali, str(tmp_path / "a"), mc, tc, seed=3)
    b = train_model(data, ali, str(tmp_path / "b"), mc, tc, seed=3)
    c = train_model(data, ali, str(tmp_path / "c3"), mc, tc, seed=4)
    assert _same(_weights(a), _weights(b))
    assert not _same(_weights(a), _weights(c))


@pytest.mark.parametrize("family", ["dnn", "tdnn"])
def test_resume_after_interruption_gives_same_model(tmp_path, family):
    data, ali = make_corpus(str(tmp_path / "c"))
    mc = MC if family == "dnn" else ModelConfig(family="tdnn", hidden_dims=[24, 24],
                                                tdnn_offsets=[[-1, 0, 1], [-2, 0, 2]])
    tc = TC if family == "dnn" else TrainConfig(**{**TC.to_dict(), "chunk_size": 5})
    full = train_model(data, ali, str(tmp_path / "full"), mc, tc, seed=5)
    assert frame_accuracy(full, data, ali) > 0.7

    class Killed(Exception):
        pass

    def kill_after_2(epoch):
        if epoch == 2:
            raise Killed

    exp = str(tmp_path / "resumed")
    with pytest.raises(Killed):
        train_model(data, ali, exp, mc, tc, seed=5,
                    hooks=TrainHooks(on_epoch_end=kill_after_2))
    assert not os.path.exists(os.path.join(exp, "epoch3.pt"))
    resumed = train_model(data, ali, exp, mc, tc, seed=5)
    assert _same(_weights(full), _weights(resumed))
    with open(os.path.join(exp, "train_log.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    # A finished run is not redone; a different config in the same dir is refused.
    assert train_model(data, ali, exp, mc, tc, seed=5) == resumed
    with pytest.raises(UserError):
        train_model(data, ali, exp, mc, TrainConfig(**{**tc.to_dict(), "lr": 0.1}), seed=5)


def test_frame_count_mismatch_is_an_error(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"), bad_len=("101-1-0002",))
    with pytest.raises(UserError, match="101-1-0002"):
        train_model(data, ali, str(tmp_path / "exp"), MC, TC, seed=1)


def test_extra_targets_loss_fn_and_train_fraction(tmp_path):
    data, ali = make_corpus(str(tmp_path / "c"))
    from asrkd.features import FeatureReader

    reader = FeatureReader(data, cmvn="meanvar")
    # extra = (T, 2) copies of the frame's own index within its utterance and a constant
    extra = {u: np.stack([np.arange(reader.num_frames(u)), np.full(reader.num_frames(u), 7.0)],
                         1).astype(np.float32) for u in reader.utts}
    seen = []

    def loss_fn(logits, batch):
        assert batch["extra"].shape == (len(batch["y"]), 2)
        assert torch.all(batch["extra"][:, 1] == 7.0)
        seen.append(len(batch["y"]))
        return torch.nn.functional.cross_entropy(logits, batch["y"])

    tc = TrainConfig(**{**TC.to_dict(), "epochs": 1, "min_epochs": 1})
    train_model(data, ali, str(tmp_path / "exp"), MC, tc, seed=1, train_fraction=0.25,
                hooks=TrainHooks(targets=extra, loss=loss_fn))
    cache = build_frame_cache(data, ali, str(tmp_path / "exp" / "frames"))
    train_utts, _ = split_by_speaker(cache.spk, tc.valid_fraction)
    n_train = sum(cache.offsets[u + 1] - cache.offsets[u] for u in train_utts)
    assert 0 < sum(seen) < 0.5 * n_train  # a quarter of the utterances


def test_chunk_starts_cover_each_utterance(tmp_path):
    from asrkd.train import _chunk_starts

    data, ali = make_corpus(str(tmp_path / "c"), num_spk=2, utts_per_spk=3)
    cache = build_frame_cache(data, ali, str(tmp_path / "frames"))
    frames = cache.frames_of(range(len(cache.utts)))
    starts = _chunk_starts(cache, frames, 7)
    covered = np.unique((starts[:, None] + np.arange(7)).ravel())
    np.testing.assert_array_equal(covered, frames)  # every frame, none outside its utterance
    u = cache.utt_index[starts]
    assert np.all(starts + 7 <= cache.offsets[u + 1])


def test_load_conf(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("# test\nmodel:\n  hidden_dims: [64, 64]\ntrain:\n  epochs: 3\n")
    mc, tc = load_conf(str(p))
    assert mc.hidden_dims == [64, 64] and tc.epochs == 3 and tc.lr == TrainConfig().lr
    p.write_text("model:\n  hiden_dims: [64]\n")
    with pytest.raises(UserError):
        load_conf(str(p))


def test_cli_train_and_user_error(tmp_path, capsys):
    from asrkd.cli import main

    data, ali = make_corpus(str(tmp_path / "c"), num_spk=3, utts_per_spk=2)
    conf = tmp_path / "dnn.yaml"
    conf.write_text("# tiny\nmodel:\n  hidden_dims: [16]\ntrain:\n  epochs: 1\n"
                    "  tensorboard: false\n  valid_fraction: 0.34\n")
    exp = str(tmp_path / "exp")
    assert main(["train", data, ali, exp, "--conf", str(conf), "--seed", "2",
                 "--num-threads", "1"]) == 0
    assert os.path.isfile(os.path.join(exp, "final.pt"))
    assert main(["train", data, str(tmp_path / "nope"), exp, "--conf", str(conf)]) == 1
    assert "missing pdf.scp" in capsys.readouterr().err


def test_repo_confs_parse():
    root = os.path.join(os.path.dirname(__file__), "..", "conf")
    mc, tc = load_conf(os.path.join(root, "dnn.yaml"))
    assert mc.family == "dnn" and mc.context == 11
    mc, _ = load_conf(os.path.join(root, "dnn_paper.yaml"))
    assert mc.context == 26 and mc.left_context == 20 and mc.hidden_dims == [2560] * 8
    mc, _ = load_conf(os.path.join(root, "tdnn.yaml"))
    assert mc.family == "tdnn" and mc.left_context == mc.right_context == 10
    # stage 17's models: the teachers' model, trained longer
    small, tc = load_conf(os.path.join(root, "dnn_small_data.yaml"))
    assert small == load_conf(os.path.join(root, "dnn.yaml"))[0] and tc.epochs == 40


# --- scale: bf16 autocast, memory-bounded frame storage ------------------------------------


def test_bf16_autocast_trains_on_cpu(tmp_path):
    from asrkd.models import load_checkpoint

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



def test_train_utts_and_frame_accuracy_verb_on_them(tmp_path, capsys):
    """Training lists the utterances it saw; `asrkd frame-accuracy --utts` scores just those,
    as `asrkd report` reads a decode dir."""
    from asrkd.cli import main
    from asrkd.report.artefacts import read_frame_acc, read_per_utt
    data, ali = make_corpus(str(tmp_path / "c"))
    exp = str(tmp_path / "exp")
    tc = TrainConfig(**{**TC.to_dict(), "epochs": 2, "min_epochs": 2})
    final = train_model(data, ali, exp, MC, tc, seed=1, train_fraction=0.25)
    seen = read_utt_list(os.path.join(exp, "train_utts"))
    cache = build_frame_cache(data, ali, os.path.join(exp, "frames"))
    train_idx, valid_idx = split_by_speaker(cache.spk, tc.valid_fraction)
    assert len(seen) == round(0.25 * len(train_idx))  # a quarter of the training split
    assert not set(seen) & {cache.utts[i] for i in valid_idx}

    out = str(tmp_path / "exp" / "decode_train_small")
    assert main(["frame-accuracy", "--utts", os.path.join(exp, "train_utts"), data, ali, exp,
                 out]) == 0
    per_utt = read_per_utt(out, "frame_acc")
    assert sorted(per_utt) == sorted(seen)
    acc = frame_accuracy(final, data, ali, utts=seen)
    assert read_frame_acc(out) == pytest.approx(100 * acc, abs=1e-4)
    assert sum(c for c, _ in per_utt.values()) / sum(n for _, n in per_utt.values()) == \
        pytest.approx(acc)
    # learnt, above chance (1/6), on the data it saw and on the training utterances it did not
    rest = [cache.utts[i] for i in train_idx if cache.utts[i] not in set(seen)]
    assert acc > 0.3 and frame_accuracy(final, data, ali, utts=rest) > 0.3
    # every utterance, without --utts
    assert main(["frame-accuracy", data, ali, final, str(tmp_path / "all")]) == 0
    assert len(read_per_utt(str(tmp_path / "all"), "frame_acc")) == len(cache.utts)
    assert "frame-accuracy:" in capsys.readouterr().err
    # an utterance that is not in the data dir is a one-line error
    (tmp_path / "bad").write_text("nope-1-0000\n")
    assert main(["frame-accuracy", "--utts", str(tmp_path / "bad"), data, ali, final,
                 str(tmp_path / "x")]) == 1
    assert "no utterance nope-1-0000" in capsys.readouterr().err
