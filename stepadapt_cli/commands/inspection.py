"""Views of runs and their records: info, macs, runs, show, logs, llm-log (and llm-import of exported records)."""

from __future__ import annotations

import contextlib
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
    from core.runs import open_run

    run = open_run(run_name, runs_dir)
    cfg = run.config
    m = cfg["model"]
    steps = steps or cfg["sample"]["steps"]
    if not 1 <= steps <= cfg["diffusion"]["steps"]:
        raise UserError(f"--sample-steps must be in [1, {cfg['diffusion']['steps']}]")
    if not run.model("base").exists():
        raise UserError(f"run {run.name} has no base model yet")
    import sys

    from rich.console import Console

    from core.method.artifacts import load_progressive, load_unet  # torch: after the input is checked
    from core.model.macs import count, progressive_cost

    # counting runs a forward pass per model and timestep group: say so on a terminal (tens of seconds at cifar10)
    with (
        Console(stderr=True).status(f"counting MACs of {run.name} ...", spinner="dots")
        if sys.stderr.isatty()
        else (contextlib.nullcontext())
    ):
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


SORT_KEYS = ("created", "name", "status", "fid", "disk")


@click.command("runs", short_help="List runs: status, FID, verdict, MACs, disk; filters.")
@click.option("--status", "statuses", multiple=True, metavar="STATUS", help="Only runs in this state (repeatable).")
@click.option("--preset", default=None, help="Only runs of this preset.")
@click.option("--method", default=None, help="Only runs pruned with this method (as their plans record it).")
@click.option("--tag", "tags", multiple=True, metavar="KEY[=VALUE]", help="Only runs with this tag (repeatable).")
@click.option("--sort", type=click.Choice(SORT_KEYS), default="created", show_default=True, help="Order of the rows.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N rows (after sorting).")
@click.option("--prune-missing", is_flag=True, help="Forget runs whose folder is gone (rm -rf runs/X), then list.")
@json_option
@runs_dir_option
def runs_cmd(statuses, preset, method, tags, sort, limit, prune_missing, as_json, runs_dir):
    """List runs: status, stages done, the progressive model's FID and verdict against its control, MACs ratio,
    disk use, method, tags. The filters combine (a run must pass each)."""
    from core.manager.housekeeping import prune_missing as forget_missing
    from core.manager.monitor import run_summary
    from core.runs import Run, is_run_folder, register_run, runs_root

    store = reconciled_store(runs_dir)
    root = runs_root(runs_dir)
    if prune_missing:
        gone = forget_missing(store)
        click.echo(f"forgot {len(gone)} missing run(s){': ' + ', '.join(gone) if gone else ''}", err=True)
    known = {r["name"]: r for r in store.list_runs()}
    broken = []
    if root.is_dir():  # folders made before the store had runs, and runs of a runs folder that was moved
        for d in sorted(root.iterdir()):
            row = known.get(d.name)
            moved = row is not None and not Path(row["path"]).exists()
            if is_run_folder(d) and Run(d).meta_file.is_file() and (row is None or moved):
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
    labels = (store.tags(), store.notes())
    rows = [run_summary(store, r, labels, disk=True) for r in store.list_runs()] + broken
    rows = _filtered(rows, statuses, preset, method, tags)
    rows = _sorted(rows, sort)[:limit]
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no runs in {root}" + (" match" if statuses or preset or method or tags else ""))
    else:
        render.print_runs(root, rows)


def _filtered(rows: list[dict], statuses, preset, method, tags) -> list[dict]:
    def has(r, tag):
        key, _, value = tag.partition("=")
        have = r.get("tags") or {}
        return key in have and (not value or have[key] == value)

    return [
        r
        for r in rows
        if (not statuses or r["status"] in statuses)
        and (preset is None or r.get("preset") == preset)
        and (method is None or method in (r.get("method") or "").split("+"))
        and all(has(r, t) for t in tags)
    ]


def _sorted(rows: list[dict], key: str) -> list[dict]:
    """Newest first for created, best (lowest) FID first with the unevaluated last, largest disk use first."""
    if key == "name":
        return sorted(rows, key=lambda r: r["name"])
    if key == "status":
        return sorted(rows, key=lambda r: (r["status"], r["name"]))
    if key == "fid":
        return sorted(rows, key=lambda r: (r.get("progressive_fid") is None, r.get("progressive_fid") or 0))
    if key == "disk":
        return sorted(rows, key=lambda r: -(r.get("bytes") or 0))
    return sorted(rows, key=lambda r: r.get("created") or "", reverse=True)


@click.command(short_help="One run: verdict, stages, groups, jobs, results.")
@click.argument("run_name", metavar="RUN")
@click.option("--artifacts", "with_artifacts", is_flag=True, help="Also list every file the jobs produced.")
@json_option
@runs_dir_option
def show(run_name, with_artifacts, as_json, runs_dir):
    """One run: its verdict first, then tags and notes, disk use, stages, groups (budgets, achieved MACs, the
    candidate each kept), jobs, and the evaluation; --artifacts: the files the jobs produced too."""
    from core.manager.monitor import comparison, show_data
    from core.runs import open_run, register_run

    from ..render.evaluation import print_comparison

    store = reconciled_store(runs_dir)
    run = open_run(run_name, runs_dir)
    register_run(run)
    data = show_data(store, run)
    if as_json:
        emit_json(data)
        return
    render.print_show(run, data, with_artifacts)
    if data["eval"]:
        print_comparison(comparison([run]), verdicts=False)  # print_show said them first


