"""asrkd make-graph: G.fst from an ARPA LM and the HCLG decoding graph for one model."""

from asrkd.graph import make_graph


def add_arguments(parser):
    parser.add_argument("lang_dir", help="lang dir from `asrkd prepare-lang`")
    parser.add_argument("model_dir", help="model dir with final.mdl and tree (GMM or alignment dir)")
    parser.add_argument("arpa", help="ARPA LM over the lang dir's words (`asrkd train-lm --vocab`)")
    parser.add_argument("graph_dir", help="output dir: HCLG.fst, G.fst, words.txt, final.mdl, tree")
    parser.add_argument("--self-loop-scale", type=float, default=0.1,
                        help="scale on HMM self-loop log-probs (Kaldi's default 0.1)")


def main(args):
    make_graph(args.lang_dir, args.model_dir, args.graph_dir, args.arpa,
               self_loop_scale=args.self_loop_scale)
