import json
import math
import os

import numpy as np
import pytest
import torch

from asrkd.distill import kd_loss
from asrkd.errors import UserError


# --- kd_loss ----------------------------------------------------------------------------------


def _softmax(z):
    e = [math.exp(v) for v in z]
    s = sum(e)
    return [v / s for v in e]


def test_kd_loss_hand_case():
    z = [2.0, 0.0, -1.0]
    T, alpha = 2.0, 0.25
    logits = torch.tensor([z])
    hard = torch.tensor([1])
    ids = torch.tensor([[0, 2]])
    probs = torch.tensor([[0.75, 0.25]])
    q_t = _softmax([v / T for v in z])
    soft = -(0.75 * math.log(q_t[0]) + 0.25 * math.log(q_t[2]))
    hard_ce = -math.log(_softmax(z)[1])
    expected = alpha * T * T * soft + (1 - alpha) * hard_ce
    got = kd_loss(logits, hard, ids, probs, T, alpha).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_kd_loss_alpha0_is_plain_ce_and_alpha1_is_soft_only():
    torch.manual_seed(0)
    logits = torch.randn(7, 5)
    hard = torch.randint(0, 5, (7,))
    ids = torch.randint(0, 5, (7, 3))
    probs = torch.softmax(torch.randn(7, 3), -1)
    ce = torch.nn.functional.cross_entropy(logits, hard)
    assert kd_loss(logits, hard, ids, probs, 5.0, 0.0).item() == pytest.approx(ce.item())
    # alpha=1: the hard targets do not matter
    a = kd_loss(logits, hard, ids, probs, 2.0, 1.0).item()
    b = kd_loss(logits, (hard + 1) % 5, ids, probs, 2.0, 1.0).item()
    assert a == pytest.approx(b)


def test_kd_loss_frames_without_hard_targets_get_the_soft_term_only():
    torch.manual_seed(1)
    logits = torch.randn(4, 5)
    hard = torch.tensor([1, -1, 3, -1])
    ids = torch.randint(0, 5, (4, 2))
    probs = torch.softmax(torch.randn(4, 2), -1)
    T, alpha = 2.0, 0.3
    logq = torch.log_softmax(logits / T, -1)
    soft = -(probs * logq.gather(1, ids)).sum(1)  # per frame
    hard_ce = torch.nn.functional.cross_entropy(logits, hard.clamp(min=0), reduction="none")
    # soft CE averaged over all 4 frames, hard CE over the 2 labelled ones: alpha stays alpha
    want = alpha * T * T * soft.mean() + (1 - alpha) * (hard_ce * (hard >= 0)).sum() / 2
    got = kd_loss(logits, hard, ids, probs, T, alpha).item()
    assert got == pytest.approx(want.item(), rel=1e-6)
    # no frame with a hard target: finite, soft term only
    none = torch.full((4,), -1)
    assert kd_loss(logits, none, ids, probs, T, alpha).item() == \
        pytest.approx((alpha * T * T * soft).mean().item(), rel=1e-6)


def test_kd_loss_dense_equals_kl_plus_entropy_times_T2():
    torch.manual_seed(1)
    P, T = 6, 3.0
    logits = torch.randn(4, P)
    p = torch.softmax(torch.randn(4, P), -1)
    ids = torch.arange(P).expand(4, P)
    got = kd_loss(logits, torch.zeros(4, dtype=torch.long), ids, p, T, 1.0)
    logq = torch.log_softmax(logits / T, -1)
    kl = (p * (p.log() - logq)).sum(-1).mean()
    ent = -(p * p.log()).sum(-1).mean()
    assert got.item() == pytest.approx((T * T * (kl + ent)).item(), rel=1e-5)


