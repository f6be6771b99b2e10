"""Symmetric log squashing and the symexp-spaced bins of DreamerV3's two-hot heads.

Hafner et al., "Mastering Diverse Domains through World Models" (Nature 2025; arXiv 2301.04104),
eq. 8 (symlog/symexp) and eq. 9-10 (two-hot regression over exponentially spaced bins).
"""

from __future__ import annotations

import torch


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(|x| + 1)`` (DreamerV3 eq. 8): compresses large magnitudes, keeps the sign,
    is the identity near zero. Any shape."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)`` (DreamerV3 eq. 8)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symexp_bins(num: int = 255, limit: float = 20.0, device: torch.device | str | None = None) -> torch.Tensor:
    """``num`` bins ``symexp(linspace(-limit, limit, num))``, built from one half and mirrored so
    that they are exactly antisymmetric (``bins[i] == -bins[-1 - i]``) in float32, as in the
    authors' code (``embodied/jax/heads.py``). With antisymmetric bins a uniform distribution
    has mean exactly zero (see :func:`metawm.ops.distributions.twohot_mean`). Shape (num,)."""
    if num < 2:
        raise ValueError(f"need at least 2 bins, got {num}")
    if num % 2 == 1:
        half = symexp(torch.linspace(-limit, 0.0, (num - 1) // 2 + 1, dtype=torch.float32))
        bins = torch.cat([half, -half[:-1].flip(0)])
    else:
        half = symexp(torch.linspace(-limit, 0.0, num // 2, dtype=torch.float32))
        bins = torch.cat([half, -half.flip(0)])
    return bins.to(device) if device is not None else bins
