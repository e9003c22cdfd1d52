"""Which pruning candidate each group kept, decided in one place: every view (``show``, ``logs``, ``llm-log``, the
TUI's proxy view, the report) asks here, so they all name the same candidate, the same way (rounds and tries
counted from 1).

The prune record (``prune/groupNN.json``) is the truth: it holds the method the plan was made with and, for
the proxy, the search session and the winning round. With several proposals per round the winner is the
round's lowest loss, as the search picked it (``method/proxy.py``: the lowest loss, the earliest on a tie).
"""

from __future__ import annotations

from typing import Optional

from core.runs import Run, read_json


def _get(record, *keys):
    for k in keys:
        record = record.get(k) if isinstance(record, dict) else None
    return record


def record_method(record: Optional[dict]) -> Optional[str]:
    """The pruning method a group's plan was made with, as its record says (None: not pruned)."""
    if not record:
        return None
    return _get(record, "method", "method") or ("proxy" if _get(record, "report", "proxy") else None)


def pruned_with(run: Run, cfg: dict) -> str:
    """The pruning method the run's plans were made with, as its prune records say (``prune RUN --method
    magnitude`` on a run configured for the proxy: magnitude); several: joined with '+'; no plan yet: the
    configured one."""
    methods = []
    for p in sorted(run.path.glob("prune/group*.json")):
        m = record_method(read_json(p))
        if m and m not in methods:
            methods.append(m)
    return "+".join(methods) if methods else cfg["prune"]["method"]


def chosen_candidates(run: Run, rounds: list[dict], calls: list[dict]) -> dict[int, dict]:
    """Per pruned group: ``{"group", "method", "round", "try", "call_id", "round_id", "loss", "macs",
    "session", "fallback"}``. ``round`` and ``try`` are 1-based and None when the plan came from no proxy
    round (another method, or the proxy fell back after every answer was rejected). ``rounds`` and ``calls``:
    the run's ``Store.rounds`` and ``Store.calls`` (empty for a run pruned without the proxy)."""
    by_call = {c["id"]: c for c in calls}
    groups = sorted({r["group_index"] for r in rounds} | {c["group_index"] for c in calls} | _recorded_groups(run))
    out = {}
    for g in groups:
        rec = read_json(run.prune_record(g))
        method = record_method(rec)
        if method is None:
            continue
        proxy = _get(rec, "report", "proxy") or {}
        row = {
            "group": g,
            "method": method,
            "round": None,
            "try": None,
            "call_id": None,
            "round_id": None,
            "loss": _get(rec, "report", "loss_after"),
            "macs": _get(rec, "report", "macs"),
            "session": proxy.get("session"),
            "fallback": proxy.get("fallback"),
        }
        won = proxy.get("winner_round")
        if method == "proxy" and won is not None:
            mine = [
                r
                for r in rounds
                if r["group_index"] == g
                and r["round"] == won
                and r.get("accepted")
                and r.get("loss") is not None
                and (row["session"] is None or r.get("session") == row["session"])
            ]
            if mine:
                best = min(mine, key=lambda r: (r["loss"], r["id"]))
                call = by_call.get(best.get("call_id")) or {}
                row.update(
                    round=won + 1,
                    call_id=best.get("call_id"),
                    round_id=best["id"],
                    loss=best["loss"],
                    macs=best.get("macs"),
                )
                row["try"] = None if call.get("attempt") is None else call["attempt"] + 1
            else:  # the record names a round whose rows are not in this store (an imported record)
                row["round"] = won + 1
        out[g] = row
    return out


def _recorded_groups(run: Run) -> set[int]:
    groups = set()
    for p in run.path.glob("prune/group*.json"):
        digits = p.stem[len("group") :]
        if digits.isdigit():
            groups.add(int(digits))
    return groups


def chosen_text(c: Optional[dict]) -> str:
    """'round 1, try 1: loss 0.01482' for a proxy group, else the method ('magnitude'; '-' when unpruned)."""
    if not c:
        return "-"
    if c["round"] is None:
        return c["method"] + (f" (fallback {c['fallback']})" if c.get("fallback") else "")
    loss = "" if c["loss"] is None else f": loss {c['loss']:.5f}"
    return f"round {c['round']}" + ("" if c["try"] is None else f", try {c['try']}") + loss


def proxy_tries(calls: list[dict], rounds: list[dict], chosen: dict[int, dict]) -> list[dict]:
    """Every LLM call of a run's proxy searches, oldest first, with its 1-based round and try, its verdict
    (``accepted``: a valid proposal, measured; ``rejected``; ``error``), whether it is the kept candidate, why it
    was refused, and the measured MACs and loss of an accepted one."""
    by_call = {r["call_id"]: r for r in rounds if r.get("call_id")}
    out = []
    for c in calls:
        r = by_call.get(c["id"]) or {}
        kept = chosen.get(c["group_index"]) or {}
        out.append(
            {
                "id": c["id"],
                "created": c.get("created"),
                "group": c["group_index"],
                "round": c["round"] + 1,
                "try": c["attempt"] + 1,
                "session": c.get("session"),
                "source": c.get("source"),
                "model": c.get("model_asked"),
                "verdict": "error" if c.get("error") else ("rejected" if c.get("validation_error") else "accepted"),
                "chosen": kept.get("call_id") is not None and kept.get("call_id") == c["id"],
                "reason": c.get("error") or c.get("validation_error"),
                "macs": r.get("macs"),
                "loss": r.get("loss"),
            }
        )
    return out
