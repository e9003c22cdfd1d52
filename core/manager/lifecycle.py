"""How a run's status moves, in one place: ``running`` when work starts, then ``succeeded`` (every stage done),
``partial`` (some stages done and the rest still to run: a study's shared stage 1, or one stage run on its own),
``killed`` or ``failed`` (``pipeline.resume_run`` is the one way a run is resumed, from the CLI and the TUI)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Optional

from core.runs import Run
from core.store import Store, utc_now


def mark_running(store: Store, run: Run) -> None:
    """The run has work in progress (its first start keeps its start time)."""
    row = store.get_run(run.name) or {}
    store.update_run(run.name, status="running", started=row.get("started") or utc_now(), ended=None)


def settled_status(run: Run) -> str:
    """What a run whose work stopped cleanly is, from its folder alone: ``succeeded`` when no stage has work
    left, ``partial`` when some stage is done, ``created`` when none is."""
    from core.manager import stages
    from core.names import STAGES

    left = [s for s in STAGES if stages.pending(run, s)]
    if not left:
        return "succeeded"
    return "partial" if len(left) < len(STAGES) else "created"


def mark_settled(store: Store, run: Run, outcome: Optional[str] = None) -> str:
    """The run's work ended: ``outcome`` ``killed`` or ``failed``, else what its folder says
    (``settled_status``). Returns the status written."""
    status = outcome or settled_status(run)
    store.update_run(run.name, status=status, ended=utc_now())
    return status


@contextlib.contextmanager
def tracked_stage(run: Run, stage: str, device, log: Callable[[str], None]):
    """A stage run by a command on its own, kept as a job of the run (as a pipeline's job is): it shows in
    ``runs``, ``show`` and the TUI with its progress, and the run then settles as a pipeline's would
    (``mark_settled``: killed, failed, or what its folder says). Yields the stage's ``WorkContext``."""
    from core.errors import Interrupted
    from core.manager.context import WorkContext
    from core.manager.jobs import Tracked, open_reconciled
    from core.runs import register_run

    store = open_reconciled(run.path.parent)
    register_run(run)
    job_id = store.add_job(
        {"run": run.name, "stage": stage, "args": {"device": str(device)}, "device": str(device), "command": sys.argv}
    )
    mark_running(store, run)
    try:
        with Tracked(store, job_id) as hb:
            yield WorkContext(run, store, store.job(job_id), device, hb, log=log)
    except BaseException as e:
        mark_settled(store, run, "killed" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "failed")
        raise
    mark_settled(store, run)
