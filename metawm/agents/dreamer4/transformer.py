"""The efficient block-causal space/time transformer shared by the tokenizer and the dynamics.

Hafner, Yan, Lillicrap (2025), "Training Agents Inside of Scalable World Models", sec. 3.4:
a 2-D transformer over (time, space) tokens with pre-layer RMSNorm, RoPE, SwiGLU, QK-norm and
attention logit soft-capping; attention is *factorized*: most layers attend only within a time
step (space-only), and every ``time_every``-th layer (4 in the paper) attends only along time,
per spatial slot, causally ("all tokens within a time step can attend to each other and to the
past"). Grouped-query attention (GQA, Ainslie et al. 2023) shares each key/value head between
``heads / kv_heads`` query heads, which shrinks the KV cache of the time layers.

Shapes: the transformer takes ``x`` of shape (B, T, S, D): T time steps of S tokens (all
modalities of a step concatenated in a fixed layout) of width D.

* Space layers see (B*T, S, D) with a boolean (S, S) ``space_mask`` (True = may attend), which is
  how modalities are isolated (tokenizer: latents read everything, patches only patches; dynamics:
  agent tokens read everything and nothing reads them).
* Time layers see (B*S, T, D) with a causal mask that also stops at episode boundaries:
  ``seg`` (B, T) holds a segment id per step and a step attends only to earlier-or-equal steps of
  its own segment. A batch window that crosses an episode start is thus two independent sequences.
* Inference appends one step at a time: :class:`KVCache` keeps the (un-rotated) keys and values
  of the time layers for the last ``window`` steps; space layers need no cache.

RoPE: space layers rotate by the slot index within the step, time layers by the step index within
the attended window (cached keys are stored un-rotated and rotated at use with window-relative
positions, so positions never grow without bound during long acting).

Fused attention and soft-capping: attention goes through
``torch.nn.functional.scaled_dot_product_attention`` (SDPA, fused kernels) whenever soft-capping
is off. Soft-capping (Gemma 2: logits <- c * tanh(logits / c)) needs the logits, which SDPA never
exposes and for which it has no score_mod; ``flex_attention`` has a score_mod but (torch 2.13)
no backward on CPU. So with ``softcap > 0`` an explicit path computes
``softmax(c * tanh(q k^T / sqrt(d) / c) + mask) v``. The CPU presets turn capping off and use SDPA
(twice as fast here); the GPU presets follow the paper and turn it on (on CUDA, swapping the
explicit path for a compiled ``flex_attention`` with the same score_mod is the obvious upgrade).
QK-norm bounds the logits already, so capping is a second safety net, not a necessity.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): x / rms(x) * g."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_angles(positions: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of RoPE (Su et al. 2021) for integer ``positions`` (L,): each (L, dim // 2)."""
    inv = base ** (-torch.arange(0, dim // 2, device=positions.device, dtype=torch.float32) / (dim // 2))
    ang = positions.to(torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


_ROPE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def rope_table(length: int, dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rope_angles` of positions 0..length-1, memoized (constants, never trained)."""
    key = (length, dim, base, str(device))
    if key not in _ROPE_CACHE:
        if len(_ROPE_CACHE) > 256:
            _ROPE_CACHE.clear()
        _ROPE_CACHE[key] = rope_angles(torch.arange(length, device=device), dim, base)
    return _ROPE_CACHE[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of ``x`` (..., L, d) by the angles (L, d/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:2 * half]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    out = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return torch.cat([out, x[..., 2 * half:]], dim=-1) if x.shape[-1] % 2 else out


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           softcap: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention with optional logit soft-capping.

    q (N, H, Lq, d); k, v (N, Hkv, Lk, d) with H a multiple of Hkv (query head h reads key/value
    head h // (H / Hkv)); mask broadcastable to (N, H, Lq, Lk), bool, True = may attend.
    Without capping this is SDPA (fused); with capping the explicit path of the module docstring.
    """
    groups = q.shape[1] // k.shape[1]
    if not softcap:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=groups > 1)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    logits = softcap * torch.tanh(logits / softcap)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


class Attention(nn.Module):
    """Multi-head attention with GQA, QK-norm (Dehghani et al. 2023) and RoPE."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int | None = None, qk_norm: bool = True,
                 softcap: float = 0.0, rope_base: float = 10000.0):
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        self.heads, self.kv_heads = heads, kv_heads
        self.head_dim = head_dim or dim // heads
        self.softcap = float(softcap)
        self.rope_base = rope_base
        self.q = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(heads * self.head_dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (N, L, D); past = (k, v), each (N, P, Hkv, d), normalized and un-rotated; mask
        broadcastable to (N, H, L, P + L). Returns (out (N, L, D), (k, v) of the new L positions)."""
        n, length, _ = x.shape
        q = self.q_norm(self.q(x).view(n, length, self.heads, self.head_dim))
        k, v = self.kv(x).view(n, length, 2, self.kv_heads, self.head_dim).unbind(2)
        k = self.k_norm(k)
        new = (k, v)
        if past is not None and past[0].shape[1]:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        total = k.shape[1]
        cos, sin = rope_table(total, self.head_dim, self.rope_base, x.device)
        q = apply_rope(q.transpose(1, 2), cos[total - length:], sin[total - length:])
        k = apply_rope(k.transpose(1, 2), cos, sin)
        o = attend(q, k, v.transpose(1, 2), mask, self.softcap)
        return self.out(o.transpose(1, 2).reshape(n, length, -1)), new


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer 2020): W2 (silu(W1 x) * W3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    """Pre-RMSNorm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, kv_heads: int, mlp_ratio: float, qk_norm: bool, softcap: float,
                 kind: str):
        super().__init__()
        self.kind = kind
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, qk_norm=qk_norm, softcap=softcap)
        self.norm2 = RMSNorm(dim)
        hidden = int(mlp_ratio * dim * 2 / 3) // 8 * 8 or 8  # 2/3 keeps SwiGLU's FLOPs at mlp_ratio
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x, mask, past=None):
        h, new = self.attn(self.norm1(x), mask, past)
        x = x + h
        return x + self.mlp(self.norm2(x)), new


@dataclasses.dataclass
class KVCache:
    """Keys/values of the time layers for the last ``len`` steps of B sequences.

    ``kv[i]`` = (k, v) of the i-th time layer, each (B, S, P, Hkv, d); ``seg`` (B, P) the segment
    ids of the cached steps. ``window`` bounds P (oldest steps are dropped first)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    seg: torch.Tensor
    window: int

    def __len__(self) -> int:
        return self.seg.shape[1]

    def appended(self, new_kv: Sequence[tuple[torch.Tensor, torch.Tensor]], seg: torch.Tensor) -> "KVCache":
        """A cache with the new steps (k, v each (B, S, T, Hkv, d); seg (B, T)) appended and trimmed."""
        w = self.window
        kv = [(torch.cat([k0, k1], 2)[:, :, -w:], torch.cat([v0, v1], 2)[:, :, -w:])
              for (k0, v0), (k1, v1) in zip(self.kv, new_kv)]
        return KVCache(kv, torch.cat([self.seg, seg], 1)[:, -w:], w)

    def select(self, index: torch.Tensor) -> "KVCache":
        return KVCache([(k[index], v[index]) for k, v in self.kv], self.seg[index], self.window)


class Transformer(nn.Module):
    """A stack of space-only and time-only blocks; layer i is a time layer iff
    ``(i + 1) % time_every == 0`` (the paper: every 4th layer)."""

    def __init__(self, dim: int, depth: int, heads: int, kv_heads: int | None = None, time_every: int = 4,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, softcap: float = 0.0):
        super().__init__()
        kv_heads = kv_heads or heads
        self.time_every = int(time_every)
        kinds = ["time" if (i + 1) % self.time_every == 0 else "space" for i in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, mlp_ratio, qk_norm, softcap, k) for k in kinds)
        self.norm = RMSNorm(dim)
        self.time_layers = [i for i, k in enumerate(kinds) if k == "time"]
        self.kv_heads = kv_heads
        self.head_dim = dim // heads

    def empty_cache(self, batch: int, slots: int, window: int, device=None) -> KVCache:
        z = torch.zeros(batch, slots, 0, self.kv_heads, self.head_dim, device=device)
        return KVCache([(z, z) for _ in self.time_layers], torch.zeros(batch, 0, dtype=torch.long, device=device),
                       window)

    def forward(self, x: torch.Tensor, space_mask: torch.Tensor | None, seg: torch.Tensor,
                cache: KVCache | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """x (B, T, S, D); space_mask (S, S) bool or None; seg (B, T) segment ids; cache for
        inference. Returns (y (B, T, S, D), the new steps' keys/values per time layer, each
        (B, S, T, Hkv, d), for :meth:`KVCache.appended`)."""
        b, t, s, d = x.shape
        past_len = len(cache) if cache is not None else 0
        seg_all = torch.cat([cache.seg, seg], 1) if cache is not None else seg
        j = torch.arange(past_len + t, device=x.device)
        causal = j[None, :] <= (past_len + torch.arange(t, device=x.device))[:, None]  # (T, P+T)
        tmask = causal[None] & (seg_all[:, None, :] == seg[:, :, None])  # (B, T, P+T)
        tmask = tmask[:, None, None].expand(b, s, 1, t, past_len + t).reshape(b * s, 1, t, past_len + t)
        smask = space_mask[None, None] if space_mask is not None else None
        new_kv, ti = [], 0
        for block in self.blocks:
            if block.kind == "space":
                x = block(x.reshape(b * t, s, d), smask)[0].view(b, t, s, d)
            else:
                past = None
                if cache is not None:
                    k, v = cache.kv[ti]
                    past = (k.reshape(b * s, past_len, *k.shape[3:]), v.reshape(b * s, past_len, *v.shape[3:]))
                y, (k_new, v_new) = block(x.transpose(1, 2).reshape(b * s, t, d), tmask, past)
                x = y.view(b, s, t, d).transpose(1, 2)
                new_kv.append((k_new.view(b, s, t, *k_new.shape[2:]), v_new.view(b, s, t, *v_new.shape[2:])))
                ti += 1
        return self.norm(x), new_kv
