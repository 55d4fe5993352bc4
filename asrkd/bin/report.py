"""asrkd report EXP_DIR: the Table-1 style results (results.md, results.json, charts)."""

import os

from asrkd.errors import UserError
from asrkd.report import fill_frame_acc, write_report


def add_arguments(parser):
    parser.add_argument("exp_dir", help="experiment dir in the layout described in asrkd.report")
    parser.add_argument("--data", default=None,
                        help="test data dir: with --ali-dir, first write the DNN systems' "
                        "missing frame_acc files from their checkpoints")
    parser.add_argument("--ali-dir", default=None, help="alignment dir of --data (pdf.scp)")
    parser.add_argument("--recompute", action="store_true",
                        help="with --data/--ali-dir: recompute existing frame_acc files too")


def main(args):
    if (args.data is None) != (args.ali_dir is None):
        raise UserError("--data and --ali-dir go together")
    if args.data is not None:
        fill_frame_acc(args.exp_dir, args.data, args.ali_dir, recompute=args.recompute)
    res = write_report(args.exp_dir)
    present = sum(r["present"] for r in res["systems"])
    print(f"wrote {os.path.join(args.exp_dir, 'results.md')} "
          f"({present} of {len(res['systems'])} table rows present)")
