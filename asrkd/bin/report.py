"""asrkd report EXP_DIR: the Table-1 style results (results.md, results.json, charts)."""

import os

from asrkd.errors import UserError
from asrkd.report import fill_frame_acc, write_report


def add_arguments(parser):
    parser.add_argument("exp_dir", help="experiment dir in the layout described in asrkd.report")
    parser.add_argument("--test-sets", nargs="+", default=None, metavar="NAME",
                        help="test sets to report (decode_NAME dirs); default: every decode_* "
                        "found except dev*, test first")
    parser.add_argument("--data", default=None,
                        help="test data dir: with --ali-dir, first write the DNN systems' "
                        "missing frame_acc files from their checkpoints")
    parser.add_argument("--ali-dir", default=None,
                        help="alignment dir of --data (pdf.scp); the frame_acc files go to the "
                        "decode dirs of the first of --test-sets (default: test)")
    parser.add_argument("--recompute", action="store_true",
                        help="with --data/--ali-dir: recompute existing frame_acc files too")


def main(args):
    if (args.data is None) != (args.ali_dir is None):
        raise UserError("--data and --ali-dir go together")
    if args.data is not None:
        test_set = args.test_sets[0] if args.test_sets else "test"
        fill_frame_acc(args.exp_dir, args.data, args.ali_dir, test_set=test_set,
                       recompute=args.recompute)
    res = write_report(args.exp_dir, test_sets=args.test_sets)
    present = sum(r["present"] for r in res["systems"])
    print(f"wrote {os.path.join(args.exp_dir, 'results.md')} (test sets: "
          f"{' '.join(res['by_test_set'])}; {present} of {len(res['systems'])} rows present "
          f"for {res['test_set']})")
