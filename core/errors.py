"""Errors meant for the user: the CLI prints them as one line (``error: ...``) and exits with ``exit_code``.

    UserError            bad input or an unusable environment (missing data, malformed config, full disk...): 2
    ├── Interrupted      stopped by a signal after saving what can be resumed (training, a run): 130
    ├── StageFailed      a job of the pipeline failed; the run is resumable: 1
    └── ReplayMismatch   a strict proxy replay met a request that differs from the recorded one: 3

Anything else that escapes is a bug: the CLI prints one line and writes the traceback to a crash file (1).
``eval``'s gates end with their own codes, below. Every exit code the tool uses is defined in this module.
"""

EXIT_BUG = 1  # an unexpected error: one line, and the traceback in a crash file
EXIT_INTERRUPTED = 130  # Ctrl-C, or a stop signal, after saving what can be resumed
EXIT_MAX_FID = 4  # eval --max-fid: the gated model's FID is above the limit
EXIT_AGAINST = 5  # eval --against RUN: the gated model is significantly worse than RUN's


class UserError(Exception):
    """Bad input or an unusable environment (missing data, malformed config, full disk...)."""

    exit_code = 2


class Interrupted(UserError):
    """Stopped by SIGINT/SIGTERM after checkpointing; ``resume`` continues."""

    exit_code = EXIT_INTERRUPTED


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
