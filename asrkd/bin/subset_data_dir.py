"""asrkd subset-data-dir SRC OUT1 OUT2 (--num-speakers N | --fraction F)"""

from asrkd.data import subset_data_dir


def add_arguments(parser):
    parser.add_argument("src", metavar="SRC", help="data dir to split")
    parser.add_argument("out1", metavar="OUT1", help="gets the first speakers (sorted order)")
    parser.add_argument("out2", metavar="OUT2", help="gets the remaining speakers")
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--num-speakers", type=int, help="number of speakers in OUT1")
    g.add_argument("--fraction", type=float, help="fraction of speakers in OUT1 (0 < F < 1)")


def main(args):
    a, b = subset_data_dir(args.src, args.out1, args.out2, num_speakers=args.num_speakers,
                           fraction=args.fraction)
    print(f"{args.out1}: {len(a)} speakers; {args.out2}: {len(b)} speakers")
