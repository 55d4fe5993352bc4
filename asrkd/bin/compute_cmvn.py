"""asrkd compute-cmvn DATA_DIR"""

from asrkd.features import compute_cmvn


def add_arguments(parser):
    parser.add_argument("data_dir", metavar="DATA_DIR",
                        help="data dir with feats.scp; gets cmvn.scp (per-speaker stats)")


def main(args):
    n = compute_cmvn(args.data_dir)
    print(f"{args.data_dir}/cmvn.scp: {n} speakers")
