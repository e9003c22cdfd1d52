"""Read-only snapshots of runs for the listings (``runs``, ``show``) and the TUI: store rows and run files.

A stage's state comes from the stage's own ``pending`` answer (``stages/``) and its latest job, so what the
listings call done is exactly what ``resume`` will skip. No checkpoint is loaded: training stages read the
step of their model artifact memory-mapped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.chosen import chosen_candidates, pruned_with, record_method
from core.errors import UserError
from core.evaluation.evaluate import load_eval, loss_table
from core.manager import stages
from core.names import JOB_ACTIVE, OPTIONAL_STAGES, SAMPLE_MODELS, STAGES
from core.runs import Run, base_changed, read_json
from core.store import Store

SPARK = "▁▂▃▄▅▆▇█"


SERIES = 40  # the last losses a row keeps for a sparkline as wide as the screen allows


def sparkline(values: list[float], width: int = 12) -> str:
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(7, int((v - lo) / span * 7.999))] for v in vals)


def bar(done: int, total: int, width: int = 10) -> str:
    if not total:
        return ""
    k = int(round(width * min(done, total) / total))
    return "#" * k + "-" * (width - k)


def _get(record, *keys):
    """``record[k1][k2]...``, or None where a key is missing (a hand-edited or older record never breaks a view)."""
    for k in keys:
        record = record.get(k) if isinstance(record, dict) else None
    return record


def _latest(jobs: list[dict], stage: str, group: Optional[int] = None) -> Optional[dict]:
    js = [j for j in jobs if j["stage"] == stage and j["group_index"] == group]
    return js[-1] if js else None


def stage_status(run: Run, jobs: list[dict]) -> dict[str, str]:
    """Stage -> running | done | skipped | failed | killed | lost | pending; a stage that is switched off
    (``control.uniform``, ``control.dense``, the trunk of a run without ``finetune.trunk shared``) is left out, as
    it is not part of the run."""
    cfg = run.config
    from core.config import single_stage
    from core.manager.stages.dense import wanted as dense_wanted
    from core.manager.stages.uniform import wanted as uniform_wanted

    skipped = {
        "prune": cfg["prune"]["method"] == "none",
        "control": not cfg["control"]["enabled"] or single_stage(cfg),
        "base": single_stage(cfg),
        "uniform": not uniform_wanted(cfg),
        "dense-small": not dense_wanted(cfg),
    }
    out = {}
    for st in STAGES:
        if not switched_on(cfg, st):
            continue
        js = [j for j in jobs if j["stage"] == st]
        if any(j["status"] in JOB_ACTIVE for j in js):
            out[st] = "running"
        elif not stages.pending(run, st):
            out[st] = "skipped" if skipped.get(st) else "done"
        elif js and js[-1]["status"] in ("failed", "killed", "lost", "preempted"):
            out[st] = js[-1]["status"]
        else:
            out[st] = "pending"
    return out


def switched_on(cfg: dict, stage: str) -> bool:
    """Whether ``stage`` is part of a run with ``cfg``: always, unless a switch turns it on
    (``names.OPTIONAL_STAGES``) and it is off."""
    if stage not in OPTIONAL_STAGES:
        return True
    key, on = OPTIONAL_STAGES[stage]
    section, name = key.split(".")
    return (cfg.get(section) or {}).get(name) == on


def stages_done(status: dict[str, str]) -> int:
    return sum(v in ("done", "skipped") for v in status.values())


def slurm_line(active: list[dict]) -> str:
    """'Slurm 12_0 running, 12_1 pending' for a run's unfinished Slurm jobs ('' when it has none)."""
    jobs = [j for j in active if j.get("slurm_job")]
    return (
        (
            "Slurm "
            + ", ".join(f"{j['slurm_job']} {(j.get('slurm_state') or j['status']).lower()}" for j in jobs[:4])
            + (f" (+{len(jobs) - 4})" if len(jobs) > 4 else "")
        )
        if jobs
        else ""
    )


