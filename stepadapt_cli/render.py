"""Every table the CLI prints, in one place (rich). Commands gather data and call these; ``--json`` prints
the same data instead."""
from __future__ import annotations

import json

import click

from rich.markup import escape

from .common import console


def _table(title: str, columns, justify: str = "left"):
    """A table whose title is plain text (run names may hold brackets: never markup)."""
    from rich.table import Table

    tab = Table(title=escape(title))
    for col in columns:
        tab.add_column(col, justify=justify)
    return tab


def fmt(value, spec: str = "{:.4f}", scale: float = 1.0) -> str:
    return "-" if value is None else spec.format(value / scale)


def print_preset(cfg: dict, res: dict) -> None:
    m = cfg["model"]
    click.echo(f"preset      {res['preset']} ({m['image_size']}x{m['image_size']}x{m['in_channels']}, "
               f"T={res['timesteps']} {cfg['diffusion']['noise_schedule']})")
    click.echo(f"params      {res['params'] / 1e6:.2f} M")
    click.echo(f"MACs        {res['macs'] / 1e9:.3f} G  (convs and linears: the paper's FLOPs)")
    click.echo(f"attention   {res['attn_macs'] / 1e9:.3f} G  (q k^T and w v matmuls, not in the figure above)")


def print_schedule(data: dict) -> None:
    full = data["full_macs"]
    tab = _table(f"{data['kind']} schedule: k={data['k']}, N={data['n_groups']}, T={data['num_timesteps']}, "
                 f"F={full / 1e9:.3f} GMACs",
                 ("group", "t_start", "t_end", "size", "budget", "budget GMACs", "SNR dB (min..max)"), "right")
    for g in data["groups"]:
        if g["size"] == 0:
            tab.add_row(str(g["index"]), "-", "-", "0", f"{g['budget_ratio']:.3f}", "-", "empty: skipped")
            continue
        tab.add_row(str(g["index"]), str(g["t_start"]), str(g["t_end"]), str(g["size"]), f"{g['budget_ratio']:.3f}",
                    f"{g['budget_macs'] / 1e9:.3f}", f"{g['snr_min']:.1f} .. {g['snr_max']:.1f}")
    con = console()
    con.print(tab)
    con.print(f"average budget over all T: {data['avg_budget_ratio']:.4f} F = {data['avg_budget_macs'] / 1e9:.3f} GMACs")


def print_prune_records(run_name: str, recs: list[dict]) -> None:
    tab = _table(f"{run_name}: pruned group models", ("group", "t", "budget G", "MACs G", "MACs/F", "gap", "params M",
                                                       "loss before", "loss after"), "right")
    for r in recs:
        rep = r["report"]
        tab.add_row(str(r["group"]), f"{r['t_start']}-{r['t_end']}", f"{r['budget_macs'] / 1e9:.4f}",
                    f"{rep['macs'] / 1e9:.4f}", f"{rep['macs_ratio']:.3f}", f"{100 * rep['budget_gap']:.2f}%",
                    f"{rep['params'] / 1e6:.3f}", fmt(rep.get("loss_before")), fmt(rep.get("loss_after")))
    console().print(tab)


def print_macs(run_name: str, out: dict, steps: int) -> None:
    tab = _table(f"{run_name}: per-sample cost, averaged over timesteps",
                 ("model", "params (avg, M)", "MACs avg over T (G)", f"MACs avg over {steps} steps (G)",
                  "+ attention (G)"), "right")
    b = out["base"]
    tab.add_row("base", f"{b['params'] / 1e6:.2f}", f"{b['macs'] / 1e9:.3f}", f"{b['macs'] / 1e9:.3f}",
                f"{b['attn_macs'] / 1e9:.3f}")
    if "progressive" in out:
        p = out["progressive"]
        tab.add_row("progressive", f"{p['avg_all']['params'] / 1e6:.2f}", f"{p['avg_all']['macs'] / 1e9:.3f}",
                    f"{p['avg_sampled']['macs'] / 1e9:.3f}", f"{p['avg_all']['attn_macs'] / 1e9:.3f}")
    console().print(tab)


