"""MuZero's training loss over a K-step unroll (Schrittwieser et al. 2020, eq. 1), with the
EfficientZero additions (Ye et al. 2021) behind flags.

    l_t(theta) = sum_{k=0}^{K} l^p(pi_{t+k}, p^k_t) + w_v l^v(z_{t+k}, v^k_t) + sum_{k=1}^{K} l^r(u_{t+k}, r^k_t)

* l^p: cross-entropy against the search's root visit distribution (or Gumbel MuZero's improved
  policy pi');
* l^v, l^r: cross-entropy between the categorical heads and two-hot targets of h(z), h(u)
  (appendix F); w_v = 0.25 as in MuZero Reanalyze (appendix H) and EfficientZero;
* the terms of unroll steps k >= 1 are scaled by 1/K (pseudocode: ``scale_gradient(l, 1/K)``);
  the gradient halving of the latent state lives in ``MuZeroNet.forward``;
* each sample is weighted by its importance weight (N P(i))^-beta (appendix G) and the new
  priority is |v^0_t - z_t|;
* value prefix (EfficientZero sec. 4.2): the reward head predicts the undiscounted sum of
  rewards since the last LSTM reset (every ``lstm_horizon`` unroll steps) instead of r^k;
* temporal consistency (EfficientZero sec. 4.1, eq. 4): negative cosine similarity between the
  predictor output of the unrolled latent and the (stop-gradient) projection of the
  representation of the real observation o_{t+k}, weight 2 in EfficientZero.

Weight decay is the optimizer's (decoupled from ``loss``), not the paper's c||theta||^2 term.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from metawm.ops.value_transform import categorical_to_scalar, scalar_to_categorical


def value_prefix_targets(reward: torch.Tensor, horizon: int) -> torch.Tensor:
    """Sums of ``reward`` (B, K) since the last reset, resets before steps 0, H, 2H, ... (B, K)."""
    out = torch.zeros_like(reward)
    acc = torch.zeros_like(reward[:, 0])
    for k in range(reward.shape[1]):
        if k % horizon == 0:
            acc = torch.zeros_like(acc)
        acc = acc + reward[:, k]
        out[:, k] = acc
    return out


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits (..., K) against target distributions (..., K) -> (...)."""
    return -(target * F.log_softmax(logits, -1)).sum(-1)


def muzero_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *, value_bins: torch.Tensor,
                reward_bins: torch.Tensor, value_weight: float = 0.25, reward_weight: float = 1.0,
                policy_weight: float = 1.0, consistency_weight: float = 2.0, value_prefix: bool = False,
                lstm_horizon: int = 5) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Returns (scalar loss, metrics, new priorities (B,)).

    ``out``: logits from ``MuZeroNet.forward`` (policy (B, K+1, A), value (B, K+1, V), reward
    (B, K, R), optionally proj_pred / proj_target (B, K, P)). ``batch``: target_value (B, K+1),
    value_mask (B, K+1), target_reward (B, K), target_policy (B, K+1, A), policy_mask (B, K+1),
    weight (B,), optionally consistency_mask (B, K).
    """
    K = out["reward"].shape[1]
    step_scale = torch.full((K + 1,), 1.0 / max(K, 1), device=out["value"].device)
    step_scale[0] = 1.0

    z = batch["target_value"]
    v_loss = soft_ce(out["value"], scalar_to_categorical(z, value_bins)) * batch["value_mask"]
    p_loss = soft_ce(out["policy"], batch["target_policy"]) * batch["policy_mask"]
    u = batch["target_reward"]
    if value_prefix:
        u = value_prefix_targets(u, lstm_horizon)
    r_loss = soft_ce(out["reward"], scalar_to_categorical(u, reward_bins))

    per_sample = (step_scale * (value_weight * v_loss + policy_weight * p_loss)).sum(1) \
        + (step_scale[1:] * reward_weight * r_loss).sum(1)
    metrics: dict[str, float] = {}
    if "proj_pred" in out:
        cos = F.cosine_similarity(out["proj_pred"], out["proj_target"].detach(), dim=-1)
        c_loss = -cos * batch["consistency_mask"]
        per_sample = per_sample + (step_scale[1:] * consistency_weight * c_loss).sum(1)
        metrics["model/consistency_loss"] = float(c_loss.detach().sum(1).mean())
    loss = (per_sample * batch["weight"]).mean()

    with torch.no_grad():
        v0 = categorical_to_scalar(out["value"][:, 0], value_bins)
        priority = (v0 - z[:, 0]).abs()
        probs = torch.softmax(out["policy"][:, 0], -1)
        metrics.update({
            "model/loss": float(loss.detach()),
            "model/value_loss": float(v_loss.sum(1).mean()),
            "model/policy_loss": float(p_loss.sum(1).mean()),
            "model/reward_loss": float(r_loss.sum(1).mean()),
            "model/value": float(v0.mean()),
            "model/target_value": float(z[:, 0].mean()),
            "model/value_error": float(priority.mean()),
            "model/reward_error": float((categorical_to_scalar(out["reward"], reward_bins) - u).abs().mean()),
            "model/policy_entropy": float(-(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()),
        })
    return loss, metrics, priority
