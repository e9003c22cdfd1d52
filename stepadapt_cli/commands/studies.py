"""The paper's experiments as studies: ``study NAME`` runs one, ``study resume|show|report|list``."""

from __future__ import annotations

import shlex

import click

from core.errors import Interrupted

from .. import render
from ..common import emit_json, json_option, overrides_option, preset_option, runs_dir_option, slots_options
from .management import parse_gpus, reconciled_store


class StudyGroup(click.Group):
    """``stepadapt study NAME ...`` is ``stepadapt study run NAME ...`` (NAME is not a subcommand)."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


@click.group("study", cls=StudyGroup, short_help="The paper's tables as studies: runs on one base, paper beside.")
def study():
    """The paper's experiments (tables 1-6) as studies: a set of runs that fork one shared stage 1, run in
    parallel on the free device slots, resumable as a whole, reported as one table with the paper's published
    numbers beside ours. `stepadapt study NAME` runs one (NAME from `study list`, or a study YAML file)."""


def _execute(rec, store, runs_dir, parallel, gpus, grace):
    from core.manager.pipeline import device_slots
    from core.manager.studies import finished_or_raise, run_study, stop_study

    slots = device_slots(parallel or 1, parse_gpus(gpus))

    def log(line):
        click.echo(line, err=True)

    import signal

    def interrupt(signum, frame):  # SIGTERM (kill, or a background study where SIGINT is ignored) as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        statuses = run_study(rec, store, slots, runs_dir, grace, log)
    except KeyboardInterrupt:
        log(f"stopping study {rec['id']} ...")
        stop_study(rec, store, grace, log=log)
        raise Interrupted(
            f"study {rec['id']} stopped; continue it with: stepadapt study resume {shlex.quote(rec['id'])}"
        ) from None
    _report(rec, runs_dir)
    finished_or_raise(rec, statuses)


def _report(rec, runs_dir):
    from core.evaluation.report import write_study_report
    from core.manager.studies import results, study_dir
    from core.runs import Run, is_run_folder, runs_root

    res = results(rec, runs_dir)
    runs = [Run(runs_root(runs_dir) / n) for n in rec["arms"].values() if is_run_folder(runs_root(runs_dir) / n)]
    html, _ = write_study_report(res, runs, study_dir(runs_dir, rec["id"]) / "report")
    render.print_study(res)
    click.echo(f"report: {html}")


@study.command("run", short_help="Run a study: the shared base once, then every arm.")
@click.argument("name", metavar="NAME")
@preset_option
@click.option(
    "--base",
    default=None,
    metavar="RUN|shipped",
    help="Fork every arm from this run's finished stage 1 (RUN@STEP: a milestone), or from the base that ships "
    "with the package (shipped).",
)
@click.option("--name", "study_id", default=None, help="Study id (default NAME-PRESET); its runs are ID-ARM.")
@slots_options
@runs_dir_option
@overrides_option
def run_cmd(name, preset, base, study_id, parallel, gpus, grace, runs_dir, overrides):
    """Run study NAME: create (or take with --base) one base run and train its stage 1 once, fork one run per
    arm, run the arms' pipelines, then print the table beside the paper's numbers and write the report."""
    from core.manager.studies import create_study, load_definition

    defn = load_definition(name)
    store = reconciled_store(runs_dir)
    rec = create_study(defn, study_id, preset, base, list(overrides), runs_dir)
    click.echo(
        f"study {rec['id']}: {defn['title']}; base {rec['base']}, arms {', '.join(rec['arms'].values())}", err=True
    )
    _execute(rec, store, runs_dir, parallel, gpus, grace)


@study.command(short_help="Continue a study: only its unfinished runs.")
@click.argument("study_id", metavar="ID")
@slots_options
@runs_dir_option
def resume(study_id, parallel, gpus, grace, runs_dir):
    """Continue study ID: finished runs are kept, the others resume from their checkpoints."""
    from core.manager.studies import load_record

    rec = load_record(runs_dir, study_id)
    _execute(rec, reconciled_store(runs_dir), runs_dir, parallel, gpus, grace)


@study.command(short_help="A study's runs, their status, and its table.")
@click.argument("study_id", metavar="ID")
@json_option
@runs_dir_option
def show(study_id, as_json, runs_dir):
    """Study ID: its runs with their status, and the table so far (ours beside the paper's)."""
    from core.manager.studies import load_record, results

    rec = load_record(runs_dir, study_id)
    store = reconciled_store(runs_dir)
    res = results(rec, runs_dir)
    res["runs"] = {
        n: (store.get_run(n) or {}).get("status", "not created") for n in [rec["base"], *rec["arms"].values()]
    }
    if as_json:
        emit_json(res)
        return
    render.print_study(res)


@study.command(short_help="Write a study's report (HTML and Markdown).")
@click.argument("study_id", metavar="ID")
@runs_dir_option
def report(study_id, runs_dir):
    """RUNS_DIR/studies/ID/report/index.html and report.md: the table beside the paper's, FID vs MACs, samples."""
    from core.manager.studies import load_record

    _report(load_record(runs_dir, study_id), runs_dir)


@study.command("list", short_help="Study definitions and started studies.")
@json_option
@runs_dir_option
def list_cmd(as_json, runs_dir):
    """The study definitions shipped in studies/ (one YAML file each) and the studies started in the runs folder."""
    from core.manager.studies import definitions, list_records, load_definition

    defs = [
        {"name": n, "title": load_definition(n)["title"], "arms": len(load_definition(n)["arms"]), "file": str(p)}
        for n, p in definitions().items()
    ]
    started = [
        {"id": r["id"], "study": r["study"], "preset": r["preset"], "base": r["base"], "runs": len(r["arms"])}
        for r in list_records(runs_dir)
    ]
    if as_json:
        emit_json({"definitions": defs, "studies": started})
        return
    render.print_study_list(defs, started)


COMMANDS = [study]
