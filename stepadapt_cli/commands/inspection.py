"""Views of runs and their records: info, macs, runs, show, logs, llm-log (and llm-import of exported records)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from core.errors import UserError
from core.names import JOB_ACTIVE

from .. import render
from ..common import emit_json, json_option, overrides_option, runs_dir_option, steps_option
from .management import job_tag, reconciled_store, resolve_target


@click.command(short_help="Params and MACs of a preset's UNet.")
@click.option("--preset", default="tiny", show_default=True, help="Model preset: tiny, cifar10, imagenet64.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or TOML config file.")
@overrides_option
@json_option
def info(preset, config_file, overrides, as_json):
    """Parameters and MACs of a preset's UNet (MACs = the paper's FLOPs)."""
    from core import config as C
    from core.config import model_arch
    from core.model.macs import count
    from core.model.unet import build_unet

    cfg = C.resolve(preset, config_file, overrides)
    m = cfg["model"]
    res = count(build_unet(model_arch(cfg)), m["image_size"], m["in_channels"])
    res.update({"preset": cfg["preset"], "image_size": m["image_size"], "timesteps": cfg["diffusion"]["steps"]})
    if as_json:
        emit_json(res)
        return
    render.print_preset(cfg, res)


@click.command(short_help="Params and MACs averaged over timesteps (Table 1).")
@click.argument("run_name", metavar="RUN")
@steps_option("sample", "Sampling steps to average over (default: sample.steps).")
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
        raise UserError(f"--sample-steps must be in [1, {cfg['diffusion']['steps']}]")
    if not run.model("base").exists():
        raise UserError(f"run {run.name} has no base model yet")
    out = {
        "run": run.name,
        "sample_steps": steps,
        "base": count(load_unet(run.model("base")), m["image_size"], m["in_channels"]),
    }
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


@click.command("runs", short_help="List runs: status, stages, FID, MACs.")
@json_option
@runs_dir_option
def runs_cmd(as_json, runs_dir):
    """List runs: status, preset, method, stages done, MACs of the base and progressive models."""
    from core.manager.monitor import run_summary
    from core.runs import Run, is_run_folder, register_run, runs_root

    store = reconciled_store(runs_dir)
    root = runs_root(runs_dir)
    known = {r["name"] for r in store.list_runs()}
    broken = []
    if root.is_dir():  # folders made before the store had runs
        for d in sorted(root.iterdir()):
            if is_run_folder(d) and Run(d).meta_file.is_file() and d.name not in known:
                try:
                    register_run(Run(d))
                except (ValueError, OSError) as e:  # a truncated config.json or meta.json: list it as broken
                    broken.append(
                        {
                            "name": d.name,
                            "status": "broken",
                            "folder": str(d),
                            "stages_done": 0,
                            "stages_total": 0,
                            "error": f"{type(e).__name__}: {e}",
                        }
                    )
    rows = [run_summary(store, r) for r in store.list_runs()] + broken
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no runs in {root}")
    else:
        render.print_runs(root, rows)


@click.command(short_help="One run: stages, groups, jobs, artifacts, results.")
@click.argument("run_name", metavar="RUN")
@json_option
@runs_dir_option
def show(run_name, as_json, runs_dir):
    """One run: stages, groups (budgets and achieved MACs), jobs, last metrics, artifacts, evaluation."""
    from core.manager.monitor import comparison, show_data
    from core.runs import open_run, register_run

    store = reconciled_store(runs_dir)
    run = open_run(run_name, runs_dir)
    register_run(run)
    data = show_data(store, run)
    if as_json:
        emit_json(data)
        return
    render.print_show(run, data)
    if data["eval"]:
        render.print_comparison(comparison([run]))


@click.command(short_help="Print (or follow) job logs of a run or a job.")
@click.argument("target", metavar="RUN|JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run or job ends.")
@runs_dir_option
def logs(target, follow, runs_dir):
    """Print a job's log, or every job log of a run in order (-f: follow them live)."""
    store = reconciled_store(runs_dir)
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


