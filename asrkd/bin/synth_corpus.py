"""`asrkd synth-corpus OUT_DIR`: the synthetic espeak-ng corpus in the LibriSpeech layout."""

import argparse
import json


def _range(text):
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two numbers), got {text!r}")
    return (lo, hi)


def add_arguments(parser):
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="corpus root; gets train/ dev/ test/, SPEAKERS.TXT, train-text.txt")
    parser.add_argument("--hours", type=float, default=1.0,
                        help="hours of training audio (dev and test get 10%% of it each)")
    parser.add_argument("--condition", default="clean",
                        help="clean (dry speech) or other (reverberation and noise: --snr, --rt60)")
    parser.add_argument("--snr", type=_range, default=None, metavar="MIN,MAX",
                        help="'other' condition: SNR range in dB, drawn per utterance "
                        "(default 5,20)")
    parser.add_argument("--rt60", type=_range, default=None, metavar="MIN,MAX",
                        help="'other' condition: reverberation time range in seconds, drawn per "
                        "utterance (default 0.2,0.9)")
    parser.add_argument("--accents", default=None,
                        help="comma-separated espeak-ng accents the speakers are drawn from "
                        "(default: all eight English ones, en-us,en-US-nyc,en,en-GB-x-rp,"
                        "en-GB-scotland,en-GB-x-gbclan,en-GB-x-gbcwmd,en-029)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same arguments give byte-identical files")
    parser.add_argument("--nj", type=int, default=1,
                        help="parallel jobs (output does not depend on it)")
    parser.add_argument("--num-speakers", type=int, default=None,
                        help="training speakers (default max(4, 40 per hour)); "
                        "dev and test get max(2, 20%%) each")
    parser.add_argument("--test-speakers", type=int, default=None,
                        help="test speakers (default: as many as dev), each with as much audio "
                        "as a dev speaker: more speakers narrow the bootstrap intervals; the "
                        "first ones are the default test set's")
    parser.add_argument("--dev-speakers", type=int, default=None,
                        help="dev speakers (default: max(2, 20%%) of the training speakers), "
                        "each with as much audio as a default one: more speakers, steadier "
                        "choices made on dev (acoustic scales); the first ones, and every "
                        "other subset, are the default corpus's")
    parser.add_argument("--unlabeled-hours", type=float, default=0.0,
                        help="also write an unlabeled/ subset of this many hours from further "
                        "speakers (no dev/test voice): a transfer set for distillation")


def main(args):
    from asrkd.synth import synth_corpus
    from asrkd.synth.corpus import SynthConfig

    config = SynthConfig()
    if args.snr is not None:
        config.snr = args.snr
    if args.rt60 is not None:
        config.rt60 = args.rt60
    if args.accents is not None:
        config.accents = tuple(a for a in args.accents.split(",") if a)
    summary = synth_corpus(args.out_dir, hours=args.hours, condition=args.condition,
                           seed=args.seed, nj=args.nj, num_speakers=args.num_speakers,
                           unlabeled_hours=args.unlabeled_hours,
                           test_speakers=args.test_speakers, dev_speakers=args.dev_speakers,
                           config=config)
    print(json.dumps(summary["subsets"], sort_keys=True))
