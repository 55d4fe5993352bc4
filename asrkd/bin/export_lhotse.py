"""asrkd export-lhotse DATA_DIR OUT_DIR: lhotse recordings, supervisions and cuts manifests."""

from asrkd.interop import export_lhotse


def add_arguments(parser):
    parser.add_argument("data_dir", help="Kaldi data dir (wav.scp, utt2spk; text if any)")
    parser.add_argument("out_dir", help="output dir: recordings.jsonl.gz, supervisions.jsonl.gz, "
                                        "cuts.jsonl.gz (validated with lhotse's checks)")
    parser.add_argument("--soft-targets", default=None, metavar="SOFT_DIR",
                        help="attach these soft targets to the cuts by utterance id, as the "
                             "temporal arrays soft_target_ids (T x K) and soft_target_probs "
                             "(T x K+1: the last column is the rest mass, so rows sum to one; "
                             ".npy files under OUT_DIR/soft_targets). T is asrkd's (Kaldi "
                             "snip-edges) frame count, 2 below lhotse's compute_num_frames")


def main(args):
    export_lhotse(args.data_dir, args.out_dir, soft_dir=args.soft_targets)
