"""Curves across runs: ``plot`` overlays training curves of several runs in one PNG."""

from __future__ import annotations

import click

from ..common import runs_dir_option


@click.command(short_help="Overlay training curves of runs in one PNG.")
@click.argument("run_names", metavar="RUN...", nargs=-1, required=True)
@click.option(
    "--metric",
    default="loss",
    show_default=True,
    help="A logged number: loss (the training loss: L_hybrid, or L_simple), mse, vb, it_s.",
)
@click.option(
    "--stage",
    "stages",
    default="base,control,finetune",
    show_default=True,
    help="Comma-separated: base, control, uniform, dense-small, finetune (every group's curve).",
)
@click.option("--smooth", "weight", type=float, default=0.0, show_default=True, help="EMA weight in [0, 1).")
@click.option("--linear", is_flag=True, help="A linear y axis (default: log).")
@click.option("--out", type=click.Path(dir_okay=False), default="curves.png", show_default=True, help="The PNG.")
@runs_dir_option
def plot(run_names, metric, stages, weight, linear, out, runs_dir):
    """Overlay the training curves of RUN... (one colour per run, one line style per stage; fine-tune groups as
    thin lines) in one PNG, optionally smoothed as TensorBoard does. Reads RUN/metrics/*.jsonl only."""
    from pathlib import Path

    from core.errors import UserError
    from core.evaluation.history import curves, plot_curves, smooth
    from core.runs import open_run

    runs = [open_run(n, runs_dir) for n in run_names]
    smooth([], weight)  # a bad weight: one line before anything is read
    found = curves(runs, [s.strip() for s in stages.split(",") if s.strip()], metric)
    if not found:
        raise UserError(f"no {metric!r} curve in stages {stages} of {', '.join(r.name for r in runs)}")
    plot_curves(found, metric, Path(out), weight, log_y=not linear)
    click.echo(f"{out}: {len(found)} curves of {metric} from {len(runs)} run(s)")


COMMANDS = [plot]
