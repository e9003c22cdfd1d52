"""FID with clean-fid: features of generated and reference images, Frechet distance of their Gaussians.

Two feature extractors:

* **Inception** (standard FID): the TorchScript file ``inception-2015-12-05.pt`` given by ``--inception PATH``
  or ``eval.inception``, through clean-fid's ``InceptionV3W`` wrapper and its "clean" resize to 299 px.
  Comparable to published FID when computed on 50k samples against the full training set.
* **Domain features** (offline): a small CNN trained here on the dataset's labels and cached per dataset
  (``RUNS_DIR/.cache/features/``, or ``$STEPADAPT_CACHE``; the bundled digits' net ships in ``nets/``); the
  feature space is its penultimate layer (shape) beside its first block's channel statistics (texture), each
  scaled to unit total deviation (``_Features``). The number it gives is labelled "domain FID" everywhere:
  it ranks models on one dataset, it is not comparable to published FID.

Reference statistics (mean and covariance of the reference features) are cached per dataset and extractor
in ``RUNS_DIR/.cache/fid_stats/``; clean-fid's own stats folder (inside site-packages) is not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from core.errors import UserError

INCEPTION_FILE = "inception-2015-12-05.pt"


# domain feature nets shipped with the package, by cache file name: the bundled digits at the tiny preset's size
# (the net bench/'s results were measured with), so that a fresh clone does not train it and every machine's
# domain FID of the digits comes from the same weights
SHIPPED_NETS = Path(__file__).resolve().parent / "nets"


def cache_dir(runs_dir) -> Path:
    """``$STEPADAPT_CACHE``, else ``RUNS_DIR/.cache``: feature nets and reference statistics."""
    return Path(os.environ.get("STEPADAPT_CACHE") or Path(runs_dir) / ".cache")


def dataset_key(data, cfg: dict) -> str:
    """Name, size, channels, count and a hash of a fixed sample of the images: a changed dataset is a new key."""
    m = cfg["model"]
    idx = torch.linspace(0, len(data) - 1, min(64, len(data))).long()
    h = hashlib.sha256(data.get(idx).numpy().tobytes()).hexdigest()[:12]
    return f"{data.name}-{m['image_size']}px-{m['in_channels']}ch-n{len(data)}-{h}"


# -- the domain feature network ----------------------------------------------------------------------
class DomainNet(nn.Module):
    """A small classifier; ``features`` is its 128-d penultimate layer. Input: uint8-range floats [0, 255]."""

    def __init__(self, channels: int, classes: int, width: int = 32):
        super().__init__()
        w = width

        def block(i, o):
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1),
                nn.GroupNorm(8, o),
                nn.SiLU(),
                nn.Conv2d(o, o, 3, padding=1),
                nn.GroupNorm(8, o),
                nn.SiLU(),
                nn.AvgPool2d(2),
            )

        self.body = nn.Sequential(
            block(channels, w), block(w, 2 * w), block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(4 * w, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float() / 127.5 - 1.0)

    def shape_and_texture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, the first block's per-channel spatial mean and std)."""
        h = self.body[0](x.float() / 127.5 - 1.0)
        texture = torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)
        return self.body[1:](h), texture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Features(nn.Module):
    """What clean-fid's ``get_batch_features`` calls: images [B, C, H, W] in [0, 255] -> features.

    The domain feature space has two parts, each divided by its total standard deviation on the reference
    images (sqrt of the trace of its covariance) so that each weighs the same in FID and KID:
    *shape*, the classifier's penultimate layer (which digit, how drawn), and *texture*, the per-channel mean
    and std of its first block (speckle, stroke width, blur). A classifier alone is nearly blind to background
    speckle a person sees at once (bench/README.md, "metric sensitivity")."""

    def __init__(self, net: DomainNet, scales=(1.0, 1.0)):
        super().__init__()
        self.net = net.eval()
        self.scales = tuple(float(s) for s in scales)

    def forward(self, x):
        shape, texture = self.net.shape_and_texture(x)
        return torch.cat([shape / self.scales[0], texture / self.scales[1]], 1)


@torch.no_grad()
def feature_scales(net: DomainNet, data, n: int = 5000, batch_size: int = 500) -> tuple[float, float]:
    """sqrt(trace Cov) of the shape and the texture part over (up to) ``n`` reference images."""
    net.eval()
    parts = [[], []]
    for i in range(0, min(n, len(data)), batch_size):
        for acc, f in zip(parts, net.shape_and_texture(data.get(torch.arange(i, min(i + batch_size, n, len(data)))))):
            acc.append(f)
    return tuple(float(torch.cat(acc).var(0).sum().sqrt()) for acc in parts)


