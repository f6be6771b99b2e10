"""A learned per-parameter optimizer as tensor math (Andrychowicz et al., NeurIPS 2016, "Learning to
learn by gradient descent by gradient descent"; features after Metz et al., "Tasks, stability,
architecture, and compute: training more effective learned optimizers" 2020, and "Practical
tradeoffs between memory, compute, and performance in learned optimizers" 2022).

Every scalar parameter is updated by the same small MLP f_phi, applied coordinate-wise, from the
features

* the gradient g and its momenta m_b = b m_b + (1 - b) g at several decay rates b
  (``DECAYS``), each normalised by its root-mean-square over the parameter tensor (Metz 2020:
  makes the MLP's inputs scale-free);
* Adam's direction m_0.9_hat / (sqrt(v_hat) + eps) (bias-corrected, b2 = 0.999);
* the parameter value (rms-normalised);
* training-step features tanh(t / tau) for tau in ``TIMESCALES`` and the loss as symlog(loss),
  broadcast to every coordinate.

The update is a learned correction around Adam, so that an untrained rule is Adam with step
``base_lr`` and meta-training must earn any gain over it (the "nominal" term of Metz et al. 2022):

    delta = -base_lr * exp(s) * (adam_direction + d),    (d, s) = bound(f_phi(features)),

with f_phi's last layer initialised to zero. ``bound(x) = B tanh(x / B)`` (B = ``OUTPUT_BOUND``;
identity near 0, so the untrained rule and its first meta-gradients are unchanged) caps a step at
e^B ~ 20 times the nominal one: without it a meta-step that made s large once blew the inner
agent's loss up to 1e14 (point_nav, MPC agent, meta_lr 0.01; Metz et al. 2020 likewise scale the
MLP's outputs down for stability). Shapes: parameters and states are dicts of tensors of
the parameters' shapes; the MLP sees (N, F) rows, N = the number of scalar parameters.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

DECAYS = (0.5, 0.9, 0.99, 0.999)
TIMESCALES = (10.0, 100.0, 1000.0, 10000.0)
BETA2 = 0.999
EPS = 1e-8
NUM_FEATURES = len(DECAYS) + 3 + len(TIMESCALES) + 1  # momenta, g, adam dir, param, time, loss
OUTPUT_BOUND = 3.0  # |d| and |s| below this (soft, tanh)


class RuleMLP(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_state(params: Mapping[str, torch.Tensor]) -> dict:
    """Zero momenta and second moments per parameter, step 0."""
    return {"t": 0, "m": {n: torch.zeros((len(DECAYS), *p.shape), dtype=p.dtype, device=p.device) for n, p in params.items()},
            "v": {n: torch.zeros_like(p) for n, p in params.items()}}


def _rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x.detach() ** 2).mean() + 1e-12)


def features(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, loss: torch.Tensor) -> torch.Tensor:
    """(numel, NUM_FEATURES) features of one parameter tensor, given its *updated* momenta ``m``
    (len(DECAYS), *shape) and second moment ``v`` at step ``t`` (>= 1)."""
    n = p.numel()
    m_hat = m[1] / (1 - DECAYS[1] ** t)
    v_hat = v / (1 - BETA2 ** t)
    adam = m_hat / (v_hat.sqrt() + EPS)
    cols = [_rms_norm(g).reshape(n), *[_rms_norm(m[i]).reshape(n) for i in range(len(DECAYS))],
            adam.reshape(n), _rms_norm(p).reshape(n)]
    tt = torch.tensor([math.tanh(t / tau) for tau in TIMESCALES], dtype=p.dtype, device=p.device)
    sl = torch.sign(loss) * torch.log1p(loss.abs())
    extra = torch.cat([tt, sl.reshape(1).to(p.dtype)]).expand(n, -1)
    return torch.cat([torch.stack(cols, -1), extra], -1)


def learned_step(rule: nn.Module, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], state: dict,
                 loss: torch.Tensor, base_lr: float, rule_params: Mapping[str, torch.Tensor] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict]:
    """One update of every parameter with the learned rule; returns (new params, new state).
    Differentiable w.r.t. the rule's parameters (``rule_params`` substituted if given) and, through
    the updates, w.r.t. anything the gradients depend on."""
    t = state["t"] + 1
    decays = torch.tensor(DECAYS, dtype=next(iter(params.values())).dtype)
    new_params, new_m, new_v = {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        d = decays.to(p.device).reshape(-1, *([1] * p.dim()))
        m = d * state["m"][name] + (1 - d) * g[None]
        v = BETA2 * state["v"][name] + (1 - BETA2) * g ** 2
        x = features(p, g, m, v, t, loss)
        out = rule(x) if rule_params is None else torch.func.functional_call(rule, dict(rule_params), (x,))
        adam = x[:, len(DECAYS) + 1].reshape(p.shape)
        out = OUTPUT_BOUND * torch.tanh(out / OUTPUT_BOUND)
        direction, log_scale = out[:, 0].reshape(p.shape), out[:, 1].reshape(p.shape)
        new_params[name] = p - base_lr * torch.exp(log_scale) * (adam + direction)
        new_m[name], new_v[name] = m, v
    return new_params, {"t": t, "m": new_m, "v": new_v}


def detach_state(state: dict) -> dict:
    return {"t": state["t"], "m": {n: x.detach() for n, x in state["m"].items()},
            "v": {n: x.detach() for n, x in state["v"].items()}}
