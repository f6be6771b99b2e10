"""Adam (Kingma & Ba, ICLR 2015, Algorithm 1) over a list of tensors, without ``torch.optim``.

Why not ``torch.optim.Adam``: constructing any ``torch.optim`` optimizer imports ``torch._dynamo``
(``add_param_group`` is wrapped by ``torch._compile``), 3-15 s per process on a small CPU machine,
paid by every CLI run and test subprocess of the meta-learners. This is the same update, with the
same defaults (no weight decay, no amsgrad), as plain tensor math.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch


class Adam:
    """``step()`` applies m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) to every tensor with a ``.grad``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.t = 0
        self.m = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.v = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "m": [x.clone() for x in self.m], "v": [x.clone() for x in self.v], "lr": self.lr}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t = int(state["t"])
        for dst, src in zip(self.m + self.v, list(state["m"]) + list(state["v"])):
            dst.copy_(src)
