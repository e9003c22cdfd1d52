"""What the tables share: a titled rich table, one that fits the console by leaving out its least needed
columns (the run name is never cut), and a comparison's verdict on one line."""

from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape


def titled_table(title: str, columns, justify: str = "left"):
    """A table whose title is plain text (run names may hold brackets: never markup)."""
    from rich.table import Table

    tab = Table(title=escape(title))
    for col in columns:
        tab.add_column(col, justify=justify)
    return tab


@dataclass
class Col:
    """A column of a fitted table. ``drop``: 0 never left out; otherwise the higher, the sooner it goes when
    the table is too wide. ``whole``: the cells are never cut or wrapped (a run name, the value one copies).
    ``wraps``: free text that may wrap onto more lines, counted as at most this many columns wide."""

    header: str
    drop: int = 0
    justify: str = "left"
    whole: bool = False
    wraps: int = 0


def _cell_width(cell) -> int:
    from rich.text import Text

    if not isinstance(cell, str):
        return 0
    return max((Text.from_markup(line).cell_len for line in cell.split("\n")), default=0)


def fitted_table(title: str, cols: list[Col], rows: list[list], width: int, caption_hidden: bool = True):
    """A table of ``rows`` (cells are rich markup) no wider than ``width`` where it can be: the droppable
    columns go, highest ``drop`` first, until the widest cell of each remaining column fits; the caption
    names what was left out. A ``whole`` column keeps its cells on one line, uncut."""
    from rich.table import Table

    widths = [max([_cell_width(r[i]) for r in rows] + [len(c.header)]) for i, c in enumerate(cols)]
    widths = [min(w, c.wraps) if c.wraps else w for w, c in zip(widths, cols)]
    keep = list(range(len(cols)))

    def total() -> int:
        return sum(widths[i] + 3 for i in keep) + 1  # padding 1+1 and one border per column, one more at the end

    hidden = []
    while total() > width:
        droppable = [i for i in keep if cols[i].drop]
        if not droppable:
            break
        worst = max(droppable, key=lambda i: (cols[i].drop, i))
        keep.remove(worst)
        hidden.append(cols[worst].header)
    tab = Table(title=escape(title))
    for i in keep:
        c = cols[i]
        if c.whole:
            tab.add_column(c.header, justify=c.justify, no_wrap=True, min_width=widths[i])
        else:
            tab.add_column(c.header, justify=c.justify, overflow="fold")
    for r in rows:
        tab.add_row(*[r[i] for i in keep])
    if hidden and caption_hidden:
        tab.caption = escape(f"left out at {width} columns: {', '.join(reversed(hidden))}")
    return tab


def verdict_line(c: dict) -> str:
    from core.evaluation.text import verdict_text

    return verdict_text(c)
