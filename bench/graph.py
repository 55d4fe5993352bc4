"""HCLG build time and peak memory against vocabulary size and LM pruning.

For each vocabulary size V: a lang dir of the V most frequent (CMUdict) words of LM_TEXT, then
for each pruning threshold a trigram from LM_TEXT (train-lm --prune, 0: none), then make-graph
with MODEL_DIR's tree and transition model (e.g. a recipe's exp/tri), each as its own process
under a time limit. Reports n-grams, dev perplexity (with --dev-text), build seconds (wall), the
peak resident memory of the largest process (from wait4) and the sizes of G and HCLG.

    .venv/bin/python bench/graph.py --model-dir recipes/synth/exp/tri --lm-text TEXT \\
        [--dev-text TEXT] [--vocab-sizes 5000,20000] [--prune 0,1e-7,1e-6] [--timeout 420]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time


def run(cmd, timeout):
    """(returncode or None on timeout, wall s, peak RSS MB, stdout + stderr) of one command."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                status = None
                break
            time.sleep(0.5)
        log.seek(0)
        out = log.read()
    rc = None if status is None else os.waitstatus_to_exitcode(status)
    return rc, time.perf_counter() - t0, usage.ru_maxrss / 1024, out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--lm-text", required=True, help="plain sentences (no utterance ids)")
    p.add_argument("--dev-text", default=None, help="Kaldi text (with utterance ids)")
    p.add_argument("--vocab-sizes", default="5000,20000")
    p.add_argument("--prune", default="0,1e-7,1e-6")
    p.add_argument("--timeout", type=float, default=420)
    p.add_argument("--work-dir", default=None, help="keep the lang dirs and LMs here")
    args = p.parse_args()
    asrkd = [sys.executable, "-m", "asrkd"]
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_graph.")
    os.makedirs(work, exist_ok=True)
    text = os.path.join(work, "text")
    with open(text, "w") as f:
        f.write("x-1-1 THE\n")  # prepare-lang needs a Kaldi text; the vocabulary is the LM text's
    print(f"{'vocab':>6} {'prune':>6} {'2-grams':>8} {'3-grams':>8} {'dev ppl':>8} "
          f"{'build s':>8} {'peak MB':>8} {'G MB':>6} {'HCLG MB':>8}")
    for v in args.vocab_sizes.split(","):
        lang = os.path.join(work, f"lang{v}")
        if not os.path.isfile(os.path.join(lang, "L.fst")):
            subprocess.run(asrkd + ["prepare-lang", "--text", text, "--vocab-text", args.lm_text,
                                    "--vocab-size", v, lang], check=True, capture_output=True)
        for prune in args.prune.split(","):
            arpa = os.path.join(work, f"lm{v}_{prune}.arpa")
            cmd = asrkd + ["train-lm", "--order", "3", "--vocab", os.path.join(lang, "words.txt"),
                           "--prune", prune] + (["--dev-text", args.dev_text] if args.dev_text
                                                else []) + [args.lm_text, arpa]
            _, _, _, out = run(cmd, args.timeout)
            grams = re.findall(r"n-grams 1:(\d+) 2:(\d+) 3:(\d+)", out)[-1]
            ppl = re.findall(r"ppl ([\d.]+)", out)
            graph = os.path.join(work, f"graph{v}_{prune}")
            rc, wall, peak, out = run(asrkd + ["make-graph", lang, args.model_dir, arpa, graph],
                                      args.timeout)
            size = {f: os.path.getsize(os.path.join(graph, f)) / 1e6 if rc == 0 else float("nan")
                    for f in ("G.fst", "HCLG.fst")}
            print(f"{v:>6} {prune:>6} {grams[1]:>8} {grams[2]:>8} {ppl[0] if ppl else '-':>8} "
                  + (f"{wall:8.1f}" if rc == 0 else f"{'>' + str(int(args.timeout)):>8}")
                  + f" {peak:8.0f} {size['G.fst']:6.1f} {size['HCLG.fst']:8.1f}", flush=True)
            subprocess.run(["rm", "-rf", graph])


if __name__ == "__main__":
    main()
