"""The runs listing (`stepadapt runs`)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from core.evaluation.text import FID, fmt, narrow_ci

from ..common import console, console_width
from .common import Col, fitted_table

SHORT_VERDICT = {"better": "better", "worse": "worse", "no significant difference": "same"}


def labels_text(r: dict) -> str:
    """'paper, lr=3e-4 (2 notes)': a run's tags, and how many notes it has."""
    tags = ", ".join(k if v is None else f"{k}={v}" for k, v in (r.get("tags") or {}).items())
    n = len(r.get("notes") or [])
    return (tags + (f" ({n} note{'s' if n > 1 else ''})" if n else "")).strip() or "-"


def print_runs(root, rows: list[dict]) -> None:
    """The important columns first: name (never cut), status, the progressive model's FID with its interval,
    its verdict against the equal-compute control, MACs ratio, disk use; at 80 columns the rest is left out."""
    from core.manager.housekeeping import human_bytes

    cols = [
        Col("name", whole=True),
        Col("status"),
        Col("stages", drop=5),
        Col("FID prog ±95%", drop=1, justify="right"),
        Col("vs control", drop=2),
        Col("MACs/base", drop=3, justify="right"),
        Col("disk", drop=4, justify="right"),
        Col("method", drop=6),
        Col("tags", drop=7),
        Col("preset", drop=8),
        Col("created", drop=9),
    ]
    table_rows = []
    for r in rows:
        ratio = r["progressive_macs"] / r["base_macs"] if r.get("progressive_macs") and r.get("base_macs") else None
        name = (
            escape(r["name"])
            + (f"\n[dim]{escape(r['base'])}[/]" if r.get("base", "trained") != "trained" else "")
            + (f"\n[dim]{escape(r['slurm'])}[/]" if r.get("slurm") else "")
        )
        table_rows.append(
            [
                name,
                r["status"],
                f"{r.get('stages_done', 0)}/{r.get('stages_total', 0)}",
                narrow_ci(r.get("progressive_fid"), r.get("progressive_fid_ci"), FID),
                SHORT_VERDICT.get(r.get("progressive_vs_control"), "-"),
                fmt(ratio, "{:.3f}"),
                human_bytes(r.get("bytes")),
                escape(r.get("method") or "-"),
                escape(labels_text(r)),
                escape(r.get("preset") or "-"),
                (r.get("created") or "-")[:16].replace("T", " "),
            ]
        )
    where = Path(root).resolve() if Path(root).exists() else root
    console().print(fitted_table(f"runs in {where}", cols, table_rows, console_width()))
