"""The experiment lock: one writer per output directory.

Every verb that writes a model, a store or a data dir into a directory holds ``DIR/.asrkd.lock``
while it runs (asrkd.cli takes it; ``LOCKED`` there names each verb's output), and the recipes
hold one on their ``exp`` dir (``python -m asrkd.lock DIR --pid $$`` in recipes/lib.sh). The
file holds the owner's pid, host and command. A second writer gets one clear line naming the
owner; a lock whose owner is gone (its pid no longer runs on this host) is taken over with a
note. The file is created with O_EXCL, so of two writers started together exactly one wins.

A run's own workers do not lock again: the directories a process holds are passed to its
children in ``ASRKD_LOCKS`` (forked jobs, Slurm tasks, the recipe's commands), and under
torchrun only rank 0 locks.
"""

import argparse
import contextlib
import os
import socket
import sys
import time

from asrkd.errors import UserError

LOCK_NAME = ".asrkd.lock"
ENV = "ASRKD_LOCKS"  # os.pathsep-separated dirs whose locks this process's parents hold


def lock_path(directory):
    return os.path.join(os.path.realpath(directory), LOCK_NAME)


def _inherited(directory):
    held = os.environ.get(ENV, "")
    return os.path.realpath(directory) in held.split(os.pathsep) if held else False


def _read_owner(path):
    """(pid, host, what) of the lock at ``path``; None when it is gone; retries a lock that is
    being written (created, not yet filled)."""
    for _ in range(20):
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        parts = text.split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit():
            return int(parts[0]), parts[1], (parts[2].strip() if len(parts) > 2 else "")
        time.sleep(0.05)
    return 0, "", ""  # unreadable: treated as stale


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def acquire(directory, pid=None, what=""):
    """Create ``directory``'s lock for ``pid`` (default this process); return its path, or
    None when a parent already holds it. UserError naming the owner if another run holds it."""
    if _inherited(directory) or os.environ.get("RANK", "0") != "0":
        return None
    os.makedirs(directory, exist_ok=True)
    path, host = lock_path(directory), socket.gethostname()
    pid = os.getpid() if pid is None else pid
    for _ in range(10):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            owner = _read_owner(path)
            if owner is None:
                continue  # released meanwhile
            opid, ohost, owhat = owner
            if opid == pid and ohost == host:
                return None  # ours already (a recipe's shell)
            if ohost and ohost != host or _alive(opid):
                cmd = f" ({owhat})" if owhat else ""
                raise UserError(f"{os.path.realpath(directory)} is in use by another run: pid "
                                f"{opid} on {ohost}{cmd}; wait for it to end or write elsewhere "
                                f"(remove {path} only if that run is gone)")
            print(f"asrkd: note: {path}: taking over the lock of pid {opid} on {ohost}, which "
                  "is no longer running", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid} {host} {what}\n")
        return path
    raise UserError(f"{path}: could not take the lock (other runs keep taking it)")


def release(path, pid=None):
    """Remove the lock at ``path`` if ``pid`` (default this process) still owns it."""
    owner = _read_owner(path) if path else None
    if owner and owner[0] == (os.getpid() if pid is None else pid):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def locked(directory, what=""):
    """Hold ``directory``'s lock for the block; its children inherit it (ASRKD_LOCKS)."""
    path = acquire(directory, what=what)
    old = os.environ.get(ENV)
    if path:
        os.environ[ENV] = os.pathsep.join(filter(None, [os.path.dirname(path), old]))
    try:
        yield path
    finally:
        if path:
            if old is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = old
            release(path)


def main(argv=None):
    """``python -m asrkd.lock DIR --pid PID`` (the recipes): take DIR's lock for PID, print the
    lock's path; ``--release`` removes it again. Exit 1 with one line if another run holds it."""
    p = argparse.ArgumentParser(prog="python -m asrkd.lock")
    p.add_argument("directory")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--what", default="recipe")
    p.add_argument("--release", action="store_true")
    args = p.parse_args(argv)
    if args.release:
        release(lock_path(args.directory), args.pid)
        return 0
    try:
        acquire(args.directory, args.pid, args.what)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(os.path.dirname(lock_path(args.directory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
