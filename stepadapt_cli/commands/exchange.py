"""Models in and out of the tool: ``import`` makes a published checkpoint a new run's stage 1."""

from __future__ import annotations

import shlex

import click

from ..common import check_name, overrides_option, runs_dir_option
from .management import _settings


@click.command("import", short_help="Make an improved-diffusion checkpoint a new run's stage 1.")
@click.argument("run_name", metavar="RUN", callback=check_name)
@click.option(
    "--from-iddpm",
    "file",
    required=True,
    type=click.Path(dir_okay=False),
    help="improved-diffusion UNet state dict (e.g. cifar10_uncond_50M_500K.pt).",
)
@click.option(
    "--preset",
    default=None,
    help="The preset the checkpoint's architecture matches (cifar10, "
    "imagenet64, ...; default: the config file's, else tiny).",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="A config file for the run (as for stepadapt run).",
)
@click.option("--data", "data_spec", default=None, help="The run's data: cifar10[:ROOT] | folder:PATH | PATH | digits.")
@runs_dir_option
@overrides_option
def import_cmd(run_name, file, preset, config_file, data_spec, runs_dir, overrides):
    """Create run RUN whose finished stage 1 is an improved-diffusion checkpoint, converted to stepadapt's UNet
    (every tensor's shape checked against the preset; a misfit writes nothing). The model records
    model.rescale_timesteps (the network sees t * 1000 / T, as theirs were trained) and GroupNorm(32).
    Continue with: stepadapt resume RUN (stage 2 onwards), or fork it: stepadapt fork RUN NEW."""
    from core import config as C
    from core.manager.bases import import_base, import_config

    extra = _settings(None, None, None, data_spec, None, overrides)
    cfg = import_config(C.resolve(preset, config_file, extra), overrides)
    run = import_base(file, cfg, run_name, runs_dir, log=lambda line: click.echo(line, err=True))
    q = shlex.quote(run.name)
    click.echo(f"next: stepadapt resume {q}   (or stepadapt fork {q} NEW -S ... to share this base)")


COMMANDS = [import_cmd]