def run_summary(store: Store, row: dict, labels: Optional[tuple] = None, disk: bool = False) -> dict:
    """One line about a run for ``runs`` and the TUI's runs screen. A run whose folder is gone is listed as
    ``missing``, one whose config cannot be read as ``broken``. ``labels``: every run's (tags, notes) when the
    caller read them at once; ``disk``: also the bytes of the run's folder."""
    run = Run(Path(row["path"]))
    tags, notes = labels or (store.tags(row["name"]), store.notes(row["name"]))
    out = {
        "name": row["name"],
        "status": row["status"],
        "config_hash": row.get("config_hash"),
        "seed": row.get("seed"),
        "created": row.get("created"),
        "ended": row.get("ended"),
        "parent": row.get("parent"),
        "folder": str(run.path),
        "stages_total": len(STAGES) - len(OPTIONAL_STAGES),
        "tags": tags.get(row["name"], {}),
        "notes": notes.get(row["name"], []),
    }
    if not run.config_file.exists():
        return {**out, "status": "missing", "folder": None, "stages_done": 0}
    try:
        cfg = run.config
        st = stage_status(run, store.jobs(row["name"]))
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
        return {**out, "status": "broken", "error": f"{type(e).__name__}: {e}", "stages_done": 0}
    prune = cfg["prune"]
    from core.manager.bases import base_origin

    out.update(
        {
            "preset": cfg.get("preset"),
            "method": pruned_with(run, cfg),
            "llm": prune["llm"] if prune["method"] == "proxy" else "",
            "stages_done": stages_done(st),
            "stages_total": len(st),
            "base": base_origin(run),
            "launcher": cfg["launcher"]["kind"],
            "slurm": slurm_line(store.jobs(row["name"], active=True)),
        }
    )
    ev = load_eval(run)
    models = ev.get("models", {})
    for model, r in models.items():
        for key in ("macs", "loss", "fid", "fid_ci", "kid"):
            if r.get(key) is not None:
                out[f"{model}_{key}"] = r[key]
    for c in ev.get("comparisons", []):
        if c.get("verdict"):
            out[f"{c['model']}_vs_{c['against']}"] = c["verdict"]
    fids = [r["fid"] for r in models.values() if r.get("fid") is not None]
    out["best_fid"] = min(fids) if fids else None
    if disk:
        from core.manager.housekeeping import disk_use

        out["bytes"] = disk_use(run.path)
    return out


def runs_overview(store: Store) -> list[dict]:
    return [run_summary(store, r) for r in store.list_runs()]


def group_rows(store: Store, run: Run, kept: Optional[dict] = None) -> list[dict]:
    """Per timestep group: size, budget, achieved MACs and params after pruning, the candidate the plan kept
    (``kept``: ``chosen``'s answer), fine-tune state and loss."""
    from core.chosen import chosen_text

    kept = kept or {}
    sched = read_json(run.schedule_file())
    if not sched:
        return []
    rows = []
    for g in sched["groups"]:
        rec = read_json(run.prune_record(g["index"])) if g["size"] else None
        ft = store.metrics(run.name, "finetune", g["index"], "loss")
        rows.append(
            {
                "index": g["index"],
                "size": g["size"],
                "t_start": g.get("t_start"),
                "t_end": g.get("t_end"),
                "budget_ratio": g["budget_ratio"],
                "budget_macs": g["budget_macs"],
                "macs": _get(rec, "report", "macs"),
                "params": _get(rec, "report", "params"),
                "prune_method": record_method(rec),
                "kept": chosen_text(kept[g["index"]]) if g["index"] in kept else None,
                "finetuned": run.model(run.group_stage(g["index"])).exists(),
                "finetune_loss": ft[-1]["value"] if ft else None,
            }
        )
    return rows


def chosen(store: Store, run: Run) -> dict[int, dict]:
    """Per pruned group, the candidate its plan kept (``core.chosen``), read from this store."""
    return chosen_candidates(run, store.rounds(run.name), store.calls(run.name))


