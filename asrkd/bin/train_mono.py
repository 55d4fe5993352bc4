"""asrkd train-mono: monophone GMM-HMM from a flat start (Kaldi steps/train_mono.sh)."""

from asrkd.gmmtrain import train_mono


def add_arguments(parser):
    parser.add_argument("data_dir", help="training data dir with MFCC feats.scp and cmvn.scp "
                                         "(deltas and mean CMVN are applied on the fly)")
    parser.add_argument("lang_dir", help="lang dir (topo, L.fst, words.txt)")
    parser.add_argument("exp_dir", help="output model dir (final.mdl, tree, failed, log/)")
    parser.add_argument("--num-iters", type=int, default=40,
                        help="EM iterations; Kaldi's realignment/mix-up schedule is scaled to it")
    parser.add_argument("--num-gauss", type=int, default=1000,
                        help="target total number of Gaussians after mixing up")
    parser.add_argument("--nj", type=int, default=1, help="parallel jobs per iteration")


def main(args):
    train_mono(args.data_dir, args.lang_dir, args.exp_dir, num_iters=args.num_iters,
               num_gauss=args.num_gauss, nj=args.nj)
