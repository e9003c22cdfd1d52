"""Read-only views: info, macs, runs, show, logs, llm-log."""
from __future__ import annotations

import time
from pathlib import Path

import click

from core.errors import UserError
from core.names import JOB_ACTIVE

from .. import render
from ..common import emit_json, json_option, overrides_option, runs_dir_option
from .management import job_tag, open_store, resolve_target


@click.command()
@click.option("--preset", default="tiny", show_default=True, help="Model preset: tiny, cifar10, imagenet64.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML config file.")
@overrides_option
@json_option
def info(preset, config_file, overrides, as_json):
    """Parameters and MACs of a preset's UNet (MACs = the paper's FLOPs)."""
    from core import config as C
    from core.model.macs import count
    from core.model.unet import build_unet

    cfg = C.resolve(preset, config_file, overrides)
    m = cfg["model"]
    res = count(build_unet(m), m["image_size"], m["in_channels"])
    res.update({"preset": cfg["preset"], "image_size": m["image_size"], "timesteps": cfg["diffusion"]["steps"]})
    if as_json:
        emit_json(res)
        return
    render.print_preset(cfg, res)


@click.command()
@click.argument("run_name", metavar="RUN")
@click.option("--steps", type=int, default=None, help="Sampling steps to average over (default: sample.steps).")
@json_option
@runs_dir_option
def macs(run_name, steps, as_json, runs_dir):
    """MACs and params of a run's base and progressive models, averaged over timesteps (paper Table 1)."""
    from core.method.artifacts import load_progressive, load_unet
    from core.model.macs import count, progressive_cost
    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    cfg = run.config
    m = cfg["model"]
    steps = steps or cfg["sample"]["steps"]
    if not 1 <= steps <= cfg["diffusion"]["steps"]:
        raise UserError(f"--steps must be in [1, {cfg['diffusion']['steps']}]")
    if not run.model("base").exists():
        raise UserError(f"run {run.name} has no base model yet")
    out = {"run": run.name, "sample_steps": steps,
           "base": count(load_unet(run.model("base")), m["image_size"], m["in_channels"])}
    if run.model("progressive").exists():
        prog = load_progressive(run.model("progressive"))
        cost = progressive_cost(prog, m["image_size"], m["in_channels"], steps)
        cost["params_total"] = sum(p.numel() for p in prog.parameters())
        cost["groups"] = {str(g): v for g, v in cost["groups"].items()}
        out["progressive"] = cost
    if as_json:
        emit_json(out)
        return
    render.print_macs(run.name, out, steps)


@click.command("runs")
@json_option
@runs_dir_option
def runs_cmd(as_json, runs_dir):
    """List runs: status, preset, method, stages done, MACs of the base and progressive models."""
    from core.manager.monitor import run_summary
    from core.runs import Run, register_run, runs_root

    store = open_store(runs_dir)
    root = runs_root(runs_dir)
    known = {r["name"] for r in store.list_runs()}
    broken = []
    if root.is_dir():  # folders made before the store had runs
        for d in sorted(root.iterdir()):
            if (d / "config.json").is_file() and (d / "meta.json").is_file() and d.name not in known:
                try:
                    register_run(Run(d))
                except (ValueError, OSError) as e:  # a truncated config.json or meta.json: list it as broken
                    broken.append({"name": d.name, "status": "broken", "folder": str(d), "stages_done": 0,
                                   "stages_total": 0, "error": f"{type(e).__name__}: {e}"})
    rows = [run_summary(store, r) for r in store.list_runs()] + broken
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no runs in {root}")
    else:
        render.print_runs(root, rows)


@click.command()
@click.argument("run_name", metavar="RUN")
@json_option
@runs_dir_option
def show(run_name, as_json, runs_dir):
    """One run: stages, groups (budgets and achieved MACs), jobs, last metrics, artifacts, evaluation."""
    from core.manager.monitor import comparison, show_data
    from core.runs import open_run, register_run

    store = open_store(runs_dir)
    run = open_run(run_name, runs_dir)
    register_run(run)
    data = show_data(store, run)
    if as_json:
        emit_json(data)
        return
    render.print_show(run, data)
    if data["eval"]:
        render.print_comparison(comparison([run]))


@click.command()
@click.argument("target", metavar="RUN|JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run or job ends.")
@runs_dir_option
def logs(target, follow, runs_dir):
    """Print a job's log, or every job log of a run in order (-f: follow them live)."""
    store = open_store(runs_dir)
    kind, ref = resolve_target(store, target, runs_dir)

    def jobs():
        return [store.job(ref)] if kind == "job" else [j for j in store.jobs(ref) if j["log_path"]]

    if not follow:
        _print_logs(kind, ref, jobs())
    else:
        _follow_logs(store, kind, ref, jobs)


def _print_logs(kind: str, ref, js: list[dict]) -> None:
    if not js or not any(j["log_path"] for j in js):
        raise UserError(f"no job logs for {kind} {ref}")
    for j in js:
        if not j["log_path"]:
            continue
        if kind == "run":
            click.echo(f"==> job {j['id']} {job_tag(j)} ({j['status']}) {j['log_path']} <==")
        p = Path(j["log_path"])
        click.echo(p.read_text(errors="replace") if p.exists() else "(log file missing)", nl=False)


def _follow_logs(store, kind: str, ref, jobs) -> None:
    from core.manager.jobs import reconcile

    offsets: dict[int, int] = {}
    last_check, finishing = 0.0, False
    while True:
        for j in jobs():
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
                    click.echo(line if kind == "job" else f"[{job_tag(j)}] {line}")
        if time.time() - last_check > 2:
            reconcile(store)
            last_check = time.time()
        if finishing:
            break
        if not any(j["status"] in JOB_ACTIVE for j in (jobs() if kind == "job" else store.jobs(ref))):
            finishing = True  # one more pass reads what was written last
            continue
        time.sleep(0.5)


@click.command("llm-log")
@click.argument("run_name", metavar="RUN")
@click.option("--group", type=int, default=None, help="Only this group's calls.")
@click.option("--call", "call_id", type=int, default=None, help="Show one call whole (messages and answer).")
@json_option
@runs_dir_option
def llm_log(run_name, group, call_id, as_json, runs_dir):
    """List the proxy's LLM calls of a run (round, model, tokens, latency, verdict), or show one whole."""
    from core.runs import runs_root
    from core.store import open_store as open_plain_store

    store = open_plain_store(runs_root(runs_dir))
    if call_id is not None:
        c = store.call(call_id)
        if c is None or c["run"] != run_name:
            raise UserError(f"no call {call_id} in run {run_name!r}")
        if as_json:
            emit_json(c)
        else:
            render.print_llm_call(c)
        return
    calls = store.calls(run_name, group)
    if not calls:
        raise UserError(f"no recorded LLM calls for run {run_name!r} in {store.path}")
    rows = [{"id": c["id"], "group": c["group_index"], "round": c["round"] + 1, "attempt": c["attempt"],
             "source": c["source"], "model": c["model_asked"], "prompt_tokens": c["prompt_tokens"],
             "completion_tokens": c["completion_tokens"], "latency_s": c["latency_s"], "cost": c["cost"],
             "verdict": "error" if c["error"] else ("rejected" if c["validation_error"] else "accepted"),
             "reason": c["error"] or c["validation_error"], "request_key": c["request_key"],
             "linked_call": c["linked_call"]} for c in calls]
    if as_json:
        emit_json(rows)
    else:
        render.print_llm_calls(run_name, rows)


COMMANDS = [info, macs, runs_cmd, show, logs, llm_log]