def show_data(store: Store, run: Run) -> dict:
    """Everything ``stepadapt show`` prints (and ``--json`` returns)."""
    from core.manager.housekeeping import disk_use

    summary = run_summary(store, store.get_run(run.name))
    kept = chosen(store, run)
    last = {}
    for m in store.metrics(run.name):
        key = m["stage"] + ("" if m["group_index"] is None else f"/g{m['group_index']:02d}")
        last.setdefault(key, {})[m["key"]] = m["value"]
        last[key]["step"] = m["step"]
    jobs = [
        {
            k: j.get(k)
            for k in (
                "id",
                "stage",
                "group_index",
                "status",
                "pid",
                "device",
                "exit_code",
                "started",
                "ended",
                "progress",
                "total",
                "message",
                "log_path",
                "launcher",
                "host",
                "slurm_job",
                "slurm_state",
                "slurm_time",
            )
        }
        for j in store.jobs(run.name)
    ]
    from core.chosen import chosen_text

    for j in jobs:  # a prune job's last line is its last round; what it kept is the prune record's
        if j["stage"] == "prune" and j["status"] == "succeeded" and j["group_index"] in kept:
            j["kept"] = chosen_text(kept[j["group_index"]])
    return {
        "run": summary,
        "meta": run.meta,
        "stages": stage_status(run, store.jobs(run.name)),
        "groups": group_rows(store, run, kept),
        "jobs": jobs,
        "metrics_last": last,
        "artifacts": store.artifacts(run.name),
        "eval": load_eval(run),
        "base_changed": base_changed(run),  # models/base.pt against its record in meta.json, or None
        "chosen": {str(g): c for g, c in kept.items()},
        "disk": {p.name: disk_use(p) for p in sorted(run.path.iterdir()) if p.is_dir()},
        "bytes": disk_use(run.path),
    }


def run_detail(store: Store, run: Run) -> dict:
    """The TUI's run screen: stages, one row for the base and one per group with live training state."""
    cfg = run.config
    jobs = store.jobs(run.name)
    sched = read_json(run.schedule_file())
    row = store.get_run(run.name) or {}
    groups = [_base_row(store, run, cfg, jobs)]
    if sched:
        full = sched.get("full_macs") or 1
        groups += [_group_row(store, run, g, jobs, full) for g in sched["groups"]]
    return {
        "name": run.name,
        "status": row.get("status", "created"),
        "preset": cfg.get("preset"),
        "method": cfg["prune"]["method"],
        "stages": stage_status(run, jobs),
        "groups": groups,
        "jobs": jobs,
        "scheduled": sched is not None,
        "eval": read_json(run.eval_file()),
    }


def _base_row(store: Store, run: Run, cfg: dict, jobs: list[dict]) -> dict:
    job = _latest(jobs, "base")
    loss = [m["value"] for m in store.metrics(run.name, "base", None, "loss")]
    if job:
        status = "done" if job["status"] == "succeeded" else job["status"]
    else:
        status = "done" if not stages.pending(run, "base") else "pending"
    return _row("base", f"0-{cfg['diffusion']['steps'] - 1}", None, None, status, loss, job, job)


def _row(group, t: str, budget, macs, status: str, losses: list, training, job) -> dict:
    """A row of the group table: ``training`` the job whose progress it shows, ``job`` the one it links to."""
    return {
        "group": group,
        "t": t,
        "budget": budget,
        "macs": macs,
        "status": status,
        "progress": (training or {}).get("progress") or 0,
        "total": (training or {}).get("total") or 0,
        "loss": losses[-1] if losses else None,
        "series": losses[-SERIES:],
        "job": job["id"] if job else None,
    }


def _group_row(store: Store, run: Run, g: dict, jobs: list[dict], full: float) -> dict:
    if not g["size"]:
        return _row(g["index"], "empty", g["budget_ratio"], None, "empty", [], None, None)
    rec = read_json(run.prune_record(g["index"]))
    ft, pj = _latest(jobs, "finetune", g["index"]), _latest(jobs, "prune", g["index"])
    losses = [m["value"] for m in store.metrics(run.name, "finetune", g["index"], "loss")]
    if ft:
        status = ft["status"] if ft["status"] != "succeeded" else "done"
    elif pj:
        status = "pruning" if pj["status"] == "running" else f"prune {pj['status']}"
    else:
        status = "done" if run.model(run.group_stage(g["index"])).exists() else "pending"
    macs = _get(rec, "report", "macs") and _get(rec, "report", "macs") / full
    return _row(g["index"], f"{g['t_start']}-{g['t_end']}", g["budget_ratio"], macs, status, losses, ft, ft or pj)


