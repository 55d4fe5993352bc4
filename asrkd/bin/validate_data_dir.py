"""asrkd validate-data-dir DATA_DIR"""

from asrkd.data import validate_data_dir
from asrkd.features import check_feature_values


def add_arguments(parser):
    parser.add_argument("data_dir", metavar="DATA_DIR", help="Kaldi data dir to check")
    parser.add_argument("--need", nargs="*", default=["wav.scp", "text", "utt2spk", "spk2utt"],
                        help="files that must exist (others are checked when present)")
    parser.add_argument("--values", action="store_true",
                        help="also read every feature matrix and CMVN stat (NaN/Inf, frame "
                             "counts): one pass over all the features")


def main(args):
    d = validate_data_dir(args.data_dir, need=tuple(args.need))
    if args.values:
        check_feature_values(d.path)
    present = [n for n in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur", "feats.scp",
                           "utt2num_frames", "cmvn.scp") if d.has(n)]
    print(f"{d.path}: OK, {len(d)} utterances, {len(d.spk2utt) if d.has('spk2utt') else '?'} "
          f"speakers ({' '.join(present)})")
