"""The math of Dreamer 4's objectives as pure functions of tensors (shapes in the docstrings).

Equation numbers refer to Hafner, Yan, Lillicrap (2025), "Training Agents Inside of Scalable World
Models", arXiv 2509.24527. Returns (eq. 10) use :func:`metawm.ops.returns.lambda_returns` and
two-hot encoding :func:`metawm.ops.twohot.twohot`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from metawm.ops.twohot import expectation, twohot

# -- shortcut forcing (sec. 3.2) ---------------------------------------------------------------------

Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ramp_weight(tau: torch.Tensor) -> torch.Tensor:
    """w(tau) = 0.9 tau + 0.1 (eq. 8): more weight on signal levels with more learning signal."""
    return 0.9 * tau + 0.1


def shortcut_forcing_loss(predict: Predict, z1: torch.Tensor, z0: torch.Tensor, tau: torch.Tensor,
                          d: torch.Tensor, d_min: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Shortcut forcing with x-prediction (eqs. 6-8), one loss value per frame.

    ``predict(z_noisy, tau, d)`` is the dynamics f_theta (actions, history and parameters bound),
    mapping corrupted latents (B, T, ...) at per-frame signal levels ``tau`` (B, T) and step sizes
    ``d`` (B, T) to clean latents z_hat_1. ``z1`` clean latents, ``z0`` noise, both (B, T, ...).
    tau = 0 is pure noise, tau = 1 clean data, and tau <= 1 - d (eq. 4) so 1 - tau >= d > 0.

        z_tilde = (1 - tau) z0 + tau z1                                   (eq. 6)
        d = d_min:  L = ||z_hat_1 - z1||^2                                (flow term, x-space)
        d > d_min:  b'  = (f(z_tilde, tau, d/2) - z_tilde) / (1 - tau),  z' = z_tilde + b' d/2
                    b'' = (f(z', tau + d/2, d/2) - z') / (1 - (tau + d/2))                 (eq. 7)
                    L = (1 - tau)^2 ||(z_hat_1 - z_tilde) / (1 - tau) - sg(b' + b'') / 2||^2
        loss = w(tau) L,  w(tau) = 0.9 tau + 0.1                          (eq. 8)

    ||.||^2 is the mean over latent elements here (the paper's sum differs by a constant, which
    the loss normalization of sec. 3 removes anyway). The ramp weight multiplies both terms: the
    paper motivates it by the flow term degenerating to the data mean at low tau.

    The two teacher half-steps run on whole sequences at once (3 forward passes per batch rather
    than one per frame): for frame t's second half-step, the context frames that are themselves
    bootstrap frames have also been advanced by their own half-step (with their signal levels
    labelled accordingly); frames at d_min are left as they are. The paper does not say how
    sequences are handled here; this keeps the teacher's inputs valid noisy histories.

    Returns (w(tau) * L of shape (B, T), diagnostics: ``flow`` and ``bootstrap`` means and the
    masks ``is_flow``).
    """
    expand = lambda x: x.reshape(*x.shape, *([1] * (z1.dim() - x.dim())))  # noqa: E731
    t_, d_ = expand(tau), expand(d)
    z_tilde = (1 - t_) * z0 + t_ * z1
    z_hat = predict(z_tilde, tau, d)
    reduce = lambda x: x.flatten(2).mean(-1)  # noqa: E731
    flow = reduce((z_hat - z1) ** 2)
    is_flow = d <= d_min * (1 + 1e-6)
    if bool(is_flow.all()):
        boot = torch.zeros_like(flow)
    else:
        with torch.no_grad():
            half = torch.where(is_flow, d, d / 2)  # d_min frames: any valid step, result unused
            h_ = expand(half)
            b1 = (predict(z_tilde, tau, half) - z_tilde) / (1 - t_)
            move = expand((~is_flow).to(z1.dtype))
            z_mid = z_tilde + move * b1 * h_
            tau_mid = tau + (~is_flow).to(tau.dtype) * half
            m_ = expand(tau_mid)
            b2 = (predict(z_mid, tau_mid, half) - z_mid) / (1 - m_)
            v_target = (b1 + b2) / 2
        v_hat = (z_hat - z_tilde) / (1 - t_)
        boot = (1 - tau) ** 2 * reduce((v_hat - v_target) ** 2)
    per_frame = torch.where(is_flow, flow, boot)
    n_flow = is_flow.sum().clamp(min=1)
    n_boot = (~is_flow).sum().clamp(min=1)
    info = {"flow": (flow * is_flow).sum() / n_flow, "bootstrap": (boot * ~is_flow).sum() / n_boot,
            "is_flow": is_flow}
    return ramp_weight(tau) * per_frame, info


