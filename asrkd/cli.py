"""The `asrkd` command: one verb per recipe stage.

Each verb lives in `asrkd/bin/<verb>.py` (dashes become underscores) and defines
``add_arguments(parser)`` and ``main(args)``; ``main`` is a thin wrapper over one library
function. Verb modules are imported only when run, so `asrkd --help` is fast.
"""

import argparse
import contextlib
import importlib
import os
import signal
import sys

# Only these small modules at start-up: the library (and torch) is imported by the verb
# that runs, so `asrkd --help` stays fast.
from asrkd import __version__, lock
from asrkd.errors import DISK_FULL, UserError
from asrkd.options import check_args

# verb -> one-line summary (shown by `asrkd --help`)
VERBS = {
    "synth-corpus": "generate the synthetic espeak-ng corpus in the LibriSpeech layout",
    "prepare-data": "LibriSpeech subset dir -> Kaldi data dir (wav.scp, text, utt2spk, ...)",
    "validate-data-dir": "check a Kaldi data dir for consistency",
    "copy-data-dir": "copy a data dir's metadata (not its features) to a new dir",
    "subset-data-dir": "split a data dir by speaker into two dirs",
    "combine-data-dirs": "merge several data dirs into one (features and CMVN carried)",
    "compute-feats": "compute fbank or MFCC features into ark/scp",
    "compute-cmvn": "compute per-speaker CMVN statistics (cmvn.scp)",
    "prepare-lang": "build the lang dir: lexicon, phones, topology, L.fst",
    "filter-lm-text": "remove the test sets' chapters and sentences from an LM text",
    "train-lm": "estimate an interpolated Kneser-Ney n-gram LM (ARPA)",
    "make-graph": "build G.fst and the HCLG decoding graph for a model",
    "train-mono": "train a monophone GMM-HMM from a flat start",
    "train-tri": "build a triphone tree and train a context-dependent GMM-HMM",
    "align": "force-align a data dir; writes transition-ids, pdf-ids and pdf counts",
    "train": "train one DNN acoustic model on pdf targets",
    "train-ensemble": "train N DNN acoustic models with different seeds",
    "soft-targets": "store the ensemble's temperature-softened posteriors",
    "distill": "train a student on soft (ensemble) and hard (alignment) targets",
    "train-specialists": "cluster confusable pdfs and train a specialist model per set",
    "specialist-report": "coverage table (paper's Table 4) and costs of specialists",
    "adjust-priors": "a DNN's priors from its own mean posterior (decode --priors posterior)",
    "decode": "decode a data dir with a GMM, a DNN or a DNN ensemble over HCLG",
    "choose-acwt": "a system's acoustic scale (or one for several) chosen on dev, applied",
    "lattice-nbest": "the n best word sequences of a decode dir's lattices",
    "lattice-ctm": "word times and confidences (CTM) from a decode dir's lattices",
    "lm-rescore": "rescore a decode dir's lattices (n-best) with another ARPA LM",
    "frame-accuracy": "frame accuracy of a model against alignments (no decoding)",
    "score": "score hypotheses against reference text (WER)",
    "report": "write the Table-1 style report (results.md, results.json, charts)",
    "compare-runs": "several runs' headline figures side by side, e.g. seeds 0, 1, 2",
    "transcribe": "audio files -> words with an acoustic model and a decoding graph",
    "export-onnx": "write an acoustic model (or an ensemble) as one ONNX graph, parity-checked",
    "export-soft-targets": "soft targets -> Kaldi matrix ark/scp (nnet3 --use-dense-targets)",
    "import-lhotse": "lhotse cuts manifest -> Kaldi data dir",
    "export-lhotse": "Kaldi data dir -> lhotse recordings, supervisions and cuts manifests",
}