@click.command("llm-log", short_help="The proxy's recorded LLM calls of a run.")
@click.argument("run_name", metavar="RUN")
@click.option("--group", type=int, default=None, help="Only this group's calls.")
@click.option(
    "--verdict",
    type=click.Choice(["accepted", "rejected", "error"]),
    default=None,
    help="Only calls with this verdict.",
)
@click.option("-n", "--last", "last", type=int, default=None, help="Only the last N calls.")
@click.option("--call", "call_id", type=int, default=None, help="Show one call whole (messages and answer).")
@click.option(
    "--export",
    "export_to",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the run's recorded calls and proxy rounds to FILE (JSON lines) for `llm-import`.",
)
@json_option
@runs_dir_option
def llm_log(run_name, group, verdict, last, call_id, export_to, as_json, runs_dir):
    """List the proxy's LLM calls of a run (round, model, tokens, latency, verdict), or show one whole."""
    from core.runs import runs_root
    from core.store import open_store

    store = open_store(runs_root(runs_dir))
    if export_to:
        _export(store, run_name, Path(export_to))
        return
    if call_id is not None:
        c = store.call(call_id)
        if c is None or c["run"] != run_name:
            raise UserError(f"no call {call_id} in run {run_name!r}")
        c["changes"] = _provider_changes(store, c)
        if as_json:
            emit_json(c)
        else:
            render.print_llm_call(c)
            for line in c["changes"]:
                click.echo(line)
        return
    rows = _call_rows(store, run_name, group)
    if verdict:
        rows = [r for r in rows if r["verdict"] == verdict]
    if last is not None:
        rows = rows[-last:] if last > 0 else []
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no {verdict} calls in run {run_name}" if verdict else f"no calls in run {run_name}")
    else:
        render.print_llm_calls(run_name, rows)


def _call_rows(store, run_name: str, group) -> list[dict]:
    """The run's (or group's) calls with their verdict and, for an accepted proposal, its measured MACs and loss."""
    calls = store.calls(run_name, group)
    if not calls:
        everything = store.calls(run_name)
        if not everything:
            raise UserError(
                f"run {run_name!r} has no recorded LLM calls in {store.path} (it was not pruned by the "
                f"proxy there, or the name is wrong)"
            )
        groups = sorted({c["group_index"] for c in everything})
        raise UserError(
            f"run {run_name!r} has no LLM calls for group {group}; groups with calls: {', '.join(map(str, groups))}"
        )
    rounds = {r["call_id"]: r for r in store.rounds(run_name, group) if r["call_id"]}
    rows = []
    for c in calls:
        r = rounds.get(c["id"]) or {}
        rows.append(
            {
                "id": c["id"],
                "created": c["created"],
                "group": c["group_index"],
                "round": c["round"] + 1,
                "attempt": c["attempt"],
                "source": c["source"],
                "model": c["model_asked"],
                "prompt_tokens": c["prompt_tokens"],
                "completion_tokens": c["completion_tokens"],
                "latency_s": c["latency_s"],
                "cost": c["cost"],
                "verdict": "error" if c["error"] else ("rejected" if c["validation_error"] else "accepted"),
                "reason": c["error"] or c["validation_error"],
                "request_key": c["request_key"],
                "linked_call": c["linked_call"],
                "macs": r.get("macs"),
                "loss": r.get("loss"),
            }
        )
    return rows


def _provider_changes(store, c: dict) -> list[str]:
    """How the answering model differed on earlier live calls of the same request (resolved model, fingerprint)."""
    out = []
    for other in store.same_request(c["request_key"]):
        if other["id"] == c["id"] or other["source"] != "live" or c["source"] != "live":
            continue
        for key in ("model_resolved", "system_fingerprint"):
            if other.get(key) != c.get(key):
                out.append(
                    f"changed since call {other['id']} (run {other['run']}): {key} "
                    f"{other.get(key) or '-'} -> {c.get(key) or '-'}"
                )
    return out


def _export(store, run_name: str, path: Path) -> None:
    import json

    from core.runs import atomic_write_bytes

    records = store.export_decisions(run_name)
    if not records:
        raise UserError(f"no recorded LLM calls for run {run_name!r} in {store.path}")
    atomic_write_bytes(path, lambda f: f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()))
    calls = sum(r["type"] == "call" for r in records)
    click.echo(f"{calls} calls and {len(records) - calls} rounds of run {run_name} written to {path}")


@click.command("llm-import", short_help="Import calls exported by llm-log --export.")
@click.argument("file", type=click.Path(dir_okay=False))
@runs_dir_option
def llm_import(file, runs_dir):
    """Add recorded LLM calls and proxy rounds exported by `llm-log RUN --export FILE` to this store, so that
    `prune NEW --method proxy --replay RUN` replays them here; records already here are kept as they are.

    Every record is checked before anything is imported: known fields of the right types, text within its cap
    (a response 256 KiB, a call's messages 1 MiB), and a request key that matches the call's model, messages and
    parameters; the first bad line is refused as FILE:LINE. Imported calls serve --replay only, never --cache:
    the cache answers only with what this store's LLM answered."""
    from core.method.decisions import read_export
    from core.runs import runs_root
    from core.store import open_store

    records = read_export(file)
    counts = open_store(runs_root(runs_dir)).import_decisions(records)
    click.echo(
        f"imported {counts['calls']} calls and {counts['rounds']} rounds ({counts['skipped']} already here) from {file}"
    )


COMMANDS = [info, macs, runs_cmd, show, logs, llm_log, llm_import]
