"""The read-only views' tables: a preset, a schedule, pruning records, MACs, the proxy's calls, `show`."""

from __future__ import annotations

import click
from rich.markup import escape

from core.evaluation.text import fmt

from ..common import console, console_width
from .common import Col, fitted_table, titled_table


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
    """Params and MACs of the base and the progressive model, with the ratio to the base (the paper's Table 1
    column) over all T timesteps and over the ``steps`` respaced sampling steps (eval uses its own eval.steps)."""
    tab = titled_table(
        f"{run_name}: per-sample cost, averaged over timesteps",
        (
            "model",
            "params (avg, M)",
            "MACs avg over T (G)",
            f"MACs avg over {steps} steps (G)",
            "ratio to base",
            "+ attention (G)",
        ),
        "right",
    )
    b = out["base"]
    tab.add_row(
        "base",
        f"{b['params'] / 1e6:.2f}",
        f"{b['macs'] / 1e9:.3f}",
        f"{b['macs'] / 1e9:.3f}",
        "1.000",
        f"{b['attn_macs'] / 1e9:.3f}",
    )
    if "progressive" in out:
        p = out["progressive"]
        tab.add_row(
            "progressive",
            f"{p['avg_all']['params'] / 1e6:.2f}",
            f"{p['avg_all']['macs'] / 1e9:.3f}",
            f"{p['avg_sampled']['macs'] / 1e9:.3f}",
            f"{p['avg_all']['macs'] / b['macs']:.3f} ({p['avg_sampled']['macs'] / b['macs']:.3f})",
            f"{p['avg_all']['attn_macs'] / 1e9:.3f}",
        )
    console().print(tab)


