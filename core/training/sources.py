"""Where a data spec's images are, found without loading torch: the checks a run makes before its folder exists.

Specs: ``digits`` (bundled), ``cifar10[:ROOT]``, ``folder:PATH`` or a directory ``PATH`` (see core.training.data).
Decoding the images is core.training.data's work; a corrupt file is found there, by the job that reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def resolve_source(cfg: dict, spec: Optional[str] = None) -> tuple[str, Optional[Path]]:
    """(kind, path) of a spec: ``("digits", None)``, ``("cifar10", ROOT)`` or ``("folder", PATH)``."""
    d = cfg["data"]
    spec = spec or d["spec"]
    if spec == "digits":
        return "digits", None
    if spec == "cifar10" or spec.startswith("cifar10:"):
        return "cifar10", Path(spec.split(":", 1)[1] if ":" in spec else d["root"]).expanduser()
    if spec.startswith("folder:"):
        return "folder", Path(spec.split(":", 1)[1]).expanduser()
    if Path(spec).expanduser().is_dir():
        return "folder", Path(spec).expanduser()
    raise UserError(f"dataset not found: {spec!r} (use digits, cifar10[:ROOT], folder:PATH or a directory)")


def check_cifar10(root: Path, download: bool) -> None:
    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise UserError(
            f"CIFAR-10 not found under {root} (expected {root / 'cifar-10-batches-py'}); "
            "pass --download to fetch it, or point data.root / --data cifar10:ROOT at a copy"
        )


def folder_files(root: Path) -> tuple[list[Path], list[int]]:
    """The images of a folder and their class indices: one class per subfolder (``ImageFolder`` layout), or no
    labels for a flat folder."""
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    if classes:
        for ci, cls in enumerate(classes):
            for f in sorted((root / cls).rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    labels.append(ci)
    else:
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    return files, labels


def check_dataset(cfg: dict, spec: Optional[str] = None) -> None:
    """Raise the one-line error ``load_dataset`` would raise for a missing dataset, without reading it."""
    kind, path = resolve_source(cfg, spec)
    if kind == "cifar10":
        check_cifar10(path, cfg["data"]["download"])
    elif kind == "folder":
        folder_files(path)
