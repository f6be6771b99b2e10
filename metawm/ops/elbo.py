"""The pieces of VariBAD's ELBO (Zintgraf et al., ICLR 2020, eq. 4 / sec. 4), as tensor math.

For a trajectory tau_{:H} and every time step t (belief after t transitions, t = 0..H), VariBAD
maximises

    ELBO_t = E_{q(m | tau_{:t})} [ log p(tau_{:H} | m) ] - KL( q(m | tau_{:t}) || p_t(m) )

where the decoder reconstructs the *whole* trajectory's rewards (and optionally transitions) from
the belief at t, and the prior p_t is the previous posterior q(m | tau_{:t-1}) (p_0 = N(0, I)).
With Gaussian decoders of fixed unit variance, -log p is a squared error up to a constant.

Shapes: B trajectories, T + 1 beliefs (t = 0..T), J decoded transitions, Z latent dimensions.
Masks are 1 for real entries and 0 for padding (trajectories of different lengths).
"""

from __future__ import annotations

import torch


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL( N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)) ) of diagonal Gaussians, summed over
    the last dimension: 0.5 * sum( logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1 )."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def belief_kl_terms(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL of each belief to its prior, (B, T + 1, Z) -> (B, T + 1): t = 0 against N(0, I), every
    later t against the previous posterior q(m | tau_{:t-1}) (VariBAD's default ``kl_to_gauss_prior=False``).
    The previous posterior is *not* detached: both beliefs get gradients, as in the authors' code."""
    first = gaussian_kl(mu[:, :1], logvar[:, :1], torch.zeros_like(mu[:, :1]), torch.zeros_like(logvar[:, :1]))
    rest = gaussian_kl(mu[:, 1:], logvar[:, 1:], mu[:, :-1], logvar[:, :-1])
    return torch.cat([first, rest], 1)


def reconstruction_terms(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (unit-variance Gaussian, up to a constant: half squared error, summed
    over any trailing feature dims) of every decoded transition j from every belief sample e,
    summed over j with the padding masked out: pred (B, E, J, *F), target (B, J, *F), mask (B, J) -> (B, E)."""
    err = 0.5 * (pred - target[:, None]) ** 2
    if err.dim() > 3:
        err = err.flatten(3).sum(-1)
    return (err * mask[:, None]).sum(-1)


def bernoulli_reconstruction_terms(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of targets in [0, 1] under Bernoulli decoders (VariBAD's
    ``rew_pred_type=bernoulli`` for rewards with two values, e.g. the gridworld's goal / not goal):
    binary cross-entropy of every decoded transition j from every belief sample e, summed over j
    with the padding masked out: logits (B, E, J), target (B, J), mask (B, J) -> (B, E)."""
    nll = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target[:, None].expand_as(logits), reduction="none")
    return (nll * mask[:, None]).sum(-1)


def elbo_loss(rec: torch.Tensor, kl: torch.Tensor, belief_mask: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
    """The negative ELBO averaged over beliefs and trajectories: rec (B, E) reconstruction NLL of
    the whole trajectory from each of E beliefs, kl (B, E) their KL terms, belief_mask (B, E)
    which beliefs exist. Returns a scalar: mean over real (b, t) of rec + kl_weight * kl."""
    per = (rec + kl_weight * kl) * belief_mask
    return per.sum() / belief_mask.sum().clamp(min=1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """m = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (or the given ``noise``)."""
    eps = torch.randn_like(mu) if noise is None else noise
    return mu + (0.5 * logvar).exp() * eps