def _label_columns(wanted: list[int], width: int, gap: int = 1) -> list[int]:
    """Columns for labels that want ``wanted`` (ascending): each as near its own as it can be, ``gap`` columns
    after the one before (a space between labels when they fit, so 5 6 7 never read as 567); labels crowding the
    right edge move left."""
    if len(wanted) * (gap + 1) - gap > width:
        gap = 0
    cols = []
    for w in wanted:  # left to right: never on or next to the one before
        cols.append(max(w, cols[-1] + 1 + gap) if cols else max(0, w))
    for i in range(len(cols) - 1, -1, -1):  # right to left: inside the strip, before the next
        cols[i] = min(cols[i], width - 1 if i == len(cols) - 1 else cols[i + 1] - 1 - gap)
    return cols


def schedule_profile(run: Run) -> dict:
    """What the schedule strip is drawn from, as plain lists (the TUI draws it again at each width)."""
    from core.method.schedule import schedule_from_config

    sched = schedule_from_config(run.config)
    return {
        "T": sched.num_timesteps,
        "k": float(sched.k),
        "ratio": [float(r) for r in sched.ratio],
        "snr": [float(v) for v in sched.snr],
        "starts": [(g.index, g.t_start) for g in sched.nonempty],
    }


def draw_schedule(p: dict, width: int = 64) -> str:
    """The schedule drawn in text ``width`` columns wide: SNR (dB) and budget (k F .. F) over t, and where each
    group starts."""
    T, k = p["T"], p["k"]
    width = max(1, min(width, T))
    cols = [range(i * T // width, max(i * T // width + 1, (i + 1) * T // width)) for i in range(width)]
    levels = "".join(SPARK[min(7, int((max(p["ratio"][t] for t in c) - k) / max(1 - k, 1e-9) * 7.999))] for c in cols)
    snr = p["snr"]
    lo, hi = min(snr), max(snr)
    snr_line = "".join(
        SPARK[min(7, int((sum(snr[t] for t in c) / len(c) - lo) / max(hi - lo, 1e-9) * 7.999))] for c in cols
    )
    marks = [" "] * width
    for (g, _), i in zip(p["starts"], _label_columns([s * width // T for _, s in p["starts"]], width)):
        marks[i] = str(g % 10)
    return (
        f"SNR dB  {snr_line}  {hi:.0f}..{lo:.0f}\n"
        f"budget  {levels}  {k:.2f}F..1F\n"
        f"groups  {''.join(marks)}  t=0..{T - 1}"
    )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


ROW_KEYS = (
    "fid",
    "fid_ci",
    "kid",
    "kid_ci",
    "precision",
    "recall",
    "fid_kind",
    "fid_n",
    "params",
    "macs",
    "macs_sampled",
    "loss",
    "loss_ci",
    "train_steps",
)


def comparison(runs: list[Run]) -> dict:
    """From each run's ``eval.json``: Table 1 style rows (one per run and model: base, control, progressive),
    each run's pairwise comparisons with verdicts, its per-group held-out loss table, and the config keys
    that differ between the runs."""
    import json

    rows, verdicts, losses = [], {}, {}
    for run in runs:
        ev = load_eval(run)
        models = ev.get("models", {})
        base_macs = models.get("base", {}).get("macs")
        for model in [m for m in SAMPLE_MODELS if m in models]:
            r = models[model]
            rows.append(
                {
                    "run": run.name,
                    "model": model,
                    **{k: r.get(k) for k in ROW_KEYS},
                    "macs_ratio": r["macs"] / base_macs if base_macs else None,
                    "sample_steps": ev.get("sample_steps"),
                }
            )
        if models:
            verdicts[run.name] = ev.get("comparisons", [])
            losses[run.name] = loss_table(models, ev.get("comparisons", []))
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    diff = {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1}
    return {
        "rows": rows,
        "comparisons": verdicts,
        "loss_groups": losses,
        "config_differences": diff,
        "runs": [r.name for r in runs],
        "not_evaluated": [r.name for r in runs if r.name not in verdicts],  # no eval.json yet: no rows
        **(shared_base(runs) if len(runs) > 1 else {}),
    }


def shared_base(runs: list[Run]) -> dict:
    """Whether the runs share one stage 1 (same base model sha256), and where each base came from."""
    from core.manager.bases import base_origin, base_sha256

    bases = {r.name: {"origin": base_origin(r), "sha256": base_sha256(r)} for r in runs}
    return {"bases": bases, "bases_differ": len({b["sha256"] for b in bases.values()}) > 1}
