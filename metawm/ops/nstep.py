"""Windowed n-step bootstrapped targets, vectorized over a batch of sampled positions.

:func:`metawm.ops.returns.n_step_returns` computes targets for every step of one time-major
array; a replay that samples B positions and unrolls K steps from each needs the target only at
those positions, with windows gathered from storage. This is that computation in closed form
(MuZero, Schrittwieser et al. 2020, sec. "MuZero" / appendix G):

    z = sum_{i=0}^{h-1} gamma^i u_i  +  m * gamma^h * v

where h <= n is the number of transitions actually available (fewer than n when the episode
ended, or when EfficientZero's off-policy correction shortens the horizon for stale data), ``m``
says whether to bootstrap (0 when the window reached a terminal state, 1 at a truncation or
after n steps) and ``v`` is the value estimate of the state h transitions ahead.
"""

from __future__ import annotations

import torch


def windowed_n_step(reward: torch.Tensor, horizon: torch.Tensor, bootstrap: torch.Tensor,
                    bootstrap_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """n-step targets from gathered windows.

    ``reward`` (..., n): reward[..., i] is the reward of the i-th transition after the position;
    ``horizon`` (...) integer h in [0, n]: how many of those transitions count (rewards at
    i >= h are ignored whatever they hold); ``bootstrap`` (...) the value of the state h
    transitions ahead; ``bootstrap_mask`` (...) 1 to add gamma^h * bootstrap, 0 not to.
    Returns (...).
    """
    n = reward.shape[-1]
    i = torch.arange(n, device=reward.device)
    h = horizon.to(torch.long).unsqueeze(-1)
    disc = torch.pow(torch.as_tensor(gamma, dtype=reward.dtype, device=reward.device), i.to(reward.dtype))
    summed = (reward * disc * (i < h).to(reward.dtype)).sum(-1)
    boot = torch.pow(torch.as_tensor(gamma, dtype=reward.dtype, device=reward.device),
                     horizon.to(reward.dtype)) * bootstrap
    return summed + bootstrap_mask.to(reward.dtype) * boot
