"""Errors that reach the user as one line (no traceback) from the `asrkd` command."""


class UserError(Exception):
    """Bad input or a precondition a user can fix: the CLI prints the message and exits 1."""


class DataDirError(UserError):
    """A Kaldi data dir is missing files or is inconsistent."""
