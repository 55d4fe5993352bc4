"""Benchmark: an acoustic-scale grid read off lattices vs one decode, vs a search per value; and
our lattice search vs kaldi_hmm_gmm's LatticeFasterDecoder (same beams, same scores).

    .venv/bin/python bench/decode.py MODEL GRAPH_DIR DEV_DIR [--grid 0.067,0.1,0.15]
        [--beam 11] [--max-active 2000] [--priors posterior]

Prints, in one run on one core: the time of one decode, of the grid from lattices and of the
grid as one search per value, their ratios, each way's WER per value and chosen scale; then
the two searches' time per utterance and how many best paths agree.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("graph_dir")
    p.add_argument("dev_dir")
    p.add_argument("--grid", default="0.067,0.1,0.15")
    p.add_argument("--beam", type=float, default=11.0)
    p.add_argument("--max-active", type=int, default=2000)
    p.add_argument("--lattice-beam", type=float, default=8.0)
    p.add_argument("--priors", default="posterior")
    p.add_argument("--kaldi-utts", type=int, default=20,
                   help="utterances for the comparison with Kaldi's decoder (0: skip it)")
    args = p.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from asrkd.data import DataDir
    from asrkd.decode import cached_graph, decode_data_dir, decode_lattice, make_decoder
    from asrkd.scorer import make_scorer

    grid = [float(x) for x in args.grid.split(",")]
    data = DataDir(args.dev_dir)
    scorer = make_scorer(args.model, args.dev_dir, priors=args.priors)
    utts, ref = data.utts, data.file("text")
    cached_graph(args.graph_dir)
    opts = dict(beam=args.beam, lattice_beam=args.lattice_beam, max_active=args.max_active,
                ref_text=ref)
    mid = sorted(grid)[len(grid) // 2]
    with tempfile.TemporaryDirectory() as tmp:
        one, t_one = _timed(lambda: decode_data_dir(args.graph_dir, scorer, utts,
                                                    f"{tmp}/one", mid, **opts))
        lat, t_lat = _timed(lambda: decode_data_dir(args.graph_dir, scorer, utts,
                                                    f"{tmp}/lat", grid, widen=False, **opts))
        each, t_each = {}, 0.0
        for a in grid:
            each[a], t = _timed(lambda: decode_data_dir(args.graph_dir, scorer, utts,
                                                        f"{tmp}/each_{a:g}", a, **opts))
            t_each += t
    words = one["wer"][mid]["words"]
    print(f"{len(utts)} utterances, {words} words; beam {args.beam:g}, max-active "
          f"{args.max_active}, lattice-beam {args.lattice_beam:g}; grid {args.grid}")
    print(f"one decode (acwt {mid:g}):        {t_one:7.1f} s")
    print(f"grid from lattices:             {t_lat:7.1f} s   ratio {t_lat / t_one:.2f}x")
    print(f"grid, one search per value:     {t_each:7.1f} s   ratio {t_each / t_one:.2f}x")
    for a in grid:
        print(f"  acwt {a:g}: WER from lattices {lat['wer'][a]['wer']:.2f}, "
              f"searched at {a:g} {each[a]['wer'][a]['wer']:.2f}")
    best_each = min(grid, key=lambda a: (each[a]["wer"][a]["wer"], abs(a - 0.1)))
    print(f"chosen: from lattices {lat['acwt']:g} ({lat['wer'][lat['acwt']]['wer']:.2f}), "
          f"one search per value {best_each:g} ({each[best_each]['wer'][best_each]['wer']:.2f})")
    if args.kaldi_utts <= 0:
        return
    import kaldi_hmm_gmm as khg
    import kaldifst

    graph, tm, _ = cached_graph(args.graph_dir)
    hclg = kaldifst.StdVectorFst.read(os.path.join(args.graph_dir, "HCLG.fst"))
    cfg = khg.LatticeFasterDecoderConfig(beam=args.beam, lattice_beam=args.lattice_beam,
                                         max_active=args.max_active)
    kdec = khg.LatticeFasterDecoder(hclg, cfg)
    ours = make_decoder(None, args.beam, args.lattice_beam, args.max_active)
    tid2pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)
    sub = utts[:args.kaldi_utts]
    lls = {u: scorer(u) for u in sub}
    t_k = t_o = 0.0
    agree = 0
    for u in sub:
        mat = np.ascontiguousarray(mid * lls[u][:, tid2pdf[1:]], dtype=np.float32)
        (ok, _, kw, _), t = _timed(lambda: khg.decode_utterance_lattice_faster(
            kdec, khg.DecodableCtc(mat), tm, u, True))
        t_k += t
        lat_u, t = _timed(lambda: decode_lattice(graph, tm, lls[u], mid, ours, u))
        t_o += t
        agree += list(kw) == lat_u.words(mid)
    n = len(sub)
    print(f"search, {n} utterances: kaldi_hmm_gmm {t_k / n:.3f} s/utt, ours {t_o / n:.3f} "
          f"s/utt (ratio {t_k / t_o:.2f}x); best paths identical on {agree} of {n}")


if __name__ == "__main__":
    sys.exit(main())
