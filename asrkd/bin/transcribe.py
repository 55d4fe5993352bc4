"""asrkd transcribe MODEL [GRAPH] AUDIO...: words for audio files, one ``key words`` line each."""

import os

from asrkd.transcribe import DEFAULT_MAX_SEGMENT, transcribe


def add_arguments(parser):
    parser.add_argument("model", help="DNN checkpoint, a dir holding final.pt (e.g. exp/distill), "
                                      "a dir of model*/final.pt (an ensemble), or an .onnx file "
                                      "from export-onnx")
    # one list, not an optional graph_dir before audio: argparse would give an optional
    # positional the first file whenever options follow the graph dir
    parser.add_argument("audio", nargs="+", metavar="[GRAPH_DIR] AUDIO",
                        help="a graph dir from make-graph first (e.g. exp/tri/graph; default: "
                             "the one MODEL/decode.json names, written by `asrkd decode` on a "
                             "dev grid), then WAV/FLAC files (a line 'path words' each), a "
                             "wav.scp (lines 'utt words'; an utt2spk beside it gives "
                             "per-speaker CMVN), or - for paths (or 'utt path' lines) on stdin")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--acwt", type=float, default=None,
                   help="acoustic scale (default: MODEL/decode.json's, else the ONNX "
                        "metadata's, else the one MODEL was decoded with, from decode_*/acwt)")
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
    parser.add_argument("--beam", type=float, default=None,
                        help="decoding beam (None: MODEL/decode.json's, else 16)")
    parser.add_argument("--lattice-beam", type=float, default=None,
                        help="lattice beam (None: MODEL/decode.json's, else 8)")
    parser.add_argument("--max-active", type=int, default=None,
                        help="max active states (None: MODEL/decode.json's, else 7000)")
    parser.add_argument("--priors", choices=("auto", "counts", "posterior"), default=None,
                        help="what a DNN's posteriors are divided by: its alignment's pdf counts, "
                             "its own mean posterior (`asrkd adjust-priors`), or auto: the "
                             "latter where MODEL holds it (None: MODEL/decode.json's, else "
                             "auto)")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch threads (the real-time factor printed is for this many)")


def main(args):
    """Exit status 1 when any input failed (each has its error line on stderr)."""
    graph_dir, audio = None, args.audio
    if os.path.isdir(audio[0]):  # a graph dir, not audio
        graph_dir, audio = audio[0], audio[1:]
    res = transcribe(args.model, graph_dir, audio, acwt=args.acwt, acwt_from=args.acwt_from,
                     feat_conf=args.feat_conf, resample=not args.no_resample, beam=args.beam,
                     lattice_beam=args.lattice_beam, max_active=args.max_active,
                     num_threads=args.num_threads, channel=args.channel,
                     max_segment=args.max_segment, priors=args.priors)
    return 1 if res["failed"] else 0
