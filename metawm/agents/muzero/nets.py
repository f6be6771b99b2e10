"""MuZero's three functions as torch modules, for vector (MLP) and image (residual conv) inputs.

Schrittwieser et al. 2020, appendix F ("Network Architecture"):

* representation h: observation history -> latent state s^0;
* dynamics g: (s^{k-1}, a^k) -> (s^k, r^k);
* prediction f: s^k -> (p^k, v^k).

Value and reward heads output logits over the integer support of
:mod:`metawm.ops.value_transform` (categorical over h(x), appendix F). Every latent state is
min-max scaled to [0, 1] per sample ("we scale the hidden state to the same range as the action
input", appendix G). Image inputs are stacked uint8 frames, channels last.

Deviations, all deliberate:

* Normalization is LayerNorm (MLP) and GroupNorm(1, C) (conv) instead of BatchNorm, so the loss is
  a pure function of the parameters (no running statistics): meta-learners substitute parameters
  with ``torch.func.functional_call`` and differentiate through the loss.
* The Atari downsampling stack is the paper's (conv stride 2, 2 residual blocks, conv stride 2,
  3 blocks, average pool stride 2, 3 blocks, average pool stride 2), applied to the suites' 64x64
  frames, so the latent is 4x4 instead of the paper's 6x6 (from 96x96). History is a stack of
  the last ``frame_stack`` frames; the paper's 32 past-action bias planes are not used
  (EfficientZero does the same).
* The dynamics action input is one-hot for MLPs and a constant bias plane a / |A| for conv nets
  (the paper's Atari encoding).
* The last layer of every head is zero-initialised (as in EfficientZero), so a fresh network
  predicts a uniform policy and zero value and reward.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def scale_latent(s: torch.Tensor) -> torch.Tensor:
    """Min-max scale each sample of ``s`` (B, ...) to [0, 1] (MuZero appendix G)."""
    flat = s.flatten(1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-5)).view_as(s)


def mlp(sizes: Sequence[int], *, zero_last: bool = False, out_norm: bool = False) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU blocks, then a plain Linear (optionally zero-initialised)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.LayerNorm(sizes[i + 1]), nn.ReLU()]
    last = nn.Linear(sizes[-2], sizes[-1])
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    layers.append(last)
    if out_norm:
        layers.append(nn.LayerNorm(sizes[-1]))
    return nn.Sequential(*layers)


# -- vector observations -------------------------------------------------------------------------

class MLPRepresentation(nn.Module):
    def __init__(self, obs_dim: int, hidden: int, latent: int, layers: int = 2):
        super().__init__()
        self.net = mlp([obs_dim] + [hidden] * layers + [latent])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return scale_latent(self.net(obs.float().flatten(1)))


class MLPDynamics(nn.Module):
    """g(s, a) -> s' with a reward head on s' (or, with ``value_prefix``, an LSTM over s' whose
    output predicts the value prefix; EfficientZero sec. 4.2)."""

    def __init__(self, latent: int, num_actions: int, hidden: int, reward_bins: int, layers: int = 2,
                 value_prefix: bool = False, lstm_hidden: int = 64):
        super().__init__()
        self.num_actions = num_actions
        self.trunk = mlp([latent + num_actions] + [hidden] * layers + [latent])
        self.value_prefix = value_prefix
        if value_prefix:
            self.lstm = nn.LSTMCell(latent, lstm_hidden)
            self.reward_head = mlp([lstm_hidden, hidden, reward_bins], zero_last=True)
        else:
            self.reward_head = mlp([latent, hidden, reward_bins], zero_last=True)

    def forward(self, s: torch.Tensor, action: torch.Tensor, lstm_state=None):
        a = F.one_hot(action.long(), self.num_actions).to(s.dtype)
        nxt = scale_latent(self.trunk(torch.cat([s, a], -1)))
        if self.value_prefix:
            h, c = self.lstm(nxt, lstm_state)
            return nxt, self.reward_head(F.relu(h)), (h, c)
        return nxt, self.reward_head(nxt), None


class MLPPrediction(nn.Module):
    def __init__(self, latent: int, num_actions: int, hidden: int, value_bins: int):
        super().__init__()
        self.trunk = mlp([latent, hidden, hidden], out_norm=False)
        self.policy = nn.Linear(hidden, num_actions)
        self.value = nn.Linear(hidden, value_bins)
        for lin in (self.policy, self.value):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.trunk(s))
        return self.policy(x), self.value(x)


# -- image observations --------------------------------------------------------------------------

class ResBlock(nn.Module):
    """Pre-activation-free residual block of the paper (3x3 conv, norm, ReLU, 3x3 conv, norm, skip)."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.n1 = nn.GroupNorm(1, c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.n2 = nn.GroupNorm(1, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.n1(self.c1(x)))
        return F.relu(x + self.n2(self.c2(y)))