def print_llm_call(c: dict) -> None:
    click.echo(f"call {c['id']}  run {c['run']}  group {c['group_index']}  round {c['round'] + 1}  "
               f"attempt {c['attempt']}  source {c['source']}  model {c['model_asked']} -> {c['model_resolved']}")
    click.echo(f"request key {c['request_key']}  latency {c['latency_s'] or 0:.2f}s  tokens "
               f"{fmt(c['prompt_tokens'], '{}')}/{fmt(c['completion_tokens'], '{}')}  cost {fmt(c['cost'], '{}')}  "
               f"fingerprint {c.get('system_fingerprint') or '-'}  at {c.get('created') or '-'}")
    for m in c["messages"]:
        click.echo(f"\n--- {m['role']} ---\n{m['content']}")
    click.echo(f"\n--- answer ---\n{c['response_text']}")
    click.echo(f"\n--- verdict ---\n{c['error'] or c['validation_error'] or 'accepted'}")


def print_llm_calls(run_name: str, rows: list[dict]) -> None:
    tab = _table(f"{run_name}: LLM calls", ("id", "time", "group", "round", "try", "source", "model", "tokens",
                                            "latency", "GMACs", "loss", "verdict"))
    for r in rows:
        tok = f"{fmt(r['prompt_tokens'], '{}')}/{fmt(r['completion_tokens'], '{}')}"
        verdict = r["verdict"] + (f": {r['reason'][:40]}" if r["reason"] else "")
        tab.add_row(str(r["id"]), (r["created"] or "-")[11:19], str(r["group"]), str(r["round"]), str(r["attempt"]),
                    r["source"], escape(r["model"]), tok, fmt(r["latency_s"], "{:.2f}s"),
                    fmt(r["macs"], "{:.4f}", 1e9), fmt(r["loss"], "{:.5f}"), escape(verdict))
    console().print(tab)


def print_runs(root, rows: list[dict]) -> None:
    """The important columns first (they fit 80 columns): name, status, stages, FID, MACs ratio."""
    tab = _table(f"runs in {root}", ("name", "status", "stages", "FID base/prog", "MACs prog/base", "method",
                                     "preset", "created"))
    for r in rows:
        ratio = (r["progressive_macs"] / r["base_macs"] if r.get("progressive_macs") and r.get("base_macs")
                 else None)
        tab.add_row(escape(r["name"]), r["status"], f"{r.get('stages_done', 0)}/{r.get('stages_total', 0)}",
                    f"{fmt(r.get('base_fid'), '{:.2f}')}/{fmt(r.get('progressive_fid'), '{:.2f}')}",
                    fmt(ratio, "{:.3f}"), r.get("method") or "-", escape(r.get("preset") or "-"),
                    (r.get("created") or "-")[:16].replace("T", " "))
    console().print(tab)


def print_show(run, data: dict) -> None:
    con = console()
    s, meta = data["run"], data["meta"]
    con.print(f"[bold]{escape(run.name)}[/]  {s['status']}  preset {escape(str(s.get('preset')))}  method "
              f"{s.get('method')}  config {meta.get('config_hash')}  seed {meta.get('seed')}  git "
              f"{str(meta.get('git_sha'))[:10]}{' (dirty)' if meta.get('git_dirty') else ''}")
    con.print(f"folder {run.path}", markup=False, highlight=False)
    con.print("stages: " + "  ".join(f"{k} [{'green' if v == 'done' else 'yellow'}]{v}[/]"
                                      for k, v in data["stages"].items()))
    if data["groups"]:
        tab = _table("groups", ("group", "t", "size", "budget/F", "budget G", "MACs G", "params M", "pruned by",
                                "fine-tuned", "ft loss"), "right")
        for g in data["groups"]:
            tab.add_row(str(g["index"]), f"{g['t_start']}-{g['t_end']}" if g["size"] else "-", str(g["size"]),
                        f"{g['budget_ratio']:.3f}", f"{g['budget_macs'] / 1e9:.4f}", fmt(g["macs"], scale=1e9),
                        fmt(g["params"], "{:.3f}", 1e6), g["prune_method"] or "-",
                        "yes" if g["finetuned"] else ("-" if not g["size"] else "no"), fmt(g["finetune_loss"]))
        con.print(tab)
    if data["jobs"]:
        tab = _table("jobs", ("id", "stage", "group", "status", "exit", "progress", "started", "note"))
        for j in data["jobs"]:
            tab.add_row(str(j["id"]), j["stage"], "" if j["group_index"] is None else str(j["group_index"]),
                        j["status"], "" if j["exit_code"] is None else str(j["exit_code"]),
                        f"{j['progress']}/{j['total']}" if j["total"] else "", (j["started"] or "")[:19],
                        escape((j["message"] or "")[:50]))
        con.print(tab)
    if data["artifacts"]:
        tab = _table("artifacts", ("path", "kind", "MB", "sha256", "job"))
        for a in data["artifacts"]:
            tab.add_row(escape(a["path"]), a["kind"], f"{a['bytes'] / 1e6:.2f}", a["sha256"][:12], str(a["job"]))
        con.print(tab)


