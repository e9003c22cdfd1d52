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

A journal is data anyone who can write the runs folder can change: the owner checks each record (a JSON object of
a known kind, fields of their types, integers in SQLite's range, text capped), skips a bad one with a warning
naming the job and line, stamps rows with the job's run, id, stage and group, ignores records naming others, takes
a pid only for the launched process's descendants, clamps the heartbeat to its clock and hashes artifacts itself.

Records, ``{"k": kind, ...}``:

    job       fields: the job row's pid, proc_start, host, status, started, heartbeat, progress, total, message
    finish    status, exit_code, message: the job's final status (the first final status wins, as in the store)
    metrics   rows: training values (``Store.log_metrics``)
    drop      run, stage, group, step: a resumed job forgets the values logged after its checkpoint
    call      id, row: an LLM call; ``id`` numbers the job's calls (its rounds refer to it)
    call_set  id, fields: set on a call recorded earlier
    round     row: a proxy round; its ``call_id`` is a call's ``id`` in this journal
    artifact  row: a file the job produced
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from core.errors import UserError
from core.manager.procs import stat_fields
from core.names import ARTIFACT_KINDS, JOB_ACTIVE, JOB_FINAL

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


def prepare_job(
    store, run, stage: str, group: Optional[int], args: Optional[dict], device: Optional[str], launcher: str
) -> tuple[int, Path, Path]:
    """The job's row, its folder with its spec, and its log path: (job id, spec path, log path)."""
    job_id = store.add_job(
        {
            "run": run.name,
            "stage": stage,
            "group_index": group,
            "args": args or {},
            "device": device,
            "launcher": launcher,
            "journal_offset": 0,
        }
    )
    log_path = run.job_log(job_id, stage, group)
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        spec = write_spec(
            run.job_dir(job_id),
            {"id": job_id, "run": run.name, "stage": stage, "group_index": group, "args": args or {}, "device": device},
        )
    except (OSError, UserError) as e:
        store.finish_job(job_id, "failed", None, f"cannot write the job's folder: {e}")
        raise UserError(f"cannot write job {job_id}'s folder in {run.path}: {e}") from None
    return job_id, spec, log_path


def worker_args(run, spec: Path) -> list[str]:
    return ["-m", "core.manager.worker", "--runs-dir", str(run.path.parent.resolve()), "--spec", str(spec.resolve())]


# -- the owner's side ----------------------------------------------------------------------------------------
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # SQLite's integers
COUNT_MAX = 2**53  # progress and total
TEXT_MAX, LONG_TEXT = 4096, {"response_text": 256 * 1024}  # characters of a text field (of an LLM's answer)
FREE_TEXT = {"message", "reason", "validation_error", "error", "response_text"}  # cut with a marker; others refused
JSON_MAX, LINE_MAX = 1 << 20, 4 << 20  # bytes of a JSON field (messages, a plan); a longer line is skipped
READ_MAX, PASSES = 8 << 20, 64  # bytes read per pass; passes per ingest (a job that writes on cannot hold it)
FOREIGN: dict[str, int] = {}  # journal -> records ignored for naming another run, job, stage, group or process


class BadRecord(ValueError):
    """A journal record the owner skips: what is wrong with it, in a few words."""


def _regular_fd(path: Path) -> Optional[int]:
    """``path`` opened for reading if it is a regular file, not through a symlink (never a FIFO's wait); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def read_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
    """The complete lines after byte ``offset`` (up to ``READ_MAX`` bytes of them) and the offset after them. A
    full read without a newline is one overlong line: returned as it is, to be skipped."""
    fd = _regular_fd(path)
    if fd is None:
        return [], offset
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        data = f.read(READ_MAX)
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) == READ_MAX:
        return [data], offset + len(data)
    return data[:end].split(b"\n")[:-1], offset + end


def _line_number(path: Path, offset: int) -> int:
    """The number of the line that starts at byte ``offset``."""
    fd, n = _regular_fd(path), 1
    if fd is None:
        return n
    with os.fdopen(fd, "rb") as f:
        while offset > 0 and (chunk := f.read(min(offset, 1 << 20))):
            n, offset = n + chunk.count(b"\n"), offset - len(chunk)
    return n


def journal_path(store, job: dict) -> Path:
    """Where job ``job`` (a row of the store) appends its records: in its run's folder beside the store."""
    from core.runs import Run

    return Run(store.path.parent / job["run"]).job_dir(job["id"]) / JOURNAL


def ingest(store, job: dict) -> int:
    """Apply the job's new journal records to the store, exactly once; returns how many were applied. Records
    are checked and prepared (an artifact hashed) outside the write transaction, which applies them with the new
    offset unless another owner moved it meanwhile (then they are read again)."""
    path, applied = journal_path(store, job), 0
    for _ in range(PASSES):
        row = store.job(job["id"])
        start = (row or {}).get("journal_offset") or 0
        lines, end = read_lines(path, start) if row else ([], start)
        if end == start:
            return applied  # nothing new, or a line being written: the next ingest takes it
        ops, foreign = _prepare_all(row, path, start, lines)
        with store.transaction():
            now = store.db.conn.execute("select journal_offset from jobs where id = ?", [row["id"]]).fetchone()
            if ((now[0] if now else 0) or 0) != start:
                continue  # another owner ingested these lines meanwhile
            applied += sum(_apply_one(store, row, op) for op in ops)
            store.db.conn.execute("update jobs set journal_offset = ? where id = ?", [end, row["id"]])
        _note_foreign(row, str(path), foreign)
    return applied


def ingest_active(store, run: Optional[str] = None) -> int:
    """Ingest every unfinished job's journal (of ``run``, or of all runs)."""
    return sum(ingest(store, j) for j in store.jobs(run, active=True))


def warn(job: dict, text: str) -> None:
    """A warning that names ``job`` (``job 7 (run r, prune group 0)``), on the owner's stderr: a command's
    terminal, the orchestrator's log."""
    group = "" if job.get("group_index") is None else f" group {job['group_index']}"
    print(f"warning: job {job['id']} (run {job['run']}, {job['stage']}{group}): {text}", file=sys.stderr, flush=True)


def _note_foreign(job: dict, journal: str, n: int) -> None:
    """Count records that named another run, job, stage, group or process; warn once per job."""
    if n and journal not in FOREIGN:
        warn(job, f"ignored {n} journal record(s) that name another run, job, stage, group or process")
    if n:
        FOREIGN[journal] = FOREIGN.get(journal, 0) + n


def _prepare_all(job: dict, path: Path, start: int, lines: list[bytes]) -> tuple[list, int]:
    """Each line checked: (ops to apply, how many records named something else). A bad line is skipped with a
    warning naming the job and the line."""
    ops, foreign, first = [], 0, None
    for i, line in enumerate(lines):
        try:
            op, n = _prepare(job, _parse(line), path.parents[2])
        except BadRecord as e:
            first = _line_number(path, start) if first is None else first
            warn(job, f"journal line {first + i} skipped: {e}")
            continue
        foreign += n
        ops += [op] if op is not None else []
    return ops, foreign


def _apply_one(store, job: dict, op: Callable) -> int:
    """One prepared record applied in a savepoint: 1, or 0 when the store refuses it (then none of it stays)."""
    try:
        with store.db.atomic():
            op(store)
        return 1
    except (ValueError, TypeError, OverflowError, sqlite3.IntegrityError, sqlite3.InterfaceError) as e:
        # one the checks let through that the store refuses; a busy or full store (OperationalError) goes on
        warn(job, f"a journal record skipped: {str(e)[:200]}")
        return 0


def _parse(line: bytes):
    """One journal line as JSON; BadRecord when it is too long or not JSON."""
    if len(line) > LINE_MAX:
        raise BadRecord(f"longer than {LINE_MAX} bytes")
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):  # a crash's garbled line, or no JSON at all
        raise BadRecord("not JSON") from None


