"""Paired differences between a study's arms: one arm's progressive model against every other arm's, on FID
and KID from the same noise (each arm's saved evaluation features; nothing is sampled again).

    python bench/study_pairs.py STUDY ARM [--runs-dir DIR] [--name NAME]

Writes bench/results/NAME.{json,md} (default ``study_pairs_STUDY``, dashes as underscores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from core.evaluation.evaluate import compare_runs
    from core.evaluation.text import verdict_text
    from core.runs import open_run, read_json, runs_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("arm", help="the arm every other arm is compared with")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    rec = read_json(runs_root(a.runs_dir) / "studies" / a.study / "study.json")
    ours = open_run(rec["arms"][a.arm], a.runs_dir)
    rows = []
    for arm, name in rec["arms"].items():
        if arm == a.arm:
            continue
        c = compare_runs(ours, "progressive", open_run(name, a.runs_dir), "progressive", log=lambda s: None)
        rows.append({"arm": arm, "run": name, **c, "text": verdict_text(c)})
    name = a.name or f"study_pairs_{a.study.replace('-', '_')}"
    out = ROOT / "bench" / "results"
    (out / f"{name}.json").write_text(json.dumps({"study": a.study, "arm": a.arm, "rows": rows}, indent=2) + "\n")

    def ci(d, scale=1.0):
        return f"{d['diff'] * scale:+.3f} [{d['ci'][0] * scale:+.3f}, {d['ci'][1] * scale:+.3f}]"

    md = [
        f"Study `{a.study}`: the `{a.arm}` arm's progressive model minus each other arm's, same noise (paired), "
        "95% bootstrap intervals; negative: `" + a.arm + "` better.",
        "",
        "| against | domain FID difference | KID x1e3 difference | MACs ratio | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(f"| {r['arm']} | {ci(r['fid'])} | {ci(r['kid'], 1e3)} | {r['macs_ratio']:.3f} | {r['text']} |")
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
