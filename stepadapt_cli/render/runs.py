"""The runs listing (`stepadapt runs`)."""

from __future__ import annotations

from rich.markup import escape

from core.evaluation.text import fmt, with_ci

from ..common import console
from .common import titled_table


def print_runs(root, rows: list[dict]) -> None:
    """The important columns first: name, status, stages, the progressive model's FID with its interval, its
    verdict against the equal-compute control, MACs ratio."""
    short = {"better": "better", "worse": "worse", "no significant difference": "same"}
    tab = titled_table(
        f"runs in {root}",
        ("name", "status", "stages", "FID prog [95%]", "vs control", "MACs prog/base", "method", "preset", "created"),
    )
    for r in rows:
        ratio = r["progressive_macs"] / r["base_macs"] if r.get("progressive_macs") and r.get("base_macs") else None
        name = (
            escape(r["name"])
            + (f"\n[dim]{escape(r['base'])}[/]" if r.get("base", "trained") != "trained" else "")
            + (f"\n[dim]{escape(r['slurm'])}[/]" if r.get("slurm") else "")
        )
        tab.add_row(
            name,
            r["status"],
            f"{r.get('stages_done', 0)}/{r.get('stages_total', 0)}",
            with_ci(r.get("progressive_fid"), r.get("progressive_fid_ci"), "{:.2f}"),
            short.get(r.get("progressive_vs_control"), "-"),
            fmt(ratio, "{:.3f}"),
            r.get("method") or "-",
            escape(r.get("preset") or "-"),
            (r.get("created") or "-")[:16].replace("T", " "),
        )
    console().print(tab)
