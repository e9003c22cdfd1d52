"""The read-only views' tables: a preset, a schedule, pruning records, MACs, the proxy's calls, `show`."""

from __future__ import annotations

import click
from rich.markup import escape

from core.evaluation.text import fmt

from ..common import console
from .common import titled_table


def print_preset(cfg: dict, res: dict) -> None:
    m = cfg["model"]
    click.echo(
        f"preset      {res['preset']} ({m['image_size']}x{m['image_size']}x{m['in_channels']}, "
        f"T={res['timesteps']} {cfg['diffusion']['noise_schedule']})"
    )
    click.echo(f"params      {res['params'] / 1e6:.2f} M")
    click.echo(f"MACs        {res['macs'] / 1e9:.3f} G  (convs and linears: the paper's FLOPs)")
    click.echo(f"attention   {res['attn_macs'] / 1e9:.3f} G  (q k^T and w v matmuls, not in the figure above)")


def print_schedule(data: dict) -> None:
    full = data["full_macs"]
    tab = titled_table(
        f"{data['kind']} schedule: k={data['k']}, N={data['n_groups']}, T={data['num_timesteps']}, "
        f"F={full / 1e9:.3f} GMACs",
        ("group", "t_start", "t_end", "size", "budget", "budget GMACs", "SNR dB (min..max)"),
        "right",
    )
    for g in data["groups"]:
        if g["size"] == 0:
            tab.add_row(str(g["index"]), "-", "-", "0", f"{g['budget_ratio']:.3f}", "-", "empty: skipped")
            continue
        tab.add_row(
            str(g["index"]),
            str(g["t_start"]),
            str(g["t_end"]),
            str(g["size"]),
            f"{g['budget_ratio']:.3f}",
            f"{g['budget_macs'] / 1e9:.3f}",
            f"{g['snr_min']:.1f} .. {g['snr_max']:.1f}",
        )
    con = console()
    con.print(tab)
    con.print(
        f"average budget over all T: {data['avg_budget_ratio']:.4f} F = {data['avg_budget_macs'] / 1e9:.3f} GMACs"
    )


def print_prune_records(run_name: str, recs: list[dict]) -> None:
    tab = titled_table(
        f"{run_name}: pruned group models",
        ("group", "t", "budget G", "MACs G", "MACs/F", "gap", "params M", "loss before", "loss after"),
        "right",
    )
    for r in recs:
        rep = r["report"]
        tab.add_row(
            str(r["group"]),
            f"{r['t_start']}-{r['t_end']}",
            f"{r['budget_macs'] / 1e9:.4f}",
            f"{rep['macs'] / 1e9:.4f}",
            f"{rep['macs_ratio']:.3f}",
            f"{100 * rep['budget_gap']:.2f}%",
            f"{rep['params'] / 1e6:.3f}",
            fmt(rep.get("loss_before")),
            fmt(rep.get("loss_after")),
        )
    console().print(tab)


def print_macs(run_name: str, out: dict, steps: int) -> None:
    tab = titled_table(
        f"{run_name}: per-sample cost, averaged over timesteps",
        ("model", "params (avg, M)", "MACs avg over T (G)", f"MACs avg over {steps} steps (G)", "+ attention (G)"),
        "right",
    )
    b = out["base"]
    tab.add_row(
        "base",
        f"{b['params'] / 1e6:.2f}",
        f"{b['macs'] / 1e9:.3f}",
        f"{b['macs'] / 1e9:.3f}",
        f"{b['attn_macs'] / 1e9:.3f}",
    )
    if "progressive" in out:
        p = out["progressive"]
        tab.add_row(
            "progressive",
            f"{p['avg_all']['params'] / 1e6:.2f}",
            f"{p['avg_all']['macs'] / 1e9:.3f}",
            f"{p['avg_sampled']['macs'] / 1e9:.3f}",
            f"{p['avg_all']['attn_macs'] / 1e9:.3f}",
        )
    console().print(tab)


def print_llm_call(c: dict) -> None:
    click.echo(
        f"call {c['id']}  run {c['run']}  group {c['group_index']}  round {c['round'] + 1}  "
        f"attempt {c['attempt']}  source {c['source']}  model {c['model_asked']} -> {c['model_resolved']}"
    )
    click.echo(
        f"request key {c['request_key']}  latency {c['latency_s'] or 0:.2f}s  tokens "
        f"{fmt(c['prompt_tokens'], '{}')}/{fmt(c['completion_tokens'], '{}')}  cost {fmt(c['cost'], '{}')}  "
        f"fingerprint {c.get('system_fingerprint') or '-'}  at {c.get('created') or '-'}"
    )
    for m in c["messages"]:
        click.echo(f"\n--- {m['role']} ---\n{m['content']}")
    click.echo(f"\n--- answer ---\n{c['response_text']}")
    click.echo(f"\n--- verdict ---\n{c['error'] or c['validation_error'] or 'accepted'}")


