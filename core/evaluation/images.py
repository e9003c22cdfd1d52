"""Scoring folders of images made anywhere (``stepadapt eval --images DIR [--images DIR2]``): each folder
against the dataset's reference features (FID, KID with intervals, precision, recall), and two folders
against each other (FID between them, and the difference of their scores with its interval)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.errors import UserError


def load_folder(path, size: int, channels: int, log=print) -> tuple[torch.Tensor, list[str]]:
    """Every image file of ``path`` as uint8 [N, C, size, size] with the file names; one clear error for a missing
    or empty folder, a file that is not an image, or an image of another size (found from its header, before it
    is decoded). Skipped with a warning naming it: a decompression bomb (an image that declares more pixels than
    PIL decodes safely); skipped silently: hidden files and what is not a regular file (folders, FIFOs, broken
    links, symlink loops). How many were skipped is said in one line."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"--images {path}: not a folder")
    entries = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
    files = [f for f in entries if f.is_file()]  # is_file() is False for FIFOs and symlink loops: never opened
    out, names, bombs = [], [], 0
    for f in files:
        img = _read_image(f, path, size, channels)
        if img is None:
            bombs += 1
            log(
                f"warning: --images {path}: {_shown(f.name)} declares more pixels than are decoded safely (a "
                "decompression bomb); skipped"
            )
            continue
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        out.append(arr[None] if channels == 1 else arr.permute(2, 0, 1))
        names.append(f.name)
    skipped = len(entries) - len(out)
    if skipped:
        log(
            f"warning: --images {path}: {skipped} of {len(entries)} files skipped ({bombs} decompression bombs, "
            f"{len(entries) - len(files)} not regular files)"
        )
    if not out:
        raise UserError(f"--images {path}: the folder has no images" + (f" ({skipped} skipped)" if skipped else ""))
    return torch.stack(out), names


def _read_image(f: Path, path, size: int, channels: int):
    """File ``f`` as a PIL image in the model's mode; None for a decompression bomb; a one-line error for a file
    that is not an image or an image of another size (checked before its pixels are decoded)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # between PIL's two limits: a bomb too
        try:
            with Image.open(f) as im:
                if im.size != (size, size):
                    raise UserError(
                        f"--images {path}: {_shown(f.name)} is {im.size[0]}x{im.size[1]}, the dataset's "
                        f"images are {size}x{size}"
                    )
                im.load()
                return im.convert("L" if channels == 1 else "RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):  # PIL's ways of saying "not an image"
            raise UserError(f"--images {path}: {_shown(f.name)} is not an image") from None


def _shown(name: str) -> str:
    """A file name as it may be printed: as it is when printable, else quoted with its escapes visible."""
    return name if name.isprintable() else repr(name)


def evaluate_images(cfg: dict, runs_dir, folders: list, inception=None, device="cpu", log=print) -> dict:
    """Scores of one or two folders (see the module docstring)."""
    from core.evaluation import features as F
    from core.evaluation import metrics as M
    from core.training.data import load_dataset

    if not 1 <= len(folders) <= 2:
        raise UserError("--images takes one or two folders")
    m = cfg["model"]
    loaded = [load_folder(f, m["image_size"], m["in_channels"], log) for f in folders]
    data = load_dataset(cfg, split="all")
    ext, info = F.make_extractor(cfg, data, runs_dir, inception, device, log)
    ref = F.reference_stats(ext, info, data, cfg, runs_dir, cfg["eval"]["ref_n"] or None, device)
    stats = M.RefStats.of(ref["mu"], ref["sigma"])
    feats = [F.features(ext, imgs, device=device) for imgs, _ in loaded]
    for f, path in zip(feats, folders):
        if len(f) < 2:
            raise UserError(f"--images {path}: FID needs at least 2 images, the folder has {len(f)}")
    reps = cfg["eval"]["bootstrap"]
    out = {
        "kind": info["kind"],
        "extractor": info["id"],
        "dataset": cfg["data"]["spec"],
        "ref_n": ref["n"],
        "folders": [
            {"path": str(p), "n": len(f), **M.summarise(f, stats, ref["feats"], reps, cfg["seed"])}
            for p, f in zip(folders, feats)
        ],
    }
    if len(feats) == 2:
        paired = loaded[0][1] == loaded[1][1]  # the same file names: image i of each came from the same noise
        diffs = {
            k: {**d, "verdict": M.verdict(d)}
            for k in ("fid", "kid")
            for d in [M.difference(feats[0], feats[1], stats, ref["feats"], k, paired, reps, cfg["seed"])]
        }
        out["between"] = {"fid_between": M.fid_between(feats[0], feats[1]), "paired": paired, **diffs}
    return out
