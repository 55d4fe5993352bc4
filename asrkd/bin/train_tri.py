"""asrkd train-tri: triphone tree + context-dependent GMM-HMM (Kaldi steps/train_deltas.sh)."""

from asrkd.gmmtrain import train_tri


def add_arguments(parser):
    parser.add_argument("data_dir", help="training data dir with MFCC feats.scp and cmvn.scp")
    parser.add_argument("lang_dir", help="lang dir (topo, L.fst, phones)")
    parser.add_argument("ali_dir", help="alignments of data_dir by the previous model "
                                        "(asrkd align output)")
    parser.add_argument("exp_dir", help="output model dir (final.mdl, tree, failed, log/)")
    parser.add_argument("--num-leaves", type=int, default=2000,
                        help="target number of tree leaves (pdfs, the DNN targets)")
    parser.add_argument("--num-gauss", type=int, default=10000,
                        help="target total number of Gaussians after mixing up")
    parser.add_argument("--num-iters", type=int, default=35,
                        help="EM iterations; Kaldi's realignment/mix-up schedule is scaled to it")
    parser.add_argument("--min-count", type=float, default=100.0,
                        help="minimum frames on each side of a tree split")
    parser.add_argument("--nj", type=int, default=1, help="parallel jobs per iteration")


def main(args):
    train_tri(args.data_dir, args.lang_dir, args.ali_dir, args.exp_dir,
              num_leaves=args.num_leaves, num_gauss=args.num_gauss, nj=args.nj,
              num_iters=args.num_iters, min_count=args.min_count)
