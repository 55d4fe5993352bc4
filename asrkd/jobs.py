"""Parallel jobs with one log file per job, as Kaldi's ``run.pl`` / ``queue.pl`` give.

``run_jobs(fn, job_args, nj, log_dir, name)`` runs ``fn(*args)`` for every entry of ``job_args``
in ``nj`` worker processes, writes ``log_dir/<name>.<job>.log`` for each (the job's stdout,
stderr and traceback), shows one progress bar over finished jobs, and raises a UserError naming
the failed jobs and their logs if any job fails. With ``nj == 1`` jobs run in-process (easier
to debug and to profile), still logging to their files.

Parallel jobs run single-threaded (torch and numpy's OpenBLAS) unless told otherwise: ``nj``
processes already fill the cores, and idle library threads spinning beside them cost several
times the CPU time for no gain (measured: a GMM realignment pass 5-7 s of CPU with threads,
1.4 s without).
"""

import contextlib
import functools
import multiprocessing as mp
import os
import sys
import traceback

from tqdm import tqdm

from asrkd.errors import UserError


def split_evenly(items, n):
    """Split a list into ``n`` contiguous chunks of near-equal length (some may be empty)."""
    items = list(items)
    n = max(1, n)
    k, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out


def _run_one(payload):
    fn, args, log_path, threads = payload
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"# {fn.__module__}.{fn.__qualname__}\n")
        log.flush()
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                    (single_threaded_blas() if threads == 1 else contextlib.nullcontext()):
                result = fn(*args)
            log.write("# finished ok\n")
            return True, result
        except BaseException:  # noqa: BLE001 - reported through the log
            log.write(traceback.format_exc())
            log.write("# failed\n")
            return False, None


def run_jobs(fn, job_args, nj, log_dir, name, desc=None, threads_per_job=None):
    """Run ``fn(*a)`` for each ``a`` in ``job_args`` on ``nj`` processes; return results in order.

    ``threads_per_job``: torch threads of each job (1 also limits OpenBLAS to one thread);
    default 1 when jobs run in parallel, untouched when they run in-process.
    """
    job_args = [tuple(a) for a in job_args]
    if threads_per_job is None and nj > 1 and len(job_args) > 1:
        threads_per_job = 1
    payloads = [
        (fn, a, os.path.join(log_dir, f"{name}.{i + 1}.log"), threads_per_job)
        for i, a in enumerate(job_args)
    ]
    desc = desc or name
    results = [None] * len(payloads)
    failed = []
    bar = tqdm(total=len(payloads), desc=desc, unit="job", file=sys.stderr, disable=None)
    if nj <= 1 or len(payloads) <= 1:
        for i, p in enumerate(payloads):
            ok, results[i] = _run_one(p)
            if not ok:
                failed.append(i)
            bar.update(1)
    else:
        ctx = mp.get_context("fork")
        with ctx.Pool(min(nj, len(payloads))) as pool:
            for i, (ok, res) in _imap_indexed(pool, payloads):
                results[i] = res
                if not ok:
                    failed.append(i)
                bar.update(1)
    bar.close()
    if failed:
        logs = ", ".join(payloads[i][2] for i in sorted(failed))
        raise UserError(f"{len(failed)} of {len(payloads)} {name} jobs failed; see {logs}")
    return results


def _imap_indexed(pool, payloads):
    it = pool.imap_unordered(_indexed, list(enumerate(payloads)))
    yield from it


def _indexed(ip):
    i, p = ip
    return i, _run_one(p)


def _openblas():
    """numpy's OpenBLAS (ctypes handle, symbol suffix), or None where not found."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            if hasattr(lib, f"{prefix}_set_num_threads{suffix}"):
                return lib, prefix, suffix
    return None


class single_threaded_blas:
    """Context manager: numpy's OpenBLAS runs 1 thread inside (restored on exit).

    Our products are small (a few thousand Gaussians x one utterance); OpenBLAS threads on
    them cost 3-5x the CPU time (spinning, worse with nj jobs already filling the cores) for
    no wall-clock gain. Forked jobs inherit the setting."""

    def __enter__(self):
        self.handle, self.prev = _openblas(), None
        if self.handle:
            lib, prefix, suffix = self.handle
            self.prev = getattr(lib, f"{prefix}_get_num_threads{suffix}")()
            getattr(lib, f"{prefix}_set_num_threads{suffix}")(1)
        return self

    def __exit__(self, *exc):
        if self.handle and self.prev:
            lib, prefix, suffix = self.handle
            getattr(lib, f"{prefix}_set_num_threads{suffix}")(int(self.prev))
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with single_threaded_blas():
                return fn(*args, **kwargs)
        return wrapped
