"""The SQLite store: one file per runs directory (``RUNS_DIR/stepadapt.db``), WAL mode, ordered migrations.

Schema (migration 001):

``llm_calls`` - every request made for the pruning proxy, one row per attempt:
    id, run, group_index, round, seq (order of the call within run+group), attempt (retry number),
    model_asked, model_resolved, messages (JSON list), params (JSON: temperature, seed, max_tokens),
    request_key (sha256 of canonical JSON of model, messages, output-affecting params; no keys, bases,
    timeouts), source (live | replay | cache), response_text, parsed (JSON of the accepted answer),
    validation_error, error (transport error after retries), latency_s, prompt_tokens,
    completion_tokens, cost, linked_call (id of the recorded call this one is compared with), created

``proxy_rounds`` - the outcome of every proxy round:
    id, run, group_index, round, keep (JSON keep ratios), plan (JSON), macs, params, loss,
    accepted (0/1), reason, call_id (the answer it came from), created

Migration 002 adds ``session`` to both tables: one id per proxy search of a group, so that an
interrupted search and the one that finished are never mixed up (replay reads the finished session).

Migration 003 adds the experiment manager's tables:

``runs`` - one row per run folder:
    id, name (unique, the folder name), parent (the run it was derived from, or null), status
    (``names.RUN_STATUSES``: created | running | partial | succeeded | failed | killed | lost), config (resolved
    config JSON), config_hash, seed, git_sha, git_dirty (0/1), path, created, started, ended

``jobs`` - one row per tracked subprocess (a stage, or one group of a stage):
    id, run, stage (pipeline | base | schedule | prune | finetune | assemble | sample | eval), group_index
    (null for whole-run stages), command (JSON argv), args (JSON settings the worker reads), pid, pgid (the
    process group signalled by ``kill``; null when the job shares its terminal's group), proc_start (the
    process start time in clock ticks since boot, so a reused pid is not mistaken for the job), device,
    status (``names.JOB_ACTIVE`` + ``names.JOB_FINAL``: queued | running | succeeded | failed | killed | lost),
    heartbeat (unix time of the last sign of life), progress, total, message (what the job is doing),
    exit_code, log_path, kill_requested (0/1), created, started, ended

``metrics`` - training curves, one row per logged value:
    id, run, job, stage, group_index, step, key, value, time (unix)

``artifacts`` - files a job produced:
    id, run, job, path (relative to the run folder), kind (``names.ARTIFACT_KINDS``: model | checkpoint |
    schedule | plot | plan | samples | eval | report), sha256, bytes, created

Migration 004 adds ``system_fingerprint`` to ``llm_calls``: the provider's backend configuration identifier,
when it sends one (with ``model_resolved``, it shows when a provider changed what answers a request).

Migration 005 adds what jobs on other machines need (see ``manager.journal``): ``jobs.journal_offset`` (bytes
of the job's journal already ingested), ``jobs.host`` (where the worker ran), ``jobs.launcher`` (local | slurm),
``jobs.slurm_job`` and ``jobs.slurm_state`` (the Slurm job id, ``ID`` or ``ARRAY_TASK``, and its last state);
``llm_calls.job`` and ``llm_calls.local_id`` (the call's number in its job's journal, which that job's rounds
refer to until ingested).

Migration 006 adds ``jobs.slurm_time``: the time limit Slurm gave the job as ``squeue`` prints it
(``UNLIMITED``, ``1:00:00``, ...), the partition's default when no ``--time`` was given.

Migration 007 adds what a researcher writes about runs: ``run_tags`` (run, key, value: ``stepadapt tag``, one
value per key and run, null for a bare label) and ``run_notes`` (run, text, created: ``stepadapt note``). They
live here rather than in ``meta.json`` because a tag may be written while the run's pipeline rewrites its
``meta.json``: the store's transactions keep both writes, and ``runs --tag`` filters with a query.

``jobs.log_path`` is written relative to the runs folder (``NAME/logs/0007-finetune-g03.log``); older rows
hold it relative to the folder the run was launched from, or absolute. ``job`` and ``jobs`` return it as a path
that exists wherever the runs folder is now (``_log_path``).

``_migrations`` - name and time of every applied migration, in order.

Readers and several writers may use the file at once: WAL lets readers proceed during writes and a busy
timeout makes writers wait for each other instead of failing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

from core.errors import UserError
from core.migrations import MIGRATIONS
from core.names import ARTIFACT_KINDS, JOB_ACTIVE, JOB_FINAL, RUN_STATUSES

DB_NAME = "stepadapt.db"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# how long a writer waits for another's write lock before the write fails (the orchestrator then waits on)
BUSY_S = float(os.environ.get("STEPADAPT_BUSY_S", "30"))

JSON_COLUMNS = ("messages", "params", "parsed", "keep", "plan", "config", "command", "args")


def _sqlite_utils():
    """sqlite-utils, imported without pandas: it imports pandas when it can (0.3 s of every listing) only to
    convert pandas values on insert, which the store never writes."""
    import sys

    if "sqlite_utils" in sys.modules or "pandas" in sys.modules:
        import sqlite_utils

        return sqlite_utils
    sys.modules["pandas"] = None  # type: ignore[assignment]  # makes "import pandas" fail, for this import only
    try:
        import sqlite_utils
    finally:
        del sys.modules["pandas"]
    return sqlite_utils


def _disk_full(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` has no byte free (unknown: False)."""
    import shutil

    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:  # the folder itself is unreachable: not a full disk
        return False