def print_llm_calls(run_name: str, rows: list[dict]) -> None:
    tab = titled_table(
        f"{run_name}: LLM calls",
        ("id", "time", "group", "round", "try", "source", "model", "tokens", "latency", "GMACs", "loss", "verdict"),
    )
    for r in rows:
        tok = f"{fmt(r['prompt_tokens'], '{}')}/{fmt(r['completion_tokens'], '{}')}"
        verdict = r["verdict"] + (f": {r['reason'][:40]}" if r["reason"] else "")
        tab.add_row(
            str(r["id"]),
            (r["created"] or "-")[11:19],
            str(r["group"]),
            str(r["round"]),
            str(r["attempt"]),
            r["source"],
            escape(r["model"]),
            tok,
            fmt(r["latency_s"], "{:.2f}s"),
            fmt(r["macs"], "{:.4f}", 1e9),
            fmt(r["loss"], "{:.5f}"),
            escape(verdict),
        )
    console().print(tab)


def print_show(run, data: dict) -> None:
    con = console()
    s, meta = data["run"], data["meta"]
    con.print(
        f"[bold]{escape(run.name)}[/]  {s['status']}  preset {escape(str(s.get('preset')))}  method "
        f"{s.get('method')}  config {meta.get('config_hash')}  seed {meta.get('seed')}  git "
        f"{str(meta.get('git_sha'))[:10]}{' (dirty)' if meta.get('git_dirty') else ''}"
    )
    con.print(f"folder {run.path}", markup=False, highlight=False)
    base = meta.get("base") or {}
    if base.get("origin") == "import":
        con.print(
            f"stage 1: imported from {base.get('file')} ({base.get('format')}, file sha256 "
            f"{str(base.get('file_sha256'))[:12]}; base sha256 {str(base.get('sha256'))[:12]})",
            markup=False,
            highlight=False,
        )
    elif base.get("origin") == "fork":
        at = f"@{base['step']}" if base.get("step") is not None else ""
        con.print(
            f"stage 1: shared with {base.get('run')}{at} (a fork; base sha256 {str(base.get('sha256'))[:12]})",
            markup=False,
            highlight=False,
        )
    elif base.get("sha256"):
        con.print(f"stage 1: trained here (base sha256 {str(base['sha256'])[:12]})", markup=False, highlight=False)
    if data.get("base_changed"):
        con.print(
            f"[bold red]stage 1: CHANGED[/] {escape(data['base_changed'])}; forks of this run are refused",
            highlight=False,
        )
    con.print(
        "stages: " + "  ".join(f"{k} [{'green' if v == 'done' else 'yellow'}]{v}[/]" for k, v in data["stages"].items())
    )
    if data["groups"]:
        tab = titled_table(
            "groups",
            ("group", "t", "size", "budget/F", "budget G", "MACs G", "params M", "pruned by", "fine-tuned", "ft loss"),
            "right",
        )
        for g in data["groups"]:
            tab.add_row(
                str(g["index"]),
                f"{g['t_start']}-{g['t_end']}" if g["size"] else "-",
                str(g["size"]),
                f"{g['budget_ratio']:.3f}",
                f"{g['budget_macs'] / 1e9:.4f}",
                fmt(g["macs"], scale=1e9),
                fmt(g["params"], "{:.3f}", 1e6),
                g["prune_method"] or "-",
                "yes" if g["finetuned"] else ("-" if not g["size"] else "no"),
                fmt(g["finetune_loss"]),
            )
        con.print(tab)
    if data["jobs"]:
        slurm = any(j.get("slurm_job") for j in data["jobs"])
        tab = titled_table(
            "jobs",
            (
                "id",
                "stage",
                "group",
                "status",
                *(("Slurm job",) if slurm else ()),
                "exit",
                "progress",
                "started",
                "note",
            ),
        )
        for j in data["jobs"]:
            tab.add_row(
                str(j["id"]),
                j["stage"],
                "" if j["group_index"] is None else str(j["group_index"]),
                j["status"],
                *(
                    (
                        f"{j['slurm_job']} {(j.get('slurm_state') or '').lower()}"
                        + (f" (limit {j['slurm_time']})" if j.get("slurm_time") else "")
                        if j.get("slurm_job")
                        else "",
                    )
                    if slurm
                    else ()
                ),
                "" if j["exit_code"] is None else str(j["exit_code"]),
                f"{j['progress']}/{j['total']}" if j["total"] else "",
                (j["started"] or "")[:19],
                escape((j["message"] or "")[:50]),
            )
        con.print(tab)
    if data["artifacts"]:
        tab = titled_table("artifacts", ("path", "kind", "MB", "sha256", "job"))
        for a in data["artifacts"]:
            tab.add_row(escape(a["path"]), a["kind"], f"{a['bytes'] / 1e6:.2f}", a["sha256"][:12], str(a["job"]))
        con.print(tab)
