"""DreamerV3's losses as functions of tensors (Hafner et al., Nature 2025 / arXiv 2301.04104).

Equation numbers refer to the arXiv version (v1-v2 numbering, kept in the Nature methods). Shapes
are batch-major: (B, T) for replayed sequences, (N, H + 1) for imagined trajectories that start
from N = B * T replayed states. Each function returns per-element losses; the agent averages them
and weights them with the paper's scales (prediction 1, dynamics 1, representation 0.1, actor 1,
critic 1, replay critic 0.3).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from metawm.ops.distributions import binary_loss, twohot_loss
from metawm.ops.normalize import percentile_ema, percentile_scale
from metawm.ops.returns import lambda_returns
from metawm.ops.symlog import symlog


# -- world model (eq. 4: L_pred + L_dyn + 0.1 L_rep; the KL terms are metawm.ops.kl) -------------
def reconstruction_loss(pred: torch.Tensor, obs: torch.Tensor, image: bool) -> torch.Tensor:
    """Decoder part of L_pred (eq. 4): squared error summed over the observation. Images: sigmoid
    output against ``obs / 255`` summed over pixels and channels; vectors: prediction of
    ``symlog(obs)`` (eq. 8, "symlog squared error"). ``pred`` and ``obs`` (..., *obs_shape) -> (...)."""
    if image:
        target = obs.float() / 255.0
        return (pred - target).square().sum((-3, -2, -1))
    return (pred - symlog(obs)).square().sum(-1)


def reward_loss(logits: torch.Tensor, reward: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Reward part of L_pred: two-hot cross-entropy over symexp bins (eq. 9-10). (..., K), (...) -> (...)."""
    return twohot_loss(logits, reward, bins)


def continue_loss(logit: torch.Tensor, is_terminal: torch.Tensor, horizon: float) -> torch.Tensor:
    """Continue part of L_pred: binary cross-entropy of the continue head. As in the authors' code
    (``contdisc``), the target is the discount ``(1 - terminal) * (1 - 1/horizon)`` so that the head
    predicts gamma * c directly and imagination needs no separate discount. (...) -> (...)."""
    target = (1.0 - is_terminal.float()) * (1.0 - 1.0 / horizon)
    return binary_loss(logit, target)


# -- actor and critic in imagination (eq. 6-7 returns, eq. 10 critic, eq. 11-12 actor) -----------
class ImagOut(NamedTuple):
    policy: torch.Tensor     # (N, H) per-step actor loss
    value: torch.Tensor      # (N, H) per-step critic loss
    ret: torch.Tensor        # (N, H) lambda-returns R_t, t = 0..H-1
    retnorm: torch.Tensor    # (2,) the updated [lo, hi] percentile state
    scale: torch.Tensor      # () the return scale S = max(1, hi - lo)
    adv: torch.Tensor        # (N, H) (R_t - v_t) / S
    weight: torch.Tensor     # (N, H + 1) cumulative discount of the imagined states


