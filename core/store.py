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

``_migrations`` - name and time of every applied migration, in order.

Readers and several writers may use the file at once: WAL lets readers proceed during writes and a busy
timeout makes writers wait for each other instead of failing.
"""
from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from pathlib import Path
from typing import Callable, Optional

from .errors import UserError

DB_NAME = "stepadapt.db"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _m001(db) -> None:
    db["llm_calls"].create({
        "id": int, "run": str, "group_index": int, "round": int, "seq": int, "attempt": int,
        "model_asked": str, "model_resolved": str, "messages": str, "params": str, "request_key": str,
        "source": str, "response_text": str, "parsed": str, "validation_error": str, "error": str,
        "latency_s": float, "prompt_tokens": int, "completion_tokens": int, "cost": float,
        "linked_call": int, "created": str,
    }, pk="id")
    db["llm_calls"].create_index(["run", "group_index", "seq"])
    db["llm_calls"].create_index(["request_key"])
    db["proxy_rounds"].create({
        "id": int, "run": str, "group_index": int, "round": int, "keep": str, "plan": str, "macs": int,
        "params": int, "loss": float, "accepted": int, "reason": str, "call_id": int, "created": str,
    }, pk="id")
    db["proxy_rounds"].create_index(["run", "group_index", "round"])


def _m002(db) -> None:
    db["llm_calls"].add_column("session", str)
    db["proxy_rounds"].add_column("session", str)
    db["llm_calls"].create_index(["run", "group_index", "session"])


MIGRATIONS: list[tuple[str, Callable]] = [
    ("001_llm_calls_and_proxy_rounds", _m001),
    ("002_search_sessions", _m002),
]


class Store:
    def __init__(self, path: Path):
        import sqlite_utils

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=30)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=30000")
            self.migrate()
        except sqlite3.DatabaseError as e:
            raise UserError(f"cannot open the store {self.path}: {e}") from None

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied, in order; returns their names."""
        if "_migrations" not in self.db.table_names():
            self.db["_migrations"].create({"name": str, "applied": str}, pk="name")
        done = {r["name"] for r in self.db["_migrations"].rows}
        applied = []
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with self.db.conn:
                fn(self.db)
                self.db["_migrations"].insert({"name": name, "applied": _now()})
            applied.append(name)
        return applied

    # -- LLM calls
    def log_call(self, row: dict) -> int:
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        row.setdefault("created", _now())
        with self.db.conn:
            return self.db["llm_calls"].insert(row).last_pk

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
        rows = list(self.db["llm_calls"].rows_where("run = ? and group_index = ?", [run, group],
                                                    order_by="id desc", limit=1))
        return rows[0]["session"] if rows else None

    def call(self, call_id: int) -> Optional[dict]:
        rows = list(self.db["llm_calls"].rows_where("id = ?", [call_id]))
        return _decode(rows[0]) if rows else None

    def cached(self, key: str) -> Optional[dict]:
        """The earliest successful answer recorded for this request key, from any run."""
        rows = list(self.db["llm_calls"].rows_where(
            "request_key = ? and error is null and response_text is not null", [key], order_by="id", limit=1))
        return _decode(rows[0]) if rows else None

    # -- proxy rounds
    def log_round(self, row: dict) -> int:
        row = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        row.setdefault("created", _now())
        with self.db.conn:
            return self.db["proxy_rounds"].insert(row).last_pk

    def rounds(self, run: str, group: Optional[int] = None) -> list[dict]:
        where, args = "run = ?", [run]
        if group is not None:
            where += " and group_index = ?"
            args.append(group)
        return [_decode(r) for r in self.db["proxy_rounds"].rows_where(where, args, order_by="group_index, round, id")]


def _decode(row: dict) -> dict:
    out = dict(row)
    for k in ("messages", "params", "parsed", "keep", "plan"):
        if isinstance(out.get(k), str):
            try:
                out[k] = json.loads(out[k])
            except json.JSONDecodeError:
                pass
    return out


def open_store(runs_dir: Path) -> Store:
    return Store(Path(runs_dir) / DB_NAME)
