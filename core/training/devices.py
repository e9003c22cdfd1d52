"""Devices and process groups: which device a job trains on, and joining torchrun's process group."""

from __future__ import annotations

import os
from typing import Optional

import torch

from core.errors import UserError


def pick_device(name: str | None = None) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; asking for CUDA without it is an error."""
    if name and name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {name} asked for but CUDA is not available")
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively: a CUDA GPU, or a CPU with AMX tiles (Intel Xeon
    Sapphire Rapids and later), where oneDNN's bf16 convolutions make a tiny training step 1.8x faster than
    fp32 (bench/results/cpu_speed.md). CPUs without AMX emulate bf16 and gain nothing, so they stay fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3; private, so asked with care
    return device.type == "cpu" and amx is not None and bool(amx())


def autocast(device: torch.device | str, bf16: bool):
    """bf16 autocast on ``device`` when asked (``train.bf16``) and the device computes bf16 natively, else a
    no-op: weights, optimiser state and the loss's terms stay fp32 either way (``diffusion.training_losses``
    takes the network's output as fp32)."""
    import contextlib

    device = torch.device(device)
    if bf16 and bf16_native(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def distributed():
    """(torch.distributed, rank, world size) when a process group is up, else (None, 0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def init_distributed() -> Optional[torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; returns this rank's device, else None."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")