def imagination_loss(reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor, slow_value: torch.Tensor,
                     critic_logits: torch.Tensor, logpi: torch.Tensor, entropy: torch.Tensor,
                     retnorm: torch.Tensor, bins: torch.Tensor, *, lam: float | torch.Tensor = 0.95,
                     actent: float | torch.Tensor = 3e-4, slowreg: float = 1.0, retnorm_rate: float = 0.01,
                     retnorm_limit: float = 1.0, retnorm_low: float = 0.05, retnorm_high: float = 0.95) -> ImagOut:
    """Actor and critic losses on imagined trajectories of H + 1 states (the start and H steps).

    Inputs (N, H + 1): predicted ``reward`` r_t (reward on arriving at state t), continuation
    ``cont`` (probability times discount, so gamma_t = cont_t), critic means ``value`` and
    ``slow_value``, and, with gradients, ``critic_logits`` (N, H + 1, K), ``logpi`` (log-probability
    of the action taken at t) and ``entropy`` of the policy at t.

    * lambda-returns (eq. 7): R_t = r_{t+1} + gamma_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1}),
      R_H = v_H, with the fast critic as target values (authors' ``slowtar: False``).
    * return normalization (eq. 11-12): S = max(1, EMA(P95(R)) - EMA(P5(R))), updated with this
      batch's returns first (the new state is returned for the caller to commit).
    * actor (eq. 11, REINFORCE for discrete and continuous actions as in the Nature version):
      -w_t [ log pi(a_t | s_t) sg((R_t - v_t) / S) + eta H[pi(. | s_t)] ], eta = 3e-4.
    * critic (eq. 10): two-hot cross-entropy to sg(R_t), plus ``slowreg`` times the cross-entropy
      to the slow (EMA) critic's prediction, the regularizer that replaces a target network.
    * w_t = prod_{k <= t} gamma_k: imagined states after a predicted episode end count less.

    Hyperparameters as tensors (meta-gradient RL, Xu et al. 2018 eq. 1-4): ``lam``, ``actent`` and
    the discount inside ``cont`` may be 0-d tensors that require gradients. ``reward``, ``value``
    and ``slow_value`` are always constants and ``cont`` may carry gradients only to the discount,
    so R_t, the advantages and the critic's target are differentiable in the hyperparameters and
    still stop-gradients w.r.t. the networks; so are the weights w_t, which the discount also
    enters. Only the return normalizer (and so S) stays a constant. With floats this is the
    paper's loss exactly.
    """
    reward, value, slow_value = reward.detach(), value.detach(), slow_value.detach()
    weight = torch.cumprod(cont, 1)
    ret = lambda_returns(reward[:, 1:].T, value[:, 1:].T, cont[:, 1:].T, lam, value[:, -1]).T
    retnorm = percentile_ema(retnorm.detach(), ret.detach(), retnorm_rate, retnorm_low, retnorm_high)
    _, scale = percentile_scale(retnorm, retnorm_limit)
    adv = (ret - value[:, :-1]) / scale
    w = weight[:, :-1]
    policy = -w * (logpi[:, :-1] * adv + actent * entropy[:, :-1])
    value_loss = w * (twohot_loss(critic_logits[:, :-1], ret, bins, target_grad=True)
                      + slowreg * twohot_loss(critic_logits[:, :-1], slow_value[:, :-1], bins))
    return ImagOut(policy, value_loss, ret, retnorm, scale, adv, weight)


def replay_value_loss(reward: torch.Tensor, is_last: torch.Tensor, is_terminal: torch.Tensor,
                      boot: torch.Tensor, slow_value: torch.Tensor, critic_logits: torch.Tensor,
                      bins: torch.Tensor, *, horizon: float = 333.0, lam: float | torch.Tensor = 0.95,
                      slowreg: float = 1.0, discount: float | torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic loss on replayed sequences (Nature version, "replay value loss", scale 0.3).

    lambda-returns along the real sequence (B, T), bootstrapped from the imagined returns ``boot``
    (B, T) of each replayed state (authors' ``repl_loss``):

        R_t = r_{t+1} + gamma_{t+1} ((1 - lambda_{t+1}) boot_{t+1} + lambda_{t+1} R_{t+1}),  R_{T-1} = boot_{T-1}

    with gamma_t = (1 - terminal_t) gamma, gamma = ``discount`` (default 1 - 1/horizon), and
    lambda_t = 0 where ``is_last`` (the return restarts at episode ends inside the window). The
    critic (``critic_logits`` (B, T, K), with gradients that also reach the world model's
    representations) regresses sg(R_t) and the slow critic's prediction, masked where step t is the
    last of its episode. ``discount``, ``lam`` and ``boot`` may carry gradients to hyperparameters
    (see :func:`imagination_loss`); R_t is then differentiable in them, never in the networks.
    Returns (per-step loss (B, T - 1), returns (B, T - 1)).
    """
    gamma = (1.0 - 1.0 / horizon) if discount is None else discount
    reward, slow_value = reward.detach(), slow_value.detach()
    disc = (1.0 - is_terminal.to(reward.dtype)) * gamma
    lam_t = (1.0 - is_last.to(reward.dtype)) * lam
    ret = lambda_returns(reward[:, 1:].T, boot[:, 1:].T, disc[:, 1:].T, lam_t[:, 1:].T, boot[:, -1]).T
    mask = 1.0 - is_last[:, :-1].float()
    loss = mask * (twohot_loss(critic_logits[:, :-1], ret, bins, target_grad=True)
                   + slowreg * twohot_loss(critic_logits[:, :-1], slow_value[:, :-1], bins))
    return loss, ret
