"""A study's report: its table beside the paper's numbers, FID vs MACs of every arm, proxy proposals, fine-tune
curves, and every arm's samples from the same noise side by side."""

from __future__ import annotations

import shutil
from pathlib import Path

from core.evaluation.gaps import gap_section, plot_gaps
from core.evaluation.report_figures import plot_fid_curve, plot_fid_macs, plot_heldout, plot_proxy, side_by_side
from core.evaluation.report_page import html_page, markdown_page
from core.runs import Run, writing_in


def proxy_rounds(run: Run) -> list[dict]:
    from core.store import open_store

    db = run.path.parent / "stepadapt.db"
    if not db.exists():
        return []
    return open_store(run.path.parent).rounds(run.name)


def write_study_report(res: dict, runs: list[Run], out: Path) -> tuple[Path, Path]:
    """``out/index.html`` and ``out/report.md`` of a study: its table beside the paper's numbers, FID vs MACs of
    every arm, and the progressive model's samples of every arm from the same noise, side by side."""
    with writing_in(out):  # a full disk or a read-only folder: one line, not a traceback
        out.mkdir(parents=True, exist_ok=True)
        sections = [study_table(res)]
        gaps = gap_section(res)
        if gaps:  # a study whose arms fork several base steps: where the method pays
            sections.append(gaps)
            if plot_gaps(res["gaps"], out / "gaps.png"):
                sections.append(
                    (
                        "figure",
                        "The gap to each control by base steps",
                        "gaps.png",
                        "the progressive model minus each control of its run (FID, paired, 95% intervals); below "
                        "zero the method pays",
                    )
                )
        if plot_fid_macs(runs, out / "fid_macs.png"):
            sections.append(
                (
                    "figure",
                    "FID and KID vs MACs",
                    "fid_macs.png",
                    "every arm's models, 95% bootstrap intervals as error bars",
                )
            )
        for r in runs:  # proxy rounds with several proposals per round (Fig. 7)
            if r.config["prune"].get("proposals", 1) > 1 and plot_proxy(proxy_rounds(r), out / f"proxy_{r.name}.png"):
                sections.append(
                    (
                        "figure",
                        f"Proxy proposals per round: {r.name}",
                        f"proxy_{r.name}.png",
                        "every proposal's held-out loss, the per-round mean and standard deviation",
                    )
                )
        for r in runs:  # fine-tune curves (finetune.eval_every), one figure per arm that measured them
            if plot_heldout(r, out / f"heldout_{r.name}.png"):
                sections.append(
                    (
                        "figure",
                        f"Held-out loss during fine-tuning: {r.name}",
                        f"heldout_{r.name}.png",
                        "each group's held-out eps-MSE every finetune.eval_every steps; rings mark the best",
                    )
                )
        if plot_fid_curve(runs, out / "fid_curve.png"):
            sections.append(
                (
                    "figure",
                    "FID during fine-tuning",
                    "fid_curve.png",
                    "each arm's whole progressive model at every finetune.eval_every step (finetune.fid_n "
                    "samples, the same noise at every step); rings mark the lowest",
                )
            )
        grids = {}
        for r in runs:
            found = sorted(r.samples().glob("progressive_s*_seed0.png"))
            if found:
                grids[r.name] = found[-1]
        one = sorted(runs[0].samples().glob("side_by_side_s*_seed0.png")) if len(runs) == 1 else []
        if one:  # one arm: its base, control and progressive model side by side
            shutil.copyfile(one[-1], out / "samples.png")
            sections.append(
                (
                    "figure",
                    "Samples, same noise",
                    "samples.png",
                    f"{runs[0].name}: base, control and progressive model from the same noise",
                )
            )
        elif side_by_side(grids, out / "samples.png"):
            sections.append(
                (
                    "figure",
                    "Samples per arm, same noise",
                    "samples.png",
                    "each arm's progressive model, same seed and noise",
                )
            )
        facts = [
            ("study", res["study"]),
            ("preset", res["preset"]),
            ("shared base", res["base"]),
            ("runs", str(len(runs))),
        ]
        title = f"Study {res['id']}: {res['title']}"
        md_path, html_path = out / "report.md", out / "index.html"
        md_path.write_text(markdown_page(title, facts, sections))
        html_path.write_text(html_page(title, facts, sections))
        return html_path, md_path


def study_table(res: dict) -> tuple:
    """The study's table section: ours with 95% intervals (and our preset), then the paper's published values."""
    from core.evaluation.text import FID
    from core.evaluation.text import with_ci as ci

    kind = next((r["fid_kind"] for r in res["rows"] if r.get("fid_kind")), "FID")
    n = next((r["fid_n"] for r in res["rows"] if r.get("fid_n")), None)
    head = [
        "row",
        "run",
        f"ours: {kind.split(' (')[0]}",
        "ours: KID x1e3",
        "ours: GMACs",
        "ours: MACs/base",
        "ours: params M",
        "ours: train steps",
        *[f"paper: {c}" for c in res["paper_columns"]],
    ]
    rows = []
    for r in res["rows"]:
        rows.append(
            [
                r["label"],
                r["run"],
                ci(r.get("fid"), r.get("fid_ci"), FID),
                ci(r.get("kid"), r.get("kid_ci"), FID, 1e-3),
                "-" if r.get("macs") is None else f"{r['macs'] / 1e9:.4f}",
                "-" if r.get("macs_ratio") is None else f"{r['macs_ratio']:.3f}",
                "-" if r.get("params") is None else f"{r['params'] / 1e6:.3f}",
                "-" if r.get("train_steps") is None else str(r["train_steps"]),
                *[str(r["paper"].get(c, "-")) for c in res["paper_columns"]],
            ]
        )
    note = (
        f"ours: preset {res['preset']}, {kind}" + (f", n = {n}" if n else "") + ", 95% bootstrap intervals; "
        "paper: the published values (CIFAR-10 / ImageNet-64, Inception FID, 100 sampling steps), not "
        "comparable in scale to ours. " + res.get("note", "")
    )
    return ("table", res["title"], note, head, rows)
