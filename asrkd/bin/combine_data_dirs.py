"""asrkd combine-data-dirs OUT SRC [SRC ...]: merge data dirs (features and CMVN carried when every
source has them)."""

from asrkd.data import combine_data_dirs


def add_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="data dir to write; feats.scp/utt2num_frames come along when every "
                        "source has them, cmvn.scp too unless a speaker spans sources")
    parser.add_argument("srcs", metavar="SRC", nargs="+", help="data dirs to merge")


def main(args):
    n = combine_data_dirs(args.out, args.srcs)
    print(f"{args.out}: {n} utterances from {len(args.srcs)} data dirs")
