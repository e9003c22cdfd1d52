"""Evaluation: `stepadapt eval` (a CI gate), `report`, `compare`."""

from __future__ import annotations

import click

from core.errors import EXIT_AGAINST, EXIT_MAX_FID, UserError

from .. import render
from ..common import device_option, emit_json, inception_option, json_option, runs_dir_option, steps_option


def _evaluate_with_progress(run, dev, models, n, steps, inception, force) -> dict:
    """``evaluate_run`` with a progress bar on a terminal (sampling for FID takes a while; a cached evaluation
    returns at once and draws nothing); its log lines print above the bar."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from core.evaluation.evaluate import evaluate_run

    err = Console(stderr=True)
    columns = (TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("eval", total=None)

        def progress(done, total):
            bar.update(task, completed=done, total=total)

        return evaluate_run(
            run,
            dev,
            log=lambda line: bar.console.print(line, markup=False, highlight=False),
            progress=progress,
            models=models,
            n=n,
            steps=steps,
            inception=inception,
            fid=True,
            force=force,
        )


def _gated(models: dict) -> str:
    return "progressive" if "progressive" in models else "base"


def _check_max_fid(result: dict, got: dict, max_fid) -> int:
    """The gated model's FID against ``--max-fid``: the exit code it asks for (0 when met or not asked)."""
    if max_fid is None:
        return 0
    ok = got[_gated(got)]["fid"] <= max_fid
    result["checks"]["max_fid_ok"] = ok
    return 0 if ok else EXIT_MAX_FID


def _check_against(result: dict, cmp: dict, their_value: float, tolerance: float) -> int:
    """The rule every comparison uses: worse when the whole 95% interval of (ours - theirs) on the primary
    metric lies above zero (above ``tolerance`` x their value, when a tolerance is given)."""
    d = cmp[cmp["primary"]]
    worse = d["ci"][0] > tolerance * their_value
    result["against"] = cmp
    result["checks"]["against_ok"] = not worse
    return EXIT_AGAINST if worse else 0


@click.command("eval", short_help="FID/KID with intervals, loss per group, MACs of a run's models; a CI gate.")
@click.argument("run_name", metavar="[RUN]", required=False)
@click.option(
    "--model",
    "which",
    type=click.Choice(["base", "control", "uniform", "dense-small", "progressive", "all", "both"]),
    default="all",
    show_default=True,
    help="Which models (both: base and progressive).",
)
@click.option(
    "--samples", "n", type=int, default=None, help="Samples for FID/KID (default eval.fid_n: 50000 cifar10, 1024 tiny)."
)
@steps_option("sample", "Respaced sampling steps (default eval.steps: 100; tiny 25).")
@inception_option("TorchScript inception-2015-12-05.pt for standard FID (default: eval.inception, else domain FID).")
@click.option(
    "--images",
    "folders",
    multiple=True,
    type=click.Path(),
    metavar="DIR",
    help="Score a folder of images instead of a run's models (twice: two folders, and each against the other).",
)
@click.option("--preset", default=None, help="With --images and no RUN: the preset whose dataset is the reference.")
@click.option(
    "--max-fid", type=float, default=None, help=f"Exit {EXIT_MAX_FID} if the gated model's FID is above this."
)
@click.option(
    "--against",
    "against_run",
    default=None,
    metavar="RUN",
    help=f"Exit {EXIT_AGAINST} if the gated model is significantly worse than RUN's on the primary metric.",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.0,
    show_default=True,
    help="Relative margin: worse only when the interval of (ours - theirs) is above tolerance x theirs.",
)
@click.option("--force", is_flag=True, help="Measure again even if the model and settings are unchanged.")
@click.option(
    "--swap",
    is_flag=True,
    help="Also the per-group swap test: the base everywhere but one group's "
    "timesteps, which get that group's own model; FID/KID against the base, paired.",
)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys in docs/evaluation.md).")
@runs_dir_option
def eval_cmd(
    run_name,
    which,
    n,
    steps,
    inception,
    folders,
    preset,
    max_fid,
    against_run,
    tolerance,
    force,
    swap,
    device,
    as_json,
    runs_dir,
):
    """FID and KID with 95% intervals, precision/recall, held-out loss per timestep group, params and MACs
    (averaged over timesteps) of a run's base, control and progressive models, stored in RUN/eval.json, with
    a verdict per pair. With --images: score folders of images against the dataset.

    Exit codes: 0 all checks passed, 4 --max-fid missed, 5 worse than --against, 2 bad input."""
    if folders:
        from core.training.devices import pick_device

        return _eval_images(run_name, preset, folders, inception, pick_device(device), as_json, runs_dir)
    if run_name is None:
        raise UserError("give a RUN to evaluate (or --images DIR)")
    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    their_run = open_run(against_run, runs_dir) if against_run else None
    from core.evaluation.evaluate import compare_runs, evaluate_run  # torch: once the runs are found
    from core.training.devices import pick_device

    dev = pick_device(device)
    models = {"all": ("base", "control", "uniform", "dense-small", "progressive"), "both": ("base", "progressive")}.get(
        which, (which,)
    )
    ev = _evaluate_with_progress(run, dev, models, n, steps, inception, force)
    log = lambda s: click.echo(s, err=True)
    got = {w: ev["models"][w] for w in models if w in ev["models"]}
    if not got:
        raise UserError(f"run {run.name} has no {which} model to evaluate")
    first = next(iter(got.values()))
    keys = (
        "fid",
        "fid_ci",
        "kid",
        "kid_ci",
        "precision",
        "recall",
        "params",
        "macs",
        "macs_sampled",
        "loss",
        "loss_ci",
        "loss_groups",
        "train_steps",
    )
    result = {
        "run": run.name,
        "kind": first["fid_kind"],
        "extractor": first["fid_extractor"],
        "n": first["fid_n"],
        "steps": first["fid_steps"],
        "primary": ev["primary"],
        "models": {w: {k: r.get(k) for k in keys} for w, r in got.items()},
        "comparisons": [c for c in ev["comparisons"] if c["model"] in got and c["against"] in got],
        "fid_curve": ev.get("fid_curve", []) if "progressive" in got else [],
        "against": None,
        "checks": {"max_fid": max_fid, "max_fid_ok": None, "against_ok": None, "tolerance": tolerance},
    }
    code = _check_max_fid(result, got, max_fid)
    if their_run is not None:
        bm = "progressive" if their_run.model("progressive").exists() else "base"
        bev = evaluate_run(
            their_run,
            dev,
            log=log,
            models=(bm,),
            n=first["fid_n"],
            steps=first["fid_steps"],
            inception=inception,
            fid=True,
        )
        cmp = compare_runs(run, _gated(got), their_run, bm, inception, dev, log)
        code = code or _check_against(result, cmp, bev["models"][bm][cmp["primary"]], tolerance)
    result["passed"] = code == 0
    result["exit_code"] = code
    if swap:
        from core.evaluation.swap import swap_test

        result["swap"] = swap_test(run, dev, log, n=first["fid_n"], steps=first["fid_steps"], inception=inception)
    if as_json:
        emit_json(result)
    else:
        render.print_eval(result, ev)
        if swap:
            render.print_swap(run.name, result["swap"])
    if code:
        raise click.exceptions.Exit(code)


