"""The interactive dynamics model and shortcut-forcing sampling (Hafner et al. 2025, sec. 3.2).

Per time step t the transformer sees one block of tokens, in this order::

    [action a_{t-1} | (tau_t, d_t) | S_z spatial tokens of z_t | S_r registers | agent token]

* Actions: one token = a learned embedding plus, where the action is known, the action's own
  embedding (discrete: lookup; continuous: linear projection of the value in [-1, 1]). Unlabeled
  video, the first step of an episode and the first step of a training window use the learned
  embedding alone (the paper's "no action" case). Block t carries the action that *led* to z_t,
  so the agent token of block t (which sees z_t) predicts a_t and imagination feeds a_t into
  block t + 1.
* Signal level and step size are discrete (tau on the grid of 1 / K_max, d a power of two), each
  looked up in its own embedding table; the two halves are concatenated into one token.
* The tokenizer's (latents x bottleneck) representation is packed ``pack`` latents per token into
  S_z = latents / pack spatial tokens and linearly projected (the paper: 512 x 16 -> 256 x 32).
* Agent tokens (sec. 3.3) read everything in their step; no other token reads them (space mask),
  and time layers attend per slot, so the world model's predictions never depend on them. They
  carry no task embedding here: metawm's tasks are unobserved (the agent infers them from
  history), so one learned token is the input.

The output at the spatial tokens is the x-prediction z_hat_1 (linear readout, unpacked).

Shortcut forcing: training draws per frame a step size d = 1 / U{1, 2, 4, .., K_max} and a signal
level tau ~ U{0, d, .., 1 - d} (eq. 4); the loss is :func:`losses.shortcut_forcing_loss`.
Inference generates each frame from noise in K = 4 steps of d = 1/4:
z <- z + (z_hat_1 - z) / (1 - tau) * d (the Euler step of eq. 2 with v = (z_hat_1 - z) / (1 - tau)),
and feeds past frames back slightly corrupted. The paper says "signal level tau_ctx = 0.1", and
in its convention tau = 1 is clean data; we read "slightly corrupt" as *noise* 0.1, i.e. signal
level 0.9, quantized to the K_max grid (58/64 at K_max = 64) because levels are embedded
discretely.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metawm.agents.dreamer4.heads import ActionCodec
from metawm.agents.dreamer4.presets import Preset
from metawm.agents.dreamer4.transformer import KVCache, Transformer


def sample_levels(shape: tuple[int, ...], k_max: int, generator: torch.Generator | None = None,
                  device=None, bootstrap_fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (tau, d): tau ~ U{0, d, .., 1 - d} on the grid of the step size d (eq. 4).

    ``bootstrap_fraction=None`` draws d = 1 / 2^e with e ~ U{0..log2 K_max} as eq. 4 writes it
    (d_min, the flow-loss case, then has probability 1 / (log2 K_max + 1) = 1/7 at K_max = 64).
    A number f draws d = d_min with probability 1 - f and a coarser power of two otherwise, the
    split of the shortcut-models paper (Frans et al. 2024, which Dreamer 4 builds on: 1/4 of the
    batch are bootstrap targets); f = 0 trains the flow loss only (see ``Preset.bootstrap_*``)."""
    e_max = int(round(math.log2(k_max)))
    if bootstrap_fraction is None:
        e = torch.randint(0, e_max + 1, shape, generator=generator, device=device)
    else:
        coarse = torch.randint(0, max(e_max, 1), shape, generator=generator, device=device)
        boot = torch.rand(shape, generator=generator, device=device) < bootstrap_fraction
        e = torch.where(boot & (e_max > 0), coarse, torch.full_like(coarse, e_max))
    steps = 2 ** e
    i = (torch.rand(shape, generator=generator, device=device) * steps).floor().clamp(max=steps - 1)
    return i / steps, 1.0 / steps