# -- checking a record -----------------------------------------------------------------------------------------
_METRICS = "run:str job:int stage:str group_index:int step:int key:str value:num time:num"
_CALLS = (
    "run:str job:int group_index:int session:str round:int seq:int attempt:int model_asked:str "
    "model_resolved:str messages:json params:json request_key:str source:str response_text:str parsed:json "
    "validation_error:str error:str latency_s:num prompt_tokens:int completion_tokens:int cost:num "
    "linked_call:int created:str system_fingerprint:str"
)
_ROUNDS = (
    "run:str group_index:int session:str round:int keep:json plan:json macs:int params:int loss:num "
    "accepted:int reason:str call_id:int created:str"
)
_ARTIFACTS = "run:str job:int path:str kind:str sha256:str bytes:int created:str"
_JOB = "pid:int proc_start:int host:str status:str started:str heartbeat:num progress:num total:num message:str"
_OWN = {"run": "run", "job": "id", "stage": "stage", "group_index": "group_index"}  # column -> the job row's
_KEYS = {
    "job": {"fields"},
    "finish": {"status", "?exit_code", "?message"},
    "metrics": {"rows"},
    "drop": {"run", "stage", "group", "step"},
    "call": {"id", "row"},
    "call_set": {"id", "fields"},
    "round": {"row"},
    "artifact": {"row"},
}  # a record's fields; "?": optional


