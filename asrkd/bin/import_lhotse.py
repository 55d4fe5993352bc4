"""asrkd import-lhotse CUTS DATA_DIR: a lhotse cuts manifest -> a Kaldi data dir."""

from asrkd.interop import import_lhotse


def add_arguments(parser):
    parser.add_argument("cuts", help="lhotse cuts manifest (e.g. librispeech_cuts_dev-clean"
                                     ".jsonl.gz); each cut one whole audio file with at most "
                                     "one supervision")
    parser.add_argument("data_dir", help="output data dir: wav.scp, text, utt2spk, spk2utt, "
                                         "utt2dur (then compute-feats as for prepare-data)")


def main(args):
    import_lhotse(args.cuts, args.data_dir)
