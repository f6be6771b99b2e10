"""KL balancing with free nats (DreamerV3 eq. 5, "dynamics" and "representation" losses).

The world model's prior p(z_t | h_t) and posterior q(z_t | h_t, x_t) are compared twice with
stop-gradients on opposite sides, so the dynamics loss trains the prior towards the posterior and
the (smaller, scale 0.1) representation loss regularizes the posterior towards the prior:

    L_dyn = max(1, KL[sg(q) || p])        L_rep = max(1, KL[q || sg(p)])

Clipping below at ``free_nats`` (1 nat) removes the gradient once a term is already small, so
the model spends its capacity on prediction instead of collapsing the posterior.
"""

from __future__ import annotations

import torch

from metawm.ops.distributions import categorical_kl


def kl_balance(post_logp: torch.Tensor, prior_logp: torch.Tensor,
               free_nats: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamics and representation losses (DreamerV3 eq. 5) for vectors of categoricals.

    ``post_logp``, ``prior_logp``: normalized log-probabilities (..., S, K) of S categorical latents
    with K classes (unimix already applied). The KL is summed over the S latents, then clipped
    below at ``free_nats``. Returns (dyn, rep), each of shape (...); weight them 1 and 0.1.
    """
    dyn = categorical_kl(post_logp.detach(), prior_logp).sum(-1)
    rep = categorical_kl(post_logp, prior_logp.detach()).sum(-1)
    if free_nats:
        dyn = torch.clamp(dyn, min=free_nats)
        rep = torch.clamp(rep, min=free_nats)
    return dyn, rep