@click.command(short_help="Print (or follow) job logs of a run or a job.")
@click.argument("target", metavar="RUN|JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run or job ends.")
@click.option("--stage", default=None, help="Only this stage's jobs (base, prune, finetune, ...).")
@click.option("--group", type=int, default=None, help="Only this group's jobs.")
@click.option("-n", "--tail", type=click.IntRange(0), default=None, help="Only the last N lines of each log.")
@runs_dir_option
def logs(target, follow, stage, group, tail, runs_dir):
    """Print a job's log, or every job log of a run in order, each under a header with its times (-f: follow
    them live). A prune job's log ends with the candidate its group kept."""
    from core.manager.monitor import chosen
    from core.runs import Run, open_run

    store = reconciled_store(runs_dir)
    if store.get_run(target) is not None or (target.isdigit() and store.job(int(target)) is not None):
        kind, ref = resolve_target(store, target, runs_dir)
    else:  # a prefix, latest, or a typo (did you mean)
        kind, ref = "run", open_run(target, runs_dir).name

    def jobs():
        js = [store.job(ref)] if kind == "job" else [j for j in store.jobs(ref) if j["log_path"]]
        return [
            j for j in js if (stage is None or j["stage"] == stage) and (group is None or j["group_index"] == group)
        ]

    if not follow:
        row = store.get_run(ref if kind == "run" else store.job(ref)["run"])
        run = Run(Path(row["path"])) if row else None
        _print_logs(kind, ref, jobs(), tail, chosen(store, run) if run and run.config_file.exists() else {})
    else:
        _follow_logs(store, kind, ref, jobs, tail)


def _times(j: dict) -> str:
    """'started 06-11 14:22:33, ended 14:25:02 (2m29s)'."""
    import datetime as dt

    start, end = j.get("started"), j.get("ended")
    out = f"started {start[5:19].replace('T', ' ')}" if start else "not started"
    if start and end:
        try:
            took = int((dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds())
            out += f", ended {end[11:19]} ({took // 60}m{took % 60:02d}s)"
        except ValueError:
            pass
    return out


def _print_logs(kind: str, ref, js: list[dict], tail, kept: dict) -> None:
    from core.chosen import chosen_text

    if not js or not any(j["log_path"] for j in js):
        raise UserError(f"no job logs for {kind} {ref}" + (" with that stage or group" if kind == "run" else ""))
    for j in js:
        if not j["log_path"]:
            continue
        if kind == "run":
            click.echo(f"==> job {j['id']} {job_tag(j)} ({j['status']}) {_times(j)}: {j['log_path']} <==")
        p = Path(j["log_path"])
        if not p.exists():
            click.echo("(log file missing)")
            continue
        text = p.read_text(errors="replace")
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[len(lines) - tail :] if tail else [])
        click.echo(text, nl=bool(text) and not text.endswith("\n"))
        if j["stage"] == "prune" and j["status"] == "succeeded" and j["group_index"] in kept:
            click.echo(f"group {j['group_index']} kept {chosen_text(kept[j['group_index']])} (prune record)")


def _follow_logs(store, kind: str, ref, jobs, tail=None) -> None:
    from core.manager.jobs import reconcile

    offsets: dict[int, int] = {}
    if tail is not None:  # start each existing log at its last N lines
        for j in jobs():
            p = Path(j["log_path"]) if j["log_path"] else None
            if p is not None and p.exists():
                data = p.read_bytes()
                cut = len(data)
                for _ in range(tail + (1 if data.endswith(b"\n") else 0)):
                    cut = data.rfind(b"\n", 0, cut)
                    if cut < 0:
                        break
                offsets[j["id"]] = max(cut + 1, 0)
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
    type=click.Choice(["chosen", "accepted", "rejected", "error"]),
    default=None,
    help="Only calls with this verdict (chosen: the candidates the groups kept; accepted includes them).",
)
@click.option("--wide", is_flag=True, help="Every column, also those with one value for every call.")
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
def llm_log(run_name, group, verdict, last, call_id, wide, export_to, as_json, runs_dir):
    """List the proxy's LLM calls of a run (round and try from 1, model, tokens, latency, verdict; the candidate
    each group kept marked chosen), or show one whole. By default a column with one value for every call is
    said once in the title (--wide: every column)."""
    from core.runs import open_run, runs_root
    from core.store import open_store

    store = open_store(runs_root(runs_dir))
    if not store.calls(run_name):  # a prefix or latest; a name with recorded calls but no folder stays as it is
        try:
            run_name = open_run(run_name, runs_dir).name
        except UserError:
            pass
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
    rows = _call_rows(store, run_name, group, runs_dir)
    if verdict == "chosen":
        rows = [r for r in rows if r["chosen"]]
    elif verdict:
        rows = [r for r in rows if r["verdict"] == verdict]
    if last is not None:
        rows = rows[-last:] if last > 0 else []
    if as_json:
        emit_json(rows)
    elif not rows:
        click.echo(f"no {verdict} calls in run {run_name}" if verdict else f"no calls in run {run_name}")
    else:
        render.print_llm_calls(run_name, rows, wide)


def _call_rows(store, run_name: str, group, runs_dir) -> list[dict]:
    """The run's (or group's) calls as ``core.chosen.proxy_tries`` tells them (1-based round and try, verdict,
    chosen), with the tokens, latency, cost and request key of each."""
    from core.chosen import chosen_candidates, proxy_tries
    from core.runs import Run, runs_root

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
    rounds = store.rounds(run_name, group)
    run = Run(runs_root(runs_dir) / run_name)
    kept = chosen_candidates(run, rounds, calls) if run.config_file.exists() else {}
    rows = proxy_tries(calls, rounds, kept)
    for row, c in zip(rows, calls):
        row.update(
            {
                "prompt_tokens": c["prompt_tokens"],
                "completion_tokens": c["completion_tokens"],
                "latency_s": c["latency_s"],
                "cost": c["cost"],
                "request_key": c["request_key"],
                "linked_call": c["linked_call"],
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
