"""Synthetic corpus generation speed in x real time, clean and other, in one run.

Times the whole ``synth_corpus`` call (text selection, babble bank, synthesis, resampling,
room simulation, FLAC writing) and reports seconds of audio written per wall-clock second. The
machine is shared, so each condition is repeated and the best (least disturbed) run is shown
beside the median.

    .venv/bin/python bench/synth.py [--minutes 3] [--nj 2] [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time

from asrkd.synth import synth_corpus
from asrkd.synth.text import split_sentences


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="audio per condition (all subsets)")
    p.add_argument("--nj", type=int, default=2, help="parallel jobs")
    p.add_argument("--repeats", type=int, default=3, help="runs per condition")
    args = p.parse_args()
    split_sentences()  # warm the text cache so every run pays the same
    hours = args.minutes / 60 / 1.2  # dev and test add 20% to the training hours
    for condition in ("clean", "other"):
        walls = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                summary = synth_corpus(d, hours=hours, condition=condition, seed=0, nj=args.nj)
                walls.append(time.perf_counter() - t0)
        audio = sum(s["hours"] for s in summary["subsets"].values()) * 3600
        print(f"{condition:5s}: {audio:6.1f} s audio, nj={args.nj}: "
              f"{audio / min(walls):6.1f}x real time (best), "
              f"{audio / statistics.median(walls):6.1f}x (median) of {args.repeats} runs")


if __name__ == "__main__":
    main()
