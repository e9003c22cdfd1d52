"""Cheap read-only snapshots of runs for live views (the TUI): the store's rows and file existence only,
never a checkpoint load, so polling costs milliseconds even for CIFAR-10-sized runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .runs import Run
from .store import Store

STAGE_ORDER = ("base", "schedule", "prune", "finetune", "assemble", "sample", "eval")
SPARK = "▁▂▃▄▅▆▇█"


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


def read_json(path: Path) -> Optional[dict]:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _latest(jobs: list[dict], stage: str, group: Optional[int] = None) -> Optional[dict]:
    js = [j for j in jobs if j["stage"] == stage and j["group_index"] == group]
    return js[-1] if js else None


def stage_status(run: Run, cfg: dict, jobs: list[dict], sched: Optional[dict]) -> dict[str, str]:
    nonempty = [g["index"] for g in sched["groups"] if g["size"]] if sched else []
    files = {
        "base": run.model("base").exists(),
        "schedule": sched is not None,
        "prune": bool(nonempty) and (cfg["prune"]["method"] == "none" or all(
            (run.path / "prune" / f"group{g:02d}.json").exists() for g in nonempty)),
        "finetune": bool(nonempty) and all(run.model(f"group{g:02d}").exists() for g in nonempty),
        "assemble": run.model("progressive").exists(),
        "sample": any(run.samples().glob("progressive_s*.png")) if run.samples().exists() else False,
        "eval": (run.path / "eval.json").exists(),
    }
    out = {}
    for st in STAGE_ORDER:
        js = [j for j in jobs if j["stage"] == st]
        if any(j["status"] in ("queued", "running") for j in js):
            out[st] = "running"
        elif files[st]:
            out[st] = "done"
        elif js and js[-1]["status"] in ("failed", "killed", "lost"):
            out[st] = js[-1]["status"]
        else:
            out[st] = "pending"
    if cfg["prune"]["method"] == "none" and out["prune"] == "pending":
        out["prune"] = "skipped"
    return out


def runs_overview(store: Store) -> list[dict]:
    rows = []
    for r in store.list_runs():
        run = Run(Path(r["path"]))
        cfg = r["config"] if isinstance(r["config"], dict) else {}
        if not (run.path / "config.json").exists():
            continue
        jobs = store.jobs(r["name"])
        sched = read_json(run.path / "schedule.json")
        try:
            st = stage_status(run, cfg, jobs, sched)
        except (KeyError, TypeError):
            st = {}
        ev = read_json(run.path / "eval.json") or {}
        fids = [m["fid"] for m in ev.get("models", {}).values() if m.get("fid") is not None]
        prune = cfg.get("prune", {})
        rows.append({"name": r["name"], "status": r["status"], "preset": cfg.get("preset"),
                     "method": prune.get("method"), "llm": prune.get("llm") if prune.get("method") == "proxy" else "",
                     "stages_done": sum(v in ("done", "skipped") for v in st.values()), "stages": len(STAGE_ORDER),
                     "best_fid": min(fids) if fids else None, "created": r["created"]})
    return rows


def run_detail(store: Store, run: Run) -> dict:
    cfg = run.config
    jobs = store.jobs(run.name)
    sched = read_json(run.path / "schedule.json")
    row = store.get_run(run.name) or {}
    groups = []
    base_job = _latest(jobs, "base")
    base_loss = [m["value"] for m in store.metrics(run.name, "base", None, "loss")]
    groups.append({"group": "base", "t": f"0-{cfg['diffusion']['steps'] - 1}", "budget": None, "macs": None,
                   "status": ("done" if base_job["status"] == "succeeded" else base_job["status"]) if base_job else ("done" if run.model("base").exists() else "pending"),
                   "progress": (base_job or {}).get("progress") or 0, "total": (base_job or {}).get("total") or 0,
                   "loss": base_loss[-1] if base_loss else None, "spark": sparkline(base_loss),
                   "job": base_job["id"] if base_job else None})
    if sched:
        full = sched.get("full_macs") or 1
        for g in sched["groups"]:
            if not g["size"]:
                groups.append({"group": g["index"], "t": "empty", "budget": g["budget_ratio"], "macs": None,
                               "status": "empty", "progress": 0, "total": 0, "loss": None, "spark": "", "job": None})
                continue
            rec = read_json(run.path / "prune" / f"group{g['index']:02d}.json")
            ft = _latest(jobs, "finetune", g["index"])
            pj = _latest(jobs, "prune", g["index"])
            job = ft or pj
            losses = [m["value"] for m in store.metrics(run.name, "finetune", g["index"], "loss")]
            if ft:
                status = ft["status"] if ft["status"] != "succeeded" else "done"
            elif pj:
                status = "pruning" if pj["status"] == "running" else f"prune {pj['status']}"
            else:
                status = "done" if run.model(f"group{g['index']:02d}").exists() else "pending"
            groups.append({"group": g["index"], "t": f"{g['t_start']}-{g['t_end']}", "budget": g["budget_ratio"],
                           "macs": rec["report"]["macs"] / full if rec else None, "status": status,
                           "progress": (ft or {}).get("progress") or 0, "total": (ft or {}).get("total") or 0,
                           "loss": losses[-1] if losses else None, "spark": sparkline(losses),
                           "job": job["id"] if job else None})
    return {"name": run.name, "status": row.get("status", "created"), "preset": cfg.get("preset"),
            "method": cfg["prune"]["method"], "stages": stage_status(run, cfg, jobs, sched), "groups": groups,
            "jobs": jobs, "schedule": sched, "eval": read_json(run.path / "eval.json")}


def schedule_text(run: Run, width: int = 64) -> str:
    """The schedule drawn in text: budget (k F .. F) over t, and where each group starts."""
    from .schedule import schedule_from_config

    sched = schedule_from_config(run.config)
    T = sched.num_timesteps
    width = min(width, T)
    cols = [range(i * T // width, max(i * T // width + 1, (i + 1) * T // width)) for i in range(width)]
    k = sched.k
    levels = "".join(SPARK[min(7, int((max(sched.ratio[c]) - k) / max(1 - k, 1e-9) * 7.999))] for c in cols)
    snr = sched.snr
    lo, hi = float(snr.min()), float(snr.max())
    snr_line = "".join(SPARK[min(7, int((float(snr[c].mean()) - lo) / max(hi - lo, 1e-9) * 7.999))] for c in cols)
    marks = [" "] * width
    for g in sched.nonempty:
        i = min(width - 1, g.t_start * width // T)
        marks[i] = str(g.index % 10)
    return (f"SNR dB  {snr_line}  {hi:.0f}..{lo:.0f}\n"
            f"budget  {levels}  {k:.2f}F..1F\n"
            f"groups  {''.join(marks)}  t=0..{T - 1}")
