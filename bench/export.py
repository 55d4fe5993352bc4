"""ONNX against PyTorch: model size and per-frame latency of the acoustic model on one thread.

Exports MODEL (a checkpoint, a student dir, or an ensemble dir) with `export_onnx`, then times
whole-utterance log-posteriors (splicing included) of DATA_DIR's utterances with PyTorch
(``Scorer.log_posteriors``' network part) and with onnxruntime, alternating the two in every
repeat so that other users' load falls on both alike. Reports microseconds per frame (best and
median repeat, wall clock) and the ratio onnxruntime / PyTorch. Without arguments it makes a
random 3 x 256 DNN over 11 x 40 fbank with 1000 outputs (the demo's size) and random features.

    .venv/bin/python bench/export.py [--model exp/distill --data-dir data/test] [--repeats 7]
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from asrkd.ensemble import resolve_checkpoints
from asrkd.export import OnnxModel, _UtteranceGraph, export_onnx
from asrkd.models import ModelConfig, build_model, load_model


class _Feats(dict):
    cmvn = "meanvar"


def _random_setup(root):
    """A demo-sized DNN and a fake data dir of random 'CMVN'd' features (what the timing needs)."""
    import kaldiio

    torch.manual_seed(0)
    net = build_model(ModelConfig(feat_dim=40, num_pdfs=1000, hidden_dims=[256] * 3))
    net.pdf_counts.fill_(1)
    os.makedirs(os.path.join(root, "model"))
    net.save(os.path.join(root, "model", "final.pt"))
    d = os.path.join(root, "data")
    os.makedirs(d)
    rng = np.random.default_rng(0)
    feats = {f"s1-u{i:02d}": rng.standard_normal((int(rng.integers(200, 600)), 40)).astype(
        np.float32) for i in range(20)}
    kaldiio.save_ark(os.path.join(d, "feats.ark"), feats, scp=os.path.join(d, "feats.scp"))
    stats = np.zeros((2, 41))
    stats[0, -1] = 1.0
    stats[1, :-1] = 1.0  # mean 0, variance 1: CMVN is the identity
    kaldiio.save_ark(os.path.join(d, "cmvn.ark"), {"s1": stats}, scp=os.path.join(d, "cmvn.scp"))
    for name, lines in (("utt2spk", [f"{u} s1" for u in sorted(feats)]),
                        ("spk2utt", ["s1 " + " ".join(sorted(feats))]),
                        ("utt2num_frames", [f"{u} {len(x)}" for u, x in sorted(feats.items())])):
        with open(os.path.join(d, name), "w") as f:
            f.writelines(line + "\n" for line in lines)
    return os.path.join(root, "model"), d


def main():
    from asrkd.features import FeatureReader

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num-utts", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model, data_dir = args.model, args.data_dir
        if model is None:
            model, data_dir = _random_setup(tmp)
        out = os.path.join(tmp, "model.onnx")
        res = export_onnx(model, out, data_dir=data_dir, num_utts=2)
        ckpts = resolve_checkpoints(model)
        graph = _UtteranceGraph([load_model(c) for c in ckpts]).eval()
        onnx_model = OnnxModel(out, num_threads=1)
        reader = FeatureReader(data_dir, cmvn=graph.members[0].config.cmvn)
        utts = [np.ascontiguousarray(reader[u]) for u in reader.utts[:args.num_utts]]
        frames = sum(len(x) for x in utts)

        @torch.no_grad()
        def run_torch():
            for x in utts:
                graph(torch.from_numpy(x))

        def run_onnx():
            for x in utts:
                onnx_model.log_posteriors(x)

        run_torch(), run_onnx()  # warm-up (session creation, allocator)
        times = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.repeats):
            for name, fn in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / frames * 1e6)
        pt_bytes = sum(os.path.getsize(c) for c in ckpts)
        print(f"model: {model} ({len(ckpts)} network(s)); {frames} frames of {len(utts)} "
              f"utterances; one thread; {args.repeats} alternating repeats")
        print(f"size: ONNX {res['bytes'] / 1e6:.2f} MB, PyTorch checkpoint(s) "
              f"{pt_bytes / 1e6:.2f} MB; parity max |diff| {res['max_abs_diff']:.2e}")
        for name, t in times.items():
            print(f"{name:<12} {min(t):8.2f} us/frame best {statistics.median(t):8.2f} median")
        print(f"ratio onnxruntime / pytorch: {min(times['onnxruntime']) / min(times['pytorch']):.2f}"
              f" best, {statistics.median(times['onnxruntime']) / statistics.median(times['pytorch']):.2f}"
              " median")


if __name__ == "__main__":
    main()
