"""Feature extraction speed in x real time per core (one thread), for each backend that imports
here and for the whole ``compute-feats`` stage (FLAC decoding and ark writing included).

Generates its own audio (sines + noise, written as 16 kHz FLAC in a LibriSpeech layout).
The machine is shared, so each timing is repeated; we report the best wall-clock run (least
disturbed) and the best process CPU time (one thread, so CPU seconds = core seconds), which
other users' load inflates much less than wall time.

    .venv/bin/python bench/features.py [--seconds 120] [--repeats 5]
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import soundfile
import torch

from asrkd.data import prepare_librispeech
from asrkd.errors import UserError
from asrkd.featconf import FbankConfig, MfccConfig
from asrkd.audio import read_audio
from asrkd.features import BACKENDS, compute_feats, make_extractor


def make_corpus(root, seconds, sr=16000, utt_seconds=12.0, seed=0):
    rng = np.random.default_rng(seed)
    n_utts = max(1, int(np.ceil(seconds / utt_seconds)))
    chap = os.path.join(root, "1", "10")
    os.makedirs(chap)
    lines = []
    for i in range(n_utts):
        t = np.arange(int(utt_seconds * sr)) / sr
        f0 = rng.uniform(100, 300)
        x = 0.2 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * np.sin(t))) + 0.02 * rng.standard_normal(
            len(t))
        utt = f"1-10-{i:04d}"
        soundfile.write(os.path.join(chap, utt + ".flac"), x.astype(np.float32), sr)
        lines.append(f"{utt} HELLO WORLD\n")
    with open(os.path.join(chap, "1-10.trans.txt"), "w") as f:
        f.writelines(lines)
    return n_utts * utt_seconds


def timed(fn, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), statistics.median(walls), min(cpus)


def report(name, audio_s, best, median, cpu):
    print(f"{name:<48} {audio_s / best:7.0f}x wall best {audio_s / median:7.0f}x wall median "
          f"{audio_s / cpu:7.0f}x CPU best")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="seconds of audio to generate")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats (best and median)")
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus")
        audio_s = make_corpus(corpus, a.seconds)
        data = os.path.join(tmp, "data")
        prepare_librispeech(corpus, data)
        paths = [os.path.join(r, f) for r, _, fs in os.walk(corpus) for f in fs
                 if f.endswith(".flac")]
        waves = [read_audio(pth)[0] for pth in paths]
        print(f"{audio_s:.0f} s of audio in {len(paths)} utterances, 1 thread, "
              f"{a.repeats} repeats")
        report("read FLAC (soundfile)", audio_s,
               *timed(lambda: [read_audio(pth) for pth in paths], a.repeats))
        backends = []
        for backend in BACKENDS:
            try:
                make_extractor(FbankConfig(), backend)
                backends.append(backend)
            except UserError as e:
                print(f"{backend}: skipped ({e})")
        for cfg in (FbankConfig(), MfccConfig()):
            for backend in backends:
                ex = make_extractor(cfg, backend)
                ex(waves[0][:16000])
                report(f"{cfg.kind} {backend} (features only)", audio_s,
                       *timed(lambda: [ex(w) for w in waves], a.repeats))
        for cfg in (FbankConfig(), MfccConfig()):
            for backend in backends:
                feat_dir = os.path.join(tmp, "feats")
                report(f"compute-feats {cfg.kind} {backend} (stage)", audio_s, *timed(
                    lambda: compute_feats(data, feat_dir, cfg, nj=1, backend=backend),
                    a.repeats))


if __name__ == "__main__":
    main()
