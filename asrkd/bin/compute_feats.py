"""asrkd compute-feats DATA_DIR FEAT_DIR --conf conf/fbank.yaml"""

import time

from asrkd.data import DataDir
from asrkd.featconf import load_feature_config
from asrkd.features import BACKENDS, compute_feats


def add_arguments(parser):
    parser.add_argument("data_dir", metavar="DATA_DIR",
                        help="data dir with wav.scp; gets feats.scp and utt2num_frames")
    parser.add_argument("feat_dir", metavar="FEAT_DIR",
                        help="where the ark/scp archives and job logs (FEAT_DIR/log) go")
    parser.add_argument("--conf", default="conf/fbank.yaml",
                        help="feature config YAML (type: fbank|mfcc plus non-default options)")
    parser.add_argument("--nj", type=int, default=1, help="number of parallel jobs")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="feature implementation, all Kaldi-compatible: torch (default, "
                             "vectorised), kaldi-native-fbank (Kaldi's C++), torchaudio "
                             "(torchaudio.compliance.kaldi; needs torchaudio installed)")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the torch and torchaudio backends (e.g. cuda)")
    parser.add_argument("--channel", default=None, metavar="N|mix",
                        help="multi-channel audio: use channel N (0-based, as Kaldi's "
                             "--channel) or 'mix' (the mean of the channels); without it a "
                             "multi-channel file is an error")


def main(args):
    config = load_feature_config(args.conf)
    t0 = time.perf_counter()
    frames = compute_feats(args.data_dir, args.feat_dir, config, nj=args.nj,
                           backend=args.backend, device=args.device, channel=args.channel)
    dt = time.perf_counter() - t0
    d = DataDir(args.data_dir)
    audio = sum(d.utt2dur.values()) if d.has("utt2dur") else 0.0
    speed = f", {audio / dt:.0f}x real time" if audio else ""
    print(f"{len(d)} utterances, {frames} frames of {config.kind} dim {config.dim} "
          f"in {dt:.1f} s{speed}")
