"""Bootstrapped return targets.

All functions take time-major tensors of shape (T, ...) and are differentiable where their
inputs are (callers decide what to stop gradients through).
"""

from __future__ import annotations

import torch


def lambda_returns(reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor | float,
                   lam: torch.Tensor | float, bootstrap: torch.Tensor) -> torch.Tensor:
    """TD(lambda) returns, computed backwards (Sutton & Barto eq. 12.3; DreamerV3 eq. 7):

        R_t = r_t + gamma_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}),   R_T = bootstrap

    where ``reward[t]`` is the reward for the transition t -> t+1, ``value[t]`` = v_{t+1}
    (the value of the *next* state) and ``discount[t]`` = gamma_t (the discount, already
    multiplied by the continuation flag). ``lam`` is a float or, like ``discount``, a per-step
    tensor lambda_t (DreamerV3's replay returns set lambda_t = 0 where an episode ends inside a
    sequence, so the return restarts from the bootstrap there). Shapes: reward, value, discount,
    lam (T, ...), bootstrap (...). Returns (T, ...).
    """
    discount = torch.as_tensor(discount, dtype=reward.dtype, device=reward.device).expand_as(reward)
    lam = torch.as_tensor(lam, dtype=reward.dtype, device=reward.device).expand_as(reward)
    out = []
    last = bootstrap
    for t in reversed(range(reward.shape[0])):
        last = reward[t] + discount[t] * ((1 - lam[t]) * value[t] + lam[t] * last)
        out.append(last)
    return torch.stack(out[::-1])


def n_step_returns(reward: torch.Tensor, value: torch.Tensor, done: torch.Tensor, gamma: float,
                   n: int) -> torch.Tensor:
    """n-step bootstrapped targets (MuZero eq. in sec. 3 / appendix G):

        z_t = sum_{k=0}^{n-1} gamma^k r_{t+k} + gamma^n v_{t+n}

    truncated at episode ends: ``done[t]`` marks that the episode terminated after the
    transition t -> t+1 (no reward or bootstrap beyond it). ``reward[t]`` is the reward of
    t -> t+1, ``value[t]`` the value estimate of state t; steps past the end of the arrays are
    treated as terminal. Shapes: (T, ...). Returns (T, ...).
    """
    T = reward.shape[0]
    alive = 1.0 - done.to(reward.dtype)
    out = torch.zeros_like(reward)
    for t in range(T):
        acc = torch.zeros_like(reward[t])
        scale = torch.ones_like(reward[t])
        for k in range(n):
            if t + k >= T:
                scale = torch.zeros_like(scale)
                break
            acc = acc + scale * reward[t + k]
            scale = scale * gamma * alive[t + k]
        if t + n < T:
            acc = acc + scale * value[t + n]
        out[t] = acc
    return out