def test_soft_gradient_scale_is_roughly_temperature_independent():
    # Hinton et al.: the soft term's gradient scales as 1/T^2, so multiplying by T^2 keeps it
    # comparable across temperatures (exact in the high-T limit with zero-mean logits).
    torch.manual_seed(2)
    P = 10
    z_student = torch.randn(1, P) * 0.1
    z_teacher = torch.randn(1, P) * 0.1
    z_student -= z_student.mean()
    z_teacher -= z_teacher.mean()
    norms = {}
    for T in (5.0, 10.0, 20.0):
        x = z_student.clone().requires_grad_(True)
        p = torch.softmax(z_teacher / T, -1)
        loss = kd_loss(x, torch.zeros(1, dtype=torch.long), torch.arange(P)[None], p, T, 1.0)
        loss.backward()
        norms[T] = x.grad.norm().item()
        # closed form of the gradient: T * (q - p)
        q = torch.softmax(z_student / T, -1)
        assert torch.allclose(x.grad, T * (q - p), atol=1e-6)
        # high-T limit: (z_s - z_t) / P, independent of T
        assert torch.allclose(x.grad, (z_student - z_teacher) / P, atol=2e-3)
    assert norms[5.0] == pytest.approx(norms[20.0], rel=0.05)


# --- combining teachers -----------------------------------------------------------------------


def test_kd_loss_rest_term_hand_case():
    # 4 pdfs, top-2 targets (0.5 on pdf 0, 0.3 on pdf 2) and 0.2 on the other two
    z = [1.0, -0.5, 0.25, 2.0]
    T = 2.0
    q = _softmax([v / T for v in z])
    q_rest = q[1] + q[3]
    soft = -(0.5 * math.log(q[0]) + 0.3 * math.log(q[2]) + 0.2 * math.log(q_rest))
    got = kd_loss(torch.tensor([z]), torch.tensor([-1]), torch.tensor([[0, 2]]),
                  torch.tensor([[0.5, 0.3]]), T, 1.0, torch.tensor([0.2])).item()
    assert got == pytest.approx(T * T * soft, rel=1e-6)
    # against dense targets whose tail is spread like the student's own tail, the dense CE is
    # the merged-tail CE plus rest * (entropy of the student's normalized tail)
    tail = [q[1] / q_rest, q[3] / q_rest]
    dense = torch.tensor([[0.5, 0.2 * tail[0], 0.3, 0.2 * tail[1]]])
    want = kd_loss(torch.tensor([z]), torch.tensor([-1]), torch.arange(4)[None], dense, T, 1.0)
    h_tail = -sum(t * math.log(t) for t in tail)
    assert want.item() == pytest.approx(got + T * T * 0.2 * h_tail, rel=1e-5)
    # with the rest term the student is pushed to keep 0.2 outside the top 2; without it, to 0
    x = torch.tensor([z], requires_grad=True)
    opt = torch.optim.SGD([x], lr=1.0)
    for _ in range(500):
        opt.zero_grad()
        kd_loss(x, torch.tensor([-1]), torch.tensor([[0, 2]]), torch.tensor([[0.5, 0.3]]), 1.0,
                1.0, torch.tensor([0.2])).backward()
        opt.step()
    qx = torch.softmax(x.detach(), -1)[0]
    assert qx[0].item() == pytest.approx(0.5, abs=1e-3) and qx[2].item() == pytest.approx(0.3, abs=1e-3)
    assert (qx[1] + qx[3]).item() == pytest.approx(0.2, abs=1e-3)
    # a dense row (K == P) with rest 0 stays finite
    v = kd_loss(torch.tensor([z]), torch.tensor([0]), torch.arange(4)[None],
                torch.tensor([[0.25] * 4]), T, 0.5, torch.tensor([0.0]))
    assert torch.isfinite(v)


def _kd_reference(z, hard, ids, probs, T, alpha, rest=None, hard_norm=None):
    """kd_loss composed of autograd's own operations (what _KDLoss writes out)."""
    loss = z.new_zeros(())
    if alpha < 1 and (hard >= 0).any():
        ce = torch.nn.functional.cross_entropy(z, hard, ignore_index=-1, reduction="sum")
        loss = loss + (1 - alpha) * ce / (int((hard >= 0).sum()) if hard_norm is None else hard_norm)
    if alpha > 0:
        logq = torch.log_softmax(z / T, dim=-1)
        soft = -(probs * logq.gather(1, ids)).sum(1)
        if rest is not None:
            log_rest = torch.logsumexp(logq.scatter(1, ids, float("-inf")), dim=1)
            soft = soft - torch.where(rest > 0, rest * log_rest, torch.zeros_like(rest))
        loss = loss + alpha * T * T * soft.mean()
    return loss


