"""A job's books as files in its own folder, so that a job never opens the SQLite store.

    RUN/jobs/NNNN/spec.json      what to do: {"id", "run", "stage", "group_index", "args", "device"}; the
                                 launcher writes it, the worker reads it instead of its row in the store
    RUN/jobs/NNNN/journal.jsonl  what happened: append-only, one JSON record per line (below)

Why: on a cluster the compute nodes share the runs folder over a network filesystem, where SQLite's WAL mode
does not work and its locks are unreliable. So a job (local or on Slurm: one code path) only appends to its
journal, and the process that owns the store - the orchestrator, or any CLI/TUI command through
``jobs.reconcile`` - ingests it: the records after the job's ``journal_offset`` are applied together with the
new offset in one write transaction, so every record lands exactly once even when two processes ingest at the
same moment. A last line without its newline (a write in progress) waits for the next ingest.

Records, ``{"k": kind, ...}``:

    job       fields: columns of the job's row (pid, proc_start, host, status, started, heartbeat, progress,
              total, message)
    finish    status, exit_code, message: the job's final status (the first final status wins, as in the store)
    metrics   rows: training values (``Store.log_metrics``)
    drop      run, stage, group, step: a resumed job forgets the values logged after its checkpoint
    call      id, row: an LLM call; ``id`` numbers the job's calls (its rounds refer to it)
    call_set  id, fields: set on a call recorded earlier
    round     row: a proxy round; its ``call_id`` is a call's ``id`` in this journal
    artifact  row: a file the job produced
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional

from core.errors import UserError
from core.names import JOB_ACTIVE

SPEC, JOURNAL = "spec.json", "journal.jsonl"


# -- the job's side ------------------------------------------------------------------------------------------
class Journal:
    """The writer methods of ``store.Store`` that a job uses, appending records instead (thread-safe: the
    heartbeat thread shares it)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / JOURNAL
        self._lock = threading.Lock()
        self._calls = 0

    def _append(self, rec: dict) -> None:
        line = json.dumps(rec, default=str) + "\n"
        with self._lock, open(self.path, "a") as f:  # open-append-close: visible to other machines on NFS
            f.write(line)

    def for_thread(self) -> "Journal":
        return self

    def update_job(self, job_id: int, **fields) -> None:
        self._append({"k": "job", "fields": fields})

    def finish_job(self, job_id: int, status: str, exit_code: Optional[int], message: Optional[str] = None) -> bool:
        self._append({"k": "finish", "status": status, "exit_code": exit_code, "message": message})
        return True

    def log_metrics(self, rows: list[dict]) -> None:
        self._append({"k": "metrics", "rows": rows})

    def drop_metrics_after(self, run: str, stage: str, group: Optional[int], step: int) -> Optional[int]:
        self._append({"k": "drop", "run": run, "stage": stage, "group": group, "step": step})
        return None  # counted when ingested

    def log_call(self, row: dict) -> int:
        with self._lock:
            self._calls += 1
            cid = self._calls
        self._append({"k": "call", "id": cid, "row": row})
        return cid

    def update_call(self, call_id: int, **fields) -> None:
        self._append({"k": "call_set", "id": call_id, "fields": fields})

    def log_round(self, row: dict) -> None:
        self._append({"k": "round", "row": row})

    def add_artifact(self, row: dict) -> None:
        self._append({"k": "artifact", "row": row})


def write_spec(folder: Path, spec: dict) -> Path:
    from core.runs import atomic_write_json

    path = Path(folder) / SPEC
    atomic_write_json(spec, path)
    return path


def read_spec(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def prepare_job(store, run, stage: str, group: Optional[int], args: Optional[dict], device: Optional[str],
                launcher: str) -> tuple[int, Path, Path]:
    """The job's row, its folder with its spec, and its log path: (job id, spec path, log path)."""
    job_id = store.add_job({"run": run.name, "stage": stage, "group_index": group, "args": args or {},
                            "device": device, "launcher": launcher, "journal_offset": 0})
    log_path = run.job_log(job_id, stage, group)
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        spec = write_spec(run.job_dir(job_id), {"id": job_id, "run": run.name, "stage": stage, "group_index": group,
                                                "args": args or {}, "device": device})
    except (OSError, UserError) as e:
        store.finish_job(job_id, "failed", None, f"cannot write the job's folder: {e}")
        raise UserError(f"cannot write job {job_id}'s folder in {run.path}: {e}") from None
    return job_id, spec, log_path


def worker_args(run, spec: Path) -> list[str]:
    return ["-m", "core.manager.worker", "--runs-dir", str(run.path.parent.resolve()), "--spec", str(spec.resolve())]


# -- the owner's side ----------------------------------------------------------------------------------------
def read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    """The complete records after byte ``offset`` and the offset after the last of them."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    recs = []
    for line in data[:end].splitlines():
        try:
            recs.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a line a crash garbled: skipped, never retried
    return recs, offset + end


def journal_path(store, job: dict) -> Path:
    """Where job ``job`` (a row of the store) appends its records: in its run's folder beside the store."""
    from core.runs import Run

    return Run(store.path.parent / job["run"]).job_dir(job["id"]) / JOURNAL


def ingest(store, job: dict) -> int:
    """Apply the job's new journal records to the store, exactly once; returns how many."""
    path = journal_path(store, job)
    try:
        if path.stat().st_size <= (job.get("journal_offset") or 0):
            return 0
    except OSError:
        return 0
    with store.transaction():
        offset = store.db.conn.execute("select journal_offset from jobs where id = ?", [job["id"]]).fetchone()
        recs, end = read_new(path, (offset[0] if offset else 0) or 0)
        for rec in recs:
            _apply(store, job, rec)
        store.db.conn.execute("update jobs set journal_offset = ? where id = ?", [end, job["id"]])
    return len(recs)


def ingest_active(store, run: Optional[str] = None) -> int:
    """Ingest every unfinished job's journal (of ``run``, or of all runs)."""
    return sum(ingest(store, j) for j in store.jobs(run, active=True))


def _apply(store, job: dict, rec: dict) -> None:
    kind = rec.get("k")
    if kind == "job":
        fields = {k: v for k, v in rec["fields"].items() if k in _JOB_FIELDS}
        if "status" in fields and store.job(job["id"])["status"] not in JOB_ACTIVE:
            del fields["status"]  # the owner gave it a final status meanwhile (killed, lost): that stands
        if fields:
            store.update_job(job["id"], **fields)
    elif kind == "finish":
        store.finish_job(job["id"], rec["status"], rec.get("exit_code"), rec.get("message"))
    elif kind == "metrics":
        store.log_metrics(rec["rows"])
    elif kind == "drop":
        store.drop_metrics_after(rec["run"], rec["stage"], rec["group"], rec["step"])
    elif kind == "call":
        store.log_call({**rec["row"], "job": job["id"], "local_id": rec["id"]})
    elif kind == "call_set":
        real = _call_id(store, job["id"], rec["id"])
        if real is not None:
            store.update_call(real, **rec["fields"])
    elif kind == "round":
        row = dict(rec["row"])
        if row.get("call_id") is not None:
            row["call_id"] = _call_id(store, job["id"], row["call_id"])
        store.log_round(row)
    elif kind == "artifact":
        store.add_artifact(rec["row"])


_JOB_FIELDS = {"pid", "proc_start", "host", "status", "started", "heartbeat", "progress", "total", "message"}


def _call_id(store, job_id: int, local: int) -> Optional[int]:
    row = store.db.conn.execute("select id from llm_calls where job = ? and local_id = ?", [job_id, local]).fetchone()
    return row[0] if row else None