def _value(kind: str, col: str, v):
    """``v`` checked as column ``col`` of type ``kind`` (None passes); free text cut at its cap."""
    if v is None:
        return None
    if kind == "json":
        if len(json.dumps(v)) > JSON_MAX:
            raise BadRecord(f"{col} is longer than {JSON_MAX} bytes")
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise BadRecord(f"{col} must be text")
        return _capped(col, v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind == "int" and not isinstance(v, int)):
        raise BadRecord(f"{col} must be {'an integer' if kind == 'int' else 'a number'}")
    if isinstance(v, int) and not INT_MIN <= v <= INT_MAX:
        raise BadRecord(f"{col} is out of range")
    return v


def _capped(col: str, text: str) -> str:
    """Free text cut at its cap with a marker; other text over ``TEXT_MAX`` is refused."""
    cap = LONG_TEXT.get(col, TEXT_MAX)
    if len(text) <= cap:
        return text
    if col not in FREE_TEXT:
        raise BadRecord(f"{col} is longer than {cap} characters")
    return text[:cap] + f" [... {len(text) - cap} characters cut]"


def _own_row(job: dict, row, spec: str, what: str) -> Optional[dict]:
    """``row`` checked (a JSON object of the columns ``spec`` lists as ``col:type``, each of its type) and stamped
    with the job's own run, id, stage and group (those ``spec`` has); None when it names others."""
    spec = dict(item.split(":") for item in spec.split())
    if not isinstance(row, dict):
        raise BadRecord(f"{what} is not an object")
    unknown = [k for k in row if k not in spec]
    if unknown:
        raise BadRecord(f"unknown field {str(unknown[0])[:40]!r} in {what}")
    row = {k: _value(spec[k], k, v) for k, v in row.items()}
    own = {col: job[src] for col, src in _OWN.items() if col in spec}
    return None if any(col in row and row[col] != val for col, val in own.items()) else {**row, **own}


