"""asrkd compare-runs EXP_DIR...: several runs' headline figures side by side (e.g. seeds)."""


def add_arguments(parser):
    parser.add_argument("exp_dirs", nargs="+", metavar="EXP_DIR",
                        help="experiment dirs holding results.json (`asrkd report` output)")
    parser.add_argument("--names", default=None,
                        help="comma-separated row names, one per EXP_DIR (default: the dirs' "
                        "names)")
    parser.add_argument("--pooled", action="store_true",
                        help="also the claims' paired differences pooled over every run's test "
                        "speakers (a bootstrap drawing speakers within each run: their noise, "
                        "not the models'); reads each run's systems.tsv and decode dirs")


def main(args):
    from asrkd.errors import UserError
    from asrkd.report import compare_runs

    names = args.names.split(",") if args.names else None
    if names is not None and len(names) != len(args.exp_dirs):
        raise UserError(f"--names gives {len(names)} names for {len(args.exp_dirs)} dirs")
    print(compare_runs(args.exp_dirs, names, pooled=args.pooled), end="")
