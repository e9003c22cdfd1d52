"""The method as one pipeline of tracked jobs: run, resume, kill.

A run's pipeline is always a tracked ``pipeline`` job (``pipeline.start_detached``): ``--detach`` returns
at once, otherwise this process follows the job (its log lines and a live table of its jobs) until it ends;
Ctrl-C stops the run as ``stepadapt kill`` would.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import click

from core.errors import Interrupted, StageFailed, UserError
from core.manager.bases import is_import_source
from core.names import GRACE_S, JOB_ACTIVE, PRUNE_METHODS

from .. import render
from ..common import check_name, inception_option, overrides_option, preset_option, runs_dir_option, slots_options


def reconciled_store(runs_dir):
    """The runs folder's store, with jobs whose process is gone marked lost (``core.store.open_store`` opens it
    as it is)."""
    from core.manager.jobs import open_reconciled
    from core.runs import runs_root

    return open_reconciled(runs_root(runs_dir))


def pipeline_options(f):
    return click.option("--detach", is_flag=True, help="Run in the background as a tracked job and return.")(
        slots_options(f)
    )


def _collect_launcher(ctx, param, value):
    """Gather the launcher options as ``launcher.*`` config overrides in ``ctx.meta``."""
    if value is None or value == ():
        return value
    key = {"sbatch_opts": "sbatch"}.get(param.name, param.name)
    if key == "sbatch":
        bad = [v for v in value if "=" not in v or not v.split("=", 1)[0].strip()]
        if bad:
            raise UserError(f"--sbatch {bad[0]!r}: use KEY=VALUE, e.g. --sbatch constraint=a100")
        value = "[" + ", ".join(json.dumps(v) for v in value) + "]"
    ctx.meta.setdefault("launcher", []).append(f"launcher.{key}={value}")
    return value


def launcher_options(f):
    """--launcher and the Slurm options: recorded in the run's config (``launcher``, not in its hash)."""

    def opt(*decls, **kw):
        return click.option(*decls, callback=_collect_launcher, expose_value=False, **kw)

    for o in reversed(
        [
            opt(
                "--launcher",
                "kind",
                type=click.Choice(["local", "slurm"]),
                default=None,
                help="Where stage jobs run: local subprocesses, or Slurm jobs through submitit [default: the "
                "config's, local].",
            ),
            opt("--partition", default=None, help="Slurm partition of the jobs."),
            opt("--gpus-per-job", "gpus_per_job", type=click.IntRange(0), default=None, help="Slurm: GPUs per job."),
            opt("--cpus-per-job", "cpus_per_job", type=click.IntRange(0), default=None, help="Slurm: CPUs per job."),
            opt("--mem", default=None, help="Slurm: memory per job, e.g. 32G."),
            opt(
                "--time",
                type=click.IntRange(0),
                default=None,
                help="Slurm: time limit per job in minutes (jobs checkpoint on Slurm's warning signal and are "
                "submitted again).",
            ),
            opt("--account", default=None, help="Slurm account."),
            opt("--qos", default=None, help="Slurm quality of service."),
            opt(
                "--sbatch",
                "sbatch_opts",
                multiple=True,
                metavar="KEY=VALUE",
                help="Any other sbatch option, e.g. --sbatch constraint=a100 (repeatable).",
            ),
        ]
    ):
        f = o(f)
    return f


def launcher_overrides() -> list[str]:
    return list(click.get_current_context().meta.get("launcher", []))


def _check_launcher(cfg: dict) -> None:
    if cfg["launcher"]["kind"] == "slurm":
        from core.manager.slurm import check_tools

        check_tools()


