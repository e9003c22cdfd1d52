"""Entry point of a tracked job: ``python -m core.manager.worker --runs-dir DIR --spec RUN/jobs/NNNN/spec.json``.

Reads its spec, beats its heartbeat, does the stage's work (``stages.work``, or the whole pipeline for a
detached run), records what it produced (with sha256) and its final status and exit code: 0 succeeded, 130
killed (SIGINT/SIGTERM: training checkpoints first), otherwise failed (the error line, or a traceback for an
unexpected failure, is in the job's log). A stage's job writes its books to its journal (``journal``), never
to the store; only the orchestrator (a ``pipeline`` job) owns the store.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path


def _interrupt(signum, frame):
    from core.errors import Stopped

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # stopping already: the server's death adds nothing
    raise Stopped(signum)


def _die_with_launcher() -> None:
    """A torchrun rank (a DDP job: stage 1 or the control on several slots) runs in a session of its own, out of
    reach of the signals sent to its job's process group. torchrun passes a stop on to it; if torchrun itself
    dies unannounced (SIGKILL, a crash), the kernel kills the rank too (Linux's parent-death signal), so that
    no rank trains on, unseen, beside the job that resumes it."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def main(argv=None) -> int:
    _die_with_launcher()
    ap = argparse.ArgumentParser(prog="python -m core.manager.worker")
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--spec", required=True, help="the job's spec.json (in its folder, beside its journal)")
    a = ap.parse_args(argv)

    from core.errors import UserError
    from core.manager.jobs import Tracked
    from core.manager.journal import Journal, read_spec

    try:
        job = read_spec(a.spec)
    except (OSError, ValueError) as e:
        print(f"error: cannot read the job spec {a.spec}: {e}", flush=True)
        return 2
    if job["stage"] == "pipeline":  # the orchestrator owns the store
        from core.store import open_store

        store = open_store(a.runs_dir)
    else:
        store = Journal(Path(a.spec).parent)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # a torchrun helper process: only rank 0 keeps the books (and says how the job ended)
        try:
            _work(store, job, a, None)
        except (KeyboardInterrupt, UserError):  # a stop or an error: every rank ends the same way
            pass
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGUSR2, _interrupt)  # Slurm's warning before its time limit or a preemption
    signal.signal(signal.SIGUSR1, _interrupt)  # a forked job's server died (forked._die_with_server)
    what = job["stage"] + ("" if job["group_index"] is None else f" group {job['group_index']}")
    print(f"[job {job['id']}] {what} of run {job['run']}: pid {os.getpid()}, device {job['device']}", flush=True)
    books = Tracked(store, job["id"])
    try:
        with books as hb:
            _work(store, job, a, hb)
    except KeyboardInterrupt:
        print(f"[job {job['id']}] stopped by signal", flush=True)
    except UserError as e:
        print(f"error: {e}", flush=True)
    except Exception:  # a bug: the job fails with its traceback in the log
        traceback.print_exc()
        sys.stdout.flush()
    print(f"[job {job['id']}] {books.status} (exit {books.rc})", flush=True)
    if "LOCAL_RANK" in os.environ:  # under torchrun, which takes any other exit for a crash and prints its own
        return 0  # traceback: the job's status and exit code are in its books
    return books.rc


def _omp_policy() -> str:
    """The OpenMP wait policy this process's libgomp read at start: a forked job's is its server's, whose
    environment at exec is what /proc/self/environ holds (os.environ is the job's own)."""
    try:
        env = dict(kv.split(b"=", 1) for kv in Path("/proc/self/environ").read_bytes().split(b"\0") if b"=" in kv)
        return env.get(b"OMP_WAIT_POLICY", b"unset").decode()
    except OSError:
        return os.environ.get("OMP_WAIT_POLICY", "unset")


def _work(store, job, a, hb) -> None:
    from core.manager import stages
    from core.manager.context import WorkContext
    from core.runs import file_sha256, open_run

    run = open_run(job["run"], a.runs_dir)
    threads = os.environ.get("STEPADAPT_THREADS") or run.config["train"].get("threads")
    if job["stage"] != "pipeline":
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        if os.environ.get("RANK", "0") == "0":  # a DDP job says it once, not once per rank
            ranks = int(os.environ.get("WORLD_SIZE", "1"))
            each = " each" if ranks > 1 else ""
            print(
                f"[job {job['id']}] {torch.get_num_threads()} CPU threads{each}"
                + (f" on {ranks} ranks" if ranks > 1 else "")
                + f", OMP_WAIT_POLICY={_omp_policy()}",
                flush=True,
            )
    args = job["args"] or {}
    if job["stage"] == "pipeline":
        from core.manager.pipeline import Pipeline

        def log(line):
            print(line, flush=True)
            if hb is not None:
                hb.set(message=line[:200])

        from core.runs import run_lock

        with run_lock(run, f"its pipeline, job {job['id']}", wait=10.0):  # one writer per run
            only = {"stages": tuple(args["stages"])} if args.get("stages") else {}
            Pipeline(
                run, store, args["slots"], grace=args.get("grace", 10.0), log=log, cores=args.get("cores"), **only
            ).execute()
        return
    from core.training.devices import init_distributed, pick_device

    device = init_distributed() or pick_device(args.get("device", "auto"))  # torchrun: this rank's GPU
    ctx = WorkContext(run, store, job, device, hb or _NoBeat(), log=lambda s: print(s, flush=True))
    stages.work(ctx)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for path, kind in ctx.artifacts:
        path = Path(path)
        if path.exists():
            store.add_artifact(
                {
                    "run": run.name,
                    "job": job["id"],
                    "path": str(path.relative_to(run.path)),
                    "kind": kind,
                    "sha256": file_sha256(path),
                    "bytes": path.stat().st_size,
                }
            )


class _NoBeat:
    def set(self, **kw):
        pass


if __name__ == "__main__":
    sys.exit(main())
