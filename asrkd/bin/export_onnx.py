"""asrkd export-onnx MODEL OUT.onnx: one ONNX graph (features -> log-posteriors, clamped below
at log(1e-30)), with priors, CMVN mode, feature config and acoustic scale in its metadata,
checked against PyTorch; with --quantize int8 also OUT.int8.onnx."""

from asrkd.export import (DEFAULT_INT8_TOLERANCE, DEFAULT_TOLERANCE, QUANTIZE_KINDS,
                          export_onnx)


def add_arguments(parser):
    parser.add_argument("model", help="DNN/TDNN checkpoint, a dir holding final.pt (a student), "
                                      "or a dir of model*/final.pt (an ensemble: one graph that "
                                      "averages the members' posteriors)")
    parser.add_argument("out", help="output .onnx file; run it with `asrkd decode` or "
                                    "`asrkd transcribe` (onnxruntime, CPU). Its output is "
                                    "log-posteriors clamped below at log(1e-30) = -69.08, "
                                    "so that every score stays finite")
    parser.add_argument("--data-dir", default=None,
                        help="fbank data dir (feats.scp, cmvn.scp) for the parity check "
                             "(default: the checkpoint's training data dir)")
    parser.add_argument("--num-utts", type=int, default=3,
                        help="utterances of --data-dir the parity check runs on")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest allowed |onnxruntime - PyTorch| log-posterior difference")
    parser.add_argument("--quantize", choices=QUANTIZE_KINDS, default=None,
                        help="also write OUT.int8.onnx beside OUT: onnxruntime dynamic "
                             "quantization (8-bit weights per output channel, activations "
                             "quantized per call), about a quarter of the float file's size")
    parser.add_argument("--int8-tolerance", type=float, default=DEFAULT_INT8_TOLERANCE,
                        help="largest allowed |int8 onnxruntime - PyTorch| log-posterior "
                             "difference, over all pdfs (low-probability ones move most)")
    parser.add_argument("--feat-conf", default=None,
                        help="YAML feature config the model was trained with, stored in the "
                             "metadata (default: conf/fbank.yaml's, i.e. FbankConfig defaults)")
    parser.add_argument("--priors", choices=("auto", "counts"), default="auto",
                        help="auto: also store MODEL's own mean posterior (priors_posterior, "
                             "from `asrkd adjust-priors`) where it has one; decode and "
                             "transcribe then divide by it, as the recipe decodes; counts: the "
                             "alignment counts alone")
    parser.add_argument("--acwt", type=float, default=None,
                        help="acoustic scale to store (default: the one of MODEL's decode "
                             "dirs, e.g. MODEL/decode_test/acwt, if any)")


def main(args):
    from asrkd.featconf import load_feature_config

    fc = load_feature_config(args.feat_conf) if args.feat_conf else None
    export_onnx(args.model, args.out, data_dir=args.data_dir, num_utts=args.num_utts,
                tolerance=args.tolerance, feature_config=fc, acwt=args.acwt,
                quantize=args.quantize, int8_tolerance=args.int8_tolerance,
                priors=args.priors)
