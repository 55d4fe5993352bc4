"""Peak resident memory (RSS) and real-time factor of ``asrkd transcribe`` on long recordings
(default 1, 5 and 20 minutes): memory should be flat in the length of the file.

A recording is the utterances of a data dir's wav.scp (cycled) joined with 0.3 s of silence.
Each transcription runs as its own process; its peak RSS comes from wait4() and the real-time
factor from transcribe's own report (features, network and search; not loading). Give a trained
model and graph (a demo run's exp/distill and exp/tri/graph, with data/test); without them a
tiny corpus, GMM, word-loop graph and DNN are built as the tests build theirs (a minute).

    .venv/bin/python bench/transcribe_memory.py [--model M --graph G --data D] [--minutes 1,5,20]
        [--old-src DIR]   # also run the asrkd package under DIR (e.g. an older checkout)
        [--decode-opts '--beam 11 --max-active 1000 --lattice-beam 2']
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import soundfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))


def tiny_model(root):
    """(model dir, graph dir, data dir) of a tiny system built as tests/conftest.py builds it."""
    from conftest import CONF, word_loop_graph

    from asrkd.align import align
    from asrkd.data import copy_data_dir, prepare_librispeech
    from asrkd.decode import decode
    from asrkd.featconf import load_feature_config
    from asrkd.features import compute_cmvn, compute_feats
    from asrkd.gmmtrain import train_mono
    from asrkd.lang import prepare_lang
    from asrkd.models import ModelConfig
    from asrkd.synth import synth_corpus
    from asrkd.train import TrainConfig, train_model

    corpus = os.path.join(root, "corpus")
    synth_corpus(corpus, hours=0.05, condition="clean", seed=7, nj=1, num_speakers=6)
    fbank = load_feature_config(os.path.join(CONF, "fbank.yaml"))
    mfcc = load_feature_config(os.path.join(CONF, "mfcc.yaml"))
    for s in ("train", "test"):
        d, dm = os.path.join(root, "data", s), os.path.join(root, "data", f"{s}_mfcc")
        prepare_librispeech(os.path.join(corpus, s), d)
        copy_data_dir(d, dm)
        compute_feats(d, os.path.join(root, "fbank"), fbank)
        compute_feats(dm, os.path.join(root, "mfcc"), mfcc)
        compute_cmvn(d)
        compute_cmvn(dm)
    texts = [os.path.join(root, "data", s, "text") for s in ("train", "test")]
    lang = prepare_lang(os.path.join(root, "lang"), texts)
    mono, ali = os.path.join(root, "mono"), os.path.join(root, "ali")
    train_mono(os.path.join(root, "data/train_mfcc"), lang.dir, mono, num_iters=6, num_gauss=150)
    align(os.path.join(root, "data/train_mfcc"), lang.dir, mono, ali)
    vocab = {w for t in texts for line in open(t) for w in line.split()[1:]}
    graph = word_loop_graph(lang, mono, vocab, os.path.join(root, "graph"))
    model = os.path.join(root, "dnn")
    train_model(os.path.join(root, "data/train"), ali, model,
                ModelConfig(left_context=5, right_context=5, hidden_dims=[64]),
                TrainConfig(epochs=2, min_epochs=2, batch_size=256, num_threads=1,
                            tensorboard=False), seed=1)
    decode(graph, os.path.join(root, "data/test"), model, os.path.join(model, "decode_test"),
           acwt=0.25)  # transcribe finds the scale in decode_*/acwt
    return model, graph, os.path.join(root, "data/test")


def long_recording(path, data_dir, minutes):
    """Write ``minutes`` of data_dir's utterances (cycled, 0.3 s of silence between) as one
    16-bit file, block by block; return its length in seconds."""
    paths = [line.split(maxsplit=1)[1].strip() for line in open(os.path.join(data_dir, "wav.scp"))]
    sr = soundfile.info(paths[0]).samplerate
    gap = np.zeros(int(0.3 * sr), dtype=np.float32)
    n, target, i = 0, int(minutes * 60 * sr), 0
    with soundfile.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        while n < target:
            x, _ = soundfile.read(paths[i % len(paths)], dtype="float32")
            x = np.concatenate([x, gap])[:target - n]
            f.write(x)
            n, i = n + len(x), i + 1
    return n / sr


def run(cmd, log, src):
    """(peak RSS in MB, real-time factor) of ``cmd`` run in ``src`` (its asrkd is imported)."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=src,
                             env=dict(os.environ, PYTHONPATH=src))
        _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed; see {log}")
    m = re.search(r"real-time factor ([0-9.]+)", open(log).read())
    return usage.ru_maxrss / 1024, float(m.group(1)) if m else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="trained model (e.g. exp/distill); default: a tiny one")
    p.add_argument("--graph", help="its graph dir (e.g. exp/tri/graph)")
    p.add_argument("--data", help="data dir whose wav.scp makes the recordings (data/test)")
    p.add_argument("--minutes", default="1,5,20", help="comma-separated recording lengths")
    p.add_argument("--old-src", help="also run the asrkd under this source dir (PYTHONPATH)")
    p.add_argument("--old-minutes", default="5", help="lengths to run --old-src on")
    p.add_argument("--keep", help="work in this dir and keep it")
    p.add_argument("--decode-opts", default="",
                   help="more transcribe options, e.g. the demo's narrow beams: '--beam 11 "
                        "--max-active 1000 --lattice-beam 2'")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    root = os.path.abspath(args.keep or tempfile.mkdtemp(prefix="asrkd-bench-transcribe-"))
    os.makedirs(root, exist_ok=True)
    if args.model:
        model, graph, data = (os.path.abspath(p) for p in (args.model, args.graph, args.data))
    else:
        model, graph, data = tiny_model(os.path.join(root, "tiny"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    print(f"model {model}, graph {graph} {args.decode_opts}; CPU {cpu}, 1 thread")
    runs = [("new", float(m), REPO) for m in args.minutes.split(",") if m]
    if args.old_src:
        runs += [("old", float(m), os.path.abspath(args.old_src))
                 for m in args.old_minutes.split(",") if m]
    for name, minutes, src in runs:
        wav = os.path.join(root, f"long_{minutes:g}min.wav")
        if not os.path.exists(wav):
            long_recording(wav, data, minutes)
        cmd = [sys.executable, "-m", "asrkd", "transcribe", model, graph, wav]
        cmd += args.decode_opts.split()
        rss, rtf = run(cmd, os.path.join(root, f"{name}_{minutes:g}min.log"), src)
        print(f"{name:>3} code, {minutes:4g} min: peak RSS {rss:7.0f} MB, real-time factor "
              f"{rtf:.3f}", flush=True)


if __name__ == "__main__":
    main()
