"""The ``stepadapt`` command line: the group and its commands (see ``commands/``)."""

from __future__ import annotations

import click

from core import __version__

from .commands import curves, evaluation, exchange, housekeeping, inspection, management, stages, studies
from .common import CONTEXT, Cli, runs_dir_option


@click.group(cls=Cli, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="stepadapt")
def cli():
    """Step-Adaptive training of diffusion models (arXiv 2312.13307): train a base IDDPM denoiser,
    split timesteps into SNR groups, prune and fine-tune one model per group, sample progressively."""


@cli.command(short_help="Watch runs live in the terminal.")
@click.argument("run_name", metavar="[RUN]", required=False)
@runs_dir_option
def tui(run_name, runs_dir):
    """Watch runs live in the terminal: runs, groups training, job logs, proxy rounds (press ? for keys)."""
    from core.runs import open_run, runs_root

    from .tui.app import StepadaptApp

    if run_name:
        open_run(run_name, runs_dir)  # an unknown run: one error line, before the screen is taken

    app = StepadaptApp(runs_root(runs_dir), run_name)
    app.run()
    if app.return_code:  # a crash inside the app must not look like a clean quit
        raise click.exceptions.Exit(app.return_code)


for _cmd in (
    management.COMMANDS
    + exchange.COMMANDS
    + stages.COMMANDS
    + inspection.COMMANDS
    + evaluation.COMMANDS
    + curves.COMMANDS
    + studies.COMMANDS
    + housekeeping.COMMANDS
):
    cli.add_command(_cmd)


def main():
    cli(prog_name="stepadapt")


if __name__ == "__main__":
    main()
