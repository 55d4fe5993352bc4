"""Throughput of training, the soft-target pass and DNN decoding's forward, each as a share of
this machine's matmul FLOP/s measured in the same run at the same shapes.

For each model shape (the demo's 11 x 40 -> 3 x 256 -> 1000 pdfs, and the paper's 26 x 40 ->
8 x 2560 -> 3000 pdfs) it times
- matmul: the GEMMs of one training step (forward, input and weight gradients) at the
  training batch, and of the forward pass at a decoding chunk, as bare ``torch.mm`` calls;
- train: ``asrkd.train.train_model`` itself (frame cache reads, splicing, batching, loss,
  backward, optimizer) on a stand-in corpus (bench/fake_corpus.py), frames/s of its epoch;
- soft targets: ``asrkd.softtargets.compute_soft_targets`` with ``--teachers`` members (one
  feature pass, top-k, the store written);
- decode forward: ``asrkd.ensemble.Scorer`` (log posteriors minus log priors) of one model over
  whole utterances, the part of ``asrkd decode`` that runs the network.
A share is (frames/s x the stage's FLOPs per frame) / the matmul FLOP/s at its shapes.

    .venv/bin/python bench/train.py [--threads 1] [--shapes demo,paper] [--quick]
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_corpus import make_fake_corpus  # noqa: E402

SHAPES = {
    # name: (left, right, hidden, pdfs, batch, optimizer) as conf/dnn.yaml, conf/dnn_paper.yaml
    "demo": (5, 5, [256] * 3, 1000, 512, "adam"),
    "paper": (20, 5, [2560] * 8, 3000, 256, "sgd"),
}
DIM = 40
DECODE_CHUNK = 800  # a typical utterance (8 s): the rows of one decoding forward


def layer_dims(left, right, hidden, pdfs):
    dims = [(left + 1 + right) * DIM] + list(hidden) + [pdfs]
    return list(zip(dims[:-1], dims[1:]))


def matmul_rate(layers, rows, backward, seconds=3.0, repeats=4):
    """FLOP/s of the GEMMs of a forward (and backward) pass over ``rows`` frames."""
    mats = []
    for k, (i, o) in enumerate(layers):
        x, w, dy = torch.randn(rows, i), torch.randn(i, o), torch.randn(rows, o)
        mats.append((x, w, dy, k > 0))
    flops = 0
    for x, w, dy, need_dx in mats:
        flops += 2 * x.shape[0] * x.shape[1] * w.shape[1] * (1 + backward * (1 + need_dx))

    def step():
        for x, w, dy, need_dx in mats:
            torch.mm(x, w)
            if backward:
                torch.mm(x.t(), dy)  # weight gradient
                if need_dx:  # the input's gradient is never needed
                    torch.mm(dy, w.t())

    step()
    best = 0.0
    for _ in range(repeats):  # the best of a few: what the machine can do when least disturbed
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / repeats:
            step()
            n += 1
        best = max(best, flops * n / (time.perf_counter() - t0))
    return best


def flops_per_frame(layers, training):
    fwd = sum(2 * i * o for i, o in layers)
    if not training:
        return fwd
    return 3 * fwd - 2 * layers[0][0] * layers[0][1]


def bench_shape(name, args, root):
    from asrkd.ensemble import Scorer
    from asrkd.features import FeatureReader
    from asrkd.models import ModelConfig, build_model
    from asrkd.softtargets import compute_soft_targets
    from asrkd.train import TrainConfig, train_model

    left, right, hidden, pdfs, batch, optimizer = SHAPES[name]
    layers = layer_dims(left, right, hidden, pdfs)
    paper = name == "paper"
    train_frames = (3_000 if paper else 100_000) // (4 if args.quick else 1)
    eval_frames = (2_400 if paper else 40_000) // (4 if args.quick else 1)
    d = os.path.join(root, name)
    data, ali = make_fake_corpus(os.path.join(d, "train"), int(train_frames * 1.15), pdfs, DIM)
    evald, _ = make_fake_corpus(os.path.join(d, "eval"), eval_frames, pdfs, DIM, num_spk=3,
                                seed=1)
    rates = {"train": matmul_rate(layers, batch, backward=True),
             "forward": matmul_rate(layers, DECODE_CHUNK, backward=False)}

    mc = ModelConfig(left_context=left, right_context=right, hidden_dims=hidden)
    tc = TrainConfig(epochs=1, min_epochs=1, batch_size=batch, optimizer=optimizer,
                     max_frames_per_epoch=train_frames, tensorboard=False, valid_fraction=0.05,
                     num_threads=args.threads)
    final = train_model(data, ali, os.path.join(d, "exp"), mc, tc, seed=1)
    ckpt = torch.load(final, weights_only=True)
    out = {"train": ckpt["history"][-1]["train_frames_per_second"] if "history" in ckpt else None}
    if out["train"] is None:  # final.pt has no history: read the epoch checkpoint
        out["train"] = torch.load(os.path.join(d, "exp", "epoch1.pt"), weights_only=True)[
            "history"][-1]["train_frames_per_second"]

    teachers = os.path.join(d, "teachers")
    for m in range(args.teachers):
        torch.manual_seed(m)
        model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
        model.pdf_counts.copy_(ckpt["pdf_counts"])
        os.makedirs(os.path.join(teachers, f"model{m + 1}"), exist_ok=True)
        model.save(os.path.join(teachers, f"model{m + 1}", "final.pt"))
    t0 = time.perf_counter()
    meta = compute_soft_targets(evald, teachers, os.path.join(d, "soft"), temperature=1.0,
                                topk=20, nj=1)
    out["soft"] = meta["num_frames"] / (time.perf_counter() - t0)

    reader = FeatureReader(evald, cmvn="meanvar")
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    scorer = Scorer([model.eval()], reader)
    t0, n = time.perf_counter(), 0
    for utt in reader.utts:
        n += scorer(utt).shape[0]
    out["decode"] = n / (time.perf_counter() - t0)

    fwd, trn = flops_per_frame(layers, False), flops_per_frame(layers, True)
    rows = [("train loop", out["train"], trn, rates["train"]),
            (f"soft targets ({args.teachers} teachers)", out["soft"], fwd * args.teachers,
             rates["forward"]),
            ("decode forward", out["decode"], fwd, rates["forward"])]
    params = sum(i * o + o for i, o in layers)
    print(f"\n{name}: {left + 1 + right} x {DIM} -> {len(hidden)} x {hidden[0]} -> {pdfs} pdfs "
          f"({params / 1e6:.2f}M params), batch {batch} ({optimizer}), {args.threads} thread(s)")
    print(f"  matmul at these shapes: {rates['train'] / 1e9:.1f} GFLOP/s (training GEMMs at "
          f"{batch} rows), {rates['forward'] / 1e9:.1f} GFLOP/s (forward at {DECODE_CHUNK})")
    print(f"  {'stage':<26} {'frames/s':>10} {'MFLOP/frame':>12} {'GFLOP/s':>8} {'share':>7}")
    for label, fps, fpf, rate in rows:
        print(f"  {label:<26} {fps:>10.0f} {fpf / 1e6:>12.2f} {fps * fpf / 1e9:>8.1f} "
              f"{100 * fps * fpf / rate:>6.1f}%")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the share is per "
                   "core at 1; the machine may be shared)")
    p.add_argument("--shapes", default="demo,paper", help="comma-separated: demo, paper")
    p.add_argument("--teachers", type=int, default=2, help="ensemble size of the soft-target "
                   "pass")
    p.add_argument("--quick", action="store_true", help="a quarter of the frames")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="asrkd-bench-train-") as root:
        for name in args.shapes.split(","):
            if name not in SHAPES:
                sys.exit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
            bench_shape(name, args, root)
    print(f"\n(total {time.time() - t0:.0f} s; device: cpu, torch {torch.__version__})")


if __name__ == "__main__":
    main()
