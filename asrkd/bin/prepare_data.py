"""asrkd prepare-data CORPUS_SUBSET_DIR DATA_DIR"""

from asrkd.data import prepare_librispeech


def add_arguments(parser):
    parser.add_argument("corpus_dir", metavar="CORPUS_SUBSET_DIR",
                        help="a LibriSpeech subset dir (<spk>/<chap>/<spk>-<chap>-<utt>.flac and "
                        "<spk>-<chap>.trans.txt), e.g. .../LibriSpeech/train-clean-100")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="Kaldi data dir to write")
    parser.add_argument("--sample-rate", type=int, default=16000,
                        help="expected sample rate; other rates are rejected")


def main(args):
    r = prepare_librispeech(args.corpus_dir, args.data_dir, sample_rate=args.sample_rate)
    print(r.summary())
    if r.rejected:
        print(f"rejected utterances and reasons: {args.data_dir}/log/rejected.txt")
