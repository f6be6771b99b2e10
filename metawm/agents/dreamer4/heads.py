"""Agent heads on the agent-token outputs h_t (Hafner et al. 2025, sec. 3.3).

* ``bc``: the behaviour-cloning policy with multi-token prediction (MTP, Gloeckle et al. 2024) of
  length L = 8: one small MLP trunk and one output layer per offset n = 0..L predicting a_{t+n}
  from h_t (eq. 9). Its n = 0 output is the frozen behavioural prior of PMPO in phase 3.
* ``reward``: symexp two-hot reward head with MTP (eq. 9), r_{t+n} for n = 0..L, where r_t is the
  reward received on arriving at step t (the Dreamer step convention of :mod:`metawm.types`).
* ``cont``: a Bernoulli "not terminal" head with MTP. The paper's returns use c_t (eq. 10) without
  saying where it comes from in imagination; we learn it like DreamerV3's continue predictor so
  that imagined rollouts know when an episode ends (CartPole, point navigation).
* ``policy``: the policy improved by PMPO in imagination (eq. 11): same shape as the n = 0 BC
  head and initialized as a copy of it when imagination training starts.
* ``value``: symexp two-hot value head trained by TD(lambda) (eq. 10).

Actions: the paper's policies are categorical (mouse) or vectorized binary (keyboard). Discrete
action spaces get a categorical. Continuous Box actions get one categorical per dimension over
``action_bins`` evenly spaced values in [low, high] (our choice): log-likelihoods stay bounded
above by 0, which PMPO's maximum-likelihood term on D+ needs (an unbounded Gaussian density can
be pushed to +inf), behaviour cloning of dataset actions uses two-hot targets over the bins, and
the dynamics still receives the (binned) action as a continuous value.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metawm.agents.dreamer4.presets import Preset
from metawm.infra.errors import UserError
from metawm.ops.twohot import twohot


@dataclasses.dataclass
class ActionCodec:
    """How actions of an env spec are represented: env values <-> model inputs <-> policy outputs."""

    discrete: bool
    n: int = 0                       # discrete: number of actions
    dims: int = 0                    # continuous: action dimension
    bins: int = 0                    # continuous: values per dimension
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    @staticmethod
    def from_space(space: gym.Space, bins: int) -> "ActionCodec":
        if isinstance(space, gym.spaces.Discrete):
            if int(space.start) != 0:
                raise UserError(f"dreamer4 needs Discrete actions starting at 0, got start={space.start}.")
            return ActionCodec(True, n=int(space.n))
        if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            low, high = space.low.astype(np.float64), space.high.astype(np.float64)
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise UserError("dreamer4 needs bounded Box actions (finite low/high), got "
                                f"low={space.low}, high={space.high}.")
            return ActionCodec(False, dims=int(space.shape[0]), bins=int(bins), low=low, high=high)
        raise UserError(f"dreamer4 handles Discrete(n) or 1-D Box actions, not {space}. Wrap the environment "
                        "to flatten its action space.")

    @property
    def logits_shape(self) -> tuple[int, ...]:
        return (self.n,) if self.discrete else (self.dims, self.bins)

    def centers(self, device=None) -> torch.Tensor:
        """Continuous: the bin values in normalized units [-1, 1]."""
        return torch.linspace(-1.0, 1.0, self.bins, device=device)

    # env <-> normalized
    def normalize(self, action: np.ndarray) -> np.ndarray:
        """Env actions -> model inputs: int64 indices, or floats in [-1, 1]."""
        if self.discrete:
            return np.asarray(action, dtype=np.int64)
        a = np.asarray(action, dtype=np.float64)
        return np.clip(2 * (a - self.low) / (self.high - self.low) - 1, -1, 1).astype(np.float32)

    def index_to_input(self, index: torch.Tensor) -> torch.Tensor:
        """Policy samples (discrete: (...), continuous: (..., A) bin indices) -> dynamics inputs."""
        return index if self.discrete else self.centers(index.device)[index]

    def index_to_env(self, index: torch.Tensor) -> np.ndarray:
        if self.discrete:
            return index.cpu().numpy().astype(np.int64)
        x = self.centers()[index.cpu()].numpy().astype(np.float64)
        return (self.low + (x + 1) / 2 * (self.high - self.low)).astype(np.float32)

    # distributions
    def nll(self, logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """-ln p(action) for dataset actions (model-input form): categorical cross-entropy, or per
        dimension two-hot cross-entropy over the bins, summed over dimensions. Returns (...)."""
        if self.discrete:
            return F.cross_entropy(logits.flatten(0, -2), action.flatten().long(), reduction="none").view(action.shape)
        target = twohot(action.float().clamp(-1, 1), self.centers(logits.device))
        return -(target * F.log_softmax(logits, -1)).sum((-1, -2))

    def log_prob(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """ln pi(index) of sampled actions. Returns (...)."""
        lp = F.log_softmax(logits, -1)
        if self.discrete:
            return lp.gather(-1, index[..., None]).squeeze(-1)
        return lp.gather(-1, index[..., None]).squeeze(-1).sum(-1)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None, greedy: bool = False
               ) -> torch.Tensor:
        if greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float(), -1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])

    def kl(self, logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
        """KL[p || q], summed over action dimensions. Returns (...)."""
        lp, lq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        return kl if self.discrete else kl.sum(-1)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        lp = F.log_softmax(logits, -1)
        ent = -(lp.exp() * lp).sum(-1)
        return ent if self.discrete else ent.sum(-1)


class MLP(nn.Module):
    """Linear -> RMSNorm -> SiLU, ``layers`` times."""

    def __init__(self, din: int, hidden: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(din if i == 0 else hidden, hidden), nn.RMSNorm(hidden), nn.SiLU()]
        self.net = nn.Sequential(*mods)
        self.out_dim = hidden if layers else din

    def forward(self, x):
        return self.net(x)


class MTPHead(nn.Module):
    """One trunk, one output layer per offset n = 0..L (eq. 9). (..., D) -> (..., L+1, *out)."""

    def __init__(self, din: int, hidden: int, layers: int, length: int, out_shape: tuple[int, ...],
                 zero_init: bool = False):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.trunk = MLP(din, hidden, layers)
        size = int(np.prod(out_shape))
        self.outs = nn.ModuleList(nn.Linear(self.trunk.out_dim, size) for _ in range(length + 1))
        if zero_init:  # two-hot heads start at a prediction of 0 (DreamerV3)
            for lin in self.outs:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor, offsets: int | None = None) -> torch.Tensor:
        x = self.trunk(h)
        outs = self.outs if offsets is None else self.outs[:offsets]
        return torch.stack([o(x).view(*x.shape[:-1], *self.out_shape) for o in outs], -1 - len(self.out_shape))


class AgentHeads(nn.Module):
    def __init__(self, dim: int, codec: ActionCodec, preset: Preset):
        super().__init__()
        p = preset
        self.codec = codec
        act = codec.logits_shape
        self.bc = MTPHead(dim, p.head_hidden, p.head_layers, p.mtp, act)
        self.reward = MTPHead(dim, p.head_hidden, p.head_layers, p.mtp, (p.bins,), zero_init=True)
        self.cont = MTPHead(dim, p.head_hidden, p.head_layers, p.mtp, (1,))
        self.policy = MTPHead(dim, p.head_hidden, p.head_layers, 0, act)
        self.value = MTPHead(dim, p.head_hidden, p.head_layers, 0, (p.bins,), zero_init=True)
        self.register_buffer("bins", torch.linspace(-20.0, 20.0, p.bins))

    def init_policy_from_bc(self) -> None:
        """Phase 3 starts from the behaviour-cloning policy (its n = 0 output)."""
        self.policy.trunk.load_state_dict(self.bc.trunk.state_dict())
        self.policy.outs[0].load_state_dict(self.bc.outs[0].state_dict())

    def prior_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.bc(h, offsets=1)[..., 0, :] if self.codec.discrete else self.bc(h, offsets=1)[..., 0, :, :]

    def policy_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.policy(h)[..., 0, :] if self.codec.discrete else self.policy(h)[..., 0, :, :]
