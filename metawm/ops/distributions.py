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


_SMALL_K = 32


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis. For few classes (K <= 32, e.g. the 4-class latents of small
    models) PyTorch's CPU kernel is several times slower than the composed form used here."""
    if logits.shape[-1] > _SMALL_K:
        return F.softmax(logits, -1)
    e = torch.exp(logits - logits.detach().amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last axis (composed form for few classes, see :func:`softmax`)."""
    if logits.shape[-1] > _SMALL_K:
        return F.log_softmax(logits, -1)
    shifted = logits - logits.detach().amax(-1, keepdim=True)
    return shifted - torch.log(torch.exp(shifted).sum(-1, keepdim=True))


def unimix_logprobs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities of ``(1 - unimix) * softmax(logits) + unimix / K`` (..., K).

    With ``unimix == 0`` this is ``log_softmax(logits)``."""
    if not unimix:
        return log_softmax(logits)
    return torch.log(unimix_probs(logits, unimix))


def unimix_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Probabilities of the uniform mixture (..., K) (cheaper than exp of the log-probs)."""
    probs = softmax(logits)
    return (1.0 - unimix) * probs + unimix / logits.shape[-1] if unimix else probs


def sample_index(probs: torch.Tensor, generator: torch.Generator | None = None,
                 uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (...) drawn from categoricals ``probs`` (..., K) by inverting the CDF with one
    uniform number per distribution (on CPU several times faster than ``torch.multinomial`` for
    many small distributions; the same distribution). ``uniform`` (..., 1) in [0, 1) may be given
    (e.g. drawn for a whole sequence at once); else it is drawn from ``generator``."""
    if uniform is None:
        uniform = torch.rand(probs.shape[:-1] + (1,), dtype=probs.dtype, device=probs.device, generator=generator)
    cdf = probs.detach().cumsum(-1)
    return (cdf < uniform * cdf[..., -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)


def onehot(index: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot vectors (..., classes) of integer ``index`` (...) (no range check, unlike F.one_hot)."""
    return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).to(dtype)


def sample_onehot(probs: torch.Tensor, generator: torch.Generator | None = None,
                  uniform: torch.Tensor | None = None) -> torch.Tensor:
    """A one-hot sample from ``probs`` (..., K) with straight-through gradients: the value is the
    one-hot vector, the gradient is that of ``probs`` (DreamerV2 eq. 5, kept in DreamerV3)."""
    sample = onehot(sample_index(probs, generator, uniform), probs.shape[-1], probs.dtype)
    return sample + probs - probs.detach()


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
    probs = softmax(logits)
    k = bins.shape[-1]
    m = k // 2
    weighted = probs * bins
    if k % 2 == 1:
        return weighted[..., m] + (weighted[..., :m].flip(-1) + weighted[..., m + 1:]).sum(-1)
    return (weighted[..., :m].flip(-1) + weighted[..., m:]).sum(-1)


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor, *,
                target_grad: bool = False) -> torch.Tensor:
    """Cross-entropy between ``softmax(logits)`` (..., K) and the two-hot encoding of ``target``
    (...) over ``bins`` (DreamerV3 eq. 9-10). The target is treated as a constant unless
    ``target_grad``: then gradients flow into it through the (piecewise linear) two-hot weights,
    which meta-gradient RL needs when the target is a return of differentiable hyperparameters
    (Xu et al. 2018). Returns (...)."""
    return -(twohot(target if target_grad else target.detach(), bins) * log_softmax(logits)).sum(-1)


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
