"""The samples screen: the evaluation's sample grids of a run's models side by side (same noise), drawn in the
terminal with half blocks (each character cell shows two pixels: the upper one as its colour, the lower one as
its background)."""

from __future__ import annotations

from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from .view import BACK, HELP, QUIT, ViewScreen

MODELS = ("base", "control", "uniform", "dense-small", "progressive")


def half_blocks(path: Path, width: int) -> Text:
    """The image at ``path`` scaled to ``width`` columns, as rows of '▀' whose colour is the upper pixel and
    whose background the lower one."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        height = max(2, round(im.height * width / im.width / 2) * 2)
        im = im.resize((width, height), Image.Resampling.BOX)
        px = im.load()
    out = Text()
    for y in range(0, height, 2):
        for x in range(width):
            top, low = px[x, y], px[x, y + 1]
            out.append("▀", Style(color=f"rgb{top}", bgcolor=f"rgb{low}"))
        out.append("\n")
    return out


def grids(run_path: Path, ev: dict) -> list[tuple[str, Path]]:
    """(model, grid file) of every evaluated model that has its sample grid, in the tool's model order."""
    models = (ev or {}).get("models") or {}
    found = []
    for name in MODELS:
        grid = (models.get(name) or {}).get("fid_grid")
        if grid and (run_path / grid).is_file():
            found.append((name, run_path / grid))
    return found


def side_by_side(found: list[tuple[str, Path]], total: int) -> Text:
    """The grids next to each other under their names, each as wide as the terminal allows (at most 64)."""
    if not found:
        return Text("no sample grids yet: they come with the evaluation (stepadapt eval RUN)")
    width = max(8, min(64, (total - 2 * len(found)) // len(found)))
    blocks = [half_blocks(path, width).split("\n") for _, path in found]
    out = Text()
    out.append("   ".join(name.ljust(width) for name, _ in found) + "\n", style="bold")
    for row in range(max(len(b) for b in blocks)):
        for i, b in enumerate(blocks):
            out.append_text(b[row] if row < len(b) and b[row].plain else Text(" " * width))
            if i < len(blocks) - 1:
                out.append("   ")
        out.append("\n")
    return out


class SamplesScreen(ViewScreen):
    """A run's sample grids (the run view's data: its folder and evaluation)."""

    BINDINGS = [BACK, HELP, QUIT]

    def __init__(self, name: str):
        super().__init__(("run", name))
        self.run_name = name

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static("", id="grids")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"samples of {self.run_name} (same noise for every model)"
        self.draw()

    def on_resize(self) -> None:
        self.draw()

    def draw(self, ev=None) -> None:
        """Draw from the run folder (the grids are files; the run view's snapshots redraw after a new eval)."""
        from core.evaluation.evaluate import load_eval
        from core.runs import Run

        run = Run(Path(self.app.runs_dir) / self.run_name)
        found = grids(run.path, ev if ev is not None else load_eval(run))
        self.query_one("#grids", Static).update(side_by_side(found, self.size.width or 80))

    def show(self, d) -> None:
        if d:
            self.draw(d.get("eval") or {})
