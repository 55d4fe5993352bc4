"""asrkd lattice-nbest GRAPH_DIR DECODE_DIR: the n best word sequences of each lattice."""

import sys

from asrkd.latdir import nbest


def add_arguments(parser):
    parser.add_argument("graph_dir", help="the graph dir the lattices were decoded with")
    parser.add_argument("decode_dir", help="decode dir with lat.*.gz (decode --write-lattices)")
    parser.add_argument("--n", type=int, default=10, help="sequences per utterance")
    parser.add_argument("--acwt", type=float, default=None,
                        help="acoustic scale (default: the decode's chosen one, DECODE_DIR/acwt)")
    parser.add_argument("--lmwt", type=float, default=1.0, help="LM (graph cost) weight")


def main(args):
    nbest(args.graph_dir, args.decode_dir, sys.stdout, n=args.n, acwt=args.acwt,
          lmwt=args.lmwt)
