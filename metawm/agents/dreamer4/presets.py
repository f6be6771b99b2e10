"""Size presets of Dreamer 4, from a CPU test model to the paper's 2B-parameter world model.

``tiny`` is what the tests and ``+exp=smoke`` use (seconds on a CPU; it samples with K = 2 and
imagines 3 steps ahead to keep the tests fast); ``small`` is the CPU preset
of the evidence scripts (minutes on 2 cores); ``base`` and ``large`` are GPU presets, and
``paper`` follows Hafner et al. (2025): a ~400M tokenizer and a ~1.6B dynamics transformer (sec. 4,
"We train models with 2B parameters—400M for the tokenizer and 1.6B for the dynamics model"),
512 x 16 tokenizer bottleneck packed into N_z = 256 spatial tokens of 32 channels (appendix A),
context 192 frames with batch length 256 (we train on one batch length, see ``dynamics.py``).
The paper gives no widths or depths; ours are the usual transformer shapes that reach those
counts (about 12 dim^2 parameters per layer, 10.5 dim^2 with GQA at 4 key/value heads of 16):
tokenizer 16 encoder + 16 decoder layers of width 1024 (~0.40B), dynamics 36 layers of width 2048
(~1.59B). ``tok_depth`` is the depth of each of the tokenizer's two halves.

Numbers shared by every preset follow the paper: K_max = 64 and K = 4 sampling steps (sec. 3.2),
temporal attention every 4th layer (sec. 3.4), MAE drop probability U(0, 0.9) (sec. 3.1), context
noise 0.1 (sec. 3.2), MTP length L = 8 (eq. 9), gamma = 0.997 (eq. 10), PMPO alpha = 0.5,
beta = 0.3 (eq. 11). lambda = 0.95, 255 two-hot bins over [-20, 20] in symlog space and the 30 %
of "separate image" sequences come from DreamerV3 / sec. 4 of the paper.

Deviation: step sizes. Eq. 4 draws d uniformly over {1, 1/2, .., 1/K_max}, so only 1 frame in 7
gets the flow loss at K_max = 64. At our CPU budgets that version never learned to use the context
(after 600 dynamics updates on point_nav its first predicted frame was as far from the truth as
the data's variance, 0.14 latent MSE, against 0.008 with the split below; see the report).
``bootstrap_fraction = 0.25`` draws d = d_min for 3/4 of the frames and a coarser step for 1/4,
the split of the shortcut-models paper (Frans et al. 2024) that Dreamer 4 builds on; the public
reimplementations use it too. ``bootstrap_fraction=-1`` restores eq. 4.

Deviation: value warm-up. Phase 3 starts with a fresh value head (zero output) while the imagined
returns are far from zero, so every advantage of the first updates has the same sign and PMPO,
which reads only that sign, pushes the policy away from (or toward) whatever it sampled. The first
``value_warmup`` imagination updates train only the value head (the policy stays the BC copy);
``value_warmup=0`` trains both from the start, as the paper does. On point_nav (small preset) with
100 warm-up updates at lr_value 3e-4 the value was still far off the imagined returns when PMPO
started (every advantage negative for the first ~180 updates); ``small`` uses 200 at 1e-3.

Discount: gamma = 0.997 (the paper's, for Minecraft's long episodes) is every preset's default.
With 12-step imagined rollouts the bootstrapped value then needs far more updates to converge
than a CPU run has; the CPU evidence runs pass ``agent.overrides.gamma=0.95`` (CartPole) to the
imagine phase (``benchmarks/dreamer4_imagination.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from metawm.infra.errors import UserError, choices_error


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    # tokenizer (sec. 3.1)
    tok_dim: int = 64
    tok_depth: int = 4
    tok_heads: int = 4
    tok_kv_heads: int = 4
    patch: int = 8                 # image patch size (pixels)
    vector_group: int = 8          # vector observations: features per token
    latents: int = 16              # N_b latent tokens per frame
    bottleneck: int = 8            # D_b channels of the tanh bottleneck
    mask_max: float = 0.9          # MAE: per-image drop probability p ~ U(0, mask_max)
    perceptual_weight: float = 0.2  # eq. 5 (only used when a perceptual loss is plugged in)
    # dynamics (sec. 3.2)
    dyn_dim: int = 96
    dyn_depth: int = 8
    dyn_heads: int = 4
    dyn_kv_heads: int = 2
    pack: int = 2                  # latent tokens per spatial token: N_z = latents / pack
    registers: int = 2             # S_r register tokens
    k_max: int = 64                # finest step 1 / K_max
    k_sample: int = 4              # K sampling steps at inference
    ctx_noise: float = 0.1         # context corruption (signal level 1 - ctx_noise, quantized to the grid)
    image_frac: float = 0.3        # sequences trained as separate images (sec. 4)
    bootstrap_fraction: float = 0.25  # frames with d > d_min (Frans et al.); -1 = eq. 4 literally
    time_every: int = 4
    softcap: float = 0.0           # attention logit soft-cap (0 = off -> fused SDPA)
    mlp_ratio: float = 4.0
    # sequences
    batch_size: int = 16
    batch_length: int = 16         # T of training windows
    context: int = 16              # C frames of context at inference (KV window)
    # agent heads (sec. 3.3)
    head_hidden: int = 128
    head_layers: int = 2
    mtp: int = 8                   # multi-token prediction length L (eq. 9): offsets 0..L
    bins: int = 255
    action_bins: int = 11          # continuous actions: categorical bins per dimension
    gamma: float = 0.997
    lam: float = 0.95
    pmpo_alpha: float = 0.5
    pmpo_beta: float = 0.3
    imag_horizon: int = 16
    imag_batch: int = 16
    imag_context: int = 8          # dataset frames that seed each imagined rollout
    value_warmup: int = 100        # imagination updates that train only the value head (our addition)
    # optimisation
    lr_tokenizer: float = 3e-4
    lr_dynamics: float = 3e-4
    lr_policy: float = 3e-5
    lr_value: float = 3e-4
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    rms_decay: float = 0.99        # running RMS of each loss term (sec. 3: loss normalization)
    # online schedule (as an inner-loop agent; the CLI phases set their own step counts)
    train_ratio: float = 32.0      # replayed frames per env step
    learn_start: int = 1000        # env steps recorded before the first update
    dynamics_start: int = 500      # tokenizer-only updates before dynamics and agent heads join
    imagination_start: int = 2000  # updates before imagination training (phase 3) joins
    capacity: int = 100_000        # dataset capacity in steps

    def replace(self, **overrides: Any) -> "Preset":
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny", tok_dim=32, tok_depth=4, tok_heads=2, tok_kv_heads=2, patch=8, vector_group=4, latents=4,
        bottleneck=4, dyn_dim=32, dyn_depth=4, dyn_heads=2, dyn_kv_heads=1, pack=2, registers=1, k_max=8,
        batch_size=4, batch_length=8, context=8, head_hidden=32, head_layers=1, mtp=2, bins=41,
        action_bins=5, k_sample=2, imag_horizon=3, imag_batch=4, imag_context=4, lr_tokenizer=1e-3, lr_dynamics=1e-3,
        lr_policy=1e-4, lr_value=1e-3, value_warmup=0, train_ratio=16, learn_start=64, dynamics_start=10,
        imagination_start=30, capacity=5000),
    "small": Preset(
        "small", tok_dim=64, tok_depth=2, tok_heads=4, tok_kv_heads=4, patch=4, vector_group=4, latents=8,
        bottleneck=8, dyn_dim=64, dyn_depth=8, dyn_heads=4, dyn_kv_heads=2, pack=2, registers=2,
        batch_size=8, batch_length=16, context=16, head_hidden=64, head_layers=2, mtp=8, bins=255,
        imag_horizon=12, imag_batch=16, imag_context=8, lr_tokenizer=1e-3, lr_dynamics=5e-4,
        lr_policy=3e-4, lr_value=1e-3, value_warmup=200, train_ratio=32, learn_start=1000, dynamics_start=300,
        imagination_start=1500, capacity=100_000),
    "base": Preset(
        "base", tok_dim=512, tok_depth=12, tok_heads=8, tok_kv_heads=8, patch=8, latents=128, bottleneck=16,
        dyn_dim=768, dyn_depth=16, dyn_heads=12, dyn_kv_heads=4, pack=2, registers=4, softcap=50.0,
        batch_size=32, batch_length=64, context=48, head_hidden=512, head_layers=2, imag_horizon=32,
        imag_batch=256, imag_context=16, lr_tokenizer=3e-4, lr_dynamics=3e-4),
    "large": Preset(
        "large", tok_dim=768, tok_depth=24, tok_heads=12, tok_kv_heads=12, patch=16, latents=256,
        bottleneck=16, dyn_dim=1536, dyn_depth=24, dyn_heads=16, dyn_kv_heads=4, pack=2, registers=8,
        softcap=50.0, batch_size=32, batch_length=128, context=96, head_hidden=1024, head_layers=2,
        imag_horizon=32, imag_batch=512, imag_context=32, lr_tokenizer=3e-4, lr_dynamics=3e-4),
    "paper": Preset(
        "paper", tok_dim=1024, tok_depth=16, tok_heads=16, tok_kv_heads=16, patch=16, latents=512,
        bottleneck=16, dyn_dim=2048, dyn_depth=36, dyn_heads=16, dyn_kv_heads=4, pack=2, registers=8,
        softcap=50.0, batch_size=16, batch_length=256, context=192, head_hidden=2048, head_layers=2,
        imag_horizon=32, imag_batch=1024, imag_context=64, lr_tokenizer=3e-4, lr_dynamics=3e-4),
}


def get_preset(name: str, overrides: Mapping[str, Any] | None = None) -> Preset:
    """The preset ``name`` with ``overrides`` applied; unknown names and keys are UserErrors."""
    if name not in PRESETS:
        raise choices_error("dreamer4 size preset", name, PRESETS)
    preset = PRESETS[name]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fields = {f.name for f in dataclasses.fields(Preset)} - {"name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"Unknown dreamer4 preset field(s) {', '.join(unknown)}. Valid fields: "
                        f"{', '.join(sorted(fields))}.")
    preset = preset.replace(**overrides)
    _check(preset)
    return preset


def _check(p: Preset) -> None:
    problems = []
    if p.k_max & (p.k_max - 1) or p.k_max < 1:
        problems.append(f"k_max={p.k_max} must be a power of two")
    if p.k_sample & (p.k_sample - 1) or not 1 <= p.k_sample <= p.k_max:
        problems.append(f"k_sample={p.k_sample} must be a power of two between 1 and k_max={p.k_max}")
    if p.latents % p.pack:
        problems.append(f"latents={p.latents} must be a multiple of pack={p.pack}")
    if p.tok_dim % p.tok_heads or p.dyn_dim % p.dyn_heads:
        problems.append("model widths must be multiples of their head counts")
    if p.tok_heads % p.tok_kv_heads or p.dyn_heads % p.dyn_kv_heads:
        problems.append("heads must be multiples of kv_heads (GQA)")
    if not 0 <= p.mask_max < 1:
        problems.append(f"mask_max={p.mask_max} must be in [0, 1)")
    if p.imag_context > p.context:
        problems.append(f"imag_context ({p.imag_context}) may not exceed context ({p.context})")
    if problems:
        raise UserError("Invalid dreamer4 preset: " + "; ".join(problems) + ".")
