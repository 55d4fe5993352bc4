"""Artefact identity: what a later stage checks before it trusts an earlier stage's output.

Equal pdf counts are not enough: two triphone systems trained with the same ``--num-leaves``
have the same number of pdfs but different trees, and their pdf ids mean different states.
Two identities are therefore carried from stage to stage and compared by every consumer, which
names, in one line, the two things that disagree:

- the **tree id**: a content hash of a GMM-HMM's tree and HMM topology, which together fix its
  transition-ids and pdfs (the transition probabilities, which EM changes, are left out). Model,
  alignment and graph dirs all hold ``final.mdl`` + ``tree``, so their id is computed from the
  files; DNN checkpoints and soft-target stores record the id of the alignment they were
  trained from (``tree_id``).
- the **feature config**: ``DATA_DIR/feat_config.yaml``, written by compute-feats (every
  extraction option, ``type`` first; the dimension follows from it; read and written by
  asrkd.featconf). Checkpoints record the config of their training data (``feature_config``)
  next to ``model_config.feat_dim``.

- the **phone set id**: a hash of a lang dir's phone table (names and ids, the
  disambiguation symbols left out), recorded by GMM training in ``EXP_DIR/phones_id``; make-graph
  refuses a lang whose phones are not those the acoustic model was trained on (a lexicon with a
  phone the model lacks renumbers the phones after it).
- the **word table id**: a content hash of the ``words.txt`` a graph was built with, recorded by
  make-graph in ``GRAPH_DIR/HCLG.words_id``; decoding refuses a graph dir whose ``words.txt``
  is another one (every output word would be wrong).

Artefacts from before these ids existed carry none; they are then not compared.
"""

import hashlib
import os

import numpy as np

from asrkd.errors import UserError
from asrkd.featconf import feature_config, feature_dim
from asrkd.table import atomic_path

_TREE_IDS = {}  # (path, size, mtime) -> id: a decode or training run asks several times


def tree_id(model_dir):
    """Tree id (16 hex digits) of a model, alignment or graph dir (or a final.mdl); None
    when it holds no final.mdl."""
    path = os.path.join(model_dir, "final.mdl") if os.path.isdir(model_dir) else model_dir
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _TREE_IDS:
        try:
            with np.load(path, allow_pickle=False) as z:
                topo, ctx = str(z["topo"]), np.asarray(z["ctx"], dtype=np.int8).tobytes()
        except (ValueError, KeyError, OSError) as e:
            raise UserError(f"{path}: not an asrkd GMM model ({e})") from None
        h = hashlib.sha256()
        h.update(topo.encode())
        h.update(b"\0")
        h.update(ctx)
        _TREE_IDS[key] = h.hexdigest()[:16]
    return _TREE_IDS[key]


def check_tree(a_what, a_id, b_what, b_id):
    """UserError unless two tree ids agree (either None: nothing to compare)."""
    if a_id is not None and b_id is not None and a_id != b_id:
        raise UserError(f"{a_what} (tree {a_id}) and {b_what} (tree {b_id}) come from different "
                        "triphone trees: their pdf ids mean different states")


def check_features(model_what, model_config, model_dim, data_dir, data_dim=None):
    """UserError unless a model's features (config dict or None, dim or None) are those of
    ``data_dir`` (its feat_config.yaml; ``data_dim``: the dim its reader gives, if known)."""
    have = feature_config(data_dir)
    if model_config is not None and have is not None and model_config != have:
        keys = sorted((k for k in set(model_config) | set(have)
                       if model_config.get(k) != have.get(k)), key=lambda k: (k != "type", k))
        diff = ", ".join(f"{k}={model_config.get(k)!r} vs {have.get(k)!r}" for k in keys[:3])
        raise UserError(f"{model_what} was trained on other features than {data_dir} has "
                        f"({diff}); recompute the features with the model's config")
    if data_dim is None and have is not None:
        data_dim = feature_dim(have)
    if model_dim and data_dim and model_dim != data_dim:
        raise UserError(f"{model_what} takes {model_dim}-dim features but {data_dir} has "
                        f"{data_dim}-dim ones")


def phones_id(phones):
    """Phone set id (16 hex digits) of a phone table {name: id}; ``#n`` symbols left out."""
    lines = sorted(f"{p} {i}\n" for p, i in phones.items() if not p.startswith("#"))
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


def file_id(path):
    """Content hash (16 hex digits) of a file, e.g. a words.txt."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def write_id(path, value):
    """Record an id in a one-line file (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(f"{value}\n")


def read_id(path):
    """The id recorded in ``path``; None when there is none (an artefact from before it)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def check_same(a_what, a_id, b_what, b_id, what, why):
    """UserError unless two ids of the kind ``what`` agree (either None: nothing to compare)."""
    if a_id is not None and b_id is not None and a_id != b_id:
        raise UserError(f"{a_what} ({what} {a_id}) and {b_what} ({what} {b_id}) differ: {why}")
