"""The causal tokenizer (Hafner et al. 2025, sec. 3.1 and Fig. 2).

Each time step holds the patch tokens of the current observation plus ``latents`` learned latent
tokens. The encoder (the efficient transformer of ``transformer.py``, block-causal in time) lets
the latent tokens read every patch while patches read only patches; the latents are read out by a
linear projection to ``bottleneck`` channels and a tanh. The decoder projects the bottleneck back
up, adds learned readout tokens, one per patch, that read the latents (the latents read only
themselves) and predicts the patches. Both halves are causal in time, so frames encode and decode
one by one with a KV cache.

Training is masked autoencoding (eq. 5 without LPIPS by default): every image draws its own drop
probability p ~ U(0, 0.9) and each of its patches is replaced by a learned mask embedding with
probability p, so that the p = 0 case of inference is seen too.

Observations: uint8 images (H, W, C) are scaled to [0, 1] and cut into ``patch`` x ``patch``
patches (zero-padded at the bottom/right when the size is not a multiple). Vector observations
are squashed with symlog (DreamerV3 eq. 1; their scale is unknown in advance) and cut into groups
of ``vector_group`` features, each one "patch" token (zero-padded). This is our choice for
vectors, which the paper does not treat: it keeps the one architecture for both kinds and gives
the latent tokens several tokens to attend to when the vector is long.

Perceptual loss: the paper adds 0.2 x LPIPS, whose pretrained VGG/AlexNet weights need a download.
``perceptual`` is a pluggable callable ``(pred, target) -> loss`` on images in [0, 1] of shape
(N, C, H, W); it is None (off) by default, and the tokenizer then trains on MSE alone.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from metawm.agents.dreamer4.losses import symexp, symlog
from metawm.agents.dreamer4.presets import Preset
from metawm.agents.dreamer4.transformer import KVCache, Transformer

Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Tokenizer(nn.Module):
    def __init__(self, obs_shape: tuple[int, ...], preset: Preset, perceptual: Perceptual | None = None):
        super().__init__()
        p = preset
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.is_image = len(self.obs_shape) == 3
        if self.is_image:
            h, w, c = self.obs_shape
            self.patch = p.patch
            self.grid = (math.ceil(h / p.patch), math.ceil(w / p.patch))
            self.num_patches = self.grid[0] * self.grid[1]
            self.patch_dim = p.patch * p.patch * c
        else:
            self.group = p.vector_group
            self.num_patches = math.ceil(self.obs_shape[0] / self.group)
            self.patch_dim = self.group
        self.latents, self.bottleneck = p.latents, p.bottleneck
        self.mask_max = p.mask_max
        self.perceptual = perceptual
        self.perceptual_weight = p.perceptual_weight
        d, n, m = p.tok_dim, self.num_patches, p.latents
        init = lambda *shape: nn.Parameter(torch.randn(*shape) * 0.02)  # noqa: E731
        self.patch_in = nn.Linear(self.patch_dim, d)
        self.patch_pos = init(n, d)
        self.mask_token = init(d)
        self.latent_tokens = init(m, d)
        self.encoder = Transformer(d, p.tok_depth, p.tok_heads, p.tok_kv_heads, p.time_every, p.mlp_ratio,
                                   softcap=p.softcap)
        self.to_bottleneck = nn.Linear(d, p.bottleneck)
        self.from_bottleneck = nn.Linear(p.bottleneck, d)
        self.latent_pos = init(m, d)
        self.readout_tokens = init(n, d)
        self.decoder = Transformer(d, p.tok_depth, p.tok_heads, p.tok_kv_heads, p.time_every, p.mlp_ratio,
                                   softcap=p.softcap)
        self.patch_out = nn.Linear(d, self.patch_dim)
        # Encoder layout [patches | latents]: latents read all, patches read patches.
        enc = torch.zeros(n + m, n + m, dtype=torch.bool)
        enc[:n, :n] = True
        enc[n:, :] = True
        # Decoder layout [latents | readouts]: latents read latents, readouts read all.
        dec = torch.zeros(m + n, m + n, dtype=torch.bool)
        dec[:m, :m] = True
        dec[m:, :] = True
        self.register_buffer("enc_mask", enc, persistent=False)
        self.register_buffer("dec_mask", dec, persistent=False)

    # -- observations <-> patches ---------------------------------------------------------------
    def patchify(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, T, *obs_shape) uint8 images or float vectors -> (B, T, N, patch_dim) targets."""
        b, t = obs.shape[:2]
        if not self.is_image:
            x = symlog(obs.float())
            pad = self.num_patches * self.group - x.shape[-1]
            return nn.functional.pad(x, (0, pad)).view(b, t, self.num_patches, self.group)
        x = obs.float() / 255.0
        h, w, c = self.obs_shape
        gh, gw = self.grid
        ps = self.patch
        x = nn.functional.pad(x, (0, 0, 0, gw * ps - w, 0, gh * ps - h))
        x = x.view(b, t, gh, ps, gw, ps, c).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, t, gh * gw, ps * ps * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, T, N, patch_dim) -> observations as floats: images (B, T, H, W, C) in [0, 1]
        (clamped), vectors (B, T, D) in the original scale (symexp)."""
        b, t = patches.shape[:2]
        if not self.is_image:
            return symexp(patches.reshape(b, t, -1)[..., : self.obs_shape[0]])
        h, w, c = self.obs_shape
        gh, gw = self.grid
        ps = self.patch
        x = patches.view(b, t, gh, gw, ps, ps, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t, gh * ps, gw * ps, c)
        return x[:, :, :h, :w].clamp(0, 1)

    # -- encoder / decoder --------------------------------------------------------------------------
    def encode_patches(self, patches: torch.Tensor, seg: torch.Tensor, drop: torch.Tensor | None = None,
                       cache: KVCache | None = None) -> tuple[torch.Tensor, list]:
        """patches (B, T, N, patch_dim); drop (B, T, N) bool: patches replaced by the mask token.
        Returns (z (B, T, latents, bottleneck) in (-1, 1), new time-layer keys/values)."""
        b, t = patches.shape[:2]
        x = self.patch_in(patches)
        if drop is not None:
            x = torch.where(drop[..., None], self.mask_token.expand_as(x), x)
        x = x + self.patch_pos
        lat = self.latent_tokens.expand(b, t, -1, -1)
        y, kv = self.encoder(torch.cat([x, lat], 2), self.enc_mask, seg, cache)
        return torch.tanh(self.to_bottleneck(y[:, :, self.num_patches:])), kv

    def encode(self, obs: torch.Tensor, seg: torch.Tensor, cache: KVCache | None = None
               ) -> tuple[torch.Tensor, list]:
        """Inference encoding (no masking) of observations (B, T, *obs_shape)."""
        return self.encode_patches(self.patchify(obs), seg, None, cache)

    def decode(self, z: torch.Tensor, seg: torch.Tensor, cache: KVCache | None = None
               ) -> tuple[torch.Tensor, list]:
        """z (B, T, latents, bottleneck) -> (predicted patches (B, T, N, patch_dim), new kv)."""
        b, t = z.shape[:2]
        lat = self.from_bottleneck(z) + self.latent_pos
        ro = self.readout_tokens.expand(b, t, -1, -1)
        y, kv = self.decoder(torch.cat([lat, ro], 2), self.dec_mask, seg, cache)
        return self.patch_out(y[:, :, self.latents:]), kv

    def drop_mask(self, u_prob: torch.Tensor, u_patch: torch.Tensor) -> torch.Tensor:
        """MAE masks from uniform draws: p = mask_max * u_prob (B, T) per image, a patch is
        dropped where u_patch (B, T, N) < p (sec. 3.1: p ~ U(0, 0.9))."""
        return u_patch < (self.mask_max * u_prob)[..., None]

    def loss(self, obs: torch.Tensor, seg: torch.Tensor, u_prob: torch.Tensor, u_patch: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked-autoencoding loss (Hafner et al. 2025, eq. 5): MSE + 0.2 * perceptual, where the
        perceptual term (LPIPS in the paper) is only added when one is plugged in.

        Returns (loss terms summed as given, their values by name, incl. the latents ``z``)."""
        target = self.patchify(obs)
        z, _ = self.encode_patches(target, seg, self.drop_mask(u_prob, u_patch))
        pred, _ = self.decode(z, seg)
        terms = {"mse": (pred - target).pow(2).mean()}
        if self.perceptual is not None and self.is_image:
            img = lambda p: self.unpatchify(p).flatten(0, 1).permute(0, 3, 1, 2)  # noqa: E731
            terms["perceptual"] = self.perceptual_weight * self.perceptual(img(pred), img(target))
        return terms, {"z": z}
