"""Errors that reach the user as one line (no traceback) from the `asrkd` command, and
``reading``: the one way a reader turns what a corrupt, truncated or misplaced file raises into
such a line."""

import contextlib
import errno
import os
import struct

# A full disk, a full quota, or a file size limit: the run cannot go on, and it is not a bug.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

# what readers (kaldiio, numpy, yaml, lhotse) raise on a file that is not what it should be
CORRUPT = (ValueError, EOFError, KeyError, IndexError, struct.error)


class UserError(Exception):
    """Bad input or a precondition a user can fix: the CLI prints the message and exits 1."""


class DataDirError(UserError):
    """A Kaldi data dir is missing files or is inconsistent."""


@contextlib.contextmanager
def reading(path, what, errors=CORRUPT):
    """Run a read of ``path``; what it raises for a corrupt or truncated file (``errors``)
    becomes a UserError "PATH: WHAT (the reader's complaint)", and a missing file a UserError
    naming it (with a word on relative paths: they are relative to the directory the writer
    ran in, e.g. a scp's ark paths)."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError as e:
        name = os.fspath(e.filename or path)
        hint = "" if os.path.isabs(name) else (
            f" (a relative path: relative to the directory the writer ran in, not "
            f"{os.getcwd()}; run from there, or write with absolute paths)")
        named = f", named by {path}" if os.fspath(path) != name else ""
        raise UserError(f"{name}: no such file{named}{hint}") from None
    except errors as e:
        said = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path}: {what} ({type(e).__name__}: {said})") from None
