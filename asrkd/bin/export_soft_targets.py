"""asrkd export-soft-targets SOFT_DIR OUT_DIR: soft targets as a Kaldi matrix ark + scp."""

from asrkd.interop import export_soft_targets


def add_arguments(parser):
    parser.add_argument("soft_dir", help="soft-target dir from `asrkd soft-targets`")
    parser.add_argument("out_dir", help="output dir: targets.ark, targets.scp (one dense float32 "
                                        "T x num_pdfs matrix per utterance: the stored top-k "
                                        "probabilities, the rest mass spread evenly over the "
                                        "other pdfs, each row summing to one) and num_targets; "
                                        "pass targets.scp to Kaldi nnet3 as "
                                        "--use-dense-targets true --targets-scp")


def main(args):
    export_soft_targets(args.soft_dir, args.out_dir)