@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("with_rest", [False, True])
def test_kd_loss_value_and_gradient_equal_autograds_composition(T, alpha, with_rest):
    torch.manual_seed(3)
    N, P, K = 9, 12, 4
    z = torch.randn(N, P, dtype=torch.float64) * 3
    ids = torch.stack([torch.randperm(P)[:K] for _ in range(N)])
    probs = torch.rand(N, K, dtype=torch.float64)
    rest = torch.rand(N, dtype=torch.float64) * 0.3 if with_rest else None
    probs = probs / probs.sum(1, keepdim=True) * (1 - rest[:, None] if with_rest else 1)
    if with_rest:
        rest[0] = 0.0  # a row with no rest mass
    hard = torch.randint(0, P, (N,))
    hard[[1, 4]] = -1  # transfer-set frames
    for norm in (None, 11.0):
        a = z.clone().requires_grad_(True)
        b = z.clone().requires_grad_(True)
        got = kd_loss(a, hard, ids, probs, T, alpha, rest, hard_norm=norm)
        want = _kd_reference(b, hard, ids, probs, T, alpha, rest, hard_norm=norm)
        (3 * got).backward()  # a scaled loss scales the gradient
        (3 * want).backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-12)
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    # float32 logits: the same within float32 rounding, a float32 loss
    a = z.float().requires_grad_(True)
    got = kd_loss(a, hard, ids, probs.float(), T, alpha, None if rest is None else rest.float())
    got.backward()
    b = z.clone().requires_grad_(True)
    _kd_reference(b, hard, ids, probs, T, alpha, rest).backward()
    assert got.dtype == torch.float32
    assert torch.allclose(a.grad.double(), b.grad, atol=1e-6)
    # every frame without a hard target: the hard term is absent, not NaN
    none = torch.full((N,), -1)
    a = z.clone().requires_grad_(True)
    got = kd_loss(a, none, ids, probs, T, alpha, rest)
    got.backward()
    if alpha == 0:  # nothing to learn from
        assert got.item() == 0 and not a.grad.any()
    else:
        b = z.clone().requires_grad_(True)
        _kd_reference(b, none, ids, probs, T, alpha, rest).backward()
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_kd_loss_alpha_is_the_papers_alpha_with_unlabelled_frames():
    # one labelled and three unlabelled frames: the hard CE is that one frame's CE, weighted 1-a
    z = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    hard = torch.tensor([1, -1, -1, -1])
    ids = torch.tensor([[0], [0], [1], [1]])
    probs = torch.ones(4, 1)
    hard_ce = -math.log(_softmax([2.0, 0.0])[1])
    soft = [-math.log(_softmax(r)[i]) for r, i in zip(z.tolist(), (0, 0, 1, 1))]
    got = kd_loss(z, hard, ids, probs, 1.0, 0.5).item()
    assert got == pytest.approx(0.5 * sum(soft) / 4 + 0.5 * hard_ce, rel=1e-6)


# --- store ------------------------------------------------------------------------------------


# --- end to end: train teachers -> soft targets -> distill ------------------------------------


def make_learnable_data(root, num_spk=2, utts_per_spk=10, num_pdfs=6, dim=8, seed=0):
    """A fake data dir (feats.scp, cmvn.scp, utt2num_frames, ...) and an alignment dir whose
    pdf targets are learnable from the features (class means + noise)."""
    from asrkd.data import write_data_dir
    from asrkd.table import ArkWriter, write_table

    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.5, (num_pdfs, dim))
    data, ali = root / "data", root / "ali"
    data.mkdir(parents=True)
    ali.mkdir(parents=True)
    utt2spk, text, wav, feats, pdfs, cmvn = {}, {}, {}, {}, {}, {}
    for s in range(num_spk):
        spk = f"{100 + s}"
        offset = rng.normal(0, 1, dim)  # speaker shift: CMVN removes it
        spk_feats = []
        for u in range(utts_per_spk):
            utt = f"{spk}-1-{u:04d}"
            segs = [(rng.integers(num_pdfs), rng.integers(3, 9)) for _ in range(rng.integers(5, 9))]
            y = np.concatenate([[p] * n for p, n in segs]).astype(np.int32)
            x = means[y] + rng.normal(0, 0.8, (len(y), dim)) + offset
            utt2spk[utt], text[utt], wav[utt] = spk, "A", f"/dev/null/{utt}.flac"
            feats[utt], pdfs[utt] = x.astype(np.float32), y
            spk_feats.append(x)
        x = np.concatenate(spk_feats)
        stats = np.zeros((2, dim + 1))
        stats[0, :dim], stats[0, dim] = x.sum(0), len(x)
        stats[1, :dim] = (x**2).sum(0)
        cmvn[spk] = stats
    write_data_dir(data, wav, text, utt2spk)
    with ArkWriter(root / "feats.ark", data / "feats.scp") as w:
        for utt in sorted(feats):
            w[utt] = feats[utt]
    with ArkWriter(root / "cmvn.ark", data / "cmvn.scp") as w:
        for spk in sorted(cmvn):
            w[spk] = cmvn[spk]
    write_table(data / "utt2num_frames", {u: str(len(f)) for u, f in feats.items()})
    with ArkWriter(ali / "pdf.ark", ali / "pdf.scp") as w:
        for utt in sorted(pdfs):
            w[utt] = pdfs[utt]
    counts = np.bincount(np.concatenate(list(pdfs.values())), minlength=num_pdfs)
    (ali / "pdf_counts").write_text(" ".join(map(str, counts)) + "\n")
    (ali / "num_pdfs").write_text(f"{num_pdfs}\n")
    return data, ali


