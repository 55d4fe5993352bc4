"""asrkd report EXP_DIR: the Table-1 style results (results.md, results.json, charts)."""

import os

from asrkd.report import write_report


def add_arguments(parser):
    parser.add_argument("exp_dir", help="experiment dir in the layout described in asrkd.report")


def main(args):
    res = write_report(args.exp_dir)
    present = sum(r["present"] for r in res["systems"])
    print(f"wrote {os.path.join(args.exp_dir, 'results.md')} "
          f"({present} of {len(res['systems'])} table rows present)")
