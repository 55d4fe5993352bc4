"""Decoding graphs: G.fst from ARPA (kaldilm) and HCLG.fst as Kaldi's utils/mkgraph.sh builds it.

    LG    = minimize_encoded(determinize_star_log(L_disambig o G))
    CLG   = compose_context(LG, N, P)                    (ilabels = context windows)
    Ha    = get_h_transducer(ilabels, tree, model)       (transition scale 1.0, no self-loops)
    HCLGa = minimize_encoded(rmsymbols(determinize_star_log(Ha o CLG), disambig tids))
    HCLG  = add_self_loops(HCLGa, self_loop_scale=0.1, reorder=True)

Deviations from mkgraph.sh: no fstpushspecial after LG and no fstrmepslocal after removing the
disambiguation symbols (neither changes the paths or their weights, only sizes); the
disambiguation symbols are removed by composing with a one-state relabelling transducer,
because the Python bindings have no mutable arc iterator. No stochasticity check is made.

kaldilm is run in a subprocess: importing it before kaldifst/kaldi_hmm_gmm in one process hangs.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import time

import kaldi_hmm_gmm
import kaldifst

from asrkd.errors import UserError
from asrkd.gmm import load_gmm
from asrkd.identity import check_same, file_id, phones_id, read_id, tree_id, write_id
from asrkd.lang import Lang
from asrkd.table import atomic_path

ARPA2FST_TIMEOUT = 3600
ARPA_ERROR = "asrkd-arpa-feed: "  # how the gzip feeder's complaint is told from kaldilm's


def arpa_to_G(arpa_path, words_txt, G_path, timeout=ARPA2FST_TIMEOUT):
    """G.fst from an ARPA LM with kaldilm (as Kaldi's arpa2fst --disambig-symbol=#0).

    Backoff arcs carry #0 on the input, <s>/</s> become epsilons; the word ids are those of
    ``words_txt`` (ARPA words outside it are skipped). ``arpa_path`` may be gzipped (``.gz``).
    Runs kaldilm in a fresh interpreter (see the module docstring).
    """
    if not os.path.isfile(arpa_path):
        raise UserError(f"no such ARPA file: {arpa_path}")
    code = ("import sys, kaldilm; kaldilm.arpa2fst(input_arpa=sys.argv[1], output_fst=sys.argv[2], "
            "disambig_symbol='#0', read_symbol_table=sys.argv[3], max_arpa_warnings=0)")
    if os.fspath(arpa_path).endswith(".gz"):
        # kaldilm reads plain files only: a forked process decompresses into a pipe that it
        # reads, so a gzipped ARPA (LibriSpeech's 3-gram.pruned.1e-7.arpa.gz) needs no unpacked
        # copy. (Not a thread: arpa2fst holds the GIL, a feeding thread would deadlock.)
        # The reader opens the pipe read-write (it holds a write end itself), so it never sees
        # end of file: the feeder checks that the stream is whole (gzip end marker and the
        # ARPA's \end\ line, where the reader stops) and otherwise kills the reader (its
        # parent, and only while it is: once the reader is gone the pid may be another's).
        code = ("import gzip, os, sys, zlib\n"
                "r, w = os.pipe()\n"
                "reader = os.getpid()\n"
                "if os.fork() == 0:\n"
                "    os.close(r)\n"
                "    err, seen, tail = None, False, b''\n"
                "    try:\n"
                "        with gzip.open(sys.argv[1], 'rb') as src, os.fdopen(w, 'wb') as dst:\n"
                "            while True:\n"
                "                b = src.read(1 << 20)\n"
                "                if not b:\n"
                "                    break\n"
                "                dst.write(b)\n"
                "                seen = seen or b'\\\\end\\\\' in tail + b\n"
                "                tail = b[-8:]\n"
                "        if not seen:\n"
                "            err = 'the ARPA text ends before its \\\\end\\\\ line'\n"
                "    except BrokenPipeError:\n"
                "        pass\n"
                "    except (OSError, EOFError, zlib.error) as e:\n"
                "        err = f'not a whole gzip file ({e})'\n"
                "    if err and os.getppid() == reader:\n"
                f"        sys.stderr.write('{ARPA_ERROR}' + err + '\\n')\n"
                "        sys.stderr.flush()\n"
                "        os.kill(reader, 9)\n"
                "    os._exit(0)\n"
                "os.close(w)\n"
                "sys.argv[1] = f'/dev/fd/{r}'\n"
                + code.replace("import sys, kaldilm; ", "import kaldilm; ") + "\nos.wait()")
    with atomic_path(G_path) as tmp:
        try:
            r = subprocess.run([sys.executable, "-c", code, os.fspath(arpa_path), tmp,
                                os.fspath(words_txt)], capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"kaldilm.arpa2fst on {arpa_path} did not finish in {timeout} s")
        if r.returncode != 0 or not os.path.getsize(tmp):
            said = [ln for ln in r.stderr.splitlines() if ln.strip()]
            fed = [ln[len(ARPA_ERROR):] for ln in said if ln.startswith(ARPA_ERROR)]
            raise UserError(f"{arpa_path}: {fed[0]}" if fed else
                            f"kaldilm.arpa2fst failed on {arpa_path}: "
                            f"{(said or ['(no message)'])[-1][-300:]}")
    G = kaldifst.StdVectorFst.read(os.fspath(G_path))
    kaldifst.arcsort(G, sort_type="ilabel")
    return G


def _relabel_to_epsilon(fst, labels, num_labels):
    """fstrmsymbols: input labels in ``labels`` become epsilon (``num_labels``: largest label)."""
    drop = set(labels)
    x = kaldifst.StdVectorFst()
    s = x.add_state()
    x.start = s
    x.set_final(s, 0.0)
    for lab in range(1, num_labels + 1):
        x.add_arc(s, kaldifst.StdArc(0 if lab in drop else lab, lab, 0.0, s))
    kaldifst.arcsort(x, sort_type="olabel")
    return kaldifst.compose(x, fst)


def compose_LG(lang, G):
    """det(L_disambig o G), minimized: depends only on lang and LM, not on the model."""
    L = lang.L_disambig_fst()
    kaldifst.arcsort(L, sort_type="olabel")
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.compose(L, G)
    if LG.num_states == 0:
        raise UserError("L o G is empty: does the LM use the lang dir's words.txt?")
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    return LG


def compile_hclg(lang, ctx_dep, trans_model, G, self_loop_scale=0.1, transition_scale=1.0,
                 LG=None):
    """HCLG (input: transition-ids, output: word ids) for a model, as Kaldi's mkgraph.sh.

    ``LG`` may be given (from ``compose_LG``) to skip that step when several models share it.
    """
    if LG is None:
        LG = compose_LG(lang, G)
    N, P = ctx_dep.context_width, ctx_dep.central_position
    CLG, ilabels = kaldifst.compose_context(lang.disambig_phones, N, P, LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    Ha, disambig_tids = kaldi_hmm_gmm.get_h_transducer(
        ilabels, ctx_dep, trans_model, kaldi_hmm_gmm.HTransducerConfig(transition_scale=transition_scale))
    kaldifst.arcsort(Ha, sort_type="olabel")
    HCLG = kaldifst.compose(Ha, CLG)
    kaldifst.determinize_star(HCLG, use_log=True)
    if disambig_tids:
        HCLG = _relabel_to_epsilon(HCLG, disambig_tids, max(disambig_tids))
        HCLG = kaldifst.StdVectorFst(HCLG) if not isinstance(HCLG, kaldifst.StdVectorFst) else HCLG
    kaldifst.minimize_encoded(HCLG)
    HCLG = kaldi_hmm_gmm.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[],
                                        reorder=True, trans_model=trans_model, ifst=HCLG)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    return HCLG


def _newer(path, *inputs):
    return os.path.isfile(path) and all(os.path.getmtime(path) >= os.path.getmtime(i) for i in inputs)


def make_graph(lang_dir, model_dir, graph_dir, arpa_path, self_loop_scale=0.1):
    """Build graph_dir/{G.fst, HCLG.fst, words.txt, final.mdl, tree, phones.txt}.

    The lang's phones must be those the model was trained on (``model_dir/phones_id``); the
    id of the words.txt the graph is built with goes to ``HCLG.words_id`` (asrkd.identity).

    Skips work whose output is newer than its inputs (G.fst, HCLG.fst). Returns graph_dir.
    """
    lang = Lang(lang_dir)
    for f in ("final.mdl", "tree"):
        if not os.path.isfile(os.path.join(model_dir, f)):
            raise UserError(f"{model_dir} has no {f}: not a model dir")
    check_same(f"the phones of {lang.dir}", phones_id(lang.phones),
               f"those {model_dir} was trained on", read_id(os.path.join(model_dir, "phones_id")),
               "phone set", "prepare the lang with the lexicon and phones of the model")
    os.makedirs(graph_dir, exist_ok=True)
    words_txt = os.path.join(lang.dir, "words.txt")
    G_path = os.path.join(graph_dir, "G.fst")
    HCLG_path = os.path.join(graph_dir, "HCLG.fst")
    mdl, tree = os.path.join(model_dir, "final.mdl"), os.path.join(model_dir, "tree")
    t0 = time.time()
    if _newer(G_path, arpa_path, words_txt):
        G = kaldifst.StdVectorFst.read(G_path)
    else:
        G = arpa_to_G(arpa_path, words_txt, G_path)
    tG = time.time() - t0
    # the tree the HCLG was built for (asrkd.identity): an HCLG newer than another model's
    # files is still that other model's graph
    stamp, model_tree = os.path.join(graph_dir, "HCLG.tree_id"), tree_id(model_dir)
    if not _newer(HCLG_path, G_path, mdl, tree, os.path.join(lang.dir, "L_disambig.fst")) \
            or hclg_tree_id(graph_dir) != model_tree:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stamp)
        model = load_gmm(model_dir)
        HCLG = compile_hclg(lang, model.ctx, model.tm, G, self_loop_scale=self_loop_scale)
        with atomic_path(HCLG_path) as tmp:
            HCLG.write(tmp)
        with atomic_path(stamp) as tmp, open(tmp, "w") as f:
            f.write(f"{model_tree}\n")
        print(f"make-graph: G {G.num_states} states ({tG:.1f} s), HCLG {HCLG.num_states} states, "
              f"{_num_arcs(HCLG)} arcs ({time.time() - t0:.1f} s total) -> {HCLG_path}")
    else:
        print(f"make-graph: {HCLG_path} is newer than its inputs, kept")
    for src, name in ((words_txt, "words.txt"), (os.path.join(lang.dir, "phones.txt"), "phones.txt"),
                      (mdl, "final.mdl"), (tree, "tree")):
        shutil.copyfile(src, os.path.join(graph_dir, name))
    write_id(os.path.join(graph_dir, "HCLG.words_id"), file_id(words_txt))  # asrkd.identity
    return graph_dir


def hclg_tree_id(graph_dir):
    """The tree id graph_dir/HCLG.fst was built for (None for a graph from before the ids)."""
    path = os.path.join(graph_dir, "HCLG.tree_id")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def _num_arcs(fst):
    return sum(fst.num_arcs(s) for s in range(fst.num_states))
