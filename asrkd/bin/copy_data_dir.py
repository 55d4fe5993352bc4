"""asrkd copy-data-dir SRC DST"""

from asrkd.data import copy_data_dir


def add_arguments(parser):
    parser.add_argument("src", metavar="SRC", help="data dir to copy from")
    parser.add_argument("dst", metavar="DST",
                        help="data dir to write (metadata only; features are not copied)")


def main(args):
    copy_data_dir(args.src, args.dst)