def train_domain_net(
    data,
    cfg: dict,
    epochs: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    device="cpu",
    log: Callable[[str], None] = print,
) -> tuple[DomainNet, dict]:
    labels = getattr(data, "labels", None)
    if labels is None:
        raise UserError(
            f"dataset {data.name!r} has no labels to train the domain feature network on "
            "(use a folder with one subfolder per class, or give --inception PATH)"
        )
    labels = torch.as_tensor(labels).long()
    classes = int(labels.max()) + 1
    if classes < 2:
        raise UserError("the domain feature network needs at least 2 classes in the dataset")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(data), generator=g)
    n_val = max(1, len(data) // 10)
    val, tr = perm[:n_val], perm[n_val:]
    epochs = max(epochs, -(-12000 // len(tr)))  # small datasets: at least ~12k images seen
    net = DomainNet(cfg["model"]["in_channels"], classes).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for ep in range(epochs):
        net.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = data.get(idx).to(device)
            if torch.rand((), generator=g) < 0.5 and getattr(data, "flip", False):
                x = x.flip(3)
            loss = nn.functional.cross_entropy(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        log(f"domain feature net: epoch {ep + 1}/{epochs}, loss {loss.item():.3f}")
    net.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(val), 512):
            idx = val[i : i + 512]
            correct += (net(data.get(idx).to(device)).argmax(1).cpu() == labels[idx]).sum().item()
    info = {"classes": classes, "epochs": epochs, "val_accuracy": correct / len(val), "train_images": len(tr)}
    log(f"domain feature net: validation accuracy {info['val_accuracy']:.3f}")
    return net.cpu(), info


def domain_extractor(data, cfg: dict, runs_dir, device="cpu", log=print) -> tuple[nn.Module, dict]:
    """The cached domain feature net for this dataset, trained on first use (by one process: another that needs
    it at the same time waits for it and loads it)."""
    from core.runs import file_lock

    key = dataset_key(data, cfg)
    path = cache_dir(runs_dir) / "features" / f"domain-{key}.pt"
    with file_lock(path.with_name(path.name + ".lock")):
        return _domain_extractor(data, cfg, key, path, device, log)


def _domain_extractor(data, cfg: dict, key: str, path: Path, device, log) -> tuple[nn.Module, dict]:
    from core.runs import atomic_torch_save, atomic_write_bytes, load_torch

    ident = f"domain2-{key}"  # 2: shape + texture features (1 was the penultimate layer alone)
    shipped = SHIPPED_NETS / path.name
    for attempt in ("cached", "shipped"):
        if (attempt == "shipped" or not path.exists()) and shipped.is_file():
            # the bundled digits: the net bench/'s results were measured with (also in place of an unreadable copy)
            atomic_write_bytes(path, lambda f: f.write(shipped.read_bytes()))
            log(f"domain feature net for {key}: the one shipped with stepadapt (copied to {path.parent})")
        if not path.exists():
            break
        try:
            art = load_torch(path, "domain feature net")
            net = DomainNet(art["channels"], art["info"]["classes"])
            net.load_state_dict(art["state"])
            if "scales" not in art:  # a net cached by an older version: its scales, once
                art["scales"] = feature_scales(net, data)
                atomic_torch_save(art, path)
            return _Features(net, art["scales"]).to(device), {
                **art["info"],
                "id": ident,
                "cached": True,
                "path": str(path),
            }
        except (UserError, KeyError, TypeError, RuntimeError) as e:  # refused, truncated or not a net
            log(f"{path} is unusable ({e})")
            if not shipped.is_file():
                break
    log(f"training the domain feature network for {key} (once; cached in {path.parent})")
    net, info = train_domain_net(data, cfg, device=device, log=log)
    scales = feature_scales(net, data)
    atomic_torch_save(
        {"state": net.state_dict(), "channels": cfg["model"]["in_channels"], "info": info, "scales": scales}, path
    )
    return _Features(net, scales).to(device), {**info, "id": ident, "cached": False, "path": str(path)}


# -- Inception -----------------------------------------------------------------------------------------
class _Inception(nn.Module):
    """clean-fid's InceptionV3W with its clean (PIL bicubic) resize to 299 px; grey images become RGB."""

    def __init__(self, path: Path):
        super().__init__()
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        self.model = InceptionV3W(str(path.parent), download=False, resize_inside=False)
        self.resize = build_resizer("clean")

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        arr = x.to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
        big = np.stack([self.resize(a) for a in arr])
        dev = next(self.model.parameters(), torch.empty(0)).device
        t = torch.from_numpy(big).permute(0, 3, 1, 2).float().to(dev)
        return self.model(t)


def inception_extractor(path, runs_dir, device="cpu") -> tuple[nn.Module, dict]:
    src = Path(path).expanduser()
    if not src.is_file():
        raise UserError(f"Inception weights not found: {src} (the TorchScript file {INCEPTION_FILE})")
    from core.runs import file_sha256

    digest = file_sha256(src)[:16]
    here = src
    if src.name != INCEPTION_FILE:  # the wrapper loads DIR/inception-2015-12-05.pt: link under that name
        here = cache_dir(runs_dir) / "inception" / digest / INCEPTION_FILE
        here.parent.mkdir(parents=True, exist_ok=True)
        if not here.exists():
            os.symlink(src.resolve(), here)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice: the file is TorchScript
            ext = _Inception(here).to(device).eval()
    except (RuntimeError, ValueError, OSError) as e:  # not TorchScript, or not the Inception network
        raise UserError(
            f"cannot load the Inception file {src}: not the TorchScript {INCEPTION_FILE} ({type(e).__name__})"
        ) from None
    return ext, {"id": f"inception-{digest}", "path": str(src)}


def make_extractor(cfg: dict, data, runs_dir, inception: Optional[str] = None, device="cpu", log=print):
    """(extractor, info with ``kind``): Inception when a file is given (argument or ``eval.inception``),
    else the domain feature network."""
    path = inception or cfg["eval"].get("inception") or None
    if path:
        ext, info = inception_extractor(path, runs_dir, device)
        info["kind"] = "FID (Inception)"
    else:
        ext, info = domain_extractor(data, cfg, runs_dir, device, log)
        info["kind"] = "domain FID (shape + texture features; not comparable to published FID)"
    return ext, info


# -- features and the distance -------------------------------------------------------------------------
def features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Features of uint8 images [N, C, H, W], batch by batch: the extractor's forward pass without gradients, as
    clean-fid's ``get_batch_features`` does it. Importing ``cleanfid.fid`` for that would load torchvision and
    torch._dynamo with it, 4 s of CPU per evaluation process (most of a small run's evaluation)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(extractor(images[i : i + batch_size].float().to(device)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def dataset_features(extractor, data, n: Optional[int] = None, batch_size: int = 256, device="cpu") -> np.ndarray:
    n = len(data) if not n else min(n, len(data))
    idx = torch.arange(n)
    return np.concatenate(
        [features(extractor, data.get(idx[i : i + batch_size]), batch_size, device) for i in range(0, n, batch_size)]
    )


REF_FEATURES = 5000  # reference features kept for KID and precision/recall (a fixed random subset)


def reference_stats(
    extractor, ext_info: dict, data, cfg: dict, runs_dir, n: Optional[int] = None, device="cpu"
) -> dict:
    """Mean and covariance of the reference images' features, and up to ``REF_FEATURES`` of the features
    themselves (a fixed random subset, for KID and precision/recall), cached per dataset and extractor."""
    key = f"{ext_info['id']}-{dataset_key(data, cfg)}-n{n or len(data)}-v2"
    path = cache_dir(runs_dir) / "fid_stats" / f"{key}.npz"
    if path.exists():
        try:
            z = np.load(path)
            return {
                "mu": z["mu"],
                "sigma": z["sigma"],
                "feats": z["feats"].astype(np.float64),
                "n": int(z["n"]),
                "cached": True,
                "path": str(path),
            }
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable cache: compute it again
    f = dataset_features(extractor, data, n, device=device)
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    keep = f[np.random.default_rng(0).permutation(len(f))[:REF_FEATURES]].astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # two processes may compute the same statistics
    np.savez(tmp, mu=mu, sigma=sigma, n=len(f), feats=keep)
    os.replace(tmp, path)
    return {"mu": mu, "sigma": sigma, "feats": keep.astype(np.float64), "n": len(f), "cached": False, "path": str(path)}


def describe(info: dict) -> str:
    return json.dumps({k: v for k, v in info.items() if k != "path"}, sort_keys=True)
