"""Process identity on Linux: whether a pid still runs and is the process recorded, not a later one that reused
its number (the start time in /proc/PID/stat). Used by the job tracker and by forked jobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def stat_fields(pid: int) -> Optional[list[str]]:
    """The fields of /proc/PID/stat from the third (state) on, None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # fields from 3 (state) on; the name may contain spaces


def proc_start(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    f = stat_fields(pid)
    return int(f[19]) if f else None


def pid_alive(pid: Optional[int], start: Optional[int] = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when ``start`` is given, is the process started then."""
    if not pid:
        return False
    f = stat_fields(pid)
    if f is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc (macOS): existence only
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    if f[0] in ("Z", "X"):
        return False
    return start is None or int(f[19]) == int(start)
