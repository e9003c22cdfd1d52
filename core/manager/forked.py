"""Local jobs forked from a pre-started worker instead of started as new Python processes.

Every job used to be a new interpreter that imported torch before doing anything (2.5-3 s here, more than
many prune or assemble jobs take). The orchestrator now starts one server process with torch and the stage
code imported (``multiprocessing``'s forkserver, with those modules preloaded), and each job is a fork of
it: a new process in its own session, its output in its log, its own environment (threads, the job's
no-store flag, visible GPUs), running the same worker entry point (``worker.main``) as a job started on its
own. The server exits with the orchestrator, and its jobs with it: each job gets SIGUSR1 when the server dies
(Linux's parent-death signal), so training checkpoints and stops instead of running on as an orphan that
nobody ingests while ``resume`` starts another trainer on the same checkpoint.

The server never touches a GPU, so a job's ``CUDA_VISIBLE_DEVICES`` holds (CUDA starts in the job). OpenMP
read ``OMP_NUM_THREADS`` when the server imported torch, so a job's thread count is set by the worker with
``torch.set_num_threads`` (from ``STEPADAPT_THREADS``), as it was for a new process. Its wait policy
(``OMP_ENV``) cannot be set after that, so the server is started with it.
``STEPADAPT_FORKSERVER=0`` starts each job as its own interpreter again.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import subprocess
import sys
from typing import Optional

from core.manager.procs import pid_alive, proc_start

# not core.manager.worker: the orchestrator runs it as ``-m``, so each forked child executes it again as its
# ``__mp_main__`` (multiprocessing's main-module fixup), and runpy warns when it was imported before
PRELOAD = [
    "torch",
    # every optimizer's first step imports torch._dynamo (torch.optim's _disable_dynamo): 1.3 s per training job
    "torch._dynamo",
    "core.manager.stages",
    "core.training.loop",
    "core.method.prune",
    "core.method.artifacts",
    "core.model.diffusion",
    "core.model.unet",
]

# OpenMP threads sleep at barriers instead of spinning: idle, a step takes ~1.25x as long; beside any other busy
# process a spinning job ran 3.7-9x slower (bench/omp_wait.py). A value the user set is kept.
OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

_context: Optional[multiprocessing.context.BaseContext] = None


def enabled() -> bool:
    return (
        os.environ.get("STEPADAPT_FORKSERVER", "1") != "0" and "forkserver" in multiprocessing.get_all_start_methods()
    )


def _ctx():
    global _context
    if _context is None:
        for key, val in OMP_ENV.items():  # the server's libgomp reads it once, when the server imports torch
            os.environ.setdefault(key, val)
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


class ForkedJob:
    """A forked job with the ``Popen`` calls the orchestrator makes (pid, poll, wait)."""

    def __init__(self, proc):
        self.proc, self.pid = proc, proc.pid
        self.started = proc_start(proc.pid)  # a reused pid is not this job

    def poll(self) -> Optional[int]:
        """None while the job's process lives, else its exit code (negative: killed by that signal, as Popen's)."""
        code = self.proc.exitcode
        if code == 255 and pid_alive(self.pid, self.started):  # the server died and cannot say: the job has not ended
            return None
        return code

    def wait(self, timeout: Optional[float] = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired(f"job pid {self.pid}", timeout)
        return self.proc.exitcode


def start(module: str, argv: list[str], env: dict, log_path: str) -> ForkedJob:
    """Fork a job running ``module.main(argv)`` (what ``python -m module ARGV`` runs: the worker is named, as
    on a command line, not imported here) with ``env``, writing to ``log_path``."""
    proc = _ctx().Process(target=_run, args=(module, argv, env, str(log_path)), daemon=False)
    proc.start()
    return ForkedJob(proc)


def _run(module: str, argv: list[str], env: dict, log_path: str) -> None:
    """In the forked job: its own session (``kill`` signals its process group), stdout and stderr to its log,
    its environment, then the worker."""
    os.setsid()
    _die_with_server()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    sys.exit(importlib.import_module(module).main(argv))


def _die_with_server() -> None:
    """SIGUSR1 to this job when its server (its parent) dies: a stop, as ``kill`` sends (training checkpoints),
    that does not count as a second signal after one (``training.loop.StopFlag``)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGUSR1)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the server died before the signal was armed
        os._exit(1)
