"""asrkd transcribe MODEL GRAPH AUDIO...: words for audio files, one line per file."""

from asrkd.transcribe import DEFAULT_MAX_SEGMENT, transcribe


def add_arguments(parser):
    parser.add_argument("model", help="DNN checkpoint, a dir holding final.pt (e.g. exp/distill), "
                                      "a dir of model*/final.pt (an ensemble), or an .onnx file "
                                      "from export-onnx")
    parser.add_argument("graph_dir", help="graph dir from make-graph (e.g. exp/tri/graph)")
    parser.add_argument("audio", nargs="+",
                        help="WAV/FLAC files (one line of words each), a wav.scp (lines 'utt "
                             "words'; an utt2spk beside it gives per-speaker CMVN), or - for "
                             "paths (or 'utt path' lines) on stdin")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--acwt", type=float, default=None,
                   help="acoustic scale (default: the ONNX metadata's, or the one MODEL was "
                        "decoded with, from its decode_*/acwt)")
    g.add_argument("--acwt-from", default=None,
                   help="dev decode dir whose best_acwt to use (e.g. "
                        "exp/teachers/decode_acwt_dev)")
    parser.add_argument("--feat-conf", default=None,
                        help="YAML feature config the model was trained with (default: the "
                             "ONNX metadata's, else conf/fbank.yaml's FbankConfig defaults)")
    parser.add_argument("--no-resample", action="store_true",
                        help="a file at another sample rate is an error instead of being "
                             "resampled to the features' rate")
    parser.add_argument("--channel", default=None, metavar="N|mix",
                        help="multi-channel audio: use channel N (0-based, as Kaldi's "
                             "--channel) or 'mix' (the mean of the channels); without it a "
                             "multi-channel file is an error")
    parser.add_argument("--max-segment", type=float, default=DEFAULT_MAX_SEGMENT,
                        metavar="SECONDS",
                        help="a file longer than this is decoded in segments of at most this "
                             "many seconds, cut at the quietest point of each segment's last "
                             "third, and their words joined; memory is bounded by a segment, "
                             "not the file (at least 1). CMVN statistics are "
                             "still the whole file's (or speaker's)")
    parser.add_argument("--beam", type=float, default=16.0, help="decoding beam")
    parser.add_argument("--lattice-beam", type=float, default=8.0, help="lattice beam")
    parser.add_argument("--max-active", type=int, default=7000, help="max active states")
    parser.add_argument("--priors", choices=("auto", "counts", "posterior"), default="auto",
                        help="what a DNN's posteriors are divided by: its alignment's pdf counts, "
                             "its own mean posterior (`asrkd adjust-priors`), or auto: the "
                             "latter where MODEL holds it (as the recipe decodes)")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch threads (the real-time factor printed is for this many)")


def main(args):
    transcribe(args.model, args.graph_dir, args.audio, acwt=args.acwt, acwt_from=args.acwt_from,
               feat_conf=args.feat_conf, resample=not args.no_resample, beam=args.beam,
               lattice_beam=args.lattice_beam, max_active=args.max_active,
               num_threads=args.num_threads, channel=args.channel,
               max_segment=args.max_segment, priors=args.priors)
