"""Float ONNX, int8 ONNX and PyTorch side by side: file size, parity, per-frame speed, and WER.

Exports MODEL (a checkpoint, a student dir, or an ensemble dir) with `export_onnx
--quantize int8` (OUT.onnx and OUT.int8.onnx), then, in one run:

- size: the two ONNX files and the PyTorch checkpoint(s), and the ratio int8 / float;
- parity: max |log-posterior - PyTorch's| over all frames and pdfs of the timed utterances
  (mean |diff| and the share of frames whose arg max pdf agrees with PyTorch's too);
- speed: whole-utterance log-posteriors (splicing included) of DATA_DIR's utterances on one
  thread, the three runtimes alternated in every repeat so that other users' load falls on all
  alike; microseconds per frame (best and median repeat) and the ratios to PyTorch;
- WER, when --graph and --test-dir are given: `asrkd decode` of the test set with each model at
  one acoustic scale (--acwt), the graph, options and priors shared (--also): --priors
  posterior (the recipe's setting, the default) divides by the model's own mean posterior,
  which the ONNX files carry in their metadata; --priors counts by the alignment's pdf counts.

Without arguments it makes a random 3 x 256 DNN over 11 x 40 fbank with 1000 outputs (the
demo's size) and random features (no WER then).

    .venv/bin/python bench/export.py [--model exp/distill --data-dir data/test] [--repeats 7]
        [--graph exp/tri/graph --test-dir data/test --acwt 0.15 --beam 11 --max-active 2000
         --priors counts --nj 2 --out-dir DIR]
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


def _timings(runners, frames, repeats):
    """{name: [us/frame per repeat]}, the runners alternated within each repeat."""
    for fn in runners.values():
        fn()  # warm-up (session creation, allocator)
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / frames * 1e6)
    return times


def _wer(args, model, models, out_dir):
    """`asrkd decode` of --test-dir with every model of ``models`` (name -> path) in one call;
    returns {name: first line of its wer file}."""
    from asrkd.cli import main as asrkd

    rows = dict(models)
    common = ["--acwt", str(args.acwt), "--beam", str(args.beam), "--max-active",
              str(args.max_active), "--nj", str(args.nj)]
    names = list(rows)
    cmd = ["decode", args.graph, args.test_dir, rows[names[0]],
           os.path.join(out_dir, f"decode_{names[0]}")]
    for n in names[1:]:
        cmd += ["--also", rows[n], os.path.join(out_dir, f"decode_{n}")]
    if asrkd(cmd + common + ["--priors", args.priors]) != 0:
        raise SystemExit("decode failed")
    out = {}
    for n in names:
        with open(os.path.join(out_dir, f"decode_{n}", "wer")) as f:
            out[n] = f.readline().strip()
    return out


def main():
    from asrkd.features import FeatureReader

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", default=None, help="features timed and compared")
    p.add_argument("--num-utts", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--graph", default=None, help="decoding graph dir: also measure WER")
    p.add_argument("--test-dir", default=None, help="data dir decoded for WER")
    p.add_argument("--acwt", type=float, default=0.1)
    p.add_argument("--beam", type=float, default=11.0)
    p.add_argument("--max-active", type=int, default=2000)
    p.add_argument("--priors", choices=("counts", "posterior"), default="posterior")
    p.add_argument("--nj", type=int, default=1)
    p.add_argument("--out-dir", default=None, help="keep the ONNX files and decode dirs here")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or tmp
        os.makedirs(out_dir, exist_ok=True)
        model, data_dir = args.model, args.data_dir
        if model is None:
            model, data_dir = _random_setup(tmp)
        res = export_onnx(model, os.path.join(out_dir, "model.onnx"), data_dir=data_dir,
                          num_utts=2, quantize="int8")
        paths = {"onnx_float": res["path"], "onnx_int8": res["int8"]["path"]}
        ckpts = resolve_checkpoints(model)
        graph = _UtteranceGraph([load_model(c) for c in ckpts]).eval()
        onnx_models = {n: OnnxModel(pth, num_threads=1) for n, pth in paths.items()}
        reader = FeatureReader(data_dir, cmvn=graph.members[0].config.cmvn)
        utts = [np.ascontiguousarray(reader[u]) for u in reader.utts[:args.num_utts]]
        frames = sum(len(x) for x in utts)

        with torch.no_grad():
            ref = [graph(torch.from_numpy(x)).numpy() for x in utts]
        print(f"model: {model} ({len(ckpts)} network(s)); {frames} frames of {len(utts)} "
              f"utterances of {data_dir}; one thread; {args.repeats} alternating repeats")
        sizes = {"pytorch": sum(os.path.getsize(c) for c in ckpts),
                 **{n: os.path.getsize(pth) for n, pth in paths.items()}}
        print("size: " + ", ".join(f"{n} {b / 1e6:.3f} MB" for n, b in sizes.items()) +
              f"; int8 / float {sizes['onnx_int8'] / sizes['onnx_float']:.3f}")
        for n, m in onnx_models.items():
            got = [m.log_posteriors(x) for x in utts]
            d = [np.abs(a - b) for a, b in zip(got, ref)]
            agree = np.mean(np.concatenate([a.argmax(1) == b.argmax(1) for a, b in zip(got, ref)]))
            print(f"parity {n:<10} vs pytorch: max |diff| {max(x.max() for x in d):.3e}, mean "
                  f"{np.mean(np.concatenate([x.ravel() for x in d])):.3e}; arg max agrees on "
                  f"{100 * agree:.2f}% of frames")

        @torch.no_grad()
        def run_torch():
            for x in utts:
                graph(torch.from_numpy(x))

        def onnx_runner(m):
            return lambda: [m.log_posteriors(x) for x in utts]

        times = _timings({"pytorch": run_torch,
                          **{n: onnx_runner(m) for n, m in onnx_models.items()}},
                         frames, args.repeats)
        for name, t in times.items():
            print(f"speed {name:<10} {min(t):8.2f} us/frame best {statistics.median(t):8.2f} "
                  f"median; / pytorch {min(t) / min(times['pytorch']):.2f} best, "
                  f"{statistics.median(t) / statistics.median(times['pytorch']):.2f} median")
        q, f = times["onnx_int8"], times["onnx_float"]
        print(f"speed onnx_int8 / onnx_float: {min(q) / min(f):.2f} best, "
              f"{statistics.median(q) / statistics.median(f):.2f} median")
        if args.graph and args.test_dir:
            wers = _wer(args, model, {"pytorch": model, **paths}, out_dir)
            for n, w in wers.items():
                print(f"WER {n:<24} {w}  ({args.test_dir}, acwt {args.acwt:g}, beam {args.beam:g},"
                      f" max-active {args.max_active})")


if __name__ == "__main__":
    main()
