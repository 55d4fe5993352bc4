"""Parallel jobs with one log file per job, as Kaldi's ``run.pl`` / ``queue.pl`` give.

``run_jobs(fn, job_args, nj, log_dir, name)`` runs ``fn(*args)`` for every entry of ``job_args``
in ``nj`` worker processes, writes ``log_dir/<name>.<job>.log`` for each (the job's stdout,
stderr and traceback), shows one progress bar over finished jobs, and raises a UserError if
any job fails: a job's own UserError (bad input it found) comes back as that message, prefixed
by the job and its log; a job that crashed (any other exception, or a process that died) has
the last lines of its log printed before the error. With ``nj == 1`` jobs run in-process
(easier to debug and to profile), still logging to their files.

Worker processes die with their parent (Linux PR_SET_PDEATHSIG): a killed run leaves no jobs
behind that would go on writing into the logs of its rerun.

``launcher`` sends the same jobs to a cluster instead, one array task per job, through
submitit: ``"slurm[:key=value,...]"`` (a Slurm job array; keys are submitit's, e.g.
``partition=gpu,gpus_per_node=1,cpus_per_task=8,mem_gb=32,timeout_min=1440``) or
``"submitit-local"`` (submitit's local executor: the same code path as processes on this
machine). Each task runs ``fn`` exactly as a local job does (the same log file); a task that
fails or is killed by the scheduler is named with its log and submitit's stderr file.

Parallel jobs run single-threaded (torch and numpy's OpenBLAS) unless told otherwise: ``nj``
processes already fill the cores, and idle library threads spinning beside them cost several
times the CPU time for no gain (measured: a GMM realignment pass 5-7 s of CPU with threads,
1.4 s without).
"""

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import functools
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback

from tqdm import tqdm

from asrkd.errors import DISK_FULL, UserError


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
    """Run one job into its log: (True, result), (False, ("user", message)) for a UserError,
    (False, ("disk", (errno, strerror, filename))) for a full disk, or (False, ("crash", last
    line of the traceback))."""
    fn, args, log_path, threads = payload
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"# {fn.__module__}.{fn.__qualname__}\n")
        log.flush()
        try:
            if threads:
                # torch only for a job that sets its threads: this module is on the CLI's
                # start-up path (die_with_parent) and runs torch-free jobs (synth-corpus)
                import torch

                torch.set_num_threads(threads)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                    (single_threaded_blas() if threads == 1 else contextlib.nullcontext()):
                result = fn(*args)
            log.write("# finished ok\n")
            return True, result
        except (KeyboardInterrupt, SystemExit) as e:
            log.write("# interrupted\n")
            if _IN_WORKER:  # the executor would keep a worker alive past a SystemExit
                log.flush()
                os._exit(e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1)
            raise
        except UserError as e:
            log.write(f"error: {e}\n# failed\n")
            return False, ("user", str(e))
        except BaseException as e:  # noqa: BLE001 - reported through the log
            if isinstance(e, OSError) and e.errno in DISK_FULL:
                # not the job's fault: the parent raises it again (_raise_failed), and the
                # log (on that disk too) may not take more
                with contextlib.suppress(OSError):
                    log.write(f"error: {e}\n# failed\n")
                return False, ("disk", (e.errno, e.strerror, e.filename))
            log.write(traceback.format_exc())
            log.write("# failed\n")
            return False, ("crash", f"{type(e).__name__}: {e}".splitlines()[0])


_IN_WORKER = False


