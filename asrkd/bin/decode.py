"""asrkd decode: decode a data dir over HCLG with a GMM, a DNN or a DNN ensemble, and score."""

import sys

from asrkd.decode import DEFAULT_GRID, decode
from asrkd.decodeconf import record_dev_decode


def _floats(s):
    return [float(x) for x in s.split(",") if x]


def add_arguments(parser):
    parser.add_argument("graph_dir", help="graph dir from make-graph (HCLG.fst, words.txt, "
                                          "final.mdl: the transition model)")
    parser.add_argument("data_dir", help="data dir to decode: MFCC dir for a GMM, fbank dir for "
                                         "DNNs; its text (if any) is the scoring reference")
    parser.add_argument("model", nargs="+",
                        help="GMM model dir (final.mdl), or DNN checkpoint(s), or a dir of "
                             "model*/final.pt (an ensemble: posteriors averaged), or a "
                             "generalist + specialists dir (train-specialists)")
    parser.add_argument("decode_dir", help="output dir: hyp.txt, wer, best_acwt, ...")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--acwt", type=float, default=None, help="fixed acoustic scale")
    g.add_argument("--acwt-from", default=None,
                   help="decode dir of a dev set whose best_acwt to use (for test sets); "
                        "'{model}' in it stands for each MODEL (e.g. '{model}/decode_dev': "
                        "every system at its own dev-tuned scale, also with --also)")
    g.add_argument("--acwt-grid", type=_floats, default=list(DEFAULT_GRID),
                   help="comma-separated acoustic scales to try; the best on this data dir's "
                        "text is kept (dev sets). A best value at an edge of the grid widens it: "
                        "the next value beyond that edge (same ratio) is tried too, up to 4 more")
    parser.add_argument("--grid-only", action="store_true",
                        help="score every value of --acwt-grid (and of its widening) and choose "
                             "none: `asrkd choose-acwt` picks one scale on dev for several "
                             "systems and applies it to their dev and test decodes")
    parser.add_argument("--fixed-grid", action="store_true",
                        help="do not widen --acwt-grid when its best value is at an edge")
    parser.add_argument("--priors", choices=("counts", "posterior"), default="counts",
                        help="a DNN's posteriors are divided by its training alignment's pdf "
                             "counts, or by its own mean posterior (written by `asrkd "
                             "adjust-priors`, as Kaldi's nnet3-am-adjust-priors)")
    parser.add_argument("--ali-dir", default=None,
                        help="alignments of DATA_DIR (asrkd align): also write frame_acc, the "
                             "frame accuracy of the model's posteriors against them")
    parser.add_argument("--frame-acc-data", default=None, metavar="DIR",
                        help="measure frame accuracy on this data dir (aligned by --ali-dir) "
                             "instead of DATA_DIR: a forward pass is cheap, so it can be a larger "
                             "set than the one decoded for WER")
    parser.add_argument("--also", nargs=2, action="append", default=[],
                        metavar=("MODEL2", "DECODE_DIR2"),
                        help="also decode DATA_DIR with MODEL2 into DECODE_DIR2, with the same "
                             "graph and options (repeatable; the graph and the libraries are "
                             "loaded once for all models)")
    parser.add_argument("--nj", type=int, default=1, help="parallel jobs")
    parser.add_argument("--beam", type=float, default=16.0, help="decoding beam")
    parser.add_argument("--lattice-beam", type=float, default=8.0,
                        help="paths kept in each lattice: within this cost of the best (the "
                             "grid's scales are read off the lattices, searched once at the "
                             "grid's middle value)")
    parser.add_argument("--write-lattices", action="store_true",
                        help="keep the lattices: DECODE_DIR/lat.N.gz, Kaldi text compact "
                             "lattices (acoustic costs unscaled), for lattice-to-ctm, "
                             "lattice-to-nbest and lm-rescore")
    parser.add_argument("--max-active", type=int, default=7000, help="max active states")
    parser.add_argument("--device", default="cpu",
                        help="where a DNN runs (cuda: with --nj 1; the search stays on the CPU)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: the DNN's forward under bfloat16 autocast")


def main(args):
    jobs = [(args.model if len(args.model) > 1 else args.model[0], args.decode_dir)]
    jobs += [tuple(pair) for pair in args.also]
    dirs = [d for _, d in jobs]
    if len(set(dirs)) != len(dirs):
        from asrkd.errors import UserError

        raise UserError("each model needs its own decode dir")
    for model, decode_dir in jobs:
        res = decode(args.graph_dir, args.data_dir, model, decode_dir, acwt=args.acwt,
                     acwt_grid=args.acwt_grid, acwt_from=args.acwt_from, nj=args.nj,
                     beam=args.beam, lattice_beam=args.lattice_beam, max_active=args.max_active,
                     ali_dir=args.ali_dir, frame_acc_data=args.frame_acc_data,
                     device=args.device, precision=args.precision, widen=not args.fixed_grid,
                     priors=args.priors, write_lattices=args.write_lattices,
                     grid_only=args.grid_only)
        if (args.acwt is None and args.acwt_from is None and not args.grid_only
                and len(res["grid"]) > 1):
            # a scale chosen on this (dev) set: the model dir remembers how to decode it
            path = record_dev_decode(model, args.graph_dir, decode_dir, res["acwt"], args.beam,
                                     args.lattice_beam, args.max_active)
            if path:
                print(f"decode: wrote {path}", file=sys.stderr)