# -- two-hot regression (DreamerV3 eqs. 9-10, used by eqs. 9-10 of Dreamer 4) ----------------------

def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_nll(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """-ln p(target) of a symexp two-hot head: cross-entropy of ``logits`` (..., K) against the
    two-hot encoding of symlog(target) (...) over ``bins`` (K,) in symlog space. Returns (...)."""
    return -(twohot(symlog(target), bins) * F.log_softmax(logits, -1)).sum(-1)


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """The prediction of a symexp two-hot head: symexp(E[bins]). (..., K) -> (...)."""
    return symexp(expectation(torch.softmax(logits, -1), bins))


def symlog_bins(n: int, limit: float = 20.0) -> torch.Tensor:
    return torch.linspace(-limit, limit, n)


# -- multi-token prediction (eq. 9) ------------------------------------------------------------------

def mtp_targets(x: torch.Tensor, valid: torch.Tensor, seg: torch.Tensor, length: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets x_{t+n} for n = 0..L at every t (eq. 9), and where they exist.

    x (B, T, ...), valid (B, T) bool, seg (B, T) segment ids. Returns (targets (B, T, L+1, ...),
    mask (B, T, L+1)): the target at (t, n) counts when t + n < T, step t + n belongs to t's
    episode segment and is ``valid`` there (e.g. has an action label)."""
    b, t = x.shape[:2]
    outs, masks = [], []
    for n in range(length + 1):
        shifted = torch.cat([x[:, n:], x[:, :n].new_zeros(b, min(n, t), *x.shape[2:])], 1)[:, :t]
        ok = torch.zeros(b, t, dtype=torch.bool, device=x.device)
        if n < t:
            ok[:, : t - n] = valid[:, n:] & (seg[:, n:] == seg[:, : t - n])
        outs.append(shifted)
        masks.append(ok)
    return torch.stack(outs, 2), torch.stack(masks, 2)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


# -- PMPO (eq. 11) -------------------------------------------------------------------------------------

def pmpo_loss(logp: torch.Tensor, advantage: torch.Tensor, kl: torch.Tensor, weight: torch.Tensor | None = None,
              alpha: float = 0.5, beta: float = 0.3) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PMPO policy loss as used by Dreamer 4 (eq. 11; Abdolmaleki et al. 2024):

        L = (1 - alpha) / |D-| sum_{D-} ln pi(a|s) - alpha / |D+| sum_{D+} ln pi(a|s)
            + beta / N sum_i KL[pi(.|s_i) || pi_prior(.|s_i)]

    with D+ = {A >= 0}, D- = {A < 0}: only the sign of the advantage is used. ``logp`` ln pi(a|s),
    ``advantage`` A and ``kl`` the *reverse* KL to the frozen behaviour prior, all of shape (...).
    ``weight`` (...) optionally weights states (e.g. the probability that an imagined state is
    still inside the episode); set sizes become sums of weights. An empty set contributes zero.
    """
    w = torch.ones_like(logp) if weight is None else weight
    pos = (advantage >= 0).to(logp.dtype) * w
    neg = (advantage < 0).to(logp.dtype) * w
    neg_term = (neg * logp).sum() / neg.sum().clamp(min=1e-8)
    pos_term = (pos * logp).sum() / pos.sum().clamp(min=1e-8)
    kl_term = (w * kl).sum() / w.sum().clamp(min=1e-8)
    loss = (1 - alpha) * neg_term - alpha * pos_term + beta * kl_term
    return loss, {"pos_logp": pos_term.detach(), "neg_logp": neg_term.detach(), "kl": kl_term.detach(),
                  "pos_frac": (pos.sum() / w.sum().clamp(min=1e-8)).detach()}


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL[p || q] of categoricals over the last axis. (..., K) -> (...)."""
    lp, lq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


# -- loss normalization (sec. 3) -------------------------------------------------------------------

def rms_scale(sq_ema: torch.Tensor, count: torch.Tensor, decay: float) -> torch.Tensor:
    """Bias-corrected running RMS sqrt(E[L^2]) from an EMA of squared loss values; 1 before the
    first update. The paper normalizes every loss term by such a running estimate (sec. 3)."""
    if float(count) <= 0:
        return torch.ones_like(sq_ema)
    corr = 1 - decay ** float(count)
    return (sq_ema / corr).sqrt().clamp(min=1e-8)


def log2_int(x: float) -> int:
    return int(round(math.log2(x)))
