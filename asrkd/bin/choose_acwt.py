"""asrkd choose-acwt OUT_DIR DEV_DECODE_DIR...: one acoustic scale for several systems.

The systems' dev sets are decoded with `decode --grid-only` (every value of the grid and of
its widening scored, none chosen); the value of lowest word errors summed over all of them is
written to OUT_DIR (best_acwt, acwt_wers: the pooled WER per value, acwt_edge, systems) and
applied to each dev decode dir and to every --apply dir (their test sets' grid-only decodes):
its hypotheses and scores at that value become the dir's hyp.txt, wer, per_utt and acwt. Each
dev decode's model gets the value in its decode.json (what `asrkd transcribe` uses).

One scale for all the DNN systems of a run compares them under the same decoding, and pools
their dev words into the choice (a per-system choice on a small dev set can move by one word).
With --apply only (no DEV_DECODE_DIR), OUT_DIR's earlier choice is applied.
"""

import sys

from asrkd.decode import apply_acwt, choose_acwt


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
