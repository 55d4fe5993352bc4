"""Peak resident memory (RSS) of ``asrkd train``, ``soft-targets`` and ``distill`` on two corpus
sizes: memory should be bounded by the model, not the corpus.

Each command runs as its own process on a stand-in corpus (bench/fake_corpus.py: random fbank
features and an alignment of the right shape, no audio or GMM) of ``--hours`` (default 0.5 and
4 h of 10 ms frames); its peak RSS comes from wait4(). A small DNN (11 x 40 -> 2 x 128 -> 1000
pdfs) and a capped epoch keep the run to a few minutes; the frame cache, the soft-target store
and the distillation targets are built for the whole corpus.

    .venv/bin/python bench/memory.py [--hours 0.5,4] [--keep DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_corpus import FRAMES_PER_HOUR, make_fake_corpus  # noqa: E402

CONF = """model:
  left_context: 5
  right_context: 5
  hidden_dims: [128, 128]
train:
  epochs: 1
  min_epochs: 1
  batch_size: 512
  max_frames_per_epoch: 100000
  tensorboard: false
  num_threads: 1
"""


def peak_rss(cmd, log):
    """Run ``cmd``; return (peak RSS in MB, wall seconds)."""
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed; see {log}")
    return usage.ru_maxrss / 1024, time.time() - t0


def measure(root, hours):
    asrkd = [sys.executable, "-m", "asrkd"]
    data, ali = make_fake_corpus(os.path.join(root, "corpus"), int(hours * FRAMES_PER_HOUR))
    conf = os.path.join(root, "dnn.yaml")
    with open(conf, "w") as f:
        f.write(CONF)
    exp = os.path.join(root, "exp")
    out = {}
    out["train"] = peak_rss(asrkd + ["train", "--conf", conf, data, ali, f"{exp}/teachers/model1"],
                            f"{root}/train.log")
    out["soft-targets"] = peak_rss(
        asrkd + ["soft-targets", "--temperature", "1", "--topk", "20", data, f"{exp}/teachers",
                 f"{exp}/soft"], f"{root}/soft.log")
    out["distill"] = peak_rss(
        asrkd + ["distill", "--conf", conf, "--cache-dir", f"{exp}/teachers/model1/frames", data,
                 ali, f"{exp}/soft", f"{exp}/distill"], f"{root}/distill.log")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", default="0.5,4", help="comma-separated corpus sizes in hours")
    p.add_argument("--keep", default=None, help="work in this dir and keep it")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    hours = [float(h) for h in args.hours.split(",")]
    root = args.keep or tempfile.mkdtemp(prefix="asrkd-bench-memory-")
    results = {}
    try:
        for h in hours:
            results[h] = measure(os.path.join(root, f"{h:g}h"), h)
            print(f"{h:g} h ({int(h * FRAMES_PER_HOUR)} frames): " + ", ".join(
                f"{k} {mb:.0f} MB ({s:.0f} s)" for k, (mb, s) in results[h].items()), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if len(hours) > 1:
        a, b = hours[0], hours[-1]
        print(f"\npeak RSS growth from {a:g} h to {b:g} h ({b / a:g}x the frames):")
        for k in results[a]:
            ra, rb = results[a][k][0], results[b][k][0]
            print(f"  {k:<13} {ra:7.0f} MB -> {rb:7.0f} MB  {100 * (rb - ra) / ra:+6.1f}%")


if __name__ == "__main__":
    main()
