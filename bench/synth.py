"""Synthetic corpus generation speed in x real time, clean and other, in one run.

Times the whole ``synth_corpus`` call (text selection, babble bank, synthesis, resampling,
room simulation, FLAC writing) and reports seconds of audio written per wall-clock second. The
machine is shared, so each condition is repeated and the best (least disturbed) run is shown
beside the median. A last nj=1 run per condition also reports audio seconds per CPU second
(this process plus its espeak server and the server's speaker children), which other jobs on
the machine do not disturb: about what one free core gives.

    .venv/bin/python bench/synth.py [--minutes 3] [--nj 2] [--repeats 3]
"""

import argparse
import os
import statistics
import tempfile
import time

from asrkd.synth import espeak, synth_corpus
from asrkd.synth.text import split_sentences


def _server_cpu():
    """CPU seconds of this process's espeak server and its reaped children (Linux /proc)."""
    if espeak._server is None or espeak._server[0] != os.getpid():
        return 0.0
    with open(f"/proc/{espeak._server[1].pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # u, s, cu, cs


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
        with tempfile.TemporaryDirectory() as d:
            c0, s0 = time.process_time(), _server_cpu()
            synth_corpus(d, hours=hours, condition=condition, seed=0, nj=1)
            cpu = time.process_time() - c0 + _server_cpu() - s0
        print(f"{condition:5s}: {audio / cpu:6.1f}x real time per CPU second (nj=1)")


if __name__ == "__main__":
    main()