def test_train_soft_targets_distill_end_to_end(tmp_path):
    from asrkd.distill import distill
    from asrkd.models import ModelConfig, load_model
    from asrkd.score import frame_accuracy
    from asrkd.softtargets import compute_soft_targets
    from asrkd.train import TrainConfig, train_model

    torch.set_num_threads(1)
    num_pdfs = 6
    data, ali = make_learnable_data(tmp_path, num_spk=3, utts_per_spk=6, num_pdfs=num_pdfs)
    tc = TrainConfig(epochs=3, min_epochs=3, batch_size=64, lr=0.01, tensorboard=False,
                     valid_fraction=0.34)
    teacher = ModelConfig(left_context=2, right_context=2, hidden_dims=[32, 32])
    cache = str(tmp_path / "frames")
    for m in (1, 2):
        train_model(str(data), str(ali), str(tmp_path / "teachers" / f"model{m}"), teacher, tc,
                    seed=m, cache_dir=cache)
    meta = compute_soft_targets(str(data), str(tmp_path / "teachers"), str(tmp_path / "soft"),
                                temperature=2.0, topk=3)
    assert meta["num_pdfs"] == num_pdfs
    student = ModelConfig(left_context=1, right_context=1, hidden_dims=[8])
    final = distill(str(data), str(ali), str(tmp_path / "soft"), str(tmp_path / "student"),
                    student, tc, alpha=0.5, seed=3, cache_dir=cache)
    acc = frame_accuracy(final, str(data), str(ali))
    assert acc > 0.6, acc  # chance is about 1 / num_pdfs
    # every utterance aligned: the student reuses the teachers' frame cache
    assert len([d for d in os.listdir(cache) if not d.startswith(".")]) == 1
    assert load_model(final).config.hidden_dims == [8]
    with open(tmp_path / "student" / "distill.json") as f:
        assert json.load(f)["temperature"] == 2.0
    with pytest.raises(UserError, match="differs"):
        distill(str(data), str(ali), str(tmp_path / "soft"), str(tmp_path / "s2"), student, tc,
                temperature=5.0)
    # on the fly: the teachers (context 2) cannot see enough through the student's windows
    with pytest.raises(UserError, match="context"):
        distill(str(data), str(ali), None, str(tmp_path / "s3"), student, tc,
                teachers_dir=str(tmp_path / "teachers"), temperature=2.0)
    wide = ModelConfig(left_context=3, right_context=3, hidden_dims=[8])
    tc1 = TrainConfig(epochs=1, min_epochs=1, batch_size=64, lr=0.01, tensorboard=False,
                      valid_fraction=0.34)
    final = distill(str(data), str(ali), None, str(tmp_path / "s4"), wide, tc1,
                    teachers_dir=str(tmp_path / "teachers"), temperature=2.0, train_fraction=0.5,
                    cache_dir=cache)
    assert frame_accuracy(final, str(data), str(ali)) > 0.4