def _worker_init(parent):
    """Pool initializer: a worker dies with its parent, and SIGTERM (from the dying parent or
    its clean-up) unwinds it, so the job's temporary files are removed on the way out. Ctrl-C
    is left to the parent, which stops its workers."""
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def die_with_parent(parent):
    """Have the kernel send SIGTERM to this process when its parent (pid ``parent``) dies
    (Linux PR_SET_PDEATHSIG; elsewhere nothing is done)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def log_tail(path, n=10):
    """The last ``n`` lines of a log file (what a crashed job printed last)."""
    try:
        with open(path, errors="replace") as f:
            return f.readlines()[-n:]
    except OSError:
        return []


LAUNCHERS = ("local", "submitit-local", "slurm")
# submitit's cluster-independent parameters; any other key is a Slurm one (slurm_<key>)
_GENERIC = {"timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node",
            "tasks_per_node", "stderr_to_stdout", "name"}


def parse_launcher(spec):
    """``"local"``, ``"submitit-local"`` or ``"slurm[:k=v,...]"`` -> (kind, submitit params)."""
    kind, _, rest = (spec or "local").partition(":")
    if kind not in LAUNCHERS:
        raise UserError(f"unknown launcher {spec!r}; use local, submitit-local or "
                        "slurm[:key=value,...]")
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"launcher {spec!r}: {item!r} is not key=value")
        key = key.strip().replace("-", "_")
        if kind == "slurm" and key not in _GENERIC and not key.startswith("slurm_"):
            key = "slurm_" + key
        params[key] = int(value) if value.isdigit() else value
    if params and kind != "slurm":
        raise UserError(f"launcher {spec!r}: only slurm takes parameters")
    return kind, params


def run_jobs(fn, job_args, nj, log_dir, name, desc=None, threads_per_job=None, launcher="local",
             job_ids=None):
    """Run ``fn(*a)`` for each ``a`` in ``job_args`` on ``nj`` processes; return results in order.

    ``threads_per_job``: torch threads of each job (1 also limits OpenBLAS to one thread);
    default 1 when jobs run in parallel, untouched when they run in-process.
    ``launcher``: see the module docstring (``nj`` then does not apply: the scheduler decides
    how many tasks run at once). ``job_ids``: the numbers in the log names (default 1..N).
    """
    job_args = [tuple(a) for a in job_args]
    job_ids = list(job_ids) if job_ids is not None else list(range(1, len(job_args) + 1))
    if len(job_ids) != len(job_args):
        raise ValueError("job_ids and job_args differ in length")
    kind, params = parse_launcher(launcher)
    if threads_per_job is None and (kind != "local" or (nj > 1 and len(job_args) > 1)):
        threads_per_job = int(params.get("cpus_per_task", 1))
    payloads = [
        (fn, a, os.path.join(log_dir, f"{name}.{i}.log"), threads_per_job)
        for i, a in zip(job_ids, job_args)
    ]
    desc = desc or name
    if kind != "local":
        return _run_submitit(payloads, kind, params, log_dir, name, desc)
    results = [None] * len(payloads)
    failed = {}  # job index -> (kind, message)
    bar = tqdm(total=len(payloads), desc=desc, unit="job", file=sys.stderr, disable=None)
    if nj <= 1 or len(payloads) <= 1:
        for i, p in enumerate(payloads):
            ok, results[i] = _run_one(p)
            if not ok:
                failed[i], results[i] = results[i], None
            bar.update(1)
    else:
        _run_pool(payloads, min(nj, len(payloads)), results, failed, bar)
    bar.close()
    if failed:
        _raise_failed(failed, payloads, name)
    return results


def _run_pool(payloads, workers, results, failed, bar):
    ex = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=mp.get_context("fork"), initializer=_worker_init,
        initargs=(os.getpid(),))
    try:
        futures = {ex.submit(_run_one, p): i for i, p in enumerate(payloads)}
        for fut in concurrent.futures.as_completed(futures):
            i = futures[fut]
            try:
                ok, res = fut.result()
            except concurrent.futures.process.BrokenProcessPool:
                # a worker was killed (signal, out of memory): every unfinished job lands here
                ok, res = False, ("died", "the job's process died")
            if ok:
                results[i] = res
            else:
                failed[i] = res
            bar.update(1)
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM through the CLI): stop the workers now, not at exit
        # (the executor has no public way to reach its processes)
        for p in list((ex._processes or {}).values()):
            with contextlib.suppress(Exception):
                p.terminate()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def _run_submitit(payloads, kind, params, log_dir, name, desc):
    """The payloads as one submitit job array; results in order, or a UserError naming the
    failed tasks' logs."""
    try:
        import submitit
    except ImportError:
        raise UserError("launcher needs submitit (pip install submitit)") from None
    folder = os.path.join(os.path.abspath(log_dir), "submitit")
    executor = submitit.AutoExecutor(folder=folder,
                                     cluster="local" if kind == "submitit-local" else "slurm")
    executor.update_parameters(name=f"asrkd-{name}", **params)
    with executor.batch():
        jobs = [executor.submit(_run_one, p) for p in payloads]
    print(f"{desc}: {len(jobs)} tasks submitted ({kind}), job ids "
          f"{', '.join(str(j.job_id) for j in jobs)}; submitit logs in {folder}", file=sys.stderr)
    bar = tqdm(total=len(jobs), desc=desc, unit="job", file=sys.stderr, disable=None)
    pending = set(range(len(jobs)))
    while pending:
        finished = {i for i in pending if jobs[i].done()}
        bar.update(len(finished))
        pending -= finished
        if pending:
            time.sleep(0.5 if kind == "submitit-local" else 5)
    bar.close()
    results, failed = [None] * len(jobs), []
    for i, job in enumerate(jobs):
        try:
            ok, results[i] = job.result()
        except Exception as e:  # noqa: BLE001 - killed, timed out, node failure: reported below
            ok = False
            with contextlib.suppress(OSError), open(payloads[i][2], "a") as log:
                log.write(f"# task {job.job_id} did not finish: {str(e).splitlines()[0]}\n")
        if not ok:
            failed.append(f"{payloads[i][2]} (task {job.job_id}, {job.paths.stderr})")
    if failed:
        raise UserError(f"{len(failed)} of {len(jobs)} {name} tasks failed; see "
                        + ", ".join(failed))
    return results


