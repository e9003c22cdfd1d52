"""Scoring folders of images made anywhere (``stepadapt eval --images DIR [--images DIR2]``): each folder
against the dataset's reference features (FID, KID with intervals, precision, recall), and two folders
against each other (FID between them, and the difference of their scores with its interval)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.errors import UserError


def load_folder(path, size: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """Every file of ``path`` as uint8 [N, C, size, size] with the file names; one clear error for a missing or
    empty folder, a file that is not an image, or an image of another size."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"--images {path}: not a folder")
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise UserError(f"--images {path}: the folder has no images")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                img = im.convert("L" if channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError, ValueError):
            raise UserError(f"--images {path}: {f.name} is not an image") from None
        if img.size != (size, size):
            raise UserError(f"--images {path}: {f.name} is {img.size[0]}x{img.size[1]}, the dataset's images are "
                            f"{size}x{size}")
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        out.append(arr[None] if channels == 1 else arr.permute(2, 0, 1))
    return torch.stack(out), [f.name for f in files]


def evaluate_images(cfg: dict, runs_dir, folders: list, inception=None, device="cpu", log=print) -> dict:
    """Scores of one or two folders (see the module docstring)."""
    from core.evaluation import fid as F
    from core.evaluation import metrics as M
    from core.training.data import load_dataset

    if not 1 <= len(folders) <= 2:
        raise UserError("--images takes one or two folders")
    m = cfg["model"]
    loaded = [load_folder(f, m["image_size"], m["in_channels"]) for f in folders]
    data = load_dataset(cfg, split="all")
    ext, info = F.make_extractor(cfg, data, runs_dir, inception, device, log)
    ref = F.reference_stats(ext, info, data, cfg, runs_dir, cfg["eval"]["ref_n"] or None, device)
    stats = M.RefStats.of(ref["mu"], ref["sigma"])
    feats = [F.features(ext, imgs, device=device) for imgs, _ in loaded]
    for f, path in zip(feats, folders):
        if len(f) < 2:
            raise UserError(f"--images {path}: FID needs at least 2 images, the folder has {len(f)}")
    reps = cfg["eval"]["bootstrap"]
    out = {"kind": info["kind"], "extractor": info["id"], "dataset": cfg["data"]["spec"], "ref_n": ref["n"],
           "folders": [{"path": str(p), "n": len(f), **M.summarise(f, stats, ref["feats"], reps, cfg["seed"])}
                       for p, f in zip(folders, feats)]}
    if len(feats) == 2:
        paired = loaded[0][1] == loaded[1][1]  # the same file names: image i of each came from the same noise
        diffs = {k: {**d, "verdict": M.verdict(d)} for k in ("fid", "kid")
                 for d in [M.difference(feats[0], feats[1], stats, ref["feats"], k, paired, reps, cfg["seed"])]}
        out["between"] = {"fid_between": F.fid_between(feats[0], feats[1]), "paired": paired, **diffs}
    return out
