"""Kaldi text tables (``key value...`` per line) and Kaldi ark/scp archives, written atomically.

Every writer here writes to a temporary name in the same directory and renames it into place,
so a killed run never leaves a half-written file that a rerun would trust.
"""

import collections.abc
import contextlib
import json
import os
import tempfile

import kaldiio
import numpy as np

from asrkd.errors import reading


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    # mkstemp makes the file 0600; the renamed file gets the mode open() would have given it
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno:
            # a failed write (a full disk) names no file: name the one being written
            raise OSError(e.errno, e.strerror, path) from e
        raise


def invalidate(*paths):
    """Remove the files that declare a directory whole (a store's meta.json, a manifest) before
    an overwrite of the directory starts, so that a killed overwrite reads as unfinished, never
    as the old whole over a mix of old and new parts. The writer writes them again last."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def save_npy(path, array):
    """np.save ``array`` to ``path`` atomically. Written through Python's file writes, not
    numpy's tofile, whose short write (a full disk) raises an OSError without its errno."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(_PlainWriter(f), array)


class _PlainWriter:
    def __init__(self, f):
        self.write = f.write


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def read_table(path, multi=False):
    """Read a Kaldi table file into a dict, keeping file order.

    ``multi=False``: value is the rest of the line (a string, possibly empty).
    ``multi=True``: value is the list of whitespace-separated fields.
    Raises ValueError naming the file and line on a duplicate key.
    """
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            key = parts[0]
            rest = parts[1].strip() if len(parts) > 1 else ""
            if key in out:
                raise ValueError(f"{path}:{n}: duplicate key {key!r}")
            out[key] = rest.split() if multi else rest
    return out


def write_table(path, table, sort=True):
    """Write a dict as a Kaldi table (values: str, or a list joined by spaces), sorted by key."""
    keys = sorted(table) if sort else list(table)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for k in keys:
            v = table[k]
            if isinstance(v, (list, tuple)):
                v = " ".join(str(x) for x in v)
            f.write(f"{k} {v}\n" if v != "" else f"{k}\n")


class ArkWriter:
    """Write (key, numpy array) pairs to ``ark_path`` + ``scp_path`` atomically.

    Both files appear only when the writer closes without error. Float matrices are written as
    Kaldi float matrices, 1-D integer arrays as Kaldi int32 vectors (alignments), via kaldiio.
    """

    def __init__(self, ark_path, scp_path):
        self.ark_path, self.scp_path = os.fspath(ark_path), os.fspath(scp_path)
        self._ark_ctx = atomic_path(self.ark_path)
        self._scp_ctx = atomic_path(self.scp_path)
        self._tmp_ark = self._ark_ctx.__enter__()
        self._tmp_scp = self._scp_ctx.__enter__()
        self._ark = open(self._tmp_ark, "wb")
        self._scp_lines = []

    def __setitem__(self, key, array):
        array = np.asarray(array)
        if array.dtype.kind in "iu":
            array = array.astype(np.int32)
        elif array.dtype != np.float64:
            array = array.astype(np.float32)
        offset = self._ark.tell()
        kaldiio.save_ark(self._ark, {key: array})
        start = offset + len(key.encode()) + 1  # kaldiio scp offset points past "key "
        self._scp_lines.append(f"{key} {self.ark_path}:{start}\n")

    def close(self, error=None):
        self._ark.close()
        if error is None:
            with open(self._tmp_scp, "w") as f:
                f.writelines(self._scp_lines)
        args = (None, None, None) if error is None else (type(error), error, None)
        self._ark_ctx.__exit__(*args)
        self._scp_ctx.__exit__(*args)

    def __enter__(self):
        return self

    def __exit__(self, et, e, tb):
        self.close(e)
        return False


def load_mat(spec):
    """The Kaldi matrix at ``spec`` (``ark_path:offset``); a missing ark, a wrong offset or a
    truncated ark is a UserError naming it (asrkd.errors.reading)."""
    with reading(spec, "not a Kaldi matrix (a wrong offset, or a truncated or corrupt ark)"):
        return kaldiio.load_mat(spec)


def read_scp(scp_path):
    """Lazy dict-like reader of a Kaldi scp (kaldiio, memory-mapped per entry); an entry that
    cannot be read is a UserError naming it (load_mat)."""
    return _Scp(kaldiio.load_scp(os.fspath(scp_path)), os.fspath(scp_path))


class _Scp(collections.abc.Mapping):
    def __init__(self, lazy, path):
        self._lazy, self.path = lazy, path

    def __getitem__(self, key):
        with reading(f"{self.path}: {key}", "not a Kaldi matrix (a wrong offset, or a "
                     "truncated or corrupt ark)"):
            return self._lazy[key]

    def __iter__(self):
        return iter(self._lazy)

    def __len__(self):
        return len(self._lazy)

    def __contains__(self, key):
        return key in self._lazy


def write_json(path, obj, indent=2, sort_keys=True):
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")

