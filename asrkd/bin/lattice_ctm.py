"""asrkd lattice-ctm GRAPH_DIR DECODE_DIR: the best path's words with times and confidences
(CTM: utt 1 start duration word confidence) on stdout."""

import sys

from asrkd.latdir import ctm


def add_arguments(parser):
    parser.add_argument("graph_dir", help="the graph dir the lattices were decoded with")
    parser.add_argument("decode_dir", help="decode dir with lat.*.gz (decode --write-lattices)")
    parser.add_argument("--acwt", type=float, default=None,
                        help="acoustic scale (default: the decode's chosen one, DECODE_DIR/acwt)")
    parser.add_argument("--lmwt", type=float, default=1.0, help="LM (graph cost) weight")
    parser.add_argument("--frame-shift", type=float, default=0.01, help="seconds per frame")


def main(args):
    ctm(args.graph_dir, args.decode_dir, sys.stdout, acwt=args.acwt, lmwt=args.lmwt,
        frame_shift=args.frame_shift)