def _raise_failed(failed, payloads, name):
    n = len(payloads)
    disk = [i for i in sorted(failed) if failed[i][0] == "disk"]
    if disk:  # the CLI's one line for a full disk, naming the file
        raise OSError(*failed[disk[0]][1])
    user = [i for i in sorted(failed) if failed[i][0] == "user"]
    more = f" ({len(failed) - 1} more {name} jobs failed)" if len(failed) > 1 else ""
    if user:
        i = user[0]
        raise UserError(f"{failed[i][1]} [{name} job {i + 1} of {n}, log "
                        f"{payloads[i][2]}]{more}")
    # A dead worker fails every job that had not finished; the one that died is among those
    # whose log was started but has no end marker.
    crashed = [i for i in sorted(failed) if failed[i][0] == "crash"]
    if not crashed:
        crashed = [i for i in sorted(failed) if os.path.isfile(payloads[i][2])
                   and not _ended(payloads[i][2])] or sorted(failed)
    i = crashed[0]
    log = payloads[i][2]
    print(f"--- last lines of {log} ---", file=sys.stderr)
    sys.stderr.writelines(log_tail(log))
    print("---", file=sys.stderr)
    raise UserError(f"{len(failed)} of {n} {name} jobs failed; job {i + 1}: {failed[i][1]} "
                    f"(its log {log} ends as printed above)")


def _ended(log):
    tail = log_tail(log, 1)
    return bool(tail) and tail[-1].startswith(("# finished ok", "# failed"))


def fixed_mmap_threshold(nbytes=128 << 10):
    """Allocations above ``nbytes`` get their own mapping, returned to the system when freed.

    glibc raises its mmap threshold to the largest block freed so far (up to 32 MB), after
    which per-utterance temporaries (a (T, pdfs) matrix is megabytes) come from the heap, and
    the heap, fragmented by longer-lived arrays, only grows: measured, a soft-target job's
    heap reached 270 MB where 110 MB was live. Fixing the threshold keeps memory bounded by
    the work in hand, not by how much was done before. A no-op outside glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD (also fixes it: no dynamic raise)
    except (OSError, AttributeError):
        pass


def _openblas():
    """numpy's OpenBLAS (ctypes handle, symbol suffix), or None where not found."""
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
