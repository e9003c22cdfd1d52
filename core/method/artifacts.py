"""Model artifacts on disk: loading and saving models, pruned or not, and the progressive model.

    models/base.pt, models/groupNN.pt   {"arch": model config, "state": EMA weights, "step", "plan"?, ...}
                                        (written by the training loop; "plan" for a pruned group model)
    models/progressive.pt               {"kind": "progressive", "group_of": [T], "groups": {g: {"arch", "plan",
                                        "state"}}, "schedule": ..., "trunk"?: {...}}
                                        ("trunk": the group models share one encoder, ``trunk.py``)

A pruned model is stored as its base architecture plus its plan and rebuilt by ``prune.build_pruned``.
A file that is missing, unreadable or does not fit its architecture is a ``UserError`` (one line);
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

from core.errors import UserError
from core.method.progressive import ProgressiveDenoiser
from core.method.prune import build_pruned
from core.runs import atomic_torch_save, load_torch


def read_artifact(path, device="cpu", what: str = "model") -> dict:
    """The artifact's dict (tensors and plain data only: ``runs.load_torch``), or a one-line ``UserError`` for a
    missing, unreadable or refused file."""
    art = load_torch(path, what, device)
    if not isinstance(art, dict):
        raise UserError(f"{path} is not a stepadapt {what} artifact")
    return art


def _rebuild(arch, plan, state, path):
    """The model of ``arch`` pruned by ``plan`` with ``state``; a state that does not fit is the user's error."""
    try:
        return build_pruned(arch, plan, state)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or wrongly shaped tensors
        raise UserError(f"the weights in {path} do not fit their architecture: {str(e).splitlines()[0]}") from None


def load_unet(path, device="cpu"):
    """A model artifact (base or group model, pruned or not) as an eval-mode UNet on ``device``."""
    art = read_artifact(path, device)
    if "arch" not in art or "state" not in art:
        raise UserError(f"{path} is not a model artifact (no arch/state); is it a checkpoint?")
    return _rebuild(art["arch"], art.get("plan"), art["state"], path).to(device).eval()


def save_progressive(path, group_models: dict[int, dict], group_of, meta: Optional[dict] = None) -> None:
    """One artifact: ``{"kind": "progressive", "group_of": [T], "groups": {g: {"arch", "plan", "state"}}, ...}``."""
    atomic_torch_save(
        {
            "kind": "progressive",
            "group_of": [int(g) for g in group_of],
            "groups": {int(g): a for g, a in group_models.items()},
            **(meta or {}),
        },
        path,
    )


def load_progressive(path, device="cpu") -> ProgressiveDenoiser:
    """The progressive model: every group's model, routed by the artifact's timestep -> group table."""
    art = read_artifact(path, device, "progressive model")
    if art.get("kind") != "progressive":
        raise UserError(f"{path} is not a progressive model artifact")
    models = {int(g): _rebuild(a["arch"], a.get("plan"), a["state"], path) for g, a in art["groups"].items()}
    trunk = _shared_trunk(art, models, path) if art.get("trunk") else None
    try:
        model = ProgressiveDenoiser(models, art["group_of"], trunk)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return model.to(device).eval()


def _shared_trunk(art: dict, models: dict, path) -> dict:
    """A shared trunk's group models made to hold one encoder, once their encoder weights are checked equal;
    its record with the encoder's parameters and the whole model's, the encoder counted once."""
    from core.method.trunk import differing, share_encoder

    first, *rest = sorted(art["groups"])
    bad = differing(art["groups"][first]["state"], [(f"group {g}", art["groups"][g]["state"]) for g in rest])
    if bad:
        raise UserError(f"{path}: the group models share one encoder, yet {', '.join(bad)} differ from group {first}")
    encoder = share_encoder(models)
    total = sum(p.numel() for p in nn.ModuleList(models.values()).parameters())
    return {**art["trunk"], "encoder_params": encoder, "params_total": total}


def progressive_from_files(files: dict, group_of, device="cpu") -> ProgressiveDenoiser:
    """A progressive model built in memory from one model artifact per group (``{g: path}``), routed by
    ``group_of`` (e.g. every group's weights at one fine-tune step)."""
    models = {}
    for g, path in files.items():
        art = read_artifact(path, device)
        models[int(g)] = _rebuild(art["arch"], art.get("plan"), art["state"], path)
    return ProgressiveDenoiser(models, group_of).to(device).eval()
