"""Shared pieces of the CLI: the error-reporting group class, common options, JSON output, the console."""

from __future__ import annotations

import json
import os
import tempfile
import traceback

import click

from core.errors import EXIT_BUG, EXIT_INTERRUPTED, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# bare `stepadapt` lists the commands in the order a researcher meets them: start a run, its stages, look at it,
# its results, manage it, then the rest; a command not named here follows, alphabetically
WORKFLOW = (
    "run",
    "resume",
    "kill",
    "fork",
    "train",
    "schedule",
    "prune",
    "finetune",
    "control",
    "sample",
    "eval",
    "report",
    "compare",
    "plot",
    "export",
    "runs",
    "show",
    "logs",
    "tui",
    "llm-log",
    "tag",
    "note",
    "rm",
    "gc",
    "study",
    "macs",
    "info",
    "import",
    "llm-import",
)


class Cli(click.Group):
    """Click group whose commands report UserError (and any other failure) as one line, never a traceback."""

    def list_commands(self, ctx):
        known = {n: i for i, n in enumerate(WORKFLOW)}
        return sorted(self.commands, key=lambda n: (known.get(n, len(WORKFLOW)), n))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # an unexpected failure: one line here, the traceback in a file
            if os.environ.get("STEPADAPT_DEBUG"):
                raise
            fd, path = tempfile.mkstemp(prefix="stepadapt-crash-", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                traceback.print_exc(file=f)
            click.echo(f"error: internal error {type(e).__name__}: {e} (traceback in {path})", err=True)
            ctx.exit(EXIT_BUG)


def steps_option(kind: str, help: str):
    """``--train-steps``, ``--finetune-steps`` or ``--sample-steps``: one name per kind of step, so a command line
    never leaves it to the reader which steps are meant."""
    return click.option(f"--{kind}-steps", "steps", type=int, default=None, help=help)


def inception_option(help: str):
    """``--inception``: the TorchScript Inception network for standard FID."""
    return click.option("--inception", type=click.Path(dir_okay=False), default=None, help=help)


def preset_option(f):
    return click.option("--preset", default=None, help="Model preset (default: the config file's, else tiny).")(f)


def slots_options(f):
    """Where a pipeline's (or a study's) jobs run: ``--parallel`` CPU slots or ``--gpus``, and ``--grace``.
    ``--parallel`` left out: 1 for a new run; a resumed run keeps the slots it last ran on."""
    from core.names import GRACE_S

    for opt in reversed(
        [
            click.option(
                "--parallel",
                type=click.IntRange(1),
                default=None,
                help="Jobs at once on CPU (with CUDA: one per GPU) [default: 1; resume: as last time].",
            ),
            click.option("--gpus", default=None, help="GPU indices to use, e.g. 0,1 (default: all visible)."),
            click.option(
                "--grace",
                type=float,
                default=GRACE_S,
                show_default=True,
                help="Seconds a job gets to checkpoint after SIGINT, before SIGTERM and SIGKILL.",
            ),
        ]
    ):
        f = opt(f)
    return f


def overrides_option(f):
    return click.option(
        "-S",
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. -S train.steps=200 (repeatable).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")(f)


def runs_dir_option(f):
    return click.option(
        "--runs-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Runs directory (default: $STEPADAPT_HOME or ./runs).",
    )(f)


def check_name(ctx, param, value):
    """``--name``'s callback: the run name checked before anything runs (printable characters only, no '/')."""
    from core.runs import check_run_name

    return value if value is None else check_run_name(value)


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def set_threads(cfg: dict) -> None:
    """Torch's thread count as the config says (``train.threads``; unset: torch's default)."""
    if cfg["train"].get("threads"):
        import torch  # only then: a command that fails on its input has not paid torch's import

        torch.set_num_threads(int(cfg["train"]["threads"]))


def console_width() -> int:
    """Columns to print in: the terminal's; piped, ``$COLUMNS`` when set (``COLUMNS=80 stepadapt runs | less``),
    else 200, wide enough that a table written to a file is not squeezed."""
    import shutil
    import sys

    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    cols = os.environ.get("COLUMNS", "")
    return int(cols) if cols.isdigit() and int(cols) > 0 else 200


def console():
    """A rich console as wide as ``console_width`` says."""
    from rich.console import Console

    return Console(width=console_width())