def print_comparison(data: dict) -> None:
    if not data["rows"]:
        click.echo("no evaluation yet (the eval stage writes RUN/eval.json)")
        return
    base = {r["run"]: r for r in data["rows"] if r["model"] == "base"}
    fid_kind = next((r["fid_kind"] for r in data["rows"] if r.get("fid_kind")), None)
    tab = _table("Table 1 style: cost per sample, averaged over timesteps" + (f"; FID is {fid_kind}" if fid_kind else ""),
                 ("run", "model", "FID", "params (M)", "MACs avg T (G)", "MACs vs base",
                  f"MACs avg {data['rows'][0]['sample_steps']} steps (G)", "held-out loss", "train steps"), "right")
    for r in data["rows"]:
        b = base.get(r["run"])
        tab.add_row(escape(r["run"]), r["model"], fmt(r["fid"], "{:.2f}"), f"{r['params'] / 1e6:.3f}",
                    f"{r['macs'] / 1e9:.4f}", f"{r['macs'] / b['macs']:.3f}" if b else "-",
                    f"{r['macs_sampled'] / 1e9:.4f}", f"{r['loss']:.5f}", str(r["train_steps"]))
    con = console()
    con.print(tab)
    if data["config_differences"] and len(data["runs"]) > 1:
        from rich.table import Table

        t2 = Table(title="config keys that differ")
        t2.add_column("key")
        for name in data["runs"]:
            t2.add_column(escape(name))
        for k, vals in data["config_differences"].items():
            t2.add_row(k, *[escape(json.dumps(v)) for v in vals])
        con.print(t2)


def print_eval(result: dict) -> None:
    tab = _table(f"{result['run']}: {result['kind']}, {result['n']} samples, {result['steps']} steps",
                 ("model", "FID", "params (M)", "MACs avg T (G)", f"MACs avg {result['steps']} steps (G)",
                  "held-out loss", "train steps"), "right")
    for w, r in result["models"].items():
        tab.add_row(w, f"{r['fid']:.3f}", f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e9:.4f}",
                    f"{r['macs_sampled'] / 1e9:.4f}", f"{r['loss']:.5f}", str(r["train_steps"]))
    if result["baseline"]:
        b = result["baseline"]
        tab.add_row(escape(f"baseline {b['run']} ({b['model']})"), f"{b['fid']:.3f}", "", "", "", "", "")
    console().print(tab)


class LiveJobs:
    """A rich table of a run's jobs, redrawn while the pipeline runs (terminal only)."""

    def __init__(self, title: str):
        from rich.live import Live

        self.title = title
        self.live = Live(refresh_per_second=4, transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def say(self, line: str) -> None:
        self.live.console.print(line, markup=False, highlight=False)

    def __call__(self, jobs: list[dict]) -> None:
        from rich.progress_bar import ProgressBar

        tab = _table(self.title, ("job", "stage", "group", "status", "progress", "", "note"))
        tab.expand = False
        for j in jobs:
            if j["stage"] == "pipeline":
                continue
            total, done = j["total"] or 0, j["progress"] or 0
            progress = ProgressBar(total=total or 1, completed=done if total else 0, width=24)
            style = {"succeeded": "green", "failed": "red", "killed": "yellow", "lost": "red"}.get(j["status"], "")
            tab.add_row(str(j["id"]), j["stage"], "" if j["group_index"] is None else str(j["group_index"]),
                        f"[{style}]{j['status']}[/]" if style else j["status"], progress,
                        f"{done}/{total}" if total else "", (j["message"] or "")[:60])
        self.live.update(tab)

    def stop(self) -> None:
        self.live.stop()
