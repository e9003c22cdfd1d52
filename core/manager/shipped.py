"""Bases shipped with the package: a trained stage 1 to start from, as the paper starts from a published checkpoint.

``core/bases/NAME/`` holds one base:

    weights.safetensors   its EMA weights: tensors only, read without pickle (safetensors)
    provenance.json       how it was made and what it measures:
        {"name", "preset", "note", "command", "config": the run's model, diffusion, train and data sections,
         "config_hash", "stage1_hash" (``stage1_hash``: what a run of the same stage 1 has), "commit", "seed",
         "steps", "sha256" and "bytes" of weights.safetensors, "dtype", "params",
         "eval": {"fid", "fid_ci", "kid", "kid_ci", "n", "sample_steps", "kind"},
         "held_out_loss": {group: loss} (the eval's held-out loss per timestep group),
         "check": {"images", "seed", "loss"} (``fixed_batch_loss``: what a test reproduces within 1%)}

``stepadapt run --base shipped`` (the preset's base) or ``--base shipped:NAME`` starts a run whose finished stage 1
is that base, as a fork starts from its parent's: the sections stage 1 depends on (model, diffusion, train, data)
are the base's and cannot change; ``meta.json`` says ``parent: shipped:NAME`` and ``base.origin: shipped``.
``make base`` trains the tiny base again from scratch and writes both files (``bench/ship_base.py``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Iterable, Optional

from core.errors import UserError

SHIPPED = Path(__file__).resolve().parent.parent / "bases"
WEIGHTS, PROVENANCE = "weights.safetensors", "provenance.json"
PREFIX = "shipped"
STAGE1_SECTIONS = ("model", "diffusion", "train", "data")  # what the base fixes (bases.SHARED_SECTIONS)


def shipped_name(base: Optional[str], preset: Optional[str]) -> Optional[str]:
    """``shipped`` -> the preset's base (tiny when none is named), ``shipped:NAME`` -> NAME; anything else None."""
    if base == PREFIX:
        return preset or "tiny"
    if base and base.startswith(PREFIX + ":"):
        return base.split(":", 1)[1]
    return None


def available() -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if (p / PROVENANCE).is_file()) if SHIPPED.is_dir() else []


def provenance(name: str) -> dict:
    """The base's provenance record; an unknown name is one line naming those that ship."""
    path = SHIPPED / name / PROVENANCE
    if not path.is_file():
        have = ", ".join(available()) or "none"
        raise UserError(f"no shipped base {name!r} (shipped: {have})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def load(name: str) -> tuple[dict, dict, dict]:
    """(arch, float32 state dict, provenance) of a shipped base, its weights checked against the recorded sha256 and
    against the recorded architecture (every tensor, every shape) before anything uses them."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from core.method.prune import build_pruned
    from core.runs import file_sha256

    prov = provenance(name)
    path = SHIPPED / name / WEIGHTS
    if not path.is_file():
        raise UserError(f"shipped base {name!r} has no weights ({path})")
    digest = file_sha256(path)
    if digest != prov.get("sha256"):
        raise UserError(f"shipped base {name!r}: {path} does not match its recorded sha256; refusing it")
    try:
        state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    arch = prov["arch"]
    try:
        build_pruned(arch, None, state)  # load_state_dict is strict: every tensor, every shape
    except RuntimeError as e:
        raise UserError(f"shipped base {name!r} does not fit its architecture: {str(e).splitlines()[0]}") from None
    return arch, state, prov


def stage1_hash(cfg: dict) -> str:
    """The identity of a stage 1: its sections (``train.keep`` aside, which keeps weights and changes none), so that
    settings added later to the other sections do not change it as they change the run's ``config_hash``."""
    import hashlib

    what = {s: dict(cfg[s]) for s in STAGE1_SECTIONS}
    what["train"].pop("keep", None)
    return hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def base_config(prov: dict, overrides: Iterable[str] = ()) -> dict:
    """The config of a run on the shipped base: its preset's, with the base's stage-1 sections (settings added to
    the project since it was made keep their defaults), then ``overrides``; changing a stage-1 section is refused."""
    from core import config as C

    cfg = C.preset(prov["preset"])
    for section in STAGE1_SECTIONS:
        cfg[section].update(copy.deepcopy(prov["config"][section]))
    cfg["train"]["keep"] = []
    before = C.apply_overrides(cfg, ())
    after = C.apply_overrides(copy.deepcopy(before), overrides)
    for section in STAGE1_SECTIONS:
        changed = sorted(k for k in after[section] if after[section][k] != before[section].get(k))
        if changed:
            raise UserError(
                f"the shipped base {prov['name']!r} fixes stage 1, so {section}.{changed[0]} cannot change; "
                "train your own base (stepadapt run without --base) for other settings"
            )
    return after


def import_shipped(
    name: str, overrides: Iterable[str], run_name: Optional[str], runs_dir, log: Callable[[str], None] = print
):
    """A new run whose finished stage 1 is the shipped base ``name``; nothing is written if it does not load."""
    from core.manager.bases import discard_run, write_base
    from core.runs import create_run

    arch, state, prov = load(name)
    cfg = base_config(prov, overrides)
    run = create_run(cfg, run_name, runs_dir, parent=f"{PREFIX}:{name}")
    origin = {
        "origin": "shipped",
        "name": name,
        "file": f"core/bases/{name}/{WEIGHTS}",
        "file_sha256": prov["sha256"],
        "steps": prov["steps"],
        "commit": prov.get("commit"),
    }
    try:
        write_base(run, cfg, arch, state, origin)
    except BaseException:
        discard_run(run)
        raise
    ev = prov.get("eval") or {}
    fid = f", FID {ev['fid']:.3f} [{ev['fid_ci'][0]:.3f}, {ev['fid_ci'][1]:.3f}] at n = {ev['n']}" if ev else ""
    digest = prov["sha256"][:12]
    log(f"run {run.name}: stage 1 is the shipped {name} base ({prov['steps']:,} steps{fid}; sha256 {digest})")
    return run


def fixed_batch_loss(model, cfg: dict, images: int = 64, seed: int = 0) -> float:
    """The training loss (the run's, L_hybrid or L_simple) on the first ``images`` digits of the dataset, with
    timesteps and noise drawn from ``seed``: a number anyone can reproduce from the weights alone."""
    import torch

    from core.model.diffusion import create_diffusion, to_model_range
    from core.training.data import load_dataset

    data = load_dataset(cfg, split="all")
    x0 = to_model_range(data.get(torch.arange(images)))
    diffusion = create_diffusion(cfg)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, diffusion.num_timesteps, (images,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        losses = diffusion.training_losses(model.eval(), x0, t, noise=noise)
    return float(losses["loss"].mean())


def write(name: str, state: dict, prov: dict, dtype: str = "float32") -> Path:
    """Write ``core/bases/NAME/``: the weights as safetensors in ``dtype`` and the provenance with their sha256."""
    import torch
    from safetensors.torch import save_file

    from core.runs import atomic_write_json, file_sha256

    folder = SHIPPED / name
    folder.mkdir(parents=True, exist_ok=True)
    cast = {k: v.detach().to(getattr(torch, dtype)).contiguous() for k, v in state.items()}
    save_file(cast, str(folder / WEIGHTS))
    (folder / WEIGHTS).chmod(0o644)  # package data, read by every user
    prov = {
        **prov,
        "name": name,
        "dtype": dtype,
        "sha256": file_sha256(folder / WEIGHTS),
        "bytes": (folder / WEIGHTS).stat().st_size,
    }
    atomic_write_json(prov, folder / PROVENANCE)
    return folder
