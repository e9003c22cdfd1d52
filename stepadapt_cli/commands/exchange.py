"""Models in and out of the tool: ``import`` makes a published model a new run's stage 1; ``export`` writes a run's
models as diffusers folders."""

from __future__ import annotations

import shlex

import click

from core.errors import UserError

from ..common import check_name, overrides_option, runs_dir_option


@click.command("import", short_help="Make an improved-diffusion checkpoint or a diffusers UNet a new run's stage 1.")
@click.argument("run_name", metavar="RUN", callback=check_name)
@click.option(
    "--from-iddpm",
    "file",
    default=None,
    type=click.Path(dir_okay=False),
    help="improved-diffusion UNet state dict (e.g. cifar10_uncond_50M_500K.pt).",
)
@click.option(
    "--from-diffusers",
    "folder",
    default=None,
    type=click.Path(file_okay=False),
    help="A diffusers UNet2DModel folder as save_pretrained writes it (config.json, "
    "diffusion_pytorch_model.safetensors, optionally scheduler_config.json or scheduler/; e.g. a local "
    "copy of google/ddpm-cifar10-32). Nothing is downloaded.",
)
@click.option(
    "--preset",
    default=None,
    help="The preset the checkpoint's architecture matches (cifar10, "
    "imagenet64, ...; default: the config file's, else tiny). For --from-diffusers: the preset of the "
    "training, data and evaluation settings (the model's come from its config.json).",
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
def import_cmd(run_name, file, folder, preset, config_file, data_spec, runs_dir, overrides):
    """Create run RUN whose finished stage 1 is a published model, converted to stepadapt's UNet (a misfit writes
    nothing). From improved-diffusion (--from-iddpm): every tensor's shape is checked against the preset; the model
    records model.rescale_timesteps (the network sees t * 1000 / T, as theirs were trained) and GroupNorm(32).
    From diffusers (--from-diffusers): an unconditional UNet2DModel read with safetensors (never pickle); its
    config.json fixes the model settings (model.family diffusers) and its scheduler the process (DDPM's linear
    betas, epsilon prediction, fixed variance: diffusion.fixed_variance). Continue with: stepadapt resume RUN
    (stage 2 onwards), or fork it: stepadapt fork RUN NEW."""
    from core import config as C
    from core.manager.bases import import_base, import_config

    if (file is None) == (folder is None):
        raise UserError("import takes one model: --from-iddpm FILE or --from-diffusers DIR")
    if folder is not None:
        from core.model.unet2d import is_folder

        if not is_folder(folder):
            raise UserError(
                f"{folder} is not a diffusers save_pretrained folder (no config.json, nor unet/config.json)"
            )
    extra = ([f"data.spec={data_spec}"] if data_spec is not None else []) + list(overrides)  # --data, then -S
    cfg = import_config(C.resolve(preset, config_file, extra), overrides)
    run = import_base(file or folder, cfg, run_name, runs_dir, log=lambda line: click.echo(line, err=True))
    q = shlex.quote(run.name)
    click.echo(f"next: stepadapt resume {q}   (or stepadapt fork {q} NEW -S ... to share this base)")


@click.command("export", short_help="A run's models as diffusers folders, or runs' results as CSV.")
@click.argument("run_names", metavar="RUN...", nargs=-1, required=True)
@click.option(
    "--to-diffusers",
    "dest",
    default=None,
    type=click.Path(dir_okay=True, file_okay=False),
    help="A new (or empty) folder: one UNet2DModel folder per model, scheduler_config.json, routing.json, README.md.",
)
@click.option(
    "--csv",
    "csv_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write one row per run, model and metric (value, 95% interval, n) of the runs' evaluations.",
)
@click.option("--history", is_flag=True, help="With --csv: the training curves instead (run, stage, step, key, value).")
@runs_dir_option
def export_cmd(run_names, dest, csv_file, history, runs_dir):
    """Write every model of RUN (base, the controls, each group's model of the progressive model) as a folder that
    diffusers' UNet2DModel.from_pretrained loads (--to-diffusers), or the results of RUN... as CSV (--csv; with
    --history their training curves), for a spreadsheet, pandas, W&B or MLflow.

    --to-diffusers writes the run's scheduler and routing.json (group, timesteps, folder), for runs of either
    family. A model whose widths a UNet2DModel config cannot express (pruned widths that differ within a level, a
    pruned attention head size, improved-diffusion's timestep scale) is named with the reason, in the output,
    routing.json and README.md, and not written. DIR appears whole or not at all."""
    from core.runs import open_run

    if (dest is None) == (csv_file is None):
        raise UserError("give one of --to-diffusers DIR or --csv FILE")
    if history and csv_file is None:
        raise UserError("--history goes with --csv FILE")
    runs = [open_run(n, runs_dir) for n in run_names]
    if csv_file is not None:
        from core.evaluation.history import history_rows, result_rows, write_csv

        rows = [row for run in runs for row in (history_rows(run) if history else result_rows(run))]
        write_csv(rows, csv_file)
        click.echo(f"{csv_file}: {len(rows)} rows from {len(runs)} run(s)")
        return
    if len(runs) != 1:
        raise UserError("--to-diffusers exports one run at a time")
    from core.manager.bases import export_run

    table = export_run(runs[0], dest, log=lambda line: click.echo(line, err=True))
    rows = list(table["models"].values()) + table["groups"]
    done = sum(1 for r in rows if r["folder"])
    click.echo(f"{dest}: {done} of {len(rows)} models as diffusers folders; routing table {dest}/routing.json")


COMMANDS = [import_cmd, export_cmd]
