"""Errors meant for the user: the CLI prints them as one line (``error: ...``) and exits with ``exit_code``.

    UserError            bad input or an unusable environment (missing data, malformed config, full disk...): 2
    ├── Interrupted      stopped by a signal after saving what can be resumed (training, a run): 130
    ├── StageFailed      a job of the pipeline failed; the run is resumable: 1
    └── ReplayMismatch   a strict proxy replay met a request that differs from the recorded one: 3

Anything else that escapes is a bug: the CLI prints one line and writes the traceback to a crash file.
"""


class UserError(Exception):
    """Bad input or an unusable environment (missing data, malformed config, full disk...)."""

    exit_code = 2


class Interrupted(UserError):
    """Stopped by SIGINT/SIGTERM after checkpointing; ``resume`` continues."""

    exit_code = 130


class Stopped(KeyboardInterrupt):
    """A signal asked a job to stop (``signum``: SIGUSR2 is Slurm's warning before a time limit or preemption)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StageFailed(UserError):
    """A job of the pipeline failed; the run ends ``failed`` and ``resume`` continues it."""

    exit_code = 1


class ReplayMismatch(UserError):
    """A strict replay (``prune --replay``) met a request that differs from the recorded one."""

    exit_code = 3