class Downsample(nn.Module):
    """MuZero appendix F (Atari): conv s2 (C/2) -> blocks[0] x res -> conv s2 (C) -> blocks[1] x
    res -> avgpool s2 -> blocks[2] x res -> avgpool s2: spatial size / 16."""

    def __init__(self, in_c: int, c: int, blocks: Sequence[int] = (2, 3, 3)):
        super().__init__()
        half = max(1, c // 2)
        self.conv1 = nn.Conv2d(in_c, half, 3, stride=2, padding=1, bias=False)
        self.n1 = nn.GroupNorm(1, half)
        self.res1 = nn.Sequential(*[ResBlock(half) for _ in range(blocks[0])])
        self.conv2 = nn.Conv2d(half, c, 3, stride=2, padding=1, bias=False)
        self.n2 = nn.GroupNorm(1, c)
        self.res2 = nn.Sequential(*[ResBlock(c) for _ in range(blocks[1])])
        self.res3 = nn.Sequential(*[ResBlock(c) for _ in range(blocks[2])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(F.relu(self.n1(self.conv1(x))))
        x = self.res2(F.relu(self.n2(self.conv2(x))))
        x = self.res3(F.avg_pool2d(x, 3, stride=2, padding=1))
        return F.avg_pool2d(x, 3, stride=2, padding=1)


class ConvRepresentation(nn.Module):
    def __init__(self, in_channels: int, channels: int, blocks: int, down_blocks: Sequence[int]):
        super().__init__()
        self.down = Downsample(in_channels, channels, down_blocks)
        self.res = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2).float() / 255.0        # (B, H, W, C) uint8 -> (B, C, H, W)
        return scale_latent(self.res(self.down(x)))


class ConvDynamics(nn.Module):
    def __init__(self, channels: int, num_actions: int, blocks: int, spatial: int, reward_bins: int,
                 reduced: int, head_hidden: int, value_prefix: bool = False, lstm_hidden: int = 64):
        super().__init__()
        self.num_actions = num_actions
        self.conv = nn.Conv2d(channels + 1, channels, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(1, channels)
        self.res = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.reduce = nn.Conv2d(channels, reduced, 1)
        flat = reduced * spatial * spatial
        self.value_prefix = value_prefix
        if value_prefix:
            self.lstm = nn.LSTMCell(flat, lstm_hidden)
            self.reward_head = mlp([lstm_hidden, head_hidden, reward_bins], zero_last=True)
        else:
            self.reward_head = mlp([flat, head_hidden, reward_bins], zero_last=True)

    def forward(self, s: torch.Tensor, action: torch.Tensor, lstm_state=None):
        plane = (action.to(s.dtype) / self.num_actions).view(-1, 1, 1, 1).expand(-1, 1, *s.shape[-2:])
        x = F.relu(self.norm(self.conv(torch.cat([s, plane], 1))) + s)
        nxt = scale_latent(self.res(x))
        feat = F.relu(self.reduce(nxt)).flatten(1)
        if self.value_prefix:
            h, c = self.lstm(feat, lstm_state)
            return nxt, self.reward_head(F.relu(h)), (h, c)
        return nxt, self.reward_head(feat), None


class ConvPrediction(nn.Module):
    def __init__(self, channels: int, num_actions: int, blocks: int, spatial: int, value_bins: int,
                 reduced: int, head_hidden: int):
        super().__init__()
        self.res = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.reduce_v = nn.Conv2d(channels, reduced, 1)
        self.reduce_p = nn.Conv2d(channels, reduced, 1)
        flat = reduced * spatial * spatial
        self.value = mlp([flat, head_hidden, value_bins], zero_last=True)
        self.policy = mlp([flat, head_hidden, num_actions], zero_last=True)

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.res(s)
        v = self.value(F.relu(self.reduce_v(x)).flatten(1))
        p = self.policy(F.relu(self.reduce_p(x)).flatten(1))
        return p, v


class Projection(nn.Module):
    """EfficientZero's SimSiam-style projector + predictor head for the temporal consistency loss
    (Ye et al. 2021, sec. 4.1, fig. 2); LayerNorm in place of BatchNorm (see module docstring)."""

    def __init__(self, in_dim: int, hidden: int, out: int, pred_hidden: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                     nn.Linear(hidden, out), nn.LayerNorm(out))
        self.predict = nn.Sequential(nn.Linear(out, pred_hidden), nn.LayerNorm(pred_hidden), nn.ReLU(),
                                     nn.Linear(pred_hidden, out))


# -- the whole network ----------------------------------------------------------------------------

class MuZeroNet(nn.Module):
    """Representation, dynamics, prediction (and the optional projection head) in one module.

    ``initial`` / ``recurrent`` are the two inference calls MCTS makes; ``forward`` is the
    K-step training unroll (so that ``torch.func.functional_call(net, params, ...)`` runs the
    whole unroll with substituted parameters).
    """

    def __init__(self, representation: nn.Module, dynamics: nn.Module, prediction: nn.Module,
                 projection: Projection | None = None):
        super().__init__()
        self.representation = representation
        self.dynamics = dynamics
        self.prediction = prediction
        self.projection = projection

    def initial(self, obs: torch.Tensor):
        s = self.representation(obs)
        p, v = self.prediction(s)
        return s, p, v

    def recurrent(self, s: torch.Tensor, action: torch.Tensor, lstm_state=None):
        nxt, r, lstm_state = self.dynamics(s, action, lstm_state)
        p, v = self.prediction(nxt)
        return nxt, r, p, v, lstm_state

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, target_obs: torch.Tensor | None = None,
                lstm_horizon: int = 5) -> dict[str, torch.Tensor]:
        """Unroll K = actions.shape[1] steps from ``obs`` (B, ...).

        The gradient of the latent state is halved at every dynamics step (MuZero pseudocode,
        ``scale_gradient(hidden_state, 0.5)``). With a value-prefix LSTM its state is reset every
        ``lstm_horizon`` steps (EfficientZero). ``target_obs`` (B, K, ...) adds the temporal
        consistency projections (EfficientZero sec. 4.1): ``proj_pred`` from the unrolled latents
        and ``proj_target`` from the representation of the real next observations (no gradient).
        Returns policy (B, K+1, A), value (B, K+1, V), reward (B, K, R) logits.
        """
        s, p, v = self.initial(obs)
        policies, values, rewards, latents = [p], [v], [], []
        lstm_state = None
        for k in range(actions.shape[1]):
            if k % lstm_horizon == 0:
                lstm_state = None
            s, r, p, v, lstm_state = self.recurrent(s, actions[:, k], lstm_state)
            latents.append(s)
            s = 0.5 * s + 0.5 * s.detach()
            policies.append(p)
            values.append(v)
            rewards.append(r)
        out = {"policy": torch.stack(policies, 1), "value": torch.stack(values, 1), "reward": torch.stack(rewards, 1)}
        if self.projection is not None and target_obs is not None:
            B, K = target_obs.shape[:2]
            pred = self.projection.predict(self.projection.project(torch.stack(latents, 1).flatten(2)))
            with torch.no_grad():
                tgt = self.representation(target_obs.reshape(B * K, *target_obs.shape[2:]))
                tgt = self.projection.project(tgt.flatten(1)).view(B, K, -1)
            out["proj_pred"], out["proj_target"] = pred, tgt
        return out


def build_net(env_spec, *, frame_stack: int, value_bins: int, reward_bins: int, mlp_hidden: int, latent: int,
              mlp_layers: int, channels: int, down_blocks: Sequence[int], res_blocks: int, reduced_channels: int,
              head_hidden: int, value_prefix: bool, lstm_hidden: int, consistency: bool, proj_hidden: int,
              proj_out: int) -> MuZeroNet:
    """MLP nets for vector observations, residual conv nets for images (see module docstring)."""
    A = env_spec.num_actions
    if env_spec.is_image:
        H, W, C = env_spec.obs_space.shape
        rep = ConvRepresentation(C * frame_stack, channels, res_blocks, down_blocks)
        with torch.no_grad():
            spatial = rep.down(torch.zeros(1, C * frame_stack, H, W)).shape[-1]
        dyn = ConvDynamics(channels, A, res_blocks, spatial, reward_bins, reduced_channels, head_hidden,
                           value_prefix, lstm_hidden)
        pred = ConvPrediction(channels, A, res_blocks, spatial, value_bins, reduced_channels, head_hidden)
        latent_dim = channels * spatial * spatial
    else:
        obs_dim = int(torch.tensor(env_spec.obs_space.shape).prod()) * frame_stack
        rep = MLPRepresentation(obs_dim, mlp_hidden, latent, mlp_layers)
        dyn = MLPDynamics(latent, A, mlp_hidden, reward_bins, mlp_layers, value_prefix, lstm_hidden)
        pred = MLPPrediction(latent, A, mlp_hidden, value_bins)
        latent_dim = latent
    proj = Projection(latent_dim, proj_hidden, proj_out, proj_hidden // 2 or 1) if consistency else None
    return MuZeroNet(rep, dyn, pred, proj)
