"""The world model's report plot: real observations, reconstructions and open-loop imagination."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metawm.infra.plots import save_figure  # noqa: E402


def reconstruction(path: Path, real: np.ndarray, model: np.ndarray, context: int, image: bool,
                   title: str = "", max_frames: int = 16) -> Path:
    """Write ``path``. ``real``/``model``: (B, T, ...) observations and model predictions; the first
    ``context`` steps of ``model`` are posterior reconstructions, the rest open-loop imagination.

    Images: for each sequence three rows (real, model, |difference|), at most ``max_frames``
    evenly spaced columns, a red line where imagination starts. Vectors: one panel per dimension
    (first sequence), real vs model, imagination shaded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    B, T = real.shape[:2]
    if image:
        cols = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
        rows = []
        for b in range(B):
            r, m = real[b, cols].astype(np.int16), model[b, cols].astype(np.int16)
            rows += [r, m, np.abs(r - m)]
        grid = np.concatenate([np.concatenate(list(row), 1) for row in rows], 0).astype(np.uint8)
        h, w = real.shape[2:4]
        fig, ax = plt.subplots(figsize=(max(6, len(cols) * 0.9), max(3, 0.9 * len(rows))))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None)
        split = int(np.searchsorted(cols, context))
        ax.axvline(split * w - 0.5, color="red", lw=1.5)
        ax.set_yticks([(3 * b + i + 0.5) * h for b in range(B) for i in range(3)])
        ax.set_yticklabels(["real", "model", "|diff|"] * B, fontsize=7)
        ax.set_xticks([(i + 0.5) * w for i in range(len(cols))])
        ax.set_xticklabels([str(c) for c in cols], fontsize=7)
        ax.set_xlabel("time step (left of red: reconstruction from observations; right: imagination from actions)",
                      fontsize=8)
    else:
        dims = real.shape[-1]
        fig, axes = plt.subplots(1, dims, figsize=(3.2 * dims, 2.8), squeeze=False)
        for d, ax in enumerate(axes[0]):
            ax.plot(real[0, :, d], label="real", color="black")
            ax.plot(model[0, :, d], label="model", color="tab:blue", ls="--")
            ax.axvspan(context - 0.5, T - 0.5, color="tab:orange", alpha=0.12, label="imagined")
            ax.set_title(f"obs[{d}]", fontsize=9)
            ax.set_xlabel("time step", fontsize=8)
        axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)
