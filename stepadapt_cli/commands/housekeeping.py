"""A run's lifecycle: `rm` (remove a run and its store rows), `gc` (drop the resume checkpoints of finished
runs), `tag` and `note` (labels and notes shown by `runs`, `show` and the report; `runs --tag` filters)."""

from __future__ import annotations

import click

from core.errors import UserError

from ..common import runs_dir_option
from .management import reconciled_store


@click.command(short_help="Remove a run: its folder and its store rows.")
@click.argument("run_name", metavar="RUN")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--keep-models", is_flag=True, help="Keep RUN/models/ (the trained weights); remove the rest.")
@runs_dir_option
def rm(run_name, yes, keep_models, runs_dir):
    """Remove a run: its folder (with --keep-models, all but models/) and its rows in the store (jobs, metrics,
    artifacts, tags, notes, LLM calls and proxy rounds). A running run is refused: stop it first."""
    from core.manager.housekeeping import disk_use, human_bytes, refuse_if_running, remove_run
    from core.runs import open_run

    store = reconciled_store(runs_dir)
    run = open_run(run_name, runs_dir)
    refuse_if_running(store, run.name, "remove it")
    what = "everything but models/" if keep_models else "its folder"
    if not yes:
        click.confirm(
            f"remove run {run.name} ({what}, {human_bytes(disk_use(run.path))}, {run.path}) and its store rows?",
            abort=True,
            err=True,
        )
    out = remove_run(store, run, keep_models)
    kept = f"; kept {run.path / 'models'} ({human_bytes(out['kept'])})" if keep_models else ""
    click.echo(f"removed run {run.name}: {human_bytes(out['freed'])} freed{kept}")


@click.command(short_help="Drop the resume checkpoints of finished runs.")
@click.argument("run_names", metavar="[RUN]...", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted and how much it frees.")
@runs_dir_option
def gc(run_names, dry_run, runs_dir):
    """Delete checkpoints/ (the training state that resume continues from) of every run that succeeded, or of
    the RUNs given; models, metrics, samples and evaluations stay. Runs not finished keep theirs."""
    from core.manager.housekeeping import checkpoints_to_drop, drop_checkpoints, human_bytes
    from core.runs import Run, is_run_folder, open_run, runs_root

    store = reconciled_store(runs_dir)
    if run_names:
        runs = [open_run(n, runs_dir) for n in run_names]
    else:
        root = runs_root(runs_dir)
        runs = [Run(root / r["name"]) for r in store.list_runs() if is_run_folder(root / r["name"])]
    files = checkpoints_to_drop(store, runs)
    total = sum(f["bytes"] for f in files)
    for f in files:
        click.echo(f"{'would delete' if dry_run else 'delete'} {f['path']} ({human_bytes(f['bytes'])})")
    if dry_run:
        click.echo(f"would free {human_bytes(total)} in {len({f['run'] for f in files})} run(s)")
        return
    freed = drop_checkpoints(store, runs, files)
    click.echo(f"freed {human_bytes(freed)} in {len({f['run'] for f in files})} run(s)")


def _check_key(key: str) -> str:
    if not key or not key.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"bad tag {key!r}: letters, digits, '-', '_' and '.' only")
    return key


@click.command(short_help="Tag a run: KEY or KEY=VALUE (runs --tag filters).")
@click.argument("run_name", metavar="RUN")
@click.argument("tags", metavar="KEY[=VALUE]...", nargs=-1)
@click.option("--remove", "removes", multiple=True, metavar="KEY", help="Remove this tag (repeatable).")
@runs_dir_option
def tag(run_name, tags, removes, runs_dir):
    """Set tags on a run (a bare KEY is a label, KEY=VALUE sets a value; setting a key again replaces it) or
    remove them; with neither, print the run's tags. Shown by runs, show and the report."""
    from core.runs import open_run, register_run

    store = reconciled_store(runs_dir)
    run = open_run(run_name, runs_dir)
    register_run(run)
    if tags or removes:
        store.require_writable()
    for t in tags:
        key, eq, value = t.partition("=")
        store.set_tag(run.name, _check_key(key), value if eq else None)
    for key in removes:
        if not store.remove_tag(run.name, key):
            raise UserError(f"run {run.name} has no tag {key!r}")
    have = store.tags(run.name).get(run.name, {})
    click.echo(f"{run.name}: " + (", ".join(k if v is None else f"{k}={v}" for k, v in have.items()) or "no tags"))


@click.command(short_help="Add a note to a run (shown by show and the report).")
@click.argument("run_name", metavar="RUN")
@click.argument("text", nargs=-1)
@runs_dir_option
def note(run_name, text, runs_dir):
    """Add a dated note to a run (what you tried, what you saw); without TEXT, print its notes."""
    from core.runs import open_run, register_run

    store = reconciled_store(runs_dir)
    run = open_run(run_name, runs_dir)
    register_run(run)
    body = " ".join(text).strip()
    if body:
        store.require_writable()
        store.add_note(run.name, body)
    notes = store.notes(run.name).get(run.name, [])
    if not notes:
        click.echo(f"{run.name}: no notes")
    for n in notes:
        click.echo(f"{n['created'][:16].replace('T', ' ')}  {n['text']}")


COMMANDS = [rm, gc, tag, note]
