"""asrkd report EXP_DIR: the Table-1 style results (results.md, results.json, charts)."""

import os

from asrkd.bootstrap import DEFAULT_RESAMPLES


def add_arguments(parser):
    parser.add_argument("exp_dir", help="experiment dir; its systems.tsv lists the systems to "
                        "report (see asrkd.report)")
    parser.add_argument("--systems", default=None, metavar="FILE",
                        help="systems manifest (key, kind, model dir, compare, label per line); "
                        "default EXP_DIR/systems.tsv")
    parser.add_argument("--test-sets", nargs="+", default=None, metavar="NAME",
                        help="test sets to report (decode_NAME dirs); default: every decode_* "
                        "found except dev*, test first")
    parser.add_argument("--train-set", default=None, metavar="NAME",
                        help="add a train frame accuracy column from each system's "
                        "decode_NAME dir (e.g. `asrkd frame-accuracy --utts MODEL/train_utts` "
                        "output: the data a model was trained on)")
    parser.add_argument("--data", default=None, metavar="DATA_ROOT",
                        help="dir holding the test sets' data dirs (DATA_ROOT/NAME/utt2spk gives "
                        "the speakers the bootstrap resamples); default: the utterance id's "
                        "prefix up to the first '-' is the speaker")
    parser.add_argument("--dev-set", default=None, metavar="NAME",
                        help="the set the acoustic scales were tuned on: a test set of that "
                        "name is flagged (its WERs are optimistic)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap resamples (fixed seed: the same inputs give the same "
                        "intervals)")


def main(args):
    from asrkd.report import write_report

    res = write_report(args.exp_dir, test_sets=args.test_sets, manifest=args.systems,
                       data_root=args.data, resamples=args.resamples,
                       train_set=args.train_set, dev_set=args.dev_set)
    present = sum(r["present"] for r in res["systems"])
    print(f"wrote {os.path.join(args.exp_dir, 'results.md')} (test sets: "
          f"{' '.join(res['by_test_set'])}; {present} of {len(res['systems'])} rows present "
          f"for {res['test_set']})")
