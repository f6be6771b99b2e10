"""The percentile return normalizer of DreamerV3 (Hafner et al. 2023, eq. 11-12).

Returns are scaled by the range between their 5th and 95th percentiles, tracked as an exponential
moving average, but never scaled *up*: ``S = max(1, EMA(P95) - EMA(P5))``. Large returns are thus
squashed into roughly [0, 1] while small returns (sparse rewards) keep their magnitude, so the
fixed entropy scale 3e-4 suits every domain. The state is a plain tensor ``[lo, hi]`` so that it
can be checkpointed and substituted like any other value.
"""

from __future__ import annotations

import torch


def percentile_ema(state: torch.Tensor, x: torch.Tensor, rate: float = 0.01, low: float = 0.05,
                   high: float = 0.95) -> torch.Tensor:
    """One EMA step of the ``[lo, hi]`` percentiles (authors' ``Normalize(impl='perc')``, debias
    off): ``lo <- (1 - rate) lo + rate * quantile(x, low)``, likewise ``hi``. ``state`` (2,), ``x``
    any shape (flattened, treated as a constant). Quantiles interpolate linearly, like numpy's."""
    q = torch.quantile(x.detach().reshape(-1).float(),
                       torch.tensor([low, high], dtype=torch.float32, device=x.device))
    return (1 - rate) * state + rate * q.to(state.dtype)


def percentile_scale(state: torch.Tensor, limit: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, scale) = (lo, max(limit, hi - lo)) from a ``[lo, hi]`` state (DreamerV3 eq. 12);
    the actor divides advantages by ``scale`` (the offset cancels in ``R - v``)."""
    lo, hi = state[0], state[1]
    return lo, torch.clamp(hi - lo, min=limit)