@runtime_checkable
class Books(Protocol):
    """Where a job writes what it does: the ``Store`` itself (a command that owns it), or the job's ``Journal``
    (``core/manager/journal.py``: files the store's owner ingests). Stages and the proxy write through this."""

    def for_thread(self) -> "Books": ...
    def update_job(self, job_id: int, **fields) -> None: ...
    def finish_job(self, job_id: int, status: str, exit_code: Optional[int], message: Optional[str] = None) -> bool: ...
    def log_metrics(self, rows: list[dict]) -> None: ...
    def drop_metrics_after(self, run: str, stage: str, group: Optional[int], step: int) -> Optional[int]: ...
    def log_call(self, row: dict) -> int: ...
    def update_call(self, call_id: int, **fields) -> None: ...
    def log_round(self, row: dict) -> None: ...
    def add_artifact(self, row: dict) -> None: ...


class Store:
    def __init__(self, path: Path):
        sqlite_utils = _sqlite_utils()

        if os.environ.get("STEPADAPT_NO_STORE"):  # a job worker: its books go to its journal (manager.journal)
            raise RuntimeError(f"a job worker must not open the store {path}; it writes its journal instead")
        self.path = Path(path)
        # a runs folder on a read-only filesystem (an archive, a snapshot) can still be listed and shown
        self.readonly = self.path.parent.is_dir() and not os.access(self.path.parent, os.W_OK)
        try:
            if self.readonly:
                self.db = sqlite_utils.Database(self._open_readonly())
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=BUSY_S)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA busy_timeout={int(BUSY_S * 1000)}")
            self.migrate()
        except sqlite3.DatabaseError as e:
            if _disk_full(self.path.parent):  # SQLite says "disk I/O error" for a full disk
                raise UserError(f"no space left on device while opening the store {self.path}") from None
            raise UserError(f"cannot open the store {self.path}: {e}") from None

    def _open_readonly(self) -> sqlite3.Connection:
        """The store of a read-only folder, opened immutable (WAL needs to write its index even to read), as is:
        a store that would need a migration says so instead of being changed."""
        from urllib.parse import quote

        if not self.path.exists():
            raise UserError(f"the runs folder {self.path.parent} is read-only and has no store ({DB_NAME})")
        conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro&immutable=1", uri=True)
        done = {r[0] for r in conn.execute("select name from _migrations")}
        missing = [name for name, _ in MIGRATIONS if name not in done]
        if missing:
            raise UserError(
                f"the store {self.path} needs migration {missing[0]} but its folder is read-only; "
                f"open it once with this version where it is writable"
            )
        return conn

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied, in order; returns their names."""
        if "_migrations" not in self.db.table_names():
            with self._tx():
                self.db["_migrations"].create({"name": str, "applied": str}, pk="name", if_not_exists=True)
        done = {r["name"] for r in self.db["_migrations"].rows}
        newer = sorted(done - {name for name, _ in MIGRATIONS})
        if newer:
            raise UserError(
                f"the store {self.path} was made by a newer stepadapt (it has migration "
                f"{', '.join(newer)}; this version knows up to {MIGRATIONS[-1][0]}); upgrade stepadapt"
            )
        applied = []
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with self._tx():  # another process may have applied it since ``done`` was read: look again inside
                if self.db.execute("select 1 from _migrations where name = ?", [name]).fetchone():
                    continue
                fn(self.db)
                self.db["_migrations"].insert({"name": name, "applied": utc_now()})
            applied.append(name)
        return applied

    # -- LLM calls
    def log_call(self, row: dict) -> int:
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        row.setdefault("created", utc_now())
        with self._tx():
            return self.db["llm_calls"].insert(row).last_pk

    def update_call(self, call_id: int, **fields) -> None:
        self._update("llm_calls", "id", call_id, fields)

    def calls(self, run: str, group: Optional[int] = None, session: Optional[str] = None) -> list[dict]:
        where, args = "run = ?", [run]
        if group is not None:
            where += " and group_index = ?"
            args.append(group)
        if session is not None:
            where += " and session = ?"
            args.append(session)
        return [_decode(r) for r in self.db["llm_calls"].rows_where(where, args, order_by="group_index, id")]

    def last_session(self, run: str, group: int) -> Optional[str]:
        rows = list(
            self.db["llm_calls"].rows_where("run = ? and group_index = ?", [run, group], order_by="id desc", limit=1)
        )
        return rows[0]["session"] if rows else None

    def call(self, call_id: int) -> Optional[dict]:
        rows = list(self.db["llm_calls"].rows_where("id = ?", [call_id]))
        return _decode(rows[0]) if rows else None

    def same_request(self, key: str) -> list[dict]:
        """Every call made with this request key, from any run, oldest first."""
        return [_decode(r) for r in self.db["llm_calls"].rows_where("request_key = ?", [key], order_by="id")]

    # -- proxy rounds
    def log_round(self, row: dict) -> int:
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        row.setdefault("created", utc_now())
        with self._tx():
            return self.db["proxy_rounds"].insert(row).last_pk

    def rounds(self, run: str, group: Optional[int] = None) -> list[dict]:
        where, args = "run = ?", [run]
        if group is not None:
            where += " and group_index = ?"
            args.append(group)
        return [_decode(r) for r in self.db["proxy_rounds"].rows_where(where, args, order_by="group_index, round, id")]

    # -- portable decisions: export and import of recorded calls and rounds
    def export_decisions(self, run: Optional[str] = None) -> list[dict]:
        """Every recorded LLM call and proxy round (of ``run``, or of the whole store) as JSON-able records:
        ``{"type": "call" | "round", ...row}``; a round's ``call_id`` refers to a call's ``id`` in the same export."""
        where, args = ("run = ?", [run]) if run else (None, [])
        calls = [{"type": "call", **_decode(r)} for r in self.db["llm_calls"].rows_where(where, args, order_by="id")]
        rounds = [
            {"type": "round", **_decode(r)} for r in self.db["proxy_rounds"].rows_where(where, args, order_by="id")
        ]
        return calls + rounds

    def import_decisions(self, records: list[dict]) -> dict:
        """Add exported records. A record already here (same run, group, session and position) is skipped when
        it is the same and refused when it differs: an import never overwrites. Returns the counts."""
        calls = [r for r in records if r.get("type") == "call"]
        rounds = [r for r in records if r.get("type") == "round"]
        ids, counts = {}, {"calls": 0, "rounds": 0, "skipped": 0}
        with self._tx():
            for rec in calls:
                key = [rec["run"], rec["group_index"], rec["session"], rec["seq"]]
                have = list(
                    self.db["llm_calls"].rows_where(
                        "run = ? and group_index = ? and session = ? and seq = ?", key, limit=1
                    )
                )
                row = _encode({k: v for k, v in rec.items() if k not in ("type", "id")})
                if have:
                    same = all(have[0].get(k) == row.get(k) for k in ("request_key", "response_text", "error"))
                    if not same:
                        raise UserError(
                            f"import refused: call {rec['seq']} of run {rec['run']!r} group "
                            f"{rec['group_index']} is recorded here with a different answer"
                        )
                    ids[rec["id"]] = have[0]["id"]
                    counts["skipped"] += 1
                    continue
                ids[rec["id"]] = self.db["llm_calls"].insert(row).last_pk
                counts["calls"] += 1
            for rec in rounds:
                key = [rec["run"], rec["group_index"], rec["session"], rec["round"]]
                have = list(
                    self.db["proxy_rounds"].rows_where(
                        "run = ? and group_index = ? and session = ? and round = ?", key, limit=1
                    )
                )
                if have:
                    if (have[0]["accepted"], have[0]["loss"]) != (rec.get("accepted"), rec.get("loss")):
                        raise UserError(
                            f"import refused: round {rec['round'] + 1} of run {rec['run']!r} group "
                            f"{rec['group_index']} is recorded here with another outcome"
                        )
                    counts["skipped"] += 1
                    continue
                row = _encode({k: v for k, v in rec.items() if k not in ("type", "id")})
                row["call_id"] = ids.get(rec.get("call_id"))
                self.db["proxy_rounds"].insert(row)
                counts["rounds"] += 1
        return counts

    # -- runs
    def add_run(self, row: dict) -> int:
        row = _encode(row)
        row.setdefault("created", utc_now())
        with self._tx():
            return self.db["runs"].insert(row).last_pk

    def get_run(self, name: str) -> Optional[dict]:
        rows = list(self.db["runs"].rows_where("name = ?", [name], limit=1))
        return _decode(rows[0]) if rows else None

    def update_run(self, name: str, **fields) -> None:
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"not a run status: {fields['status']!r}")
        self._update("runs", "name", name, fields)

    def list_runs(self) -> list[dict]:
        return [_decode(r) for r in self.db["runs"].rows_where(order_by="id")]

    # -- jobs
    def add_job(self, row: dict) -> int:
        row = _encode(row)
        row.setdefault("created", utc_now())
        row.setdefault("status", "queued")
        row.setdefault("kill_requested", 0)
        with self._tx():
            return self.db["jobs"].insert(row).last_pk

    def update_job(self, job_id: int, **fields) -> None:
        self._update("jobs", "id", job_id, fields)

    def _update(self, table: str, key_column: str, key, fields: dict) -> None:
        with self._tx():
            self.db.execute(
                f"update {table} set {', '.join(f'{k} = ?' for k in fields)} where {key_column} = ?",
                [*_encode(fields).values(), key],
            )

    def finish_job(self, job_id: int, status: str, exit_code: Optional[int], message: Optional[str] = None) -> bool:
        """Set a final status unless one is set already (the first writer wins); returns whether it was set."""
        if status not in JOB_FINAL:
            raise ValueError(f"not a final job status: {status!r}")
        with self._tx():
            cur = self.db.execute(
                "update jobs set status = ?, exit_code = ?, ended = ?, message = coalesce(?, message) "
                f"where id = ? and status in {JOB_ACTIVE}",
                [status, exit_code, utc_now(), message, job_id],
            )
            return cur.rowcount > 0

    def require_writable(self) -> None:
        if self.readonly:
            raise UserError(
                f"the runs folder {self.path.parent} is read-only; this command writes to it "
                f"(copy the folder somewhere writable to change it)"
            )

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction taken at once (``BEGIN IMMEDIATE``): what is read inside it cannot change
        before it commits. The writers called inside it join it."""
        self.require_writable()
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.conn.execute("ROLLBACK")
            raise
        self.db.conn.execute("COMMIT")

    @contextlib.contextmanager
    def _tx(self):
        """A writer's transaction: its own, taken at once (a deferred one that read first could not upgrade to
        a write while another writer commits: 'database is locked'), or a savepoint inside the caller's."""
        if self.db.conn.in_transaction and not self.readonly:
            with self.db.atomic():
                yield
        else:
            with self.transaction():
                yield

    def for_thread(self) -> "Store":
        """A store for another thread (sqlite connections are per thread)."""
        return Store(self.path)

    def job(self, job_id: int) -> Optional[dict]:
        rows = list(self.db["jobs"].rows_where("id = ?", [job_id]))
        return self._job_row(rows[0]) if rows else None

    def _job_row(self, row: dict) -> dict:
        out = _decode(row)
        if out.get("log_path"):
            out["log_path"] = str(_log_path(self.path.parent, out["run"], out["log_path"]))
        return out

    def jobs(self, run: Optional[str] = None, active: bool = False) -> list[dict]:
        where, args = [], []
        if run is not None:
            where.append("run = ?")
            args.append(run)
        if active:
            where.append(f"status in {JOB_ACTIVE}")
        return [self._job_row(r) for r in self.db["jobs"].rows_where(" and ".join(where) or None, args, order_by="id")]

    # -- metrics
    def log_metrics(self, rows: list[dict]) -> None:
        with self._tx():
            self.db["metrics"].insert_all(rows)

    def drop_metrics_after(self, run: str, stage: str, group: Optional[int], step: int) -> int:
        """Forget values logged past ``step`` (a resumed job logs them again); returns how many."""
        with self._tx():
            cur = self.db.execute(
                "delete from metrics where run = ? and stage = ? and group_index is ? and step > ?",
                [run, stage, group, step],
            )
            return cur.rowcount

    def metrics(
        self, run: str, stage: Optional[str] = None, group: Optional[int] = None, key: Optional[str] = None
    ) -> list[dict]:
        where, args = ["run = ?"], [run]
        for col, val in (("stage", stage), ("group_index", group), ("key", key)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        return list(self.db["metrics"].rows_where(" and ".join(where), args, order_by="stage, group_index, step, id"))

    # -- artifacts
    def add_artifact(self, row: dict) -> None:
        if row["kind"] not in ARTIFACT_KINDS:
            raise ValueError(f"not an artifact kind: {row['kind']!r}")
        row.setdefault("created", utc_now())
        with self._tx():
            self.db.execute("delete from artifacts where run = ? and path = ?", [row["run"], row["path"]])
            self.db["artifacts"].insert(row)

    def forget_run(self, name: str, decisions: bool = False) -> None:
        """Delete a run's row and its jobs, metrics, artifacts, tags and notes (its folder is gone or replaced);
        with ``decisions`` (``stepadapt rm``) its recorded LLM calls and proxy rounds too."""
        tables = ("runs", "jobs", "metrics", "artifacts", "run_tags", "run_notes")
        with self._tx():
            for table in tables + (("llm_calls", "proxy_rounds") if decisions else ()):
                self.db.execute(f"delete from {table} where {'name' if table == 'runs' else 'run'} = ?", [name])

    def forget_artifacts(self, run: str, paths: list[str]) -> None:
        """Delete the artifact rows of files that were removed (``stepadapt gc``)."""
        with self._tx():
            for p in paths:
                self.db.execute("delete from artifacts where run = ? and path = ?", [run, p])

    def move_run(self, name: str, path: str) -> None:
        """Point a run's row at its folder's new place (the runs folder was moved); its other rows stay."""
        self._update("runs", "name", name, {"path": path})

    # -- tags and notes (migration 007)
    def set_tag(self, run: str, key: str, value: Optional[str]) -> None:
        with self._tx():
            self.db.execute("delete from run_tags where run = ? and key = ?", [run, key])
            self.db["run_tags"].insert({"run": run, "key": key, "value": value, "created": utc_now()})

    def remove_tag(self, run: str, key: str) -> bool:
        with self._tx():
            return self.db.execute("delete from run_tags where run = ? and key = ?", [run, key]).rowcount > 0

    def tags(self, run: Optional[str] = None) -> dict:
        """{run: {key: value}} (of one run, or of every run), keys in the order they were set."""
        where, args = ("run = ?", [run]) if run else (None, [])
        out: dict = {}
        for r in self.db["run_tags"].rows_where(where, args, order_by="id"):
            out.setdefault(r["run"], {})[r["key"]] = r["value"]
        return out

    def add_note(self, run: str, text: str) -> None:
        with self._tx():
            self.db["run_notes"].insert({"run": run, "text": text, "created": utc_now()})

    def notes(self, run: Optional[str] = None) -> dict:
        """{run: [{"text", "created"}]}, oldest first."""
        where, args = ("run = ?", [run]) if run else (None, [])
        out: dict = {}
        for r in self.db["run_notes"].rows_where(where, args, order_by="id"):
            out.setdefault(r["run"], []).append({"text": r["text"], "created": r["created"]})
        return out

    def artifacts(self, run: str) -> list[dict]:
        return list(self.db["artifacts"].rows_where("run = ?", [run], order_by="id"))


def _log_path(root: Path, run: str, stored: str) -> Path:
    """Where a job's log is now: a path written relative to the runs folder (``NAME/logs/FILE``), or an older
    row's path relative to the launch folder or absolute, found again under ``root`` by its run folder's name
    (so a moved runs folder, or a command run from another folder, still finds it)."""
    p = Path(stored)
    parts = p.parts
    if run in parts:  # NAME/logs/FILE, runs/NAME/logs/FILE, /old/place/runs/NAME/logs/FILE
        i = len(parts) - 1 - parts[::-1].index(run)
        moved = root.joinpath(*parts[i:])
        if moved.exists() or not p.is_absolute():
            return moved
    return p if p.is_absolute() else root / p


def _encode(row: dict) -> dict:
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}


def _decode(row: dict) -> dict:
    out = dict(row)
    for k in JSON_COLUMNS:
        if isinstance(out.get(k), str):
            try:
                out[k] = json.loads(out[k])
            except json.JSONDecodeError:
                pass
    return out


def open_store(runs_dir: Path) -> Store:
    return Store(Path(runs_dir) / DB_NAME)
