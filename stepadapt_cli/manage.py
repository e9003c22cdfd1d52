"""Experiment-manager commands: run, resume, kill, runs, show, compare, logs."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from core.errors import UserError

from .common import _emit_json, _overrides_option, _runs_dir_option, console


def _store(runs_dir):
    from core.jobs import open_reconciled
    from core.runs import runs_root

    return open_reconciled(runs_root(runs_dir))


# -- a live view of the jobs -------------------------------------------------------------------------
class LiveView:
    """A rich table of the run's jobs, redrawn while the pipeline waits (terminal only)."""

    def __init__(self, title: str):
        from rich.live import Live

        self.title = title
        self.live = Live(refresh_per_second=4, transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def say(self, line: str) -> None:
        self.live.console.print(line)

    def __call__(self, jobs: list[dict]) -> None:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        tab = Table(title=self.title, expand=False)
        for col in ("job", "stage", "group", "status", "progress", "", "note"):
            tab.add_column(col)
        for j in jobs:
            if j["stage"] == "pipeline":
                continue
            total, done = j["total"] or 0, j["progress"] or 0
            bar = ProgressBar(total=total or 1, completed=done if total else 0, width=24)
            style = {"succeeded": "green", "failed": "red", "killed": "yellow", "lost": "red"}.get(j["status"], "")
            tab.add_row(str(j["id"]), j["stage"], "" if j["group_index"] is None else str(j["group_index"]),
                        f"[{style}]{j['status']}[/]" if style else j["status"], bar,
                        f"{done}/{total}" if total else "", (j["message"] or "")[:60])
        self.live.update(tab)

    def stop(self) -> None:
        self.live.stop()


def _execute(run, store, detach: bool, parallel: int, gpus, grace: float) -> None:
    from core.jobs import Heartbeat, proc_start
    from core.pipeline import Pipeline, Stopped, device_slots, ensure_idle, start_detached
    from core.store import _now

    ensure_idle(store, run)
    slots = device_slots(parallel, gpus)
    if detach:
        job_id, pid = start_detached(run, store, slots, grace)
        click.echo(f"run {run.name}: started in the background (job {job_id}, pid {pid}) on "
                   f"{', '.join(sorted(set(slots)))}")
        click.echo(f"follow it with: stepadapt logs {run.name} -f   |   stepadapt tui   |   stepadapt kill {run.name}")
        return
    job_id = store.add_job({"run": run.name, "stage": "pipeline", "args": {"slots": slots, "grace": grace},
                            "device": ",".join(sorted(set(slots))), "pid": os.getpid(), "pgid": None,
                            "proc_start": proc_start(os.getpid()), "status": "running", "started": _now(),
                            "heartbeat": time.time(), "command": sys.argv})
    hb = Heartbeat(store.path, job_id).start()
    view = LiveView(f"run {run.name}") if sys.stdout.isatty() else None
    say = view.say if view else (lambda s: click.echo(s, err=True))
    try:
        Pipeline(run, store, slots, grace=grace, say=say, view=view).execute()
        store.finish_job(job_id, "succeeded", 0)
    except Stopped as e:
        store.finish_job(job_id, "killed", e.exit_code)
        raise
    except UserError as e:
        store.finish_job(job_id, "failed", e.exit_code, str(e)[:500])
        raise
    except BaseException:
        store.finish_job(job_id, "failed", 1)
        raise
    finally:
        hb.stop()
        if view:
            view.stop()
    _print_comparison([run])
    report = run.path / "report" / "index.html"
    if report.exists():
        click.echo(f"report: {report}   (stepadapt show {run.name}; stepadapt tui {run.name})")


def _pipeline_options(f):
    for opt in reversed([
        click.option("--detach", is_flag=True, help="Run in the background as a tracked job and return."),
        click.option("--parallel", type=int, default=1, show_default=True,
                     help="Group jobs at once on CPU (with CUDA: one per GPU)."),
        click.option("--gpus", default=None, help="GPU indices to use, e.g. 0,1 (default: all visible)."),
        click.option("--grace", type=float, default=10.0, show_default=True,
                     help="Seconds a job gets to checkpoint after SIGINT before SIGTERM/SIGKILL."),
    ]):
        f = opt(f)
    return f


def _parse_gpus(gpus):
    if gpus is None:
        return None
    try:
        return [int(x) for x in gpus.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bad --gpus {gpus!r}: use indices like 0,1") from None


@click.command("run")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", default=None, help="Model preset (default: the config file's, else tiny).")
@click.option("--name", "run_name", default=None, help="Run name (default: PRESET-DATE-TIME).")
@click.option("--method", type=click.Choice(["proxy", "random", "magnitude", "lamp", "taylor", "diff", "none"]),
              default=None, help="How group models are pruned (none: fine-tune unpruned copies).")
@click.option("--llm", default=None, help="Proxy LLM (litellm model string; default the offline local search).")
@click.option("--api-base", default=None, help="Proxy: base URL of an OpenAI-compatible server.")
@click.option("--data", "data_spec", default=None, help="digits | cifar10[:ROOT] | folder:PATH | PATH.")
@click.option("--seed", type=int, default=None)
@_pipeline_options
@_runs_dir_option
@_overrides_option
def run_cmd(config_file, preset, run_name, method, llm, api_base, data_spec, seed, detach, parallel, gpus, grace,
            runs_dir, overrides):
    """The whole method as one pipeline of tracked jobs: base training -> schedule -> per-group prune ->
    per-group fine-tune -> progressive model -> samples -> evaluation. Ends with a base vs progressive table."""
    from core import config as C
    from core.data import load_dataset
    from core.runs import create_run

    extra = list(overrides)
    for key, val in (("prune.method", method), ("prune.llm", llm), ("prune.api_base", api_base),
                     ("data.spec", data_spec), ("seed", seed)):
        if val is not None:
            extra.append(f"{key}={val}")
    cfg = C.resolve(preset, config_file, extra)
    if parallel < 1:
        raise UserError("--parallel must be >= 1")
    gpu_list = _parse_gpus(gpus)
    store = _store(runs_dir)
    load_dataset(cfg)  # a missing dataset fails here, before a run folder exists
    run = create_run(cfg, run_name, runs_dir)
    click.echo(f"run {run.name}: {cfg['preset']} preset, prune method {cfg['prune']['method']}, "
               f"config {run.meta['config_hash']}, folder {run.path}", err=True)
    _execute(run, store, detach, parallel, gpu_list, grace)


@click.command()
@click.argument("run_name", metavar="RUN")
@_pipeline_options
@_runs_dir_option
def resume(run_name, detach, parallel, gpus, grace, runs_dir):
    """Continue a stopped, failed or lost run: finished stages and groups are skipped, interrupted
    training continues from its last checkpoint."""
    from core.runs import open_run, register_run

    store = _store(runs_dir)
    run = open_run(run_name, runs_dir)
    _, row = register_run(run)
    if row["status"] == "succeeded":
        raise UserError(f"run {run.name} has finished (succeeded); nothing to resume")
    if parallel < 1:
        raise UserError("--parallel must be >= 1")
    click.echo(f"run {run.name}: resuming ({row['status']})", err=True)
    _execute(run, store, detach, parallel, _parse_gpus(gpus), grace)


def _resolve_target(store, target: str, runs_dir):
    """RUN name (a run of that name exists) or JOB id."""
    from core.runs import runs_root

    if store.get_run(target) is not None or (runs_root(runs_dir) / target / "config.json").is_file():
        return "run", target
    if target.isdigit():
        if store.job(int(target)) is None:
            raise UserError(f"no run or job {target!r} in {store.path.parent}")
        return "job", int(target)
    raise UserError(f"no run or job {target!r} in {store.path.parent}")


@click.command()
@click.argument("target", metavar="RUN|JOB")
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="Seconds between SIGINT, SIGTERM and SIGKILL.")
@_runs_dir_option
def kill(target, grace, runs_dir):
    """Stop a run (its pipeline and every running job) or one job: SIGINT (training checkpoints), then SIGTERM,
    then SIGKILL to the job's process group."""
    from core.jobs import stop_job

    store = _store(runs_dir)
    kind, ref = _resolve_target(store, target, runs_dir)

    def say(line):
        click.echo(line, err=True)

    if kind == "job":
        status = stop_job(store, ref, grace, log=say)
        click.echo(f"job {ref}: {status}")
        return
    from core.pipeline import stop_run

    for j, status in stop_run(store, ref, grace, log=say):
        click.echo(f"job {j['id']} ({_tag(j)}): {status}")
    click.echo(f"run {ref}: killed; continue it with stepadapt resume {ref}")


def load_eval(run) -> dict:
    from core.eval import load_eval as load  # torch comes with it: imported when needed

    return load(run)


def _stages(store, run) -> dict:
    """Stage -> done | running | pending | failed | killed | lost | skipped, from files and job rows only
    (no checkpoint is loaded, so listing many large runs stays fast)."""
    from core.monitor import read_json, stage_status

    return stage_status(run, run.config, store.jobs(run.name), read_json(run.path / "schedule.json"))


def _run_summary(store, name: str, runs_dir) -> dict:
    from core.pipeline import STAGES
    from core.runs import open_run

    row = store.get_run(name) or {}
    try:
        run = open_run(name, runs_dir)
    except UserError:
        return {"name": name, "status": "missing", "folder": None}
    cfg = run.config
    stages = _stages(store, run)
    ev = load_eval(run).get("models", {})
    out = {"name": name, "status": row.get("status", "created"), "preset": cfg.get("preset"),
           "method": cfg["prune"]["method"], "config_hash": row.get("config_hash"), "seed": cfg.get("seed"),
           "created": row.get("created"), "ended": row.get("ended"), "parent": row.get("parent"),
           "stages_done": sum(v in ("done", "skipped") for v in stages.values()), "stages_total": len(STAGES),
           "folder": str(run.path)}
    for model in ("base", "progressive"):
        if model in ev:
            out[f"{model}_macs"] = ev[model]["macs"]
            out[f"{model}_loss"] = ev[model]["loss"]
            if "fid" in ev[model]:
                out[f"{model}_fid"] = ev[model]["fid"]
    return out


@click.command("runs")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_runs_dir_option
def runs_cmd(as_json, runs_dir):
    """List runs: status, preset, method, stages done, MACs of the base and progressive models."""
    from core.runs import register_run, runs_root, Run

    store = _store(runs_dir)
    root = runs_root(runs_dir)
    names = [r["name"] for r in store.list_runs()]
    if root.is_dir():  # folders made before the store had runs
        for d in sorted(root.iterdir()):
            if (d / "config.json").is_file() and (d / "meta.json").is_file() and d.name not in names:
                register_run(Run(d))
                names.append(d.name)
    rows = [_run_summary(store, n, runs_dir) for n in names]
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        click.echo(f"no runs in {root}")
        return
    from rich.table import Table

    tab = Table(title=f"runs in {root}")
    for col in ("name", "status", "preset", "method", "stages", "created", "base GMACs", "prog. GMACs",
                "base loss", "prog. loss"):
        tab.add_column(col)
    def fmt(r, key, scale=1.0, spec="{:.4f}"):
        return spec.format(r[key] / scale) if r.get(key) is not None else "-"

    for r in rows:
        tab.add_row(r["name"], r["status"], r.get("preset") or "-", r.get("method") or "-",
                    f"{r.get('stages_done', 0)}/{r.get('stages_total', 0)}", (r.get("created") or "-")[:19],
                    fmt(r, "base_macs", 1e9), fmt(r, "progressive_macs", 1e9), fmt(r, "base_loss", spec="{:.5f}"),
                    fmt(r, "progressive_loss", spec="{:.5f}"))
    console().print(tab)


def _show_data(store, run, runs_dir) -> dict:
    summary = _run_summary(store, run.name, runs_dir)
    groups = []
    sched_path = run.path / "schedule.json"
    if sched_path.exists():
        from core.finetune import group_stage
        from core.prune_stage import load_prune_record

        sched = json.loads(sched_path.read_text())
        for g in sched["groups"]:
            rec = load_prune_record(run, g["index"]) if g["size"] else None
            ft = store.metrics(run.name, "finetune", g["index"], "loss")
            groups.append({"index": g["index"], "size": g["size"], "t_start": g.get("t_start"),
                           "t_end": g.get("t_end"), "budget_ratio": g["budget_ratio"],
                           "budget_macs": g["budget_macs"],
                           "macs": rec["report"]["macs"] if rec else None,
                           "params": rec["report"]["params"] if rec else None,
                           "prune_method": rec["method"]["method"] if rec else None,
                           "finetuned": run.model(group_stage(g["index"])).exists(),
                           "finetune_loss": ft[-1]["value"] if ft else None})
    last = {}
    for m in store.metrics(run.name):
        key = m["stage"] + ("" if m["group_index"] is None else f"/g{m['group_index']:02d}")
        last.setdefault(key, {})[m["key"]] = m["value"]
        last[key]["step"] = m["step"]
    jobs = [{k: j[k] for k in ("id", "stage", "group_index", "status", "pid", "device", "exit_code", "started",
                               "ended", "progress", "total", "message", "log_path")} for j in store.jobs(run.name)]
    return {"run": summary, "meta": run.meta, "stages": _stages(store, run), "groups": groups, "jobs": jobs,
            "metrics_last": last, "artifacts": store.artifacts(run.name), "eval": load_eval(run)}


@click.command()
@click.argument("run_name", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_runs_dir_option
def show(run_name, as_json, runs_dir):
    """One run: stages, groups (budgets and achieved MACs), jobs, last metrics, artifacts, evaluation."""
    from core.runs import open_run, register_run

    store = _store(runs_dir)
    run = open_run(run_name, runs_dir)
    register_run(run)
    data = _show_data(store, run, runs_dir)
    if as_json:
        _emit_json(data)
        return
    from rich.table import Table

    con = console()
    s, meta = data["run"], data["meta"]
    con.print(f"[bold]{run.name}[/]  {s['status']}  preset {s['preset']}  method {s['method']}  config "
              f"{meta.get('config_hash')}  seed {meta.get('seed')}  git {str(meta.get('git_sha'))[:10]}"
              f"{' (dirty)' if meta.get('git_dirty') else ''}\nfolder {run.path}")
    con.print("stages: " + "  ".join(f"{k} [{'green' if v == 'done' else 'yellow'}]{v}[/]"
                                      for k, v in data["stages"].items()))
    if data["groups"]:
        tab = Table(title="groups")
        for col in ("group", "t", "size", "budget/F", "budget G", "MACs G", "params M", "pruned by", "fine-tuned",
                    "ft loss"):
            tab.add_column(col, justify="right")
        for g in data["groups"]:
            tab.add_row(str(g["index"]), f"{g['t_start']}-{g['t_end']}" if g["size"] else "-", str(g["size"]),
                        f"{g['budget_ratio']:.3f}", f"{g['budget_macs'] / 1e9:.4f}",
                        f"{g['macs'] / 1e9:.4f}" if g["macs"] else "-",
                        f"{g['params'] / 1e6:.3f}" if g["params"] else "-", g["prune_method"] or "-",
                        "yes" if g["finetuned"] else ("-" if not g["size"] else "no"),
                        f"{g['finetune_loss']:.4f}" if g["finetune_loss"] is not None else "-")
        con.print(tab)
    if data["jobs"]:
        tab = Table(title="jobs")
        for col in ("id", "stage", "group", "status", "exit", "progress", "started", "note"):
            tab.add_column(col)
        for j in data["jobs"]:
            tab.add_row(str(j["id"]), j["stage"], "" if j["group_index"] is None else str(j["group_index"]),
                        j["status"], "" if j["exit_code"] is None else str(j["exit_code"]),
                        f"{j['progress']}/{j['total']}" if j["total"] else "", (j["started"] or "")[:19],
                        (j["message"] or "")[:50])
        con.print(tab)
    if data["artifacts"]:
        con.print("artifacts: " + ", ".join(f"{a['path']} ({a['bytes'] / 1e6:.1f} MB)" for a in data["artifacts"]))
    if data["eval"]:
        _print_comparison([run])


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def comparison(runs: list) -> dict:
    rows = []
    for run in runs:
        ev = load_eval(run)
        for model, r in ev.get("models", {}).items():
            rows.append({"run": run.name, "model": model, "fid": r.get("fid"), "fid_kind": r.get("fid_kind"),
                         "params": r["params"], "macs": r["macs"], "macs_sampled": r["macs_sampled"],
                         "loss": r["loss"], "train_steps": r["train_steps"],
                         "sample_steps": ev.get("sample_steps")})
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    diff = {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1}
    return {"rows": rows, "config_differences": diff, "runs": [r.name for r in runs]}


def _print_comparison(runs: list, data: dict | None = None) -> None:
    from rich.table import Table

    data = data or comparison(runs)
    if not data["rows"]:
        click.echo("no evaluation yet (the eval stage writes RUN/eval.json)")
        return
    base = {r["run"]: r for r in data["rows"] if r["model"] == "base"}
    fid_kind = next((r["fid_kind"] for r in data["rows"] if r.get("fid_kind")), None)
    tab = Table(title="Table 1 style: cost per sample, averaged over timesteps"
                + (f"; FID is {fid_kind}" if fid_kind else ""))
    for col in ("run", "model", "FID", "params (M)", "MACs avg T (G)", "MACs vs base",
                f"MACs avg {data['rows'][0]['sample_steps']} steps (G)", "held-out loss", "train steps"):
        tab.add_column(col, justify="right")
    for r in data["rows"]:
        b = base.get(r["run"])
        tab.add_row(r["run"], r["model"], "-" if r["fid"] is None else f"{r['fid']:.2f}", f"{r['params'] / 1e6:.3f}",
                    f"{r['macs'] / 1e9:.4f}", f"{r['macs'] / b['macs']:.3f}" if b else "-",
                    f"{r['macs_sampled'] / 1e9:.4f}", f"{r['loss']:.5f}", str(r["train_steps"]))
    con = console()
    con.print(tab)
    if data["config_differences"] and len(data["runs"]) > 1:
        t2 = Table(title="config keys that differ")
        t2.add_column("key")
        for name in data["runs"]:
            t2.add_column(name)
        for k, vals in data["config_differences"].items():
            t2.add_row(k, *[json.dumps(v) for v in vals])
        con.print(t2)


@click.command()
@click.argument("run_names", metavar="RUN...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_runs_dir_option
def compare(run_names, as_json, runs_dir):
    """Compare runs like the paper's Table 1 (FID, MACs and params averaged over timesteps, training steps)
    and list the config keys that differ."""
    from core.runs import open_run

    runs = [open_run(n, runs_dir) for n in run_names]
    data = comparison(runs)
    if as_json:
        _emit_json(data)
        return
    _print_comparison(runs, data)


@click.command()
@click.argument("target", metavar="RUN|JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run or job ends.")
@_runs_dir_option
def logs(target, follow, runs_dir):
    """Print a job's log, or every job log of a run in order (-f: follow them live)."""
    store = _store(runs_dir)
    kind, ref = _resolve_target(store, target, runs_dir)

    def jobs():
        return [store.job(ref)] if kind == "job" else [j for j in store.jobs(ref) if j["log_path"]]

    if not follow:
        js = jobs()
        if not js or not any(j["log_path"] for j in js):
            raise UserError(f"no job logs for {kind} {ref}")
        for j in js:
            if not j["log_path"]:
                continue
            if kind == "run":
                click.echo(f"==> job {j['id']} {_tag(j)} ({j['status']}) {j['log_path']} <==")
            p = Path(j["log_path"])
            click.echo(p.read_text(errors="replace") if p.exists() else "(log file missing)", nl=False)
        return
    offsets: dict[int, int] = {}
    from core.jobs import reconcile

    last_check, finishing = 0.0, False
    while True:
        js = jobs()
        for j in js:
            p = Path(j["log_path"]) if j["log_path"] else None
            if p is None or not p.exists():
                continue
            with open(p, "rb") as f:
                f.seek(offsets.get(j["id"], 0))
                chunk = f.read()
            end = len(chunk) if finishing else chunk.rfind(b"\n") + 1
            if end:
                offsets[j["id"]] = offsets.get(j["id"], 0) + end
                for line in chunk[:end].decode(errors="replace").splitlines():
                    click.echo(line if kind == "job" else f"[{_tag(j)}] {line}")
        if time.time() - last_check > 2:
            reconcile(store)
            last_check = time.time()
        if finishing:
            break
        if not any(j["status"] in ("queued", "running") for j in (jobs() if kind == "job" else store.jobs(ref))):
            finishing = True  # one more pass reads what was written last
            continue
        time.sleep(0.5)


def _tag(j: dict) -> str:
    return j["stage"] + ("" if j["group_index"] is None else f"-g{j['group_index']:02d}")


COMMANDS = [run_cmd, resume, kill, runs_cmd, show, compare, logs]
