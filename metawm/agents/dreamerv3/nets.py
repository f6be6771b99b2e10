"""DreamerV3's networks (Hafner et al., Nature 2025 / arXiv 2301.04104, appendix "Model details",
following the authors' code ``dreamerv3/rssm.py`` and ``embodied/jax/{nets,heads}.py``).

Every hidden layer is Linear -> RMSNorm -> SiLU. Weights are truncated normals scaled by
``1/sqrt(fan_in)`` (``trunc_normal_in``); output layers that must start neutral are scaled down
(policy 0.01) or zeroed (reward and critic, "zero-initialized output" in the paper). Tensors are
batch-major: (B, T, ...) sequences, (N, ...) single steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from metawm.ops.distributions import sample_onehot, unimix_probs
from metawm.ops.symlog import symlog


def trunc_normal_in_(weight: torch.Tensor, fan_in: int, outscale: float = 1.0) -> torch.Tensor:
    """The authors' ``Initializer('trunc_normal', 'in')``: N(0, 1) truncated to [-2, 2], times
    1.1368 / sqrt(fan_in) (1.1368 restores unit variance after truncation), times ``outscale``."""
    with torch.no_grad():
        if outscale == 0:
            return weight.zero_()
        nn.init.trunc_normal_(weight, 0.0, 1.0, -2.0, 2.0)
        return weight.mul_(1.1368 / math.sqrt(fan_in) * outscale)


class Linear(nn.Linear):
    def __init__(self, fan_in: int, units: int, outscale: float = 1.0):
        super().__init__(fan_in, units)
        trunc_normal_in_(self.weight, fan_in, outscale)
        nn.init.zeros_(self.bias)


class Norm(nn.Module):
    """RMSNorm over the last axis with a learned scale, eps 1e-4 (authors' ``Norm('rms')``)."""

    def __init__(self, dim: int, eps: float = 1e-4):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class MLP(nn.Module):
    """``layers`` x (Linear -> RMSNorm -> SiLU)."""

    def __init__(self, fan_in: int, units: int, layers: int):
        super().__init__()
        self.linears = nn.ModuleList([Linear(fan_in if i == 0 else units, units) for i in range(layers)])
        self.norms = nn.ModuleList([Norm(units) for _ in range(layers)])
        self.out_dim = units if layers else fan_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear, norm in zip(self.linears, self.norms):
            x = F.silu(norm(linear(x)))
        return x


class BlockLinear(nn.Module):
    """Block-diagonal linear layer: ``blocks`` independent (in/blocks -> out/blocks) maps.
    Fan-in for the initialization is the full input width, as in the authors' code."""

    def __init__(self, fan_in: int, units: int, blocks: int, outscale: float = 1.0):
        super().__init__()
        assert fan_in % blocks == 0 and units % blocks == 0, (fan_in, units, blocks)
        self.blocks = blocks
        self.weight = nn.Parameter(torch.empty(blocks, fan_in // blocks, units // blocks))
        self.bias = nn.Parameter(torch.zeros(units))
        trunc_normal_in_(self.weight, fan_in, outscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.blocks
        y = torch.einsum("...gi,gio->...go", x.reshape(*x.shape[:-1], g, -1), self.weight)
        return y.reshape(*x.shape[:-1], -1) + self.bias


class ChannelNorm(Norm):
    """RMSNorm over the channel axis of NCHW feature maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# -- the recurrent state-space model ------------------------------------------------------------
class State(NamedTuple):
    """An RSSM state: ``deter`` (..., D) is the GRU state h_t, ``stoch`` (..., S, K) the one-hot
    categorical latent z_t; ``logits`` (..., S, K) those z_t was drawn from (posterior or prior)."""

    deter: torch.Tensor
    stoch: torch.Tensor
    logits: torch.Tensor


class RSSM(nn.Module):
    """Recurrent state-space model with a block-diagonal GRU (DreamerV3 eq. 1 and appendix;
    authors' ``RSSM._core``): sequence model h_t = f(h_{t-1}, z_{t-1}, a_{t-1}), encoder
    (posterior) z_t ~ q(z_t | h_t, x_t), dynamics predictor (prior) z_t ~ p(z_t | h_t).

    The GRU has ``blocks`` (8) diagonal blocks, which makes a large deterministic state cheap;
    every block sees the whole (h, z, a) input embedding. Latents are ``stoch`` (32) categoricals of
    ``classes`` classes with 1% unimix, sampled with straight-through gradients.
    """

    def __init__(self, embed_dim: int, act_dim: int, deter: int, hidden: int, stoch: int, classes: int,
                 blocks: int = 8, unimix: float = 0.01, imglayers: int = 2, obslayers: int = 1):
        super().__init__()
        if deter % blocks:
            raise ValueError(f"deter ({deter}) must be a multiple of blocks ({blocks})")
        self.deter, self.hidden, self.stoch, self.classes = deter, hidden, stoch, classes
        self.blocks, self.unimix, self.act_dim = blocks, unimix, act_dim
        dg = deter // blocks
        self.dynin0, self.dynnorm0 = Linear(deter, hidden), Norm(hidden)
        self.dynin1, self.dynnorm1 = Linear(stoch * classes, hidden), Norm(hidden)
        self.dynin2, self.dynnorm2 = Linear(act_dim, hidden), Norm(hidden)
        # per block: [h_block (dg), embedding of (h, z, a) (3 * hidden)] -> dg
        self.dynhid = BlockLinear(blocks * (dg + 3 * hidden), deter, blocks)
        self.dynhidnorm = Norm(deter)
        self.dyngru = BlockLinear(deter, 3 * deter, blocks)
        self.prior = MLP(deter, hidden, imglayers)
        self.priorlogit = Linear(hidden, stoch * classes)
        assert obslayers == 1, "the posterior has one hidden layer (obslayers=1), as in the paper"
        self.obs0, self.obsnorm0 = Linear(deter + embed_dim, hidden), Norm(hidden)
        self.obslogit = Linear(hidden, stoch * classes)

    # -- pieces --------------------------------------------------------------------------------
    def initial(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(n, self.deter, device=device),
                torch.zeros(n, self.stoch, self.classes, device=device))

    def action_embed(self, action: torch.Tensor) -> torch.Tensor:
        """SiLU(RMSNorm(Linear(a))) of actions scaled into [-1, 1] (authors: ``a / max(1, |a|)``);
        depends only on the action, so a whole sequence is embedded at once. (..., A) -> (..., H)."""
        action = action / torch.clamp(action.detach().abs(), min=1.0)
        return F.silu(self.dynnorm2(self.dynin2(action)))

    def core_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first block layer's weight split into its block-diagonal part on h (g, dg, dg) and its
        dense part on the input embedding shared by all blocks (3H, D): one matmul for the shared
        part instead of repeating the embedding per block. Computed once per sequence."""
        dg = self.deter // self.blocks
        w = self.dynhid.weight  # (g, dg + 3H, dg): per block [h_block, shared input embedding]
        return w[:, :dg], w[:, dg:].permute(1, 0, 2).reshape(3 * self.hidden, self.deter)

    def core(self, deter: torch.Tensor, stoch: torch.Tensor, act_embed: torch.Tensor,
             weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One step of the block GRU: h_t from h_{t-1} (N, D), z_{t-1} (N, S, K) and the action
        embedding (N, H). Reset gate, candidate tanh(r * c), update gate sigmoid(u - 1) (authors'
        ``RSSM._core``); ``weights`` from :meth:`core_weights` (computed here when None)."""
        n, g = deter.shape[0], self.blocks
        w_h, w_x = weights if weights is not None else self.core_weights()
        x0 = F.silu(self.dynnorm0(self.dynin0(deter)))
        x1 = F.silu(self.dynnorm1(self.dynin1(stoch.reshape(n, -1))))
        x = torch.addmm(self.dynhid.bias, torch.cat([x0, x1, act_embed], -1), w_x)
        x = x + torch.einsum("ngi,gio->ngo", deter.reshape(n, g, -1), w_h).reshape(n, -1)
        x = F.silu(self.dynhidnorm(x))
        gates = self.dyngru(x).reshape(n, g, 3, -1)
        reset = torch.sigmoid(gates[:, :, 0].reshape(n, -1))
        cand = torch.tanh(reset * gates[:, :, 1].reshape(n, -1))
        update = torch.sigmoid(gates[:, :, 2].reshape(n, -1) - 1.0)
        return deter + update * (cand - deter)

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        """Dynamics predictor logits (..., S, K) from h (..., D)."""
        return self.priorlogit(self.prior(deter)).unflatten(-1, (self.stoch, self.classes))

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        return sample_onehot(unimix_probs(logits, self.unimix))

    # -- sequences -----------------------------------------------------------------------------
    def observe(self, embed: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor,
                start: tuple[torch.Tensor, torch.Tensor] | None = None) -> State:
        """Posterior states along sequences: ``embed`` (B, T, E), ``prev_action`` (B, T, A) (a_{t-1},
        zero where is_first), ``is_first`` (B, T) bool. The state is reset to zeros where is_first
        (and before t = 0 unless ``start`` gives (deter, stoch)). Returns State of (B, T, ...).

        Everything that depends only on the inputs (action embedding, the encoder's share of the
        posterior layer) is computed for all T at once; the scan does only what must be sequential.
        """
        b, t_len = is_first.shape
        deter, stoch = start if start is not None else self.initial(b, embed.device)
        act_embed = self.action_embed(prev_action)
        obs_in = F.linear(embed, self.obs0.weight[:, self.deter:], self.obs0.bias)
        w_obs = self.obs0.weight[:, :self.deter].T
        keep = (~is_first).to(embed.dtype)
        resets = is_first.any(0).tolist()  # mask only where some sequence starts an episode
        uniform = torch.rand(b, t_len, self.stoch, 1, device=embed.device)
        weights = self.core_weights()
        deters, stochs, logits = [], [], []
        for t in range(t_len):
            if resets[t]:
                k = keep[:, t, None]
                deter, stoch = deter * k, stoch * k[..., None]
            deter = self.core(deter, stoch, act_embed[:, t], weights)
            x = F.silu(self.obsnorm0(torch.addmm(obs_in[:, t], deter, w_obs)))
            logit = self.obslogit(x).unflatten(-1, (self.stoch, self.classes))
            stoch = sample_onehot(unimix_probs(logit, self.unimix), uniform=uniform[:, t])
            deters.append(deter)
            stochs.append(stoch)
            logits.append(logit)
        return State(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(logits, 1))

    def obs_step(self, deter: torch.Tensor, stoch: torch.Tensor, prev_action: torch.Tensor,
                 embed: torch.Tensor) -> State:
        """One posterior step for acting: (N, D), (N, S, K), (N, A), (N, E) -> State of (N, ...).
        The caller zeroes the state and action where an episode starts."""
        deter = self.core(deter, stoch, self.action_embed(prev_action))
        x = F.silu(self.obsnorm0(self.obs0(torch.cat([deter, embed], -1))))
        logit = self.obslogit(x).unflatten(-1, (self.stoch, self.classes))
        return State(deter, self.sample(logit), logit)

    def img_step(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor,
                 weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> State:
        """One prior step in imagination: z_t ~ p(z_t | h_t) with h_t = f(h_{t-1}, z_{t-1}, a_{t-1})."""
        deter = self.core(deter, stoch, self.action_embed(action), weights)
        logit = self.prior_logits(deter)
        return State(deter, self.sample(logit), logit)


def features(deter: torch.Tensor, stoch: torch.Tensor) -> torch.Tensor:
    """The model state s_t = (h_t, z_t) as one vector (..., D + S*K) for heads and actor-critic."""
    return torch.cat([deter, stoch.flatten(-2)], -1)


# -- observations -------------------------------------------------------------------------------
def conv_depths(depth: int, mults: tuple[int, ...] = (2, 3, 4, 4)) -> tuple[int, ...]:
    return tuple(depth * m for m in mults)


class Encoder(nn.Module):
    """Vector observations: symlog, then a 3-layer MLP. Images (uint8, H x W x C): x / 255 - 0.5,
    then stride-2 convolutions (kernel 4) with RMSNorm and SiLU down to a 4x4 (64x64 input) or
    6x6 (96x96) map, flattened. (B, ...obs) -> (B, E)."""

    def __init__(self, obs_shape: tuple[int, ...], units: int, layers: int, depth: int):
        super().__init__()
        self.image = len(obs_shape) == 3
        if self.image:
            h, w, c = obs_shape
            depths = conv_depths(depth)
            self.convs = nn.ModuleList()
            self.norms = nn.ModuleList()
            for i, d in enumerate(depths):
                conv = nn.Conv2d(c if i == 0 else depths[i - 1], d, 4, 2, 1)
                trunc_normal_in_(conv.weight, conv.in_channels * 16)
                nn.init.zeros_(conv.bias)
                self.convs.append(conv)
                self.norms.append(ChannelNorm(d))
            scale = 2 ** len(depths)
            self.out_dim = (h // scale) * (w // scale) * depths[-1]
        else:
            self.mlp = MLP(int(obs_shape[0]), units, layers)
            self.out_dim = self.mlp.out_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.image:
            return self.mlp(symlog(obs))
        x = obs.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(conv(x)))
        return x.flatten(1)


class Decoder(nn.Module):
    """Reconstructs observations from s_t = (z_t, h_t). Vectors: 3-layer MLP predicting symlog(x),
    trained with squared error summed over dimensions. Images: the authors' ``bspace`` input
    (a block-linear map of h, 8 blocks, plus an MLP of z, to a 4x4 map), then stride-2 transposed
    convolutions (kernel 4) back to H x W, sigmoid, squared error to x / 255 summed over pixels."""

    def __init__(self, obs_shape: tuple[int, ...], deter: int, stoch_dim: int, units: int, layers: int,
                 depth: int, bspace: int = 8):
        super().__init__()
        self.image = len(obs_shape) == 3
        self.obs_shape = tuple(obs_shape)
        if not self.image:
            self.mlp = MLP(deter + stoch_dim, units, layers)
            self.out = Linear(units, int(obs_shape[0]))
            return
        h, w, c = obs_shape
        depths = conv_depths(depth)
        scale = 2 ** len(depths)
        self.minres = (h // scale, w // scale)
        self.bspace = bspace
        cells = self.minres[0] * self.minres[1] * depths[-1]
        self.sp0 = BlockLinear(deter, cells, bspace)
        self.sp1, self.sp1norm = Linear(stoch_dim, 2 * units), Norm(2 * units)
        self.sp2 = Linear(2 * units, cells)
        self.spnorm = ChannelNorm(depths[-1])
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        chans = [depths[i] for i in reversed(range(len(depths) - 1))]  # e.g. 256 -> 192 -> 128 ... -> image
        prev = depths[-1]
        for d in chans:
            self.convs.append(self._tconv(prev, d))
            self.norms.append(ChannelNorm(d))
            prev = d
        self.imgout = self._tconv(prev, c)

    @staticmethod
    def _tconv(cin: int, cout: int) -> nn.ConvTranspose2d:
        conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        trunc_normal_in_(conv.weight, cin * 16)  # fan-in as the authors count it: kernel x input channels
        nn.init.zeros_(conv.bias)
        return conv

    def forward(self, deter: torch.Tensor, stoch: torch.Tensor) -> torch.Tensor:
        """(N, D), (N, S, K) -> prediction (N, ...obs): symlog(x) for vectors, [0, 1] pixels (N, H, W, C)."""
        stoch = stoch.flatten(-2)
        if not self.image:
            return self.out(self.mlp(torch.cat([stoch, deter], -1)))
        n, (h, w), g = deter.shape[0], self.minres, self.bspace
        x0 = self.sp0(deter).reshape(n, g, h, w, -1).permute(0, 1, 4, 2, 3).reshape(n, -1, h, w)
        x1 = self.sp2(F.silu(self.sp1norm(self.sp1(stoch)))).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        x = F.silu(self.spnorm(x0 + x1))
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(conv(x)))
        return torch.sigmoid(self.imgout(x)).permute(0, 2, 3, 1)


class Head(nn.Module):
    """MLP then a linear output layer (``outscale`` 0 gives the zero-initialized output)."""

    def __init__(self, fan_in: int, units: int, layers: int, out: int, outscale: float = 1.0):
        super().__init__()
        self.mlp = MLP(fan_in, units, layers)
        self.out = Linear(self.mlp.out_dim, out, outscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x))


# -- containers: the parameter groups a meta-learner sees ----------------------------------------
class WorldModel(nn.Module):
    """Encoder, RSSM, decoder, reward head (255 symexp two-hot bins, zero-initialized output) and
    continue head. Heads see s_t = (h_t, z_t); reward and continue heads have one hidden layer and
    the encoder/decoder MLPs three, as in the authors' configuration."""

    def __init__(self, obs_shape: tuple[int, ...], act_dim: int, *, units: int, deter: int, stoch: int,
                 classes: int, depth: int, blocks: int, unimix: float, bins: int, enc_layers: int = 3,
                 dec_layers: int = 3, head_layers: int = 1):
        super().__init__()
        self.encoder = Encoder(obs_shape, units, enc_layers, depth)
        self.rssm = RSSM(self.encoder.out_dim, act_dim, deter, units, stoch, classes, blocks, unimix)
        feat = deter + stoch * classes
        self.decoder = Decoder(obs_shape, deter, stoch * classes, units, dec_layers, depth)
        self.reward = Head(feat, units, head_layers, bins, outscale=0.0)
        self.cont = Head(feat, units, head_layers, 1, outscale=1.0)


class ActorCritic(nn.Module):
    """Actor (3 layers, output scaled by 0.01 at init: logits for Discrete(n), or mean and stddev
    inputs of the bounded normal for Box(A)) and critic (3 layers, 255-bin two-hot, zero output)."""

    def __init__(self, feat_dim: int, act_dim: int, discrete: bool, *, units: int, bins: int, layers: int = 3):
        super().__init__()
        self.actor = Head(feat_dim, units, layers, act_dim if discrete else 2 * act_dim, outscale=0.01)
        self.critic = Head(feat_dim, units, layers, bins, outscale=0.0)


class Nets(nn.Module):
    """All trainable parameters, named ``world_model.*`` and ``actor_critic.*``.

    ``forward(fn, *args)`` calls ``fn(self, *args)``: a trampoline, so that
    ``torch.func.functional_call(nets, params, (fn, batch))`` runs any function of the networks
    (the agent's loss) with ``params`` substituted, without the loss having to live in a module."""

    def __init__(self, world_model: WorldModel, actor_critic: ActorCritic):
        super().__init__()
        self.world_model = world_model
        self.actor_critic = actor_critic

    def forward(self, fn, *args, **kwargs):
        return fn(self, *args, **kwargs)
