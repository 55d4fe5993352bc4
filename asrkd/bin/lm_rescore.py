"""asrkd lm-rescore GRAPH_DIR DECODE_DIR OLD_ARPA NEW_ARPA OUT_DIR: n-best LM rescoring of a
decode dir's lattices (the graph's LM cost replaced by NEW_ARPA's)."""

import os

from asrkd.latdir import lm_rescore


def add_arguments(parser):
    parser.add_argument("graph_dir", help="the graph dir the lattices were decoded with")
    parser.add_argument("decode_dir", help="decode dir with lat.*.gz (decode --write-lattices)")
    parser.add_argument("old_arpa", help="the ARPA LM the graph (G.fst) was built from")
    parser.add_argument("new_arpa", help="the ARPA LM to rescore with (e.g. a larger one)")
    parser.add_argument("out_dir", help="output: hyp.txt (and wer with --data)")
    parser.add_argument("--n", type=int, default=100, help="sequences rescored per utterance")
    parser.add_argument("--acwt", type=float, default=None,
                        help="acoustic scale (default: the decode's chosen one, DECODE_DIR/acwt)")
    parser.add_argument("--lmwt", type=float, default=1.0, help="LM (graph cost) weight")
    parser.add_argument("--data", default=None, help="data dir whose text to score against")


def main(args):
    ref = os.path.join(args.data, "text") if args.data else None
    lm_rescore(args.graph_dir, args.decode_dir, args.old_arpa, args.new_arpa, args.out_dir,
               n=args.n, acwt=args.acwt, lmwt=args.lmwt, ref_text=ref)
