"""PNG strips of frames (real vs generated), written with matplotlib (headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def save_strip(path: str | Path, rows: Sequence[tuple[str, torch.Tensor]], title: str = "") -> Path:
    """One row per (label, frames (T, H, W, C) floats in [0, 1]), frames side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metawm.infra.plots import save_figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = max(int(f.shape[0]) for _, f in rows)
    fig, axes = plt.subplots(len(rows), t, figsize=(1.1 * t + 1.2, 1.25 * len(rows) + 0.4), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        arr = frames.detach().float().clamp(0, 1).cpu().numpy()
        for c in range(t):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(arr):
                img = arr[c]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=80)


def to_frames(obs: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, C) -> float frames in [0, 1]."""
    return torch.as_tensor(obs).float() / 255.0
