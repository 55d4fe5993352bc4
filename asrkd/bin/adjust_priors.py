"""asrkd adjust-priors MODEL [MODEL...] DATA: a model's priors from its own mean posterior
(Kaldi's nnet3-am-adjust-priors), for `asrkd decode --priors posterior`; several models in one
process over the same utterances."""

import os

from asrkd.data import DataDir
from asrkd.errors import UserError
from asrkd.priors import estimate_priors, select_utts, write_priors
from asrkd.scorer import make_scorer


def add_arguments(parser):
    parser.add_argument("model", nargs="+", help="a DNN model dir (final.pt) or an ensemble "
                        "dir (model*/final.pt: the ensemble's averaged posterior); the priors "
                        "are written into it as priors_posterior")
    parser.add_argument("data", help="fbank data dir to average over (the model's training "
                        "data, as Kaldi does)")
    parser.add_argument("--max-frames", type=int, default=100000,
                        help="average over about this many frames (every k-th utterance; "
                             "0: all of them)")


def main(args):
    for model in args.model:
        if not os.path.isdir(model):
            raise UserError(f"{model}: not a model dir (a dir holding final.pt, or an "
                            "ensemble dir of model*/final.pt)")
    if args.max_frames < 0:
        raise UserError(f"--max-frames must be >= 0, got {args.max_frames}")
    data = DataDir(args.data)
    utts = select_utts(data.utts, args.max_frames, data.utt2num_frames)
    scorers = [make_scorer(model, args.data) for model in args.model]  # every one checked first
    for model, scorer in zip(args.model, scorers):
        priors, frames = estimate_priors(scorer, utts)
        path = write_priors(model, priors, {"data_dir": os.path.abspath(args.data),
                                             "utterances": len(utts), "frames": frames})
        print(f"adjust-priors: {path}: mean posterior over {frames} frames of {len(utts)} "
              f"utterances of {args.data}")
