"""The output distributions of DreamerV3, as pure functions of logits.

* categorical latents and policies with a uniform mixture (*unimix*, Hafner et al. 2023, sec.
  "Robustness" / appendix: 1% uniform so that no probability reaches zero and the KL stays finite),
  sampled as one-hot vectors with straight-through gradients (Bengio et al. 2013; DreamerV2 eq. 5);
* the two-hot categorical regression head (DreamerV3 eq. 9-10) over symexp-spaced bins;
* the bounded normal policy for continuous actions (authors' ``bounded_normal``: tanh mean,
  standard deviation squashed into [minstd, maxstd]).

Shapes are stated per function; the last axis is the category axis where there is one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from metawm.ops.twohot import twohot


def unimix_logprobs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities of ``(1 - unimix) * softmax(logits) + unimix / K`` (..., K).

    With ``unimix == 0`` this is ``log_softmax(logits)``."""
    if not unimix:
        return F.log_softmax(logits, -1)
    probs = F.softmax(logits, -1)
    return torch.log((1.0 - unimix) * probs + unimix / logits.shape[-1])


def unimix_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Probabilities of the uniform mixture (..., K) (cheaper than exp of the log-probs)."""
    probs = F.softmax(logits, -1)
    return (1.0 - unimix) * probs + unimix / logits.shape[-1] if unimix else probs


def sample_onehot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A one-hot sample from ``probs`` (..., K) with straight-through gradients: the value is the
    one-hot vector, the gradient is that of ``probs`` (DreamerV2 eq. 5, kept in DreamerV3)."""
    flat = probs.detach().reshape(-1, probs.shape[-1])
    index = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    onehot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


def categorical_entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of categoricals given normalized log-probabilities (..., K) -> (...)."""
    return -(logprobs.exp() * logprobs).sum(-1)


def categorical_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of categoricals given normalized log-probabilities (..., K) -> (...)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Mean of the categorical ``softmax(logits)`` (..., K) over antisymmetric ``bins`` (K,), summed
    symmetrically from the middle outwards.

    Why not ``(probs * bins).sum(-1)`` (:func:`metawm.ops.twohot.expectation`): with symexp bins up
    to +-4.9e8, a left-to-right float32 sum of a uniform distribution leaves an error of order 1,
    so a zero-initialized reward or value head would not predict zero. Pairing bin i with bin
    K-1-i cancels exactly (the authors' ``TwoHot.pred`` does the same). Returns (...)."""
    probs = F.softmax(logits, -1)
    k = bins.shape[-1]
    m = k // 2
    weighted = probs * bins
    if k % 2 == 1:
        return weighted[..., m] + (weighted[..., :m].flip(-1) + weighted[..., m + 1:]).sum(-1)
    return (weighted[..., :m].flip(-1) + weighted[..., m:]).sum(-1)


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between ``softmax(logits)`` (..., K) and the two-hot encoding of ``target``
    (...) over ``bins`` (DreamerV3 eq. 9-10; the target is treated as a constant). Returns (...)."""
    return -(twohot(target.detach(), bins) * F.log_softmax(logits, -1)).sum(-1)


def binary_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with a soft ``target`` in [0, 1] (the continue head, whose target is
    the discount ``(1 - terminal) * (1 - 1/horizon)`` in the authors' ``contdisc`` variant)."""
    return F.binary_cross_entropy_with_logits(logit, target.detach(), reduction="none")


def bounded_normal(mean: torch.Tensor, std: torch.Tensor, minstd: float = 0.1,
                   maxstd: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, stddev) of the continuous policy from raw network outputs: ``tanh(mean)`` and
    ``(maxstd - minstd) * sigmoid(std + 2) + minstd`` (authors' ``bounded_normal``)."""
    return torch.tanh(mean), (maxstd - minstd) * torch.sigmoid(std + 2.0) + minstd


def normal_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of N(mean, std^2) at x (any broadcastable shapes)."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def normal_entropy(std: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy of N(., std^2)."""
    return 0.5 * math.log(2 * math.pi * math.e) + torch.log(std)