# verb -> the argument naming the directory it writes, held locked while it runs (asrkd.lock);
# "file:ARG": the verb writes the file ARG, and the directory holding it is locked
LOCKED = {
    "synth-corpus": "out_dir", "prepare-data": "data_dir", "copy-data-dir": "dst",
    "combine-data-dirs": "out", "compute-feats": "data_dir", "compute-cmvn": "data_dir",
    "prepare-lang": "lang_dir", "make-graph": "graph_dir", "train-mono": "exp_dir",
    "train-tri": "exp_dir", "align": "ali_dir", "train": "exp_dir", "train-ensemble": "exp_dir",
    "soft-targets": "out_dir", "distill": "exp_dir", "train-specialists": "exp_dir",
    "adjust-priors": "model", "decode": "decode_dir", "frame-accuracy": "out_dir", "score": "out_dir",
    "export-onnx": "file:out", "export-soft-targets": "out_dir", "import-lhotse": "data_dir",
    "export-lhotse": "out_dir", "train-lm": "file:arpa",
    "lm-rescore": "out_dir",
}


def _locked_dirs(args):
    """The directories ``args.verb`` writes (LOCKED): [] for none."""
    spec = LOCKED.get(args.verb)
    if spec is None:
        return []
    name = spec.split(":")[-1]
    paths = getattr(args, name, None)
    paths = [p for p in (paths if isinstance(paths, list) else [paths]) if p]
    if spec.startswith("file:"):
        return [os.path.dirname(os.path.abspath(p)) for p in paths]
    return paths


def build_parser(verb=None):
    parser = argparse.ArgumentParser(
        prog="asrkd",
        description="Knowledge distillation of hybrid DNN-HMM acoustic models. "
        "Run `asrkd VERB --help` for a verb's arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {v:<20} {h}" for v, h in VERBS.items()),
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for v, h in VERBS.items():
        if v != verb:
            sub.add_parser(v, help=h)
            continue
        p = sub.add_parser(
            v, help=h, description=h[0].upper() + h[1:] + ".",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        _module(v).add_arguments(p)
    return parser


def _version():
    return f"asrkd {__version__}"


def _module(verb):
    return importlib.import_module("asrkd.bin." + verb.replace("-", "_"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is not None and verb not in VERBS:
        print(f"asrkd: unknown verb {verb!r}; run `asrkd --help` for the list", file=sys.stderr)
        return 2
    args = build_parser(verb).parse_args(argv)
    if args.verb is None:
        build_parser().print_help()
        return 0
    # SIGTERM (a killed recipe, a cluster's time limit) unwinds like Ctrl-C, so temporary
    # files are removed and parallel workers stopped on the way out
    signal.signal(signal.SIGTERM, _terminate)
    recipe = os.environ.get("ASRKD_DIE_WITH_PARENT", "")
    if recipe.isdigit():
        # set by the recipes (their shell's pid): a killed recipe must not leave its stages
        # running on their own (imported here, not at start-up: see the imports above)
        from asrkd.jobs import die_with_parent

        die_with_parent(os.getppid())
        try:
            os.kill(int(recipe), 0)
        except ProcessLookupError:  # killed before this process got here
            return 128 + signal.SIGTERM
        except PermissionError:
            pass
    try:
        check_args(args)  # one range check of decoder, training and store options for all verbs
        with contextlib.ExitStack() as locks:
            for out in _locked_dirs(args):
                locks.enter_context(lock.locked(out, what=f"asrkd {args.verb}"))
            rc = _module(args.verb).main(args)
    except BrokenPipeError:  # stdout closed by a reader that had enough (`| head`): no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail too
        return 141  # 128 + SIGPIPE, as a shell tool killed by the signal
    except UserError as e:  # a clear one-line answer for bad input, no traceback
        print(f"asrkd {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"asrkd {args.verb}: error: {e.strerror or os.strerror(e.errno)}{where}; free "
              "space (or raise "
              "the file size limit) and rerun", file=sys.stderr)
        return 1
    return 0 if rc is None else rc


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