class Dynamics(nn.Module):
    def __init__(self, codec: ActionCodec, preset: Preset):
        super().__init__()
        p = preset
        self.codec = codec
        self.k_max = p.k_max
        self.latents, self.bottleneck, self.pack = p.latents, p.bottleneck, p.pack
        self.spatial = p.latents // p.pack
        self.registers = p.registers
        d = p.dyn_dim
        init = lambda *shape: nn.Parameter(torch.randn(*shape) * 0.02)  # noqa: E731
        self.z_in = nn.Linear(p.pack * p.bottleneck, d)
        self.z_pos = init(self.spatial, d)
        self.tau_emb = nn.Embedding(p.k_max + 1, d // 2)
        self.d_emb = nn.Embedding(int(round(math.log2(p.k_max))) + 1, d - d // 2)
        self.action_base = init(d)
        if codec.discrete:
            self.action_in = nn.Embedding(codec.n, d)
        else:
            self.action_in = nn.Linear(codec.dims, d)
        self.register_tokens = init(max(p.registers, 1), d)
        self.agent_token = init(d)
        self.transformer = Transformer(d, p.dyn_depth, p.dyn_heads, p.dyn_kv_heads, p.time_every, p.mlp_ratio,
                                       softcap=p.softcap)
        self.z_out = nn.Linear(d, p.pack * p.bottleneck)
        s = self.slots
        mask = torch.ones(s, s, dtype=torch.bool)
        mask[:, -1] = False   # nobody reads the agent token ...
        mask[-1, :] = True    # ... which reads everything (itself included)
        self.register_buffer("space_mask", mask, persistent=False)
        ctx = int(round((1.0 - p.ctx_noise) * p.k_max))
        self.ctx_index = min(max(ctx, 0), p.k_max)

    @property
    def slots(self) -> int:
        return 2 + self.spatial + self.registers + 1

    @property
    def z_slice(self) -> slice:
        return slice(2, 2 + self.spatial)

    def level_index(self, tau: torch.Tensor, d: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding indices of signal levels on the 1/K_max grid and of step sizes (log2 1/d)."""
        tau_i = (tau * self.k_max).round().long().clamp(0, self.k_max)
        d = torch.as_tensor(d, dtype=torch.float32, device=tau.device).expand_as(tau)
        d_i = torch.log2(1.0 / d).round().long().clamp(0, self.d_emb.num_embeddings - 1)
        return tau_i, d_i

    def forward(self, z: torch.Tensor, tau: torch.Tensor, d: torch.Tensor | float, action: torch.Tensor,
                has_action: torch.Tensor, seg: torch.Tensor, cache: KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """z (B, T, latents, bottleneck) corrupted latents at levels tau (B, T) with step sizes d;
        ``action`` (B, T) long or (B, T, A) float in [-1, 1]: the action that led to each step,
        used where ``has_action`` (B, T). Returns (z_hat_1 like z, agent outputs (B, T, D), new kv)."""
        b, t = z.shape[:2]
        zt = self.z_in(z.reshape(b, t, self.spatial, self.pack * self.bottleneck)) + self.z_pos
        tau_i, d_i = self.level_index(tau, d)
        level = torch.cat([self.tau_emb(tau_i), self.d_emb(d_i)], -1)[:, :, None]
        if self.codec.discrete:
            a_emb = self.action_in(torch.where(has_action, action, torch.zeros_like(action)).long())
        else:
            a_emb = self.action_in(action.float())
        a_tok = (self.action_base + a_emb * has_action[..., None].to(a_emb.dtype))[:, :, None]
        reg = self.register_tokens[: self.registers].expand(b, t, -1, -1)
        agent = self.agent_token.expand(b, t, 1, -1)
        x = torch.cat([a_tok, level, zt, reg, agent], 2)
        y, kv = self.transformer(x, self.space_mask, seg, cache)
        z_hat = self.z_out(y[:, :, self.z_slice]).reshape(b, t, self.latents, self.bottleneck)
        return z_hat, y[:, :, -1], kv

    # -- inference ------------------------------------------------------------------------------------
    @property
    def ctx_tau(self) -> float:
        return self.ctx_index / self.k_max

    def corrupt(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Past frames as the model sees them at inference: signal level ``ctx_tau`` (eq. 6)."""
        return (1 - self.ctx_tau) * noise + self.ctx_tau * z

    def generate(self, noise: torch.Tensor, action: torch.Tensor, has_action: torch.Tensor, seg: torch.Tensor,
                 cache: KVCache | None, steps: int) -> torch.Tensor:
        """Sample the next frame's latents (B, 1, latents, bottleneck) from ``noise`` in ``steps``
        shortcut steps of size d = 1/steps, given the cached history (eq. 2 in x-prediction form)."""
        z = noise
        b = noise.shape[0]
        d = 1.0 / steps
        for k in range(steps):
            tau = torch.full((b, 1), k * d, device=noise.device)
            z_hat, _, _ = self(z, tau, d, action, has_action, seg, cache)
            z = z + (z_hat - z) * (d / (1.0 - k * d))
        return z
