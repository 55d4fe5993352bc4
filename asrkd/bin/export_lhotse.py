"""asrkd export-lhotse DATA_DIR OUT_DIR: lhotse recordings, supervisions and cuts manifests."""

from asrkd.interop import export_lhotse


def add_arguments(parser):
    parser.add_argument("data_dir", help="Kaldi data dir (wav.scp, utt2spk; text if any)")
    parser.add_argument("out_dir", help="output dir: recordings.jsonl.gz, supervisions.jsonl.gz, "
                                        "cuts.jsonl.gz (validated with lhotse's checks)")
    parser.add_argument("--soft-targets", default=None, metavar="SOFT_DIR",
                        help="attach these soft targets to the cuts by utterance id, as the "
                             "temporal arrays soft_target_ids and soft_target_probs "
                             "(.npy files under OUT_DIR/soft_targets)")


def main(args):
    export_lhotse(args.data_dir, args.out_dir, soft_dir=args.soft_targets)
