"""Benchmark: vectorized GMM statistics (asrkd.gmmstats.accumulate) vs one binding call per frame
(kaldi_hmm_gmm AccumAmDiagGmm.accumulate_for_gmm), on a monophone-sized model.

    .venv/bin/python bench/gmm.py [--frames 20000] [--pdfs 130] [--gauss 1000] [--dim 39]
"""

import argparse
import os
import time

# one BLAS thread: the comparison is per core (and the machine is shared)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200000,
                   help="frames to accumulate (one job's worth)")
    p.add_argument("--pdfs", type=int, default=130, help="number of pdfs")
    p.add_argument("--gauss", type=int, default=1000, help="total Gaussians")
    p.add_argument("--dim", type=int, default=39, help="feature dimension")
    p.add_argument("--repeat", type=int, default=3, help="take the fastest of this many runs")
    args = p.parse_args()

    import kaldi_hmm_gmm as khg
    import torch

    torch.set_num_threads(1)
    from asrkd.gmm import PackedGmm, am_from_arrays
    from asrkd.gmmstats import accumulate

    rng = np.random.default_rng(0)
    sizes = np.full(args.pdfs, args.gauss // args.pdfs)
    sizes[: args.gauss - sizes.sum()] += 1
    w, iv, mi = [], [], []
    for k in sizes:
        ww = rng.random(k) + 0.1
        w.append(ww / ww.sum())
        iv.append(1.0 / (0.5 + rng.random((k, args.dim))))
        mi.append(rng.normal(size=(k, args.dim)) * iv[-1])
    am = am_from_arrays(w, iv, mi)
    x = rng.normal(size=(args.frames, args.dim)).astype(np.float32)
    # alignment-like: runs of 1-8 frames of one pdf, as a forced alignment gives
    runs = rng.integers(1, 9, size=args.frames)
    run_pdfs = rng.integers(0, args.pdfs, size=args.frames)
    pdfs = np.repeat(run_pdfs, runs)[: args.frames]

    packed = PackedGmm(am)

    def vectorized():
        return accumulate(packed, x, pdfs)

    def per_frame():
        acc = khg.AccumAmDiagGmm()
        acc.init(am, khg.str_to_gmm_flags("mvw"))
        tot = 0.0
        for t in range(args.frames):
            tot += acc.accumulate_for_gmm(am, x[t], int(pdfs[t]), 1.0)
        return acc, tot

    t0 = time.perf_counter()
    PackedGmm(am)
    t_pack = time.perf_counter() - t0
    t_vec = t_bind = float("inf")
    for _ in range(args.repeat):  # interleaved, so load changes hit both alike
        t0 = time.perf_counter()
        stats = vectorized()
        t_vec = min(t_vec, time.perf_counter() - t0)
        t0 = time.perf_counter()
        acc, tot = per_frame()
        t_bind = min(t_bind, time.perf_counter() - t0)

    occ = np.concatenate([acc.get_acc(p).occupancy for p in range(args.pdfs)])
    err = np.abs(occ - stats.occ).max()
    print(f"{args.frames} frames, {args.pdfs} pdfs, {am.num_gauss} Gaussians, dim {args.dim}")
    print(f"per-frame binding accumulation: {t_bind:.3f} s")
    print(f"vectorized accumulation:        {t_vec:.3f} s "
          f"(+ {t_pack:.3f} s to pack the model's arrays, once per iteration)")
    print(f"speedup: {t_bind / t_vec:.1f}x  (max |occupancy diff| {err:.2e}, "
          f"loglike {stats.loglike:.1f} vs {tot:.1f})")


if __name__ == "__main__":
    main()