def print_llm_call(c: dict) -> None:
    click.echo(
        f"call {c['id']}  run {c['run']}  group {c['group_index']}  round {c['round'] + 1}  "
        f"try {c['attempt'] + 1}  source {c['source']}  model {c['model_asked']} -> {c['model_resolved']}"
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


def print_llm_calls(run_name: str, rows: list[dict], wide: bool = False) -> None:
    """One row per call; by default only the columns whose values differ between the rows (the ones that are
    the same for every call are said once, in the title), ``wide``: every column. The kept candidate is
    marked ``* chosen``, as the TUI and the report mark it."""
    cols = [
        ("id", lambda r: str(r["id"]), 0, "right"),
        ("time", lambda r: (r["created"] or "-")[11:19], 6, "left"),
        ("group", lambda r: str(r["group"]), 0, "right"),
        ("round", lambda r: str(r["round"]), 0, "right"),
        ("try", lambda r: str(r["try"]), 0, "right"),
        ("source", lambda r: r["source"], 5, "left"),
        ("model", lambda r: escape(r["model"]), 7, "left"),
        ("tokens", lambda r: f"{fmt(r['prompt_tokens'], '{}')}/{fmt(r['completion_tokens'], '{}')}", 8, "right"),
        ("latency", lambda r: fmt(r["latency_s"], "{:.2f}s"), 4, "right"),
        ("GMACs", lambda r: fmt(r["macs"], "{:.4f}", 1e9), 2, "right"),
        ("loss", lambda r: fmt(r["loss"], "{:.5f}"), 0, "right"),
        ("verdict", lambda r: escape(_verdict(r, 40 if wide else 28)), 0, "left"),  # wraps: see below
    ]
    cells = [[f(r) for _, f, _, _ in cols] for r in rows]
    same = []
    if not wide and len(rows) > 1:
        for i, (head, _, drop, _) in enumerate(cols):
            values = {c[i] for c in cells}
            if drop and len(values) == 1:
                same.append((i, f"{head} {next(iter(values))}"))
    gone = {i for i, _ in same}
    use = [c for i, c in enumerate(cols) if i not in gone]
    title = f"{run_name}: LLM calls" + (f" (all: {', '.join(t for _, t in same)})" if same else "")
    tab = fitted_table(
        title,
        [Col(h, drop=0 if wide else d, justify=j, wraps=16 if h == "verdict" else 0) for h, _, d, j in use],
        [[c for i, c in enumerate(row) if i not in gone] for row in cells],
        10_000 if wide else console_width(),
    )
    console().print(tab)


def _verdict(r: dict, cut: int) -> str:
    if r["chosen"]:
        return "* chosen"
    return r["verdict"] + (f": {r['reason'][:cut]}" if r["reason"] else "")


def print_show(run, data: dict, artifacts: bool = False) -> None:
    """The verdict first, then what the run is (tags, notes, disk), its stages, groups (with the candidate each
    kept) and jobs; the artifacts only when asked for (``--artifacts``)."""
    from core.chosen import chosen_text
    from core.evaluation.text import bottom_line, verdict_text
    from core.manager.housekeeping import human_bytes

    from .runs import labels_text

    con, width = console(), console_width()
    s, meta = data["run"], data["meta"]
    put = lambda text: con.print(escape(text), highlight=False)  # noqa: E731
    con.print(f"[bold]{escape(run.name)}[/]  {s['status']}", highlight=False)
    comps = data["eval"].get("comparisons", []) if data["eval"] else []
    for c in comps:
        if c["model"] == "progressive" and c["against"] in ("control", "base"):
            put(verdict_text(c, short=True))
    from core.evaluation.evaluate import loss_table
    from core.evaluation.text import group_pattern

    t_start = {g["index"]: g["t_start"] for g in data.get("groups") or [] if g.get("t_start") is not None}
    pattern = group_pattern(loss_table(data["eval"].get("models", {}), comps), t_start=t_start) if comps else ""
    for line in (bottom_line(comps), pattern):
        if line:
            put(line)
    put(
        f"preset {s.get('preset')}  method {s.get('method')}  seed {meta.get('seed')}  config "
        f"{meta.get('config_hash')}  git {str(meta.get('git_sha'))[:10]}{' (dirty)' if meta.get('git_dirty') else ''}"
        f"  disk {human_bytes(data.get('bytes'))}"
    )
    if s.get("tags") or s.get("notes"):
        put(f"tags {labels_text(s)}")
        for n in s.get("notes") or []:
            put(f"note {(n['created'] or '')[:16].replace('T', ' ')}: {n['text']}")
    put(f"folder {run.path}")
    base = meta.get("base") or {}
    if base.get("origin") == "import":
        put(
            f"stage 1: imported from {base.get('file')} ({base.get('format')}, file sha256 "
            f"{str(base.get('file_sha256'))[:12]}; base sha256 {str(base.get('sha256'))[:12]})"
        )
    elif base.get("origin") == "shipped":
        put(
            f"stage 1: the shipped base {base.get('name')} ({base.get('file')}, {base.get('steps'):,} steps, commit "
            f"{str(base.get('commit'))[:10]}; parent {meta.get('parent')}, base sha256 {str(base.get('sha256'))[:12]})"
        )
    elif base.get("origin") == "fork":
        at = f"@{base['step']}" if base.get("step") is not None else ""
        put(f"stage 1: shared with {base.get('run')}{at} (a fork; base sha256 {str(base.get('sha256'))[:12]})")
    elif base.get("sha256"):
        put(f"stage 1: trained here (base sha256 {str(base['sha256'])[:12]})")
    if data.get("base_changed"):
        con.print(
            f"[bold red]stage 1: CHANGED[/] {escape(data['base_changed'])}; forks of this run are refused",
            highlight=False,
        )
    con.print(
        "stages: " + "  ".join(f"{k} [{'green' if v == 'done' else 'yellow'}]{v}[/]" for k, v in data["stages"].items())
    )
    if data["groups"]:
        rows = [
            [
                str(g["index"]),
                f"{g['t_start']}-{g['t_end']}" if g["size"] else "-",
                str(g["size"]),
                f"{g['budget_ratio']:.3f}",
                f"{g['budget_macs'] / 1e9:.4f}",
                fmt(g["macs"], scale=1e9),
                fmt(g["params"], "{:.3f}", 1e6),
                escape(g["prune_method"] or "-"),
                escape(g.get("kept") or "-"),
                "yes" if g["finetuned"] else ("-" if not g["size"] else "no"),
                fmt(g["finetune_loss"]),
            ]
            for g in data["groups"]
        ]
        cols = [
            Col("group", justify="right"),
            Col("t", justify="right"),
            Col("size", drop=5, justify="right"),
            Col("budget/F", justify="right"),
            Col("budget G", drop=6, justify="right"),
            Col("MACs G", drop=3, justify="right"),
            Col("params M", drop=4, justify="right"),
            Col("pruned by", drop=2),
            Col("kept", drop=1, wraps=16),
            Col("fine-tuned", drop=7),
            Col("ft loss", justify="right"),
        ]
        con.print(fitted_table("groups", cols, rows, width))
    if data["jobs"]:
        _print_jobs(con, data["jobs"], width)
    arts = data["artifacts"]
    if arts and artifacts:
        rows = [
            [
                escape(a["path"]),
                a["kind"],
                f"{a['bytes'] / 1e6:.2f}",
                a["sha256"][:12],
                "-" if a["job"] is None else str(a["job"]),
            ]
            for a in arts
        ]
        cols = [Col("path", whole=True), Col("kind"), Col("MB", justify="right"), Col("sha256", drop=1), Col("job")]
        con.print(fitted_table("artifacts", cols, rows, width))
    elif arts:
        size = human_bytes(sum(a["bytes"] or 0 for a in arts))
        put(f"{len(arts)} artifacts ({size}): stepadapt show {run.name} --artifacts")
    if data.get("chosen") and not data["groups"]:
        for g, c in sorted(data["chosen"].items(), key=lambda kv: int(kv[0])):
            put(f"group {g} kept {chosen_text(c)}")


def _print_jobs(con, jobs: list[dict], width: int) -> None:
    slurm = any(j.get("slurm_job") for j in jobs)
    rows = []
    for j in jobs:
        note = f"kept {j['kept']}" if j.get("kept") else (j["message"] or "")
        rows.append(
            [
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
                (j["started"] or "")[5:19].replace("T", " "),
                escape(note[:60]),
            ]
        )
    cols = [
        Col("id", justify="right"),
        Col("stage"),
        Col("group", justify="right"),
        Col("status"),
        *((Col("Slurm job", drop=4),) if slurm else ()),
        Col("exit", drop=2, justify="right"),
        Col("progress", drop=3, justify="right"),
        Col("started", drop=5),
        Col("note", drop=1, wraps=24),
    ]
    con.print(fitted_table("jobs", cols, rows, width))
