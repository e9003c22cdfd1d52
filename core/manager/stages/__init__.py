"""One module per pipeline stage, in order (``names.STAGES``):

    base -> schedule -> trunk -> prune (per group) -> finetune (per group) -> assemble -> control -> uniform
    -> dense-small -> sample -> eval

Each stage module answers both questions about itself:

    NAME            its name
    GROUPED         True when it runs one job per non-empty timestep group
    pending(run)    what is left to do, from the run folder alone: group indices for a grouped stage,
                    ``[None]`` for a whole-run stage, ``[]`` when it is done
    work(ctx)       do one unit of it in a worker process (``ctx``: ``context.WorkContext``)

The orchestrator runs what ``pending`` returns, and the monitor (``runs``, ``show``, the TUI) calls a stage
done exactly when ``pending`` is empty, so the two can never disagree.
"""

from __future__ import annotations

from core.manager.stages import assemble, base, control, dense, finetune, prune, sample, schedule, trunk, uniform
from core.manager.stages import eval as eval_stage
from core.names import STAGES

BY_NAME = {
    m.NAME: m for m in (base, schedule, trunk, prune, finetune, assemble, control, uniform, dense, sample, eval_stage)
}
assert tuple(BY_NAME) == STAGES


def pending(run, stage: str) -> list:
    """Units of ``stage`` still to do (see the module docstring)."""
    return BY_NAME[stage].pending(run)


def work(ctx) -> None:
    BY_NAME[ctx.job["stage"]].work(ctx)
