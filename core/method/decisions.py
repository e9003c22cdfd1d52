"""Exported proxy decisions (``llm-log RUN --export FILE``, ``llm-import FILE``): every record of a file checked
before any of it reaches the store, each refusal one line naming ``FILE:LINE``.

An export file is data from elsewhere, so nothing in it is taken on trust:

- every field is a known column of its kind of record (a call or a round) with the column's type; integers within
  SQLite's range;
- text is capped: a response at 256 KiB, a message list at 1 MiB (as JSON), any other text at 64 KiB, a line at
  4 MiB;
- a call's ``request_key`` is recomputed from its model, messages and parameters (``llm.request_key``, as the
  proxy computes it) and must match;
- a run name is printable (``runs.check_run_name``).

Imported calls are recorded with source ``import``: they serve ``prune --replay RUN`` only, never ``--cache``
(the cache serves answers this store's LLM gave, source ``live``), so an imported answer can never reach a request
that did not ask for that recording.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from core.errors import UserError
from core.method.llm import request_key
from core.runs import check_run_name

IMPORTED = "import"  # the source of an imported call (live | cache | replay are the proxy's own)
MAX_RESPONSE = 256 * 1024  # characters of one response_text
MAX_MESSAGES = 1 << 20  # characters of a call's messages as JSON
MAX_TEXT = 64 * 1024  # any other text field
MAX_JSON = 1 << 20  # any other JSON field
MAX_LINE = 4 << 20  # bytes of one line of the file
INT_RANGE = (-(1 << 63), (1 << 63) - 1)

# column: type (int | num | str | json | messages | dict); the store's columns of each kind, plus "type"
CALL_FIELDS = {
    "type": "str",
    "id": "int",
    "run": "str",
    "group_index": "int",
    "round": "int",
    "seq": "int",
    "attempt": "int",
    "model_asked": "str",
    "model_resolved": "str",
    "messages": "messages",
    "params": "dict",
    "request_key": "str",
    "source": "str",
    "response_text": "str",
    "parsed": "json",
    "validation_error": "str",
    "error": "str",
    "latency_s": "num",
    "prompt_tokens": "int",
    "completion_tokens": "int",
    "cost": "num",
    "linked_call": "int",
    "created": "str",
    "session": "str",
    "system_fingerprint": "str",
    "job": "int",
    "local_id": "int",
}
ROUND_FIELDS = {
    "type": "str",
    "id": "int",
    "run": "str",
    "group_index": "int",
    "round": "int",
    "keep": "json",
    "plan": "json",
    "macs": "int",
    "params": "int",
    "loss": "num",
    "accepted": "int",
    "reason": "str",
    "call_id": "int",
    "created": "str",
    "session": "str",
}
REQUIRED = {
    "call": ("id", "run", "group_index", "session", "seq", "request_key", "model_asked", "messages"),
    "round": ("run", "group_index", "session", "round"),
}


def read_export(file) -> list[dict]:
    """Every record of an export file, checked (``check_record``); the first bad line is a one-line error."""
    records = []
    try:
        with open(Path(file), "rb") as f:
            for i, line in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
                if len(line) > MAX_LINE:
                    raise UserError(f"{file}:{i}: line longer than {MAX_LINE >> 20} MiB; refused")
                if line.strip():
                    records.append(check_record(_parse(line, f"{file}:{i}"), f"{file}:{i}"))
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    return records


def _parse(line: bytes, where: str):
    """One line as JSON, or a one-line error."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        raise UserError(f"{where}: not a JSON line of an `llm-log --export` file") from None


def check_record(rec, where: str) -> dict:
    """``rec`` as it may be imported (a call's source set to ``import``), or a ``UserError`` starting ``where``."""
    kind = rec.get("type") if isinstance(rec, dict) else None
    if kind not in REQUIRED or any(k not in rec for k in REQUIRED[kind]):
        raise UserError(f"{where}: not a call or round record of an `llm-log --export` file")
    fields = CALL_FIELDS if kind == "call" else ROUND_FIELDS
    for key, value in rec.items():
        if key not in fields:
            raise UserError(f"{where}: unknown field {key!r}")
        _check_value(fields[key], key, value, where)
    try:
        check_run_name(rec["run"])
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if kind == "round":
        return dict(rec)
    if rec["request_key"] != request_key(rec["model_asked"], rec["messages"], rec.get("params") or {}):
        raise UserError(f"{where}: request_key does not match its model, messages and params")
    return {**rec, "source": IMPORTED}


def _check_value(kind: str, key: str, value, where: str) -> None:
    """A one-line ``UserError`` unless ``value`` (None passes) is of ``kind`` and within its size and range."""
    if value is None:
        return
    if kind == "str":
        cap = MAX_RESPONSE if key == "response_text" else MAX_TEXT
        _need(isinstance(value, str), where, key, "text")
        _cap(len(value), cap, where, key)
    elif kind in ("int", "num"):
        number = isinstance(value, int) or (kind == "num" and isinstance(value, float) and math.isfinite(value))
        _need(number and not isinstance(value, bool), where, key, "an integer" if kind == "int" else "a number")
        _need(
            not isinstance(value, int) or INT_RANGE[0] <= value <= INT_RANGE[1], where, key, "an integer within 64 bits"
        )
    elif kind == "messages":
        _need(
            isinstance(value, list)
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in value
            ),
            where,
            key,
            "a list of {role, content} messages",
        )
        _cap(len(json.dumps(value)), MAX_MESSAGES, where, key)
    elif kind == "dict":
        _need(isinstance(value, dict), where, key, "an object")
        _cap(len(json.dumps(value)), MAX_TEXT, where, key)
    else:  # json: any JSON value, as the store keeps it
        _cap(len(json.dumps(value)), MAX_JSON, where, key)


def _need(ok: bool, where: str, key: str, what: str) -> None:
    if not ok:
        raise UserError(f"{where}: field {key!r} must be {what}")


def _cap(size: int, cap: int, where: str, key: str) -> None:
    if size > cap:
        raise UserError(f"{where}: field {key!r} is {size} characters, at most {cap} are imported; refused")
