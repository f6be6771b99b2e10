"""Two-hot encoding of scalars over a sorted vector of bins, and its inverse.

Used by DreamerV3's reward and critic heads (bins symexp-spaced, Hafner et al. 2023, eq. 9-10)
and by MuZero's categorical value/reward heads (MuZero appendix F: a scalar is represented by
the two adjacent support points with weights summing to one, so its expectation is exact).
"""

from __future__ import annotations

import torch


def twohot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Encode ``x`` (any shape S) as weights over ``bins`` (K,), returning shape S + (K,).

    A value between bins b_k <= x < b_{k+1} puts weight (b_{k+1} - x) / (b_{k+1} - b_k) on k and
    the rest on k + 1, so ``(twohot(x) * bins).sum(-1) == x`` for x inside the bin range; values
    outside are clipped to the first/last bin.
    """
    bins = bins.to(x.dtype)
    x = x.clamp(bins[0], bins[-1])
    upper = torch.searchsorted(bins, x.contiguous(), right=True).clamp(1, len(bins) - 1)
    lower = upper - 1
    lo, hi = bins[lower], bins[upper]
    w_hi = ((x - lo) / (hi - lo)).clamp(0, 1)
    out = torch.zeros(*x.shape, len(bins), dtype=x.dtype, device=x.device)
    out.scatter_(-1, lower.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, upper.unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def expectation(probs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`twohot` for a distribution ``probs`` (..., K): the mean over ``bins``."""
    return (probs * bins.to(probs.dtype)).sum(-1)
