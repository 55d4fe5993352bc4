"""asrkd adjust-priors MODEL DATA: a model's priors from its own mean posterior (Kaldi's
nnet3-am-adjust-priors), for `asrkd decode --priors posterior`."""

import os

from asrkd.data import DataDir
from asrkd.errors import UserError
from asrkd.priors import estimate_priors, select_utts, write_priors
from asrkd.scorer import make_scorer


def add_arguments(parser):
    parser.add_argument("model", help="a DNN model dir (final.pt) or an ensemble dir "
                        "(model*/final.pt: the ensemble's averaged posterior); the priors are "
                        "written into it as priors_posterior")
    parser.add_argument("data", help="fbank data dir to average over (the model's training "
                        "data, as Kaldi does)")
    parser.add_argument("--max-frames", type=int, default=100000,
                        help="average over about this many frames (every k-th utterance; "
                             "0: all of them)")


def main(args):
    if not os.path.isdir(args.model):
        raise UserError(f"{args.model}: not a model dir (a dir holding final.pt, or an ensemble "
                        "dir of model*/final.pt)")
    if args.max_frames < 0:
        raise UserError(f"--max-frames must be >= 0, got {args.max_frames}")
    data = DataDir(args.data)
    scorer = make_scorer(args.model, args.data)
    utts = select_utts(data.utts, args.max_frames, data.utt2num_frames)
    priors, frames = estimate_priors(scorer, utts)
    path = write_priors(args.model, priors, {"data_dir": os.path.abspath(args.data),
                                              "utterances": len(utts), "frames": frames})
    print(f"adjust-priors: {path}: mean posterior over {frames} frames of {len(utts)} "
          f"utterances of {args.data}")