def test_distill_trains_on_a_transfer_set_without_alignments(tmp_path):
    """Utterances with soft targets but no alignment are learned from the teachers alone."""
    from asrkd.distill import distill
    from asrkd.models import ModelConfig
    from asrkd.score import frame_accuracy
    from asrkd.softtargets import compute_soft_targets
    from asrkd.table import ArkWriter, read_scp
    from asrkd.train import TrainConfig, train_model

    torch.set_num_threads(1)
    data, ali = make_learnable_data(tmp_path, num_spk=4, utts_per_spk=6, num_pdfs=6)
    tc = TrainConfig(epochs=3, min_epochs=3, batch_size=64, lr=0.01, tensorboard=False,
                     valid_fraction=0.34)
    teacher = ModelConfig(left_context=1, right_context=1, hidden_dims=[32])
    for m in (1, 2):
        train_model(str(data), str(ali), str(tmp_path / "teachers" / f"model{m}"), teacher, tc,
                    seed=m, cache_dir=str(tmp_path / "frames"))
    compute_soft_targets(str(data), str(tmp_path / "teachers"), str(tmp_path / "soft"),
                         temperature=2.0, topk=6)
    # the student's alignments lack speaker 103: it becomes the transfer set
    part = tmp_path / "ali_part"
    part.mkdir()
    pdfs = read_scp(ali / "pdf.scp")
    with ArkWriter(part / "pdf.ark", part / "pdf.scp") as w:
        for utt in sorted(pdfs):
            if not utt.startswith("103-"):
                w[utt] = np.asarray(pdfs[utt])
    for name in ("pdf_counts", "num_pdfs"):
        (part / name).write_text((ali / name).read_text())
    student = ModelConfig(left_context=1, right_context=1, hidden_dims=[16])
    final = distill(str(data), str(part), str(tmp_path / "soft"), str(tmp_path / "student"),
                    student, tc, alpha=0.5, seed=3, cache_dir=str(tmp_path / "frames2"))
    with open(tmp_path / "student" / "distill.json") as f:
        info = json.load(f)
    assert info["transfer_utts"] == 6 and info["transfer_frames"] > 0
    rows = (tmp_path / "student" / "train_log.csv").read_text().splitlines()[1:]
    assert all(0 <= float(r.split(",")[3]) <= 1 for r in rows)  # train acc on labeled frames
    # judged against the true labels of the transfer speaker, never shown to the student
    only = tmp_path / "only103"
    only.mkdir()
    with ArkWriter(only / "pdf.ark", only / "pdf.scp") as w:
        for utt in sorted(pdfs):
            if utt.startswith("103-"):
                w[utt] = np.asarray(pdfs[utt])
    for name in ("pdf_counts", "num_pdfs"):
        (only / name).write_text((ali / name).read_text())
    assert frame_accuracy(final, str(data), str(only)) > 0.6
    # on a fraction of the data, the student's labeled utterances are those a hard-target run
    # with the same seed trains on, whatever the transfer set adds
    tc1 = TrainConfig(**{**tc.to_dict(), "epochs": 1, "min_epochs": 1})
    distill(str(data), str(part), str(tmp_path / "soft"), str(tmp_path / "s_frac"), student,
            tc1, seed=5, train_fraction=0.4, cache_dir=str(tmp_path / "frames2"))
    train_model(str(data), str(part), str(tmp_path / "h_frac"), student, tc1, seed=5,
                train_fraction=0.4, cache_dir=str(tmp_path / "frames3"))
    kd = (tmp_path / "s_frac" / "train_utts").read_text().split()
    hard = (tmp_path / "h_frac" / "train_utts").read_text().split()
    assert [u for u in kd if not u.startswith("103-")] == hard and len(hard) == 5
    assert len([u for u in kd if u.startswith("103-")]) == 2  # 0.4 of the 6 transfer utts


@pytest.mark.parametrize("num_pdfs", [200, 2000, 20000])
def test_small_student_is_at_least_4x_smaller_than_the_teacher(num_pdfs):
    import dataclasses

    from asrkd.models import build_model
    from asrkd.train import load_conf

    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    sizes = []
    for name in ("dnn.yaml", "student_small.yaml"):
        mc, _ = load_conf(os.path.join(conf, name))
        mc = dataclasses.replace(mc, feat_dim=40, num_pdfs=num_pdfs)
        sizes.append(sum(p.numel() for p in build_model(mc).parameters()))
    assert sizes[0] >= 4 * sizes[1], sizes
