"""asrkd combine-data-dirs OUT SRC [SRC ...]"""

from asrkd.data import combine_data_dirs


def add_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="data dir to write (metadata only)")
    parser.add_argument("srcs", metavar="SRC", nargs="+", help="data dirs to merge")


def main(args):
    n = combine_data_dirs(args.out, args.srcs)
    print(f"{args.out}: {n} utterances from {len(args.srcs)} data dirs")
