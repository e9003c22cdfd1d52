"""The store's schema as ordered migrations: each is applied once, in order, and recorded in ``_migrations``
(``core/store.py`` applies them; its module docstring describes the tables). An applied migration is never
edited: a change to the schema is a new one at the end."""

from __future__ import annotations

from typing import Callable


def _m001(db) -> None:
    db["llm_calls"].create(
        {
            "id": int,
            "run": str,
            "group_index": int,
            "round": int,
            "seq": int,
            "attempt": int,
            "model_asked": str,
            "model_resolved": str,
            "messages": str,
            "params": str,
            "request_key": str,
            "source": str,
            "response_text": str,
            "parsed": str,
            "validation_error": str,
            "error": str,
            "latency_s": float,
            "prompt_tokens": int,
            "completion_tokens": int,
            "cost": float,
            "linked_call": int,
            "created": str,
        },
        pk="id",
    )
    db["llm_calls"].create_index(["run", "group_index", "seq"])
    db["llm_calls"].create_index(["request_key"])
    db["proxy_rounds"].create(
        {
            "id": int,
            "run": str,
            "group_index": int,
            "round": int,
            "keep": str,
            "plan": str,
            "macs": int,
            "params": int,
            "loss": float,
            "accepted": int,
            "reason": str,
            "call_id": int,
            "created": str,
        },
        pk="id",
    )
    db["proxy_rounds"].create_index(["run", "group_index", "round"])


def _m002(db) -> None:
    db["llm_calls"].add_column("session", str)
    db["proxy_rounds"].add_column("session", str)
    db["llm_calls"].create_index(["run", "group_index", "session"])


def _m003(db) -> None:
    db["runs"].create(
        {
            "id": int,
            "name": str,
            "parent": str,
            "status": str,
            "config": str,
            "config_hash": str,
            "seed": int,
            "git_sha": str,
            "git_dirty": int,
            "path": str,
            "created": str,
            "started": str,
            "ended": str,
        },
        pk="id",
    )
    db["runs"].create_index(["name"], unique=True)
    db["jobs"].create(
        {
            "id": int,
            "run": str,
            "stage": str,
            "group_index": int,
            "command": str,
            "args": str,
            "pid": int,
            "pgid": int,
            "proc_start": int,
            "device": str,
            "status": str,
            "heartbeat": float,
            "progress": int,
            "total": int,
            "message": str,
            "exit_code": int,
            "log_path": str,
            "kill_requested": int,
            "created": str,
            "started": str,
            "ended": str,
        },
        pk="id",
    )
    db["jobs"].create_index(["run", "stage", "group_index"])
    db["jobs"].create_index(["status"])
    db["metrics"].create(
        {
            "id": int,
            "run": str,
            "job": int,
            "stage": str,
            "group_index": int,
            "step": int,
            "key": str,
            "value": float,
            "time": float,
        },
        pk="id",
    )
    db["metrics"].create_index(["run", "stage", "group_index", "step"])
    db["artifacts"].create(
        {
            "id": int,
            "run": str,
            "job": int,
            "path": str,
            "kind": str,
            "sha256": str,
            "bytes": int,
            "created": str,
        },
        pk="id",
    )
    db["artifacts"].create_index(["run", "path"], unique=True)


def _m004(db) -> None:
    db["llm_calls"].add_column("system_fingerprint", str)


def _m005(db) -> None:
    for table, col, kind in (
        ("jobs", "journal_offset", int),
        ("jobs", "host", str),
        ("jobs", "launcher", str),
        ("jobs", "slurm_job", str),
        ("jobs", "slurm_state", str),
        ("llm_calls", "job", int),
        ("llm_calls", "local_id", int),
    ):
        if col not in db[table].columns_dict:
            db[table].add_column(col, kind)
    db["llm_calls"].create_index(["job", "local_id"], if_not_exists=True)


def _m006(db) -> None:
    if "slurm_time" not in db["jobs"].columns_dict:
        db["jobs"].add_column("slurm_time", str)


def _m007(db) -> None:
    db["run_tags"].create({"id": int, "run": str, "key": str, "value": str, "created": str}, pk="id")
    db["run_tags"].create_index(["run", "key"], unique=True)
    db["run_notes"].create({"id": int, "run": str, "text": str, "created": str}, pk="id")
    db["run_notes"].create_index(["run"])


MIGRATIONS: list[tuple[str, Callable]] = [
    ("001_llm_calls_and_proxy_rounds", _m001),
    ("002_search_sessions", _m002),
    ("003_runs_jobs_metrics_artifacts", _m003),
    ("004_system_fingerprint", _m004),
    ("005_job_journals_and_slurm", _m005),
    ("006_slurm_time_limit", _m006),
    ("007_run_tags_and_notes", _m007),
]