def parse_gpus(gpus):
    if gpus is None:
        return None
    try:
        return [int(x) for x in gpus.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bad --gpus {gpus!r}: use indices like 0,1") from None


def execute(run, store, detach: bool, parallel: Optional[int], gpus, grace: float, resuming: bool = False) -> None:
    """Start the run's pipeline job (``resuming``: through ``pipeline.resume_run``, which keeps the slots it last
    ran on unless ``parallel`` or ``gpus`` say otherwise); unless ``detach``, follow it to its end."""
    from core.manager.pipeline import device_slots, resume_run, start_detached
    from core.runs import runs_root

    _check_launcher(run.config)
    slots = None if resuming and parallel is None and gpus is None else device_slots(parallel or 1, parse_gpus(gpus))
    if resuming:
        job_id, pid = resume_run(store, run, slots, grace)
    else:
        job_id, pid = start_detached(run, store, slots, grace)
    if detach:
        on = ", ".join(sorted(set(store.job(job_id)["args"]["slots"])))
        click.echo(f"run {run.name}: started in the background (job {job_id}, pid {pid}) on {on}")
        rd = (
            ""
            if run.path.parent.resolve() == runs_root(None).resolve()
            else f" --runs-dir {shlex.quote(str(run.path.parent))}"
        )
        name = shlex.quote(run.name)
        click.echo(
            f"follow it with: stepadapt logs {name}{rd} -f   |   stepadapt tui{rd}   |   stepadapt kill {name}{rd}"
        )
        return
    job = follow(run, store, job_id, grace)
    if job["status"] == "killed":  # the pipeline's own words when they say how to go on (a time limit: --time)
        said = job["message"] or ""
        raise Interrupted(
            said
            if "stepadapt resume" in said
            else f"run {run.name} stopped; continue it with: stepadapt resume {shlex.quote(run.name)}"
        )
    if job["status"] != "succeeded":
        raise StageFailed(
            job["message"] or f"run {run.name} {job['status']}; see stepadapt logs {shlex.quote(run.name)}"
        )
    from core.manager.monitor import comparison

    render.print_comparison(comparison([run]))
    report = run.report_dir() / "index.html"
    if report.exists():
        click.echo(
            f"report: {report}   (stepadapt show {shlex.quote(run.name)}; stepadapt tui {shlex.quote(run.name)})"
        )


def follow(run, store, job_id: int, grace: float) -> dict:
    """Print the pipeline job's log lines (and, on a terminal, a live table of the run's jobs) until the job
    ends; Ctrl-C stops the run. Returns the job's final row."""
    from core.manager.jobs import job_alive, reconcile
    from core.manager.pipeline import stop_run

    view = render.LiveJobs(f"run {run.name}") if sys.stdout.isatty() else None
    log = view.log if view else (lambda s: click.echo(s, err=True))
    log_file, pos = Path(store.job(job_id)["log_path"]), 0
    try:
        while True:
            pos = _echo_new_lines(log_file, pos, log)
            job = store.job(job_id)
            if view:
                view(store.jobs(run.name))
            if job["status"] not in JOB_ACTIVE:
                break
            if not job_alive(job):
                reconcile(store)  # it died without a word: lost
            time.sleep(0.3)
        end = time.time() + 5
        while job_alive(job) and time.time() < end:  # its last lines are written after its status
            time.sleep(0.05)
        _echo_new_lines(log_file, pos, log, final=True)
    except KeyboardInterrupt:
        log(f"stopping run {run.name} ...")
        stop_run(store, run.name, grace, log=log)
        raise Interrupted(
            f"run {run.name} stopped; continue it with: stepadapt resume {shlex.quote(run.name)}"
        ) from None
    finally:
        if view:
            view.stop()
    return store.job(job_id)


def _echo_new_lines(path: Path, pos: int, log, final: bool = False) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            chunk = f.read()
    except FileNotFoundError:
        return pos
    end = len(chunk) if final else chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode(errors="replace").splitlines():
        log(line)
    return pos + end


def _settings(method, llm, api_base, data_spec, seed, overrides) -> list[str]:
    """The command's options as config overrides, before the -S ones."""
    extra = [
        f"{key}={val}"
        for key, val in (
            ("prune.method", method),
            ("prune.llm", llm),
            ("prune.api_base", api_base),
            ("data.spec", data_spec),
            ("seed", seed),
        )
        if val is not None
    ]
    return extra + list(overrides)


@click.command("run", short_help="The whole method as one pipeline of tracked jobs.")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@preset_option
@click.option(
    "--name",
    "run_name",
    default=None,
    callback=check_name,
    help="Run name, printable characters only (default: PRESET-DATE-TIME).",
)
@click.option(
    "--base",
    default=None,
    metavar="RUN|FILE.pt|shipped",
    help="Start from a trained base: another run's (a fork sharing its stage 1), an "
    "improved-diffusion checkpoint or diffusers folder (imported), or `shipped`: the base that ships with the package.",
)
@click.option(
    "--method",
    type=click.Choice(PRUNE_METHODS),
    default=None,
    help="How group models are pruned (none: fine-tune unpruned copies).",
)
@click.option("--llm", default=None, help="Proxy LLM (litellm model string; default the offline local search).")
@click.option("--api-base", default=None, help="Proxy: base URL of an OpenAI-compatible server.")
@click.option("--data", "data_spec", default=None, help="digits | cifar10[:ROOT] | folder:PATH | PATH.")
@click.option("--seed", type=int, default=None)
@inception_option("TorchScript inception-2015-12-05.pt: standard FID (eval.inception; default the domain FID).")
@click.option(
    "--single-stage",
    is_flag=True,
    help="The paper's single-stage variant: every group's model from scratch, no stage 1 (method none).",
)
@pipeline_options
@launcher_options
@runs_dir_option
@overrides_option
def run_cmd(
    config_file,
    preset,
    run_name,
    base,
    method,
    llm,
    api_base,
    data_spec,
    seed,
    inception,
    single_stage,
    detach,
    parallel,
    gpus,
    grace,
    runs_dir,
    overrides,
):
    """The whole method as one pipeline of tracked jobs: base training -> schedule -> per-group prune ->
    per-group fine-tune -> progressive model -> control -> samples -> evaluation. Ends with a table of the
    base, the control and the progressive model. With --base, stage 1 is taken from another run or a file."""
    from core import config as C
    from core.runs import create_run

    extra = launcher_overrides() + _settings(
        method or ("none" if single_stage else None), llm, api_base, data_spec, seed, overrides
    )
    if single_stage:
        extra.insert(0, "finetune.single_stage=true")
    if inception is not None:
        if not Path(inception).expanduser().is_file():
            raise UserError(f"Inception weights not found: {inception}")
        extra.insert(0, f"eval.inception={Path(inception).expanduser().resolve()}")
    parse_gpus(gpus)
    store = reconciled_store(runs_dir)
    log = lambda line: click.echo(line, err=True)
    from core.manager.shipped import import_shipped, shipped_name

    shipped = shipped_name(base, preset)
    if shipped is not None:  # the package's own trained base: its stage-1 settings, a fork of it
        if config_file:
            raise UserError("a run on the shipped base takes its stage-1 settings; change what may change with -S")
        run = import_shipped(shipped, extra, run_name, runs_dir, log=log)
    elif base is not None and not is_import_source(base):  # a fork: the parent's config, its stage 1
        if config_file or preset:
            raise UserError("a fork takes its base run's config; change what may change with -S (or --method ...)")
        from core.manager.bases import fork_run

        run = fork_run(base, run_name, extra, runs_dir, log=log)
    else:
        cfg = C.resolve(preset, config_file, extra)
        from core.training.sources import check_dataset

        check_dataset(cfg)  # a missing dataset fails here, before a run folder exists (without loading torch)
        _check_launcher(cfg)
        if base is not None:
            from core.manager.bases import import_base, import_config

            cfg = import_config(cfg, overrides)
            run = import_base(base, cfg, run_name, runs_dir, log=log)
        else:
            run = create_run(cfg, run_name, runs_dir)
    cfg = run.config
    click.echo(
        f"run {run.name}: {cfg['preset']} preset, prune method {cfg['prune']['method']}, "
        f"config {run.meta['config_hash']}, folder {run.path}",
        err=True,
    )
    execute(run, store, detach, parallel, gpus, grace)


@click.command(short_help="A new run sharing another run's trained stage 1.")
@click.argument("parent", metavar="RUN")
@click.argument("run_name", metavar="NEW")
@click.option("--method", type=click.Choice(PRUNE_METHODS), default=None, help="How group models are pruned.")
@click.option("--llm", default=None, help="Proxy LLM (litellm model string).")
@click.option("--api-base", default=None, help="Proxy: base URL of an OpenAI-compatible server.")
@click.option("--seed", type=int, default=None)
@runs_dir_option
@overrides_option
def fork(parent, run_name, method, llm, api_base, seed, runs_dir, overrides):
    """Create run NEW from RUN's config and finished stage 1 (copies of its base files, checked against the
    sha256 RUN recorded when its stage 1 finished; recorded as its parent), to compare pruning methods, schedules
    or group counts on one base. model, diffusion, train and data cannot change. Start it with: stepadapt resume
    NEW."""
    from core.manager.bases import fork_run

    run = fork_run(
        parent,
        run_name,
        _settings(method, llm, api_base, None, seed, overrides),
        runs_dir,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(f"next: stepadapt resume {shlex.quote(run.name)}")


@click.command(short_help="Continue a stopped, failed or lost run.")
@click.argument("run_name", metavar="RUN")
@pipeline_options
@launcher_options
@runs_dir_option
def resume(run_name, detach, parallel, gpus, grace, runs_dir):
    """Continue a stopped, failed or lost run: finished stages and groups are skipped, interrupted
    training continues from its last checkpoint. The launcher options change where the rest runs (e.g. a
    longer Slurm --time)."""
    from core.runs import open_run, register_run

    store = reconciled_store(runs_dir)
    store.require_writable()
    run = open_run(run_name, runs_dir)
    _, row = register_run(run)
    if row["status"] == "succeeded":
        raise UserError(f"run {run.name} has finished (succeeded); nothing to resume")
    if launcher_overrides():
        from core.runs import set_launcher

        la = set_launcher(run, launcher_overrides())
        click.echo(
            f"run {run.name}: launcher {la['kind']}" + (f", time {la['time']} min" if la["time"] else ""), err=True
        )
    click.echo(f"run {run.name}: resuming ({row['status']})", err=True)
    execute(run, store, detach, parallel, gpus, grace, resuming=True)


def resolve_target(store, target: str, runs_dir):
    """RUN name (a run of that name exists) or JOB id."""
    from core.runs import is_run_folder, runs_root

    if store.get_run(target) is not None or is_run_folder(runs_root(runs_dir) / target):
        return "run", target
    if target.isdigit() and store.job(int(target)) is not None:
        return "job", int(target)
    raise UserError(f"no run or job {target!r} in {store.path.parent}")


def job_tag(j: dict) -> str:
    return j["stage"] + ("" if j["group_index"] is None else f"-g{j['group_index']:02d}")


@click.command(short_help="Stop a run or a job (training checkpoints first).")
@click.argument("target", metavar="RUN|JOB")
@click.option(
    "--grace", type=float, default=GRACE_S, show_default=True, help="Seconds between SIGINT, SIGTERM and SIGKILL."
)
@runs_dir_option
def kill(target, grace, runs_dir):
    """Stop a run (its pipeline and every running job) or one job: SIGINT (training checkpoints), then SIGTERM,
    then SIGKILL to the job's process group."""
    from core.manager.jobs import stop_job
    from core.manager.pipeline import stop_run

    store = reconciled_store(runs_dir)
    kind, ref = resolve_target(store, target, runs_dir)

    def log(line):
        click.echo(line, err=True)

    if kind == "job":
        click.echo(f"job {ref}: {stop_job(store, ref, grace, log=log)}")
        return
    for j, status in stop_run(store, ref, grace, log=log):
        click.echo(f"job {j['id']} ({job_tag(j)}): {status}")
    click.echo(f"run {ref}: killed; continue it with stepadapt resume {shlex.quote(ref)}")


COMMANDS = [run_cmd, fork, resume, kill]
