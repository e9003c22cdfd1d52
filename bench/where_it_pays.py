"""Where the method pays: every arm of a study, each model with its FID and KID intervals and MACs, and the
progressive model's paired verdict against each control of its own run (equal compute, equal inference cost:
uniform and dense-small, and the base), read from the arms' eval.json; the FID-against-MACs figure beside it.

    python bench/where_it_pays.py STUDY [--runs-dir DIR] [--name NAME]

Writes bench/results/NAME.{json,md} and bench/NAME.png (default ``where_it_pays_STUDY``, dashes as underscores).
Nothing is sampled or scored again: an arm without a finished evaluation is listed as pending.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ("base", "control", "uniform", "dense-small", "progressive")
AGAINST = ("control", "uniform", "dense-small", "base")


def arm_rows(arm: str, run) -> tuple[list[dict], dict]:
    """One row per model the arm measured, and the progressive model's FID gaps by control (``gaps.run_gaps``)."""
    from core.evaluation.gaps import run_gaps

    path = run.eval_file()
    if not path.exists():
        return [], {}
    ev = json.loads(path.read_text())
    base_macs = ev["models"].get("base", {}).get("macs")
    rows = []
    for m in MODELS:
        r = ev["models"].get(m)
        if not r or r.get("fid") is None:
            continue
        rows.append(
            {
                "arm": arm,
                "model": m,
                "fid": r["fid"],
                "fid_ci": r["fid_ci"],
                "kid": r["kid"],
                "kid_ci": r["kid_ci"],
                "macs_ratio": r["macs"] / base_macs if base_macs else None,
                "train_steps": r.get("train_steps"),
            }
        )
    return rows, run_gaps(ev)


def main() -> None:
    from core.evaluation.gaps import gap_cell
    from core.evaluation.report_figures import plot_fid_macs
    from core.runs import is_run_folder, open_run, read_json, runs_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    rec = read_json(runs_root(a.runs_dir) / "studies" / a.study / "study.json")
    name = a.name or f"where_it_pays_{a.study.replace('-', '_')}"
    rows, comparisons, runs, pending = [], {}, [], []
    order = [a["name"] for a in rec["definition"]["arms"]]  # the definition's order (the record's keys are sorted)
    for arm, run_name in sorted(rec["arms"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        if not is_run_folder(runs_root(a.runs_dir) / run_name):
            pending.append(arm)
            continue
        run = open_run(run_name, a.runs_dir)
        got, gaps = arm_rows(arm, run)
        if not got:
            pending.append(arm)
            continue
        rows += got
        comparisons[arm] = gaps
        runs.append(run)
        for r in got:
            if r["model"] == "progressive":
                r["verdicts"] = {k: gap_cell(gaps.get(k)) for k in AGAINST}
    out = ROOT / "bench" / "results"
    meta = {"study": a.study, "base": rec["base"], "rows": rows, "comparisons": comparisons, "pending": pending}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    figure = ROOT / "bench" / f"{name}.png"
    drawn = bool(runs) and plot_fid_macs(runs, figure)

    def ci(v, lo_hi, spec="{:.3f}", scale=1.0):
        return f"{spec.format(v * scale)} [{spec.format(lo_hi[0] * scale)}, {spec.format(lo_hi[1] * scale)}]"

    md = [
        f"Study `{a.study}` on base `{rec['base']}`: domain FID and KID x1e3 with 95% bootstrap intervals, MACs "
        "averaged over timesteps relative to the base, and the progressive model's paired FID difference (same "
        "noise) against each model of its own run: negative is better for the progressive model; n.s.: the "
        "interval holds zero.",
        "",
        "| arm | model | FID | KID x1e3 | MACs/base | train steps "
        "| vs control | vs uniform | vs dense-small | vs base |",
        "|---|---|---|---|---:|---:|---|---|---|---|",
    ]
    seen, shared = set(), set()
    for r in rows:
        key = (r["model"], r["fid"], r["kid"], r["train_steps"])
        if r["model"] != "progressive" and key in seen:  # the same model in another arm (a shared base, its control)
            shared.add(r["model"])
            continue
        seen.add(key)
        v = r.get("verdicts") or {}
        md.append(
            f"| {r['arm']} | {r['model']} | {ci(r['fid'], r['fid_ci'])} | {ci(r['kid'], r['kid_ci'], '{:.2f}', 1e3)} "
            f"| {r['macs_ratio']:.3f} | {r['train_steps'] or '-'} | " + " | ".join(v.get(k, "") for k in AGAINST) + " |"
        )
    if shared:
        md += ["", f"Rows left out: {', '.join(sorted(shared))} of later arms, the same models with the same scores."]
    if pending:
        md += ["", f"Pending (no finished evaluation yet): {', '.join(pending)}."]
    if drawn:
        md += ["", f"![FID against average MACs, every arm]({figure.name})"]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote bench/results/{name}.md ({len(rows)} rows, {len(pending)} pending)")
    if drawn:
        print(f"wrote bench/{figure.name}")
    shutil.rmtree(out / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
