"""asrkd choose-acwt OUT_DIR DEV_DECODE_DIR...: an acoustic scale chosen on dev and applied.

The dev sets are decoded with `decode --grid-only` (every value of the grid and of its
widening scored off one search's lattices, none chosen). The value of least word errors,
summed over the DEV_DECODE_DIRs, is written to OUT_DIR (best_acwt, acwt_wers: the WER per
value, acwt_edge, systems) and applied to each dev decode dir and to every --apply dir (their
test sets' grid-only decodes): its hypotheses and scores at that value become the dir's
hyp.txt, wer, per_utt and acwt. Each dev decode's model gets the value in its decode.json
(what `asrkd transcribe` uses).

One system (the recipe's default): OUT_DIR is its own dev decode dir, which keeps the choice:
  asrkd choose-acwt M/decode_dev M/decode_dev --apply M/decode_test
Several systems: one scale for all of them (the recipe's --acwt-choice shared), the same
decoding for every comparison, but the systems differ in calibration. With --apply only (no
DEV_DECODE_DIR), OUT_DIR's earlier choice is applied.
"""

import sys

from asrkd.acwt import apply_acwt, choose_acwt


def add_arguments(parser):
    parser.add_argument("out_dir", help="where the choice goes (best_acwt, acwt_wers, ...)")
    parser.add_argument("dev_dirs", nargs="*", metavar="DEV_DECODE_DIR",
                        help="grid-only dev decodes (decode --grid-only, with reference text)")
    parser.add_argument("--apply", action="append", default=[], metavar="DECODE_DIR",
                        help="a grid-only decode (e.g. a test set's) to give the chosen scale "
                             "(repeatable)")


def main(args):
    if args.dev_dirs:
        res = choose_acwt(args.out_dir, args.dev_dirs)
        what = (f"dev WER of {args.dev_dirs[0]}" if len(args.dev_dirs) == 1 else
                f"dev WER summed over {len(args.dev_dirs)} systems")
        print("choose-acwt: %s: %s -> %g%s" % (
            what, ", ".join(f"{a:g}: {w:.2f}%" for a, w in res["wers"].items()),
            res["acwt"], " (at an edge of the values scored)" if res["edge"] else ""),
            file=sys.stderr)
    for d in args.dev_dirs:
        apply_acwt(args.out_dir, d, record=True)
    for d in args.apply:
        apply_acwt(args.out_dir, d)
    print(f"choose-acwt: applied to {len(args.dev_dirs) + len(args.apply)} decode dirs",
          file=sys.stderr)
