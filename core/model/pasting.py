"""Labelled strips of images, in PIL alone (no torch): the side-by-side grids of sampling and of the report."""

from __future__ import annotations

from pathlib import Path


def paste_labelled(tiles: dict, path: Path, gap: int = 8) -> Path:
    """PIL images pasted left to right with ``gap`` pixels between them, each with its name above it."""
    from PIL import Image, ImageDraw

    label_h = 16
    canvas = Image.new(
        "RGB",
        (
            sum(t.width for t in tiles.values()) + gap * (len(tiles) - 1),
            max(t.height for t in tiles.values()) + label_h,
        ),
        "white",
    )
    draw, x = ImageDraw.Draw(canvas), 0
    for name, tile in tiles.items():
        canvas.paste(tile, (x, label_h))
        draw.text((x + 2, 2), name, fill="black")
        x += tile.width + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
