"""Shared pieces of the CLI: the error-reporting group class, common options, JSON output, the console."""

from __future__ import annotations

import json
import os
import tempfile
import traceback

import click

from core.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Cli(click.Group):
    """Click group whose commands report UserError (and any other failure) as one line, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # an unexpected failure: one line here, the traceback in a file
            if os.environ.get("STEPADAPT_DEBUG"):
                raise
            fd, path = tempfile.mkstemp(prefix="stepadapt-crash-", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                traceback.print_exc(file=f)
            click.echo(f"error: internal error {type(e).__name__}: {e} (traceback in {path})", err=True)
            ctx.exit(1)


class Respelled(click.Option):
    """An option that also accepts its earlier spellings (its later names) without showing them in help."""

    def get_help_record(self, ctx):
        names = self.opts
        self.opts = names[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = names


def steps_option(kind: str, help: str):
    """``--train-steps``, ``--finetune-steps`` or ``--sample-steps``: one name per kind of step, so a command line
    never leaves it to the reader which steps are meant (``--steps`` still works, unshown)."""
    return click.option(f"--{kind}-steps", "--steps", "steps", cls=Respelled, type=int, default=None, help=help)


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
    import torch

    if cfg["train"].get("threads"):
        torch.set_num_threads(int(cfg["train"]["threads"]))


def console():
    """A rich console; when output is not a terminal, wide enough that tables are not squeezed."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)