def _prepare(job: dict, rec, run_dir: Path) -> tuple[Optional[Callable], int]:
    """What record ``rec`` of ``job``'s journal does to the store, checked: (op or None, 1 if it named another
    run, job, stage, group or process, else 0). BadRecord when it is not a valid record."""
    if not isinstance(rec, dict):
        raise BadRecord("not a JSON object")
    kind = rec.get("k")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise BadRecord(f"unknown kind {str(kind)[:40]!r}")
    fields = {f.lstrip("?") for f in _KEYS[kind]}
    missing = sorted(f for f in _KEYS[kind] if not f.startswith("?") and f not in rec)
    extra = sorted(set(rec) - fields - {"k"})
    if missing or extra:
        raise BadRecord(
            f"{kind} record without {missing[0]!r}"
            if missing
            else f"unknown field {extra[0][:40]!r} in a {kind} record"
        )
    return _PREPARE[kind](job, rec, run_dir)


def _job_fields(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """A ``job`` record: host, status (queued or running), started, message; the heartbeat no later than the
    owner's clock; progress and total within [0, 2^53]; a pid only for the launched process or a descendant (a
    DDP job's rank 0), with the start time the owner reads. pgid is the launcher's alone."""
    fields = _own_row(job, rec["fields"], _JOB, "fields")
    fields.pop("proc_start", None)
    foreign = _own_pid(job, fields)
    if fields.get("status") is not None and fields["status"] not in JOB_ACTIVE:
        raise BadRecord(f"status {fields['status'][:40]!r} is not one of {', '.join(JOB_ACTIVE)}")
    for key, top in (("heartbeat", time.time()), ("progress", COUNT_MAX), ("total", COUNT_MAX)):
        if fields.get(key) is not None:
            if not math.isfinite(fields[key]):
                raise BadRecord(f"{key} is not a number")
            fields[key] = min(max(fields[key], 0), top) if key == "heartbeat" else int(min(max(fields[key], 0), top))

    def op(store):
        if "status" in fields and store.job(job["id"])["status"] not in JOB_ACTIVE:
            del fields["status"]  # the owner gave it a final status meanwhile (killed, lost): that stands
        if fields:
            store.update_job(job["id"], **fields)

    return op, foreign


def _own_pid(job: dict, fields: dict) -> int:
    """Keep ``fields['pid']`` (with the start time read here) only for the job's launched process (its pgid's
    leader) or a descendant of it. Returns 1 when it named a live process outside the job, else 0."""
    pid = fields.pop("pid", None)
    first = stat_fields(pid) if pid is not None and pid > 0 and pid != job.get("pid") and job.get("pgid") else None
    if first is None or first[0] in ("Z", "X"):
        return 0  # unchanged, gone (nothing to signal), or a Slurm job's (another machine's; Slurm signals it)
    p, st = pid, first
    while st is not None and p > 1:
        if p == job.get("pgid"):
            fields["pid"], fields["proc_start"] = pid, int(first[19])
            return 0
        p = int(st[1])
        st = stat_fields(p)
    return 1


def _finish(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """A ``finish`` record: a final status, an exit code, a message (cut at ``TEXT_MAX``)."""
    if rec["status"] not in JOB_FINAL:
        raise BadRecord(f"status {str(rec['status'])[:40]!r} is not one of {', '.join(JOB_FINAL)}")
    code, message = _value("int", "exit_code", rec.get("exit_code")), _value("str", "message", rec.get("message"))
    return (lambda store: store.finish_job(job["id"], rec["status"], code, message)), 0


def _metrics(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """A ``metrics`` record: rows with step, key and value; rows that name another run, job, stage or group are
    ignored (the record counts once)."""
    if not isinstance(rec["rows"], list):
        raise BadRecord("rows is not a list")
    rows = [_own_row(job, row, _METRICS, "a metrics row") for row in rec["rows"]]
    if any(r is not None and any(r.get(k) is None for k in ("step", "key", "value")) for r in rows):
        raise BadRecord("a metrics row without step, key or value")
    mine = [r for r in rows if r is not None]
    return ((lambda store: store.log_metrics(mine)) if mine else None), int(len(mine) < len(rows))


def _drop(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """A ``drop`` record: forget the job's own values after a step (only its own run, stage and group)."""
    step = _count("step", rec["step"])
    if (rec["run"], rec["stage"], rec["group"]) != (job["run"], job["stage"], job["group_index"]):
        return None, 1
    return (lambda store: store.drop_metrics_after(job["run"], job["stage"], job["group_index"], step)), 0


def _count(col: str, v) -> int:
    """``v`` as an integer >= 0 (a step, the number a job gave one of its LLM calls)."""
    v = _value("int", col, v)
    if v is None or v < 0:
        raise BadRecord(f"{col} must be an integer >= 0")
    return v


def _call(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """A ``call`` record: an LLM call of the job's run and group, numbered in its journal."""
    cid, row = _count("id", rec["id"]), _own_row(job, rec["row"], _CALLS, "row")
    return ((lambda store: store.log_call({**row, "local_id": cid})), 0) if row is not None else (None, 1)


def _call_set(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """A ``call_set`` record: fields set on one of the job's own calls."""
    cid, fields = _count("id", rec["id"]), _own_row(job, rec["fields"], _CALLS, "fields")

    def op(store):
        real = _call_id(store, job["id"], cid)
        if real is not None:
            store.update_call(real, **fields)

    return (op if fields else None, 0) if fields is not None else (None, 1)


def _round(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """A ``round`` record: a proxy round of the job's run and group; its call is one of the job's own."""
    row = _own_row(job, rec["row"], _ROUNDS, "row")

    def op(store):
        call = row.get("call_id")
        store.log_round({**row, "call_id": None if call is None else _call_id(store, job["id"], call)})

    return (op, 0) if row is not None else (None, 1)


def _artifact(job: dict, rec: dict, run_dir: Path) -> tuple[Optional[Callable], int]:
    """An ``artifact`` record: a regular file inside the job's run, its path normalised, its sha256 and size
    computed here (the record's are not trusted)."""
    row = _own_row(job, rec["row"], _ARTIFACTS, "row")
    if row is None:
        return None, 1
    if row.get("kind") not in ARTIFACT_KINDS:
        raise BadRecord(f"kind {str(row.get('kind'))[:40]!r} is not one of {', '.join(ARTIFACT_KINDS)}")
    rel, sha, size = _artifact_file(run_dir, row.get("path"))
    return (lambda store: store.add_artifact({**row, "path": rel, "sha256": sha, "bytes": size})), 0


def _artifact_file(run_dir: Path, raw) -> tuple[str, str, int]:
    """An artifact's path normalised (relative to the run, no '..', no symlink on the way, a regular file inside
    the run) with the file's own sha256 and size; BadRecord otherwise."""
    parts = (PurePosixPath(raw).parts if isinstance(raw, str) and "\0" not in raw else ()) or ("/",)
    if parts[0].startswith("/") or ".." in parts or "\\" in raw:
        raise BadRecord(f"artifact path {str(raw)[:80]!r} is not a path inside the run")
    here = run_dir
    for part in parts:
        here = here / part
        if here.is_symlink():
            raise BadRecord(f"artifact path {raw[:80]!r} goes through a symlink")
    fd = _regular_fd(here) if here.resolve().is_relative_to(run_dir.resolve()) else None
    if fd is None:
        raise BadRecord(f"artifact {raw[:80]!r} is not a regular file in the run")
    h, size = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "/".join(parts), h.hexdigest(), size


_PREPARE = {
    "job": _job_fields,
    "finish": _finish,
    "metrics": _metrics,
    "drop": _drop,
    "call": _call,
    "call_set": _call_set,
    "round": _round,
    "artifact": _artifact,
}


def _call_id(store, job_id: int, local: int) -> Optional[int]:
    """The store's id of the job's call numbered ``local`` in its journal."""
    row = store.db.conn.execute("select id from llm_calls where job = ? and local_id = ?", [job_id, local]).fetchone()
    return row[0] if row else None
