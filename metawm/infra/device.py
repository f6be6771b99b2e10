"""The device is chosen once, at the composition root, and passed down explicitly."""

from __future__ import annotations

import torch

from metawm.infra.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu`` / ``cuda`` / ``cuda:N`` are explicit."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} was asked for but CUDA is not available here; use device=auto or cpu.")
    return device
