"""MuZero's invertible value transform and categorical scalar representation.

Schrittwieser et al. 2020 (MuZero), appendix F ("Network Architecture"): rewards and values are
squashed with the invertible transform of Pohlen et al. 2018 ("Observe and Look Further", eq. 4
and Proposition A.2)

    h(x)      = sign(x) (sqrt(|x| + 1) - 1) + eps x,                      eps = 0.001
    h^{-1}(y) = sign(y) (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1)

and the transformed scalar is represented as a categorical distribution over an integer support
{-S, ..., S} by putting weight on the two adjacent support points (``metawm.ops.twohot``), so the
expectation of the distribution recovers h(x) exactly. Networks output logits over that support
and are trained with cross-entropy against the two-hot target.
"""

from __future__ import annotations

import torch

from metawm.ops.twohot import twohot

EPS = 1e-3


def h(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Pohlen et al. 2018 eq. 4: h(x) = sign(x)(sqrt(|x|+1)-1) + eps x. Any shape."""
    return torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + eps * x


def h_inv(y: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Exact inverse of :func:`h` (Pohlen et al. 2018, Proposition A.2). Any shape.

    The quotient (sqrt(1 + 4 eps u) - 1) / (2 eps), u = |y| + 1 + eps, is computed in the
    algebraically equal form 2u / (1 + sqrt(1 + 4 eps u)), which avoids the cancellation of
    the textbook form near y = 0 in float32.
    """
    u = y.abs().add_(1 + eps)
    root = (2 * u).div_(u.mul(4 * eps).add_(1).sqrt_().add_(1))
    return torch.copysign(root.mul_(root).sub_(1), y)


def support(half_width: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The integer support {-S, ..., S} (2S + 1 bins) of the categorical heads (MuZero: S = 300)."""
    return torch.arange(-half_width, half_width + 1, dtype=dtype, device=device)


def scalar_to_categorical(x: torch.Tensor, bins: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Two-hot target over ``bins`` (K,) for scalars ``x`` (shape S): h(x) encoded, shape S + (K,)."""
    return twohot(h(x, eps), bins)


def categorical_to_scalar(logits: torch.Tensor, bins: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The scalar a categorical head predicts: h^{-1}(E_softmax(logits)[bins]). logits (..., K) -> (...).

    The expectation is :func:`metawm.ops.twohot.expectation` written as one matrix product (this
    runs at every node expansion of the search)."""
    return h_inv(torch.softmax(logits, -1) @ bins.to(logits.dtype), eps)
