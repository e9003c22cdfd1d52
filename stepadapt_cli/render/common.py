"""What the tables share: a titled rich table, and a comparison's verdict on one line."""

from __future__ import annotations

from rich.markup import escape


def titled_table(title: str, columns, justify: str = "left"):
    """A table whose title is plain text (run names may hold brackets: never markup)."""
    from rich.table import Table

    tab = Table(title=escape(title))
    for col in columns:
        tab.add_column(col, justify=justify)
    return tab


def verdict_line(c: dict) -> str:
    from core.evaluation.text import verdict_text

    return verdict_text(c)
