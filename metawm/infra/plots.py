"""PNG plots written into a run's ``plots/`` folder (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def learning_curves(metrics_path: str | Path, out: str | Path, keys: Iterable[str], title: str = "") -> Path | None:
    """One panel per metric key found in ``metrics.jsonl``, against env steps."""
    rows = read_jsonl(metrics_path)
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3)
        ax.set_xlabel("env steps")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def curves_with_bands(xs: Sequence[float], series: dict[str, tuple[Sequence[float], Sequence[float]]],
                      out: str | Path, xlabel: str, ylabel: str, title: str = "") -> Path:
    """Mean curves with a shaded band (e.g. a 95% confidence interval) per named series."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (mean, half) in series.items():
        ax.plot(xs, mean, marker="o", ms=3, label=name)
        ax.fill_between(xs, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)], alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, out)


def save_figure(fig, out: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the path."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
