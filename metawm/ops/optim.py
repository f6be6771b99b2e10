"""LaProp with adaptive gradient clipping: DreamerV3's optimizer, as small functions.

No maintained PyTorch library provides either (torch.optim has Adam/RMSprop; AGC exists only in
NFNet reference code), so they are written here and checked against hand-computed numbers.

* Adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale Image Recognition
  Without Normalization", eq. 3; DreamerV3 appendix "Optimizer"): each parameter tensor's gradient
  is rescaled so that its norm is at most ``clip * max(pmin, ||param||)`` (clip 0.3, pmin 1e-3).
  The authors clip per tensor, not per unit row as in the NFNet paper; we follow the authors.
* LaProp (Ziyin et al. 2020, "LaProp: Separating Momentum and Adaptivity in Adam", alg. 1): the
  gradient is first divided by the (bias-corrected) RMS of past gradients, then momentum averages
  the *normalized* gradients, which keeps the update bounded even with ``eps = 1e-20``.
  DreamerV3 uses beta1 0.9, beta2 0.999, eps 1e-20, lr 4e-5 and a linear warmup over 1000 steps.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


@torch.no_grad()
def agc_(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor], clip: float = 0.3,
         pmin: float = 1e-3) -> None:
    """Adaptive gradient clipping in place: ``g <- g / max(1, ||g|| / (clip * max(pmin, ||p||)))``
    per tensor (Brock et al. 2021 eq. 3, per-tensor norms as in the DreamerV3 code)."""
    if not clip or not grads:
        return
    gnorm = torch.stack(torch._foreach_norm(list(grads)))
    pnorm = torch.stack(torch._foreach_norm(list(params)))
    upper = clip * torch.clamp(pnorm, min=pmin)
    factor = 1.0 / torch.clamp(gnorm / upper, min=1.0)
    torch._foreach_mul_(list(grads), list(factor.unbind(0)))


@torch.no_grad()
def laprop_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], mu: Sequence[torch.Tensor],
            nu: Sequence[torch.Tensor], step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
            eps: float = 1e-20) -> None:
    """One LaProp step in place (Ziyin et al. 2020, alg. 1 with bias corrections, as the
    DreamerV3 code's ``scale_by_rms`` followed by ``scale_by_momentum``); ``step`` counts from 1:

        nu <- beta2 nu + (1 - beta2) g^2             u = g / (sqrt(nu / (1 - beta2^step)) + eps)
        mu <- beta1 mu + (1 - beta1) u               p <- p - lr * mu / (1 - beta1^step)
    """
    params, grads, mu, nu = list(params), list(grads), list(mu), list(nu)
    torch._foreach_mul_(nu, beta2)
    torch._foreach_addcmul_(nu, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(nu)
    torch._foreach_div_(denom, (1 - beta2 ** step) ** 0.5)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(grads, denom)
    torch._foreach_mul_(mu, beta1)
    torch._foreach_add_(mu, update, alpha=1 - beta1)
    torch._foreach_add_(params, mu, alpha=-lr / (1 - beta1 ** step))


def warmup_lr(lr: float, step: int, warmup: int) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps (optax ``linear_schedule`` joined with a
    constant, as in the DreamerV3 code); ``step`` counts from 1."""
    if warmup <= 0:
        return lr
    return lr * min(1.0, (step - 1) / warmup)


class LaProp(torch.optim.Optimizer):
    """LaProp + AGC + linear warmup as a ``torch.optim.Optimizer`` (so its state checkpoints with
    ``state_dict``). The math is :func:`agc_`, :func:`laprop_` and :func:`warmup_lr`."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 4e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-20, agc: float = 0.3, agc_pmin: float = 1e-3, warmup: int = 1000):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, agc=agc, agc_pmin=agc_pmin, warmup=int(warmup))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        assert closure is None, "LaProp does not take a closure"
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            agc_(grads, params, group["agc"], group["agc_pmin"])
            mu, nu = [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["nu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                mu.append(state["mu"])
                nu.append(state["nu"])
            step = int(self.state[params[0]]["step"])
            beta1, beta2 = group["betas"]
            lr = warmup_lr(group["lr"], step, group["warmup"])
            laprop_(params, grads, mu, nu, step, lr, beta1, beta2, group["eps"])
        return None