def _eval_images(run_name, preset, folders, inception, dev, as_json, runs_dir) -> None:
    from core import config as C
    from core.evaluation.images import evaluate_images
    from core.runs import open_run, runs_root

    if run_name:
        run = open_run(run_name, runs_dir)
        cfg, root = run.config, run.path.parent
    else:
        cfg, root = C.resolve(preset or "tiny"), runs_root(runs_dir)
    out = evaluate_images(cfg, root, list(folders), inception, dev, log=lambda s: click.echo(s, err=True))
    if as_json:
        emit_json(out)
    else:
        render.print_image_scores(out)


@click.command(short_help="HTML and Markdown report of a run.")
@click.argument("run_name", metavar="RUN")
@click.option("--with-run", "others", multiple=True, metavar="RUN", help="Other runs to show on the FID vs MACs plot.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder (default RUN/report).")
@click.option(
    "--self-contained", is_flag=True, help="Also write standalone.html: one file with its images inlined, to mail."
)
@click.option("--open", "open_it", is_flag=True, help="Open the report in a browser (where there is one).")
@runs_dir_option
def report(run_name, others, out, self_contained, open_it, runs_dir):
    """One HTML page and a Markdown file: the verdict and bottom line first, then the Table 1 comparison,
    schedule, training losses, proxy rounds (every try, the kept one marked), FID vs MACs, sample grids, jobs."""
    from pathlib import Path

    from core.evaluation.report import write_report
    from core.evaluation.report_page import write_self_contained
    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    other_runs = [open_run(b, runs_dir) for b in others]
    folder = Path(out) if out else run.report_dir()
    html, md = write_report(run, other_runs, folder)
    click.echo(f"report  {html}\nmarkdown {md}")
    if self_contained:
        html = write_self_contained(html)
        click.echo(f"one file {html}")
    if open_it:
        _open_in_browser(html)


def _open_in_browser(page) -> None:
    """Open ``page`` in a browser where there is a desktop (or $BROWSER); else, say where it is. A text browser
    is never started in this terminal."""
    import os
    import sys
    import webbrowser

    desktop = sys.platform in ("darwin", "win32") or any(
        os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")
    )
    opened = False
    if desktop:
        try:
            opened = webbrowser.open(page.resolve().as_uri())
        except webbrowser.Error:
            opened = False
    if not opened:
        click.echo(f"no browser to open it here; open {page.resolve()}", err=True)


@click.command(short_help="Table 1 style comparison of runs, and config keys that differ.")
@click.argument("run_names", metavar="RUN...", nargs=-1, required=True)
@json_option
@runs_dir_option
def compare(run_names, as_json, runs_dir):
    """Compare runs like the paper's Table 1 (FID, MACs and params averaged over timesteps, training steps),
    whether they share stage 1, and the config keys that differ. A run not evaluated yet is listed as such
    (stepadapt eval RUN fills its rows)."""
    from core.manager.monitor import comparison
    from core.runs import open_run

    from ..render.evaluation import print_comparison

    data = comparison([open_run(n, runs_dir) for n in run_names])
    if as_json:
        emit_json(data)
    else:
        print_comparison(data)


COMMANDS = [eval_cmd, report, compare]
