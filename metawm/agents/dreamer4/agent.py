"""Dreamer 4 (Hafner, Yan, Lillicrap 2025, "Training Agents Inside of Scalable World Models",
arXiv 2509.24527) as a metawm inner-loop agent. The story, top to bottom:

Phase 1, world-model pretraining (Algorithm 1)
    The causal tokenizer (``tokenizer.py``) learns to compress each observation into a few
    tanh-bounded latent tokens by masked autoencoding (eq. 5). The dynamics transformer
    (``dynamics.py``) learns, on the frozen tokenizer's latents, to denoise the next frame given
    the history and the actions, by shortcut forcing (eqs. 6-8): x-prediction, a flow loss at the
    finest step and a bootstrap loss distilling two half steps at coarser ones, ramp-weighted.
    Sequences without actions train too, through the learned "no action" embedding.
Phase 2, agent finetuning
    Agent tokens join the transformer (they read everything, nothing reads them). From their
    outputs h_t, MLP heads predict the dataset's next L = 8 actions (behaviour cloning), rewards
    and episode continuation (multi-token prediction, eq. 9), while the video loss keeps applying.
Phase 3, imagination training
    The transformer is frozen. Rollouts start from dataset contexts; each step the policy head
    picks an action, the dynamics generates the next frame in K = 4 shortcut steps, and the heads
    annotate rewards, continuation and values. The value head learns TD(lambda) returns
    (eq. 10, gamma = 0.997) and the policy PMPO (eq. 11: the sign of the advantage, alpha = 0.5,
    beta = 0.3 times the reverse KL to the frozen behaviour-cloning prior).

The CLI (``python -m metawm.dreamer4 record|pretrain|finetune|imagine``) runs these phases one
after the other on recorded data, as the paper does. As an inner-loop agent (``agent=dreamer4``
in ``python -m metawm.train``) the same losses run online on a schedule: each update trains the
tokenizer; after ``dynamics_start`` updates the dynamics and the BC/reward/continuation heads
join; after ``imagination_start`` updates the policy (initialized from the BC head) and the
value head join in imagination.

Meta-learners see the parameters in three parts, ``tokenizer``, ``dynamics`` and
``agent_heads``; :meth:`Dreamer4Agent.loss` is a pure function of (params, batch) through
``torch.func.functional_call`` (all randomness is drawn from a generator seeded by the batch).
The losses are normalized by running RMS estimates (sec. 3), read but not updated inside
``loss``; ``update`` refreshes them after each step.

Deviations from the paper, and why (each also noted where it happens):
* No LPIPS by default (its weights need a download); pluggable (``tokenizer.py``).
* Context noise: "tau_ctx = 0.1" read as noise 0.1 = signal level 0.9 (``dynamics.py``).
* A learned continuation head supplies c_t of eq. 10 in imagination (``heads.py``).
* Continuous actions use per-dimension categorical bins (``heads.py``) to keep PMPO bounded.
* No task embeddings: metawm's tasks are unobserved (``dynamics.py``).
* Step sizes: 3/4 of the frames at d_min, 1/4 coarser (Frans et al.) instead of eq. 4's uniform
  draw, which did not learn at CPU budgets (``presets.py``).
* The first ``value_warmup`` imagination updates train the value head alone (``presets.py``).
* One batch length (the paper alternates short and long batches for speed); no value EMA.
* Online, the tokenizer keeps training while the dynamics learns on its latents (the paper
  trains them one after the other; the CLI does too).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metawm.agents.dreamer4.dataset import Dataset
from metawm.agents.dreamer4.dynamics import Dynamics, sample_levels
from metawm.agents.dreamer4.heads import ActionCodec, AgentHeads
from metawm.agents.dreamer4.losses import (masked_mean, mtp_targets, pmpo_loss, rms_scale, shortcut_forcing_loss,
                                           twohot_mean, twohot_nll)
from metawm.agents.dreamer4.presets import Preset, get_preset
from metawm.agents.dreamer4.tokenizer import Perceptual, Tokenizer
from metawm.infra.errors import UserError
from metawm.ops.returns import lambda_returns
from metawm.types import EnvSpec, Metrics, Step

PHASES = ("tokenizer", "dynamics", "agent", "imagination")
WORLD_MODEL_PHASES = {"tokenizer", "dynamics", "agent"}
TERMS = ("tok_mse", "tok_perceptual", "dynamics", "bc", "reward", "cont")


def check_env_spec(env_spec: EnvSpec) -> None:
    shape = tuple(env_spec.obs_space.shape)
    if len(shape) == 3:
        if shape[-1] not in (1, 3) or env_spec.obs_space.dtype != np.uint8:
            raise UserError(f"dreamer4 takes uint8 images (H, W, C) with C = 1 or 3, got {shape} of "
                            f"{env_spec.obs_space.dtype}.")
    elif len(shape) != 1:
        raise UserError(f"dreamer4 takes vector (D,) or image (H, W, C) observations, got shape {shape}.")


class Dreamer4Model(nn.Module):
    """Every parameter of the agent, and its losses as one ``forward(batch)``."""

    def __init__(self, env_spec: EnvSpec, preset: Preset, perceptual: Perceptual | None = None):
        super().__init__()
        check_env_spec(env_spec)
        self.preset = preset
        self.codec = ActionCodec.from_space(env_spec.act_space, preset.action_bins)
        self.tokenizer = Tokenizer(env_spec.obs_space.shape, preset, perceptual)
        self.dynamics = Dynamics(self.codec, preset)
        self.heads = AgentHeads(preset.dyn_dim, self.codec, preset)
        # discount and lambda of the imagined returns; meta.rule=meta_gradient may adapt them (set_hparams)
        self.hp = {"discount": float(preset.gamma), "lam": float(preset.lam)}
        self.register_buffer("rms_sq", torch.zeros(len(TERMS)))
        self.register_buffer("rms_count", torch.zeros(len(TERMS)))

    # -- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def segments(is_first: torch.Tensor) -> torch.Tensor:
        """Segment ids (B, T): a new segment at every episode start inside the window."""
        seg = torch.cumsum(is_first.long(), 1)
        return seg - seg[:, :1]

    @staticmethod
    def previous_actions(action: torch.Tensor, has_action: torch.Tensor, is_first: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block t carries a_{t-1}: shift right; unknown at the window start and episode starts."""
        prev = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
        has = torch.cat([torch.zeros_like(has_action[:, :1]), has_action[:, :-1]], 1) & ~is_first
        return prev, has

    def scale(self, name: str) -> torch.Tensor:
        i = TERMS.index(name)
        return rms_scale(self.rms_sq[i], self.rms_count[i], self.preset.rms_decay)

    @torch.no_grad()
    def update_rms(self, raw: Mapping[str, torch.Tensor]) -> None:
        decay = self.preset.rms_decay
        for name, value in raw.items():
            i = TERMS.index(name)
            self.rms_sq[i] = decay * self.rms_sq[i] + (1 - decay) * float(value) ** 2
            self.rms_count[i] += 1

    def encode(self, obs: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.tokenizer.encode(obs, seg)[0]

    # -- the losses ------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss of the phases switched on in ``batch["phases"]`` (bool per name in PHASES),
        and metrics. Raw (unnormalized) loss terms are returned under ``raw/<term>``."""
        phases = {name for name, on in zip(PHASES, batch["phases"].tolist()) if on}
        dev = batch["seed"].device
        g = torch.Generator(device=dev)
        g.manual_seed(int(batch["seed"]))
        total = torch.zeros((), device=dev)
        metrics: dict[str, torch.Tensor] = {}
        raw: dict[str, torch.Tensor] = {}
        if phases & WORLD_MODEL_PHASES:
            obs, is_first = batch["obs"], batch["is_first"]
            b, t = is_first.shape
            seg = self.segments(is_first)
        if "tokenizer" in phases:
            u_prob = torch.rand(b, t, generator=g, device=obs.device)
            u_patch = torch.rand(b, t, self.tokenizer.num_patches, generator=g, device=obs.device)
            terms, _ = self.tokenizer.loss(obs, seg, u_prob, u_patch)
            for name, value in terms.items():
                raw[f"tok_{name}"] = value
        if phases & {"dynamics", "agent"}:
            z1 = self.encode(obs, seg)
            wm = self.world_model_losses(batch, z1, seg, g, "agent" in phases)
            raw.update({k: v for k, v in wm.items() if k in TERMS})
            metrics.update({k: v for k, v in wm.items() if k not in TERMS})
        for name, value in raw.items():
            total = total + value / self.scale(name).detach()
            metrics[f"raw/{name}"] = value.detach()
        if "imagination" in phases:
            loss_pi, loss_v, info = self.imagination_losses(batch, g, batch.get("hparams"))
            total = total + loss_pi + loss_v
            metrics.update(info)
        return total, metrics

    def world_model_losses(self, batch, z1: torch.Tensor, seg: torch.Tensor, g: torch.Generator,
                           with_agent: bool) -> dict[str, torch.Tensor]:
        """Shortcut forcing (eqs. 6-8) and, with the agent, the MTP heads (eq. 9)."""
        p = self.preset
        b, t = seg.shape
        dev = z1.device
        # Sec. 4: a share of the sequences are trained as separate images (start-frame generation).
        images = torch.rand(b, generator=g, device=dev) < p.image_frac
        seg_dyn = torch.where(images[:, None], torch.arange(t, device=dev)[None].expand(b, t), seg)
        prev, has_prev = self.previous_actions(batch["action"], batch["has_action"], batch["is_first"])
        has_prev = has_prev & ~images[:, None]
        tau, d = sample_levels((b, t), p.k_max, g, dev, p.bootstrap_fraction if p.bootstrap_fraction >= 0 else None)
        z0 = torch.randn(z1.shape, generator=g, device=dev)
        student: list[torch.Tensor] = []

        def predict(z, tau_, d_):
            z_hat, h, _ = self.dynamics(z, tau_, d_, prev, has_prev, seg_dyn)
            student.append(h)
            return z_hat

        per_frame, info = shortcut_forcing_loss(predict, z1, z0, tau, d, 1.0 / p.k_max)
        out = {"dynamics": per_frame.mean(), "wm/flow_mse": info["flow"].detach(),
               "wm/bootstrap_mse": info["bootstrap"].detach()}
        if not with_agent:
            return out
        h = student[0]  # the first call is the student pass (with gradients)
        heads = self.heads
        act_t, act_m = mtp_targets(batch["action"], batch["has_action"], seg, p.mtp)
        out["bc"] = masked_mean(self.codec.nll(heads.bc(h), act_t), act_m)
        rew_t, rew_m = mtp_targets(batch["reward"], torch.ones_like(batch["is_first"]), seg, p.mtp)
        out["reward"] = masked_mean(twohot_nll(heads.reward(h), rew_t, heads.bins), rew_m)
        cont_t, cont_m = mtp_targets((~batch["is_terminal"]).float(), torch.ones_like(batch["is_first"]), seg, p.mtp)
        out["cont"] = masked_mean(F.binary_cross_entropy_with_logits(heads.cont(h)[..., 0], cont_t, reduction="none"),
                                  cont_m)
        return out

    # -- imagination (phase 3) -------------------------------------------------------------------------
    @torch.no_grad()
    def start_context(self, obs, action, has_action, is_first, g: torch.Generator):
        """Run dataset contexts (B, C) through tokenizer and dynamics; returns (h of the last step,
        KV cache, the last step's segment ids (B, 1))."""
        dyn = self.dynamics
        seg = self.segments(is_first)
        prev, has_prev = self.previous_actions(action, has_action, is_first)
        z = self.encode(obs, seg)
        zc = dyn.corrupt(z, torch.randn(z.shape, generator=g, device=z.device))
        tau = torch.full(seg.shape, dyn.ctx_tau, device=z.device)
        cache = dyn.transformer.empty_cache(seg.shape[0], dyn.slots, self.preset.context, z.device)
        _, h, kv = dyn(zc, tau, 1.0 / dyn.k_max, prev, has_prev, seg, cache)
        return h[:, -1], cache.appended(kv, seg), seg[:, -1:]

    @torch.no_grad()
    def step_model(self, z_new: torch.Tensor, action_in: torch.Tensor, has: torch.Tensor, seg: torch.Tensor,
                   cache, g: torch.Generator | None):
        """Feed a frame (B, 1, ...) with the action that led to it as context: returns (h, cache)."""
        dyn = self.dynamics
        noise = torch.randn(z_new.shape, generator=g, device=z_new.device)
        tau = torch.full(seg.shape, dyn.ctx_tau, device=z_new.device)
        _, h, kv = dyn(dyn.corrupt(z_new, noise), tau, 1.0 / dyn.k_max, action_in, has, seg, cache)
        return h[:, -1], cache.appended(kv, seg)

    @torch.no_grad()
    def imagine(self, batch, g: torch.Generator, horizon: int, steps: int) -> dict[str, torch.Tensor]:
        """Roll the policy out in the world model from the ``imag_*`` contexts of ``batch``.
        Returns h (B, H+1, D) and the sampled action indices (B, H[, A])."""
        h, cache, seg = self.start_context(batch["imag_obs"], batch["imag_action"], batch["imag_has_action"],
                                           batch["imag_is_first"], g)
        dyn, codec = self.dynamics, self.codec
        b = h.shape[0]
        hs, acts = [h], []
        ones = torch.ones(b, 1, dtype=torch.bool, device=h.device)
        for _ in range(horizon):
            a = codec.sample(self.heads.policy_logits(h), g)
            acts.append(a)
            a_in = codec.index_to_input(a)[:, None]
            noise = torch.randn(b, 1, dyn.latents, dyn.bottleneck, generator=g, device=h.device)
            z_new = dyn.generate(noise, a_in, ones, seg, cache, steps)
            h, cache = self.step_model(z_new, a_in, ones, seg, cache, g)
            hs.append(h)
        return {"h": torch.stack(hs, 1), "action": torch.stack(acts, 1)}

    def imagination_losses(self, batch, g: torch.Generator, hparams: Mapping[str, Any] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Value (eq. 10) and PMPO policy (eq. 11) losses on an imagined rollout.

        R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1}), R_H = v_H, with the
        reward r_t and continuation c_t of the state reached at t read from the MTP heads' n = 0
        outputs; states are weighted by the predicted probability of still being in the episode,
        w_t = prod_{k <= t} c_k (our addition, as in DreamerV3). A_t = R_t - v_t; only its sign
        enters PMPO. ``hparams`` ({"discount", "lam"}, floats or 0-d tensors) replaces the model's
        gamma and lambda; the value loss is differentiable in them through its TD(lambda) targets
        (PMPO, reading only the advantage's sign, is not)."""
        p, heads, codec = self.preset, self.heads, self.codec
        roll = self.imagine(batch, g, p.imag_horizon, p.k_sample)
        h, a = roll["h"], roll["action"]
        horizon = a.shape[1]
        with torch.no_grad():
            reward = twohot_mean(heads.reward(h, offsets=1)[..., 0, :], heads.bins)
            cont = torch.sigmoid(heads.cont(h, offsets=1)[..., 0, 0])
            prior = heads.prior_logits(h[:, :horizon])
        value_logits = heads.value(h)[..., 0, :]
        value = twohot_mean(value_logits.detach(), heads.bins)
        hp = {**self.hp, **(hparams or {})}  # tensors here make the losses differentiable in them
        ret = lambda_returns(reward[:, 1:].T, value[:, 1:].T, hp["discount"] * cont[:, 1:].T, hp["lam"],
                             value[:, -1]).T
        weight = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, 1:horizon]], 1), 1)
        loss_v = (weight * twohot_nll(value_logits[:, :horizon], ret, heads.bins)).mean()
        adv = ret - value[:, :horizon]
        logits = heads.policy_logits(h[:, :horizon])
        logp = codec.log_prob(logits, a)
        kl = codec.kl(logits, prior)
        loss_pi, info = pmpo_loss(logp, adv, kl, weight, p.pmpo_alpha, p.pmpo_beta)
        metrics = {"imagine/policy_loss": loss_pi.detach(), "imagine/value_loss": loss_v.detach(),
                   "imagine/return": ret[:, 0].mean(), "imagine/reward": reward[:, 1:].mean(),
                   "imagine/cont": cont[:, 1:].mean(), "imagine/value": value[:, 0].mean(),
                   "imagine/adv_abs": adv.abs().mean(), "imagine/entropy": codec.entropy(logits).mean().detach(),
                   **{f"imagine/{k}": v for k, v in info.items()}}
        return loss_pi, loss_v, metrics

    # -- open-loop prediction (evidence, plots) ------------------------------------------------------
    @torch.no_grad()
    def predict_open_loop(self, obs, action, has_action, is_first, context: int, steps: int,
                          g: torch.Generator, use_actions: bool = True) -> dict[str, torch.Tensor]:
        """Given the first ``context`` frames of windows (B, T), generate the remaining T - context
        latents with the dataset's actions (or the "no action" embedding) in ``steps`` shortcut
        steps each. Returns real and generated latents (B, T - context, ...) and decoded frames."""
        b, t = is_first.shape
        seg_all = self.segments(is_first)
        z_real = self.encode(obs, seg_all)
        h, cache, seg = self.start_context(obs[:, :context], action[:, :context], has_action[:, :context],
                                           is_first[:, :context], g)
        dyn = self.dynamics
        gen = []
        for i in range(context, t):
            a_in = action[:, i - 1:i]
            has = (has_action[:, i - 1:i] & torch.tensor(use_actions, device=obs.device))
            noise = torch.randn(b, 1, dyn.latents, dyn.bottleneck, generator=g, device=obs.device)
            z_new = dyn.generate(noise, a_in, has, seg, cache, steps)
            _, cache = self.step_model(z_new, a_in, has, seg, cache, g)
            gen.append(z_new)
        z_gen = torch.cat(gen, 1)
        frames_gen = self.tokenizer.unpatchify(self.tokenizer.decode(torch.cat([z_real[:, :context], z_gen], 1),
                                                                     seg_all)[0])
        frames_rec = self.tokenizer.unpatchify(self.tokenizer.decode(z_real, seg_all)[0])
        return {"z_real": z_real[:, context:], "z_gen": z_gen, "frames_gen": frames_gen[:, context:],
                "frames_rec": frames_rec[:, context:]}


class Dreamer4Agent:
    """The :class:`metawm.protocols.Agent` around :class:`Dreamer4Model` (module docstring)."""

    name = "dreamer4"

    def __init__(self, env_spec: EnvSpec, device: torch.device | str = "cpu", size: str = "small",
                 overrides: Mapping[str, Any] | None = None, perceptual: Perceptual | None = None, **extra: Any):
        if extra:
            raise UserError(f"Unknown dreamer4 option(s) {', '.join(sorted(extra))}. Options: size, overrides "
                            "(preset fields, e.g. agent.overrides.learn_start=500).")
        self.env_spec = env_spec
        self.device = torch.device(device)
        self.preset = get_preset(size, overrides)
        self.model = Dreamer4Model(env_spec, self.preset, perceptual).to(self.device)
        self.codec = self.model.codec
        self.dataset = Dataset(env_spec.obs_space, env_spec.act_space, self.preset.capacity)
        self.grad_steps = 0
        self.imagining = False
        self.imag_steps = 0  # imagination updates so far (the first preset.value_warmup train the value only)
        p = self.preset
        groups = {"tokenizer": (p.lr_tokenizer, ("tokenizer.",)),
                  "world": (p.lr_dynamics, ("dynamics.", "heads.bc.", "heads.reward.", "heads.cont.")),
                  "policy": (p.lr_policy, ("heads.policy.",)), "value": (p.lr_value, ("heads.value.",))}
        self.groups = {g: [prm for n, prm in self.model.named_parameters() if n.startswith(prefixes)]
                       for g, (_, prefixes) in groups.items()}
        self.lrs = {g: lr for g, (lr, _) in groups.items()}
        self.optims = {g: torch.optim.AdamW(self.groups[g], lr=lr, weight_decay=p.weight_decay, eps=1e-8)
                       for g, (lr, _) in groups.items()}

    # -- acting --------------------------------------------------------------------------------------
    def initial_carry(self, n: int) -> dict[str, Any]:
        m, p = self.model, self.preset
        return {"tok": m.tokenizer.encoder.empty_cache(n, m.tokenizer.num_patches + m.tokenizer.latents, p.context,
                                                       self.device),
                "dyn": m.dynamics.transformer.empty_cache(n, m.dynamics.slots, p.context, self.device),
                "prev": self._zero_actions(n), "has_prev": torch.zeros(n, dtype=torch.bool, device=self.device),
                "seg": torch.zeros(n, dtype=torch.long, device=self.device)}

    def _zero_actions(self, n: int) -> torch.Tensor:
        if self.codec.discrete:
            return torch.zeros(n, dtype=torch.long, device=self.device)
        return torch.zeros(n, self.codec.dims, device=self.device)

    def act(self, step: Step, carry: dict[str, Any], *, explore: bool) -> tuple[np.ndarray, dict[str, Any]]:
        n = len(step["is_first"])
        first = torch.as_tensor(np.asarray(step["is_first"]), device=self.device)
        seg = carry["seg"] + first.long()
        if self.grad_steps == 0:  # untrained: uniform actions, nothing worth caching yet
            idx = self._uniform(n)
            return self.codec.index_to_env(idx), {**carry, "seg": seg}
        m = self.model
        with torch.no_grad():
            obs = torch.as_tensor(np.asarray(step["obs"]), device=self.device)[:, None]
            z, kv = m.tokenizer.encode(obs, seg[:, None], carry["tok"])
            tok = carry["tok"].appended(kv, seg[:, None])
            has_prev = (carry["has_prev"] & ~first)[:, None]
            h, dyn = m.step_model(z, carry["prev"][:, None], has_prev, seg[:, None], carry["dyn"], None)
            logits = m.heads.policy_logits(h) if self.imagining else m.heads.prior_logits(h)
            idx = self.codec.sample(logits, greedy=not explore)
        return self.codec.index_to_env(idx), {"tok": tok, "dyn": dyn, "prev": self.codec.index_to_input(idx),
                                              "has_prev": torch.ones(n, dtype=torch.bool, device=self.device),
                                              "seg": seg}

    def _uniform(self, n: int) -> torch.Tensor:
        if self.codec.discrete:
            return torch.randint(self.codec.n, (n,))
        return torch.randint(self.codec.bins, (n, self.codec.dims))

    def observe(self, step: Step) -> None:
        self.dataset.add(step)

    # -- learning -----------------------------------------------------------------------------------
    def current_phases(self) -> tuple[str, ...]:
        p = self.preset
        out = ["tokenizer"]
        if self.grad_steps >= p.dynamics_start:
            out += ["dynamics", "agent"]
        if self.grad_steps >= p.imagination_start:
            out.append("imagination")
        return tuple(out)

    def update(self, env_steps: int) -> Metrics:
        p = self.preset
        if env_steps < p.learn_start or not self.dataset.can_sample(max(p.batch_length, p.imag_context)):
            return {}
        due = int((env_steps - p.learn_start) * p.train_ratio / (p.batch_size * p.batch_length)) + 1
        metrics: Metrics = {}
        while self.grad_steps < due:
            metrics = self.train_step(self.current_phases())
        return metrics

    def train_step(self, phases: tuple[str, ...], rng: torch.Generator | None = None) -> Metrics:
        """One gradient step of the given phases on a fresh batch; returns float metrics."""
        if "imagination" in phases and not self.imagining:
            self.start_imagination()
        batch = self.sample_batch(rng, phases)
        loss, metrics = self.loss(dict(self.model.named_parameters()), batch)
        for opt in self.optims.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        imagining = "imagination" in phases
        active = {"tokenizer": "tokenizer" in phases, "world": bool({"dynamics", "agent"} & set(phases)),
                  "policy": imagining and self.imag_steps >= self.preset.value_warmup, "value": imagining}
        out: Metrics = {}
        for name, opt in self.optims.items():
            if active[name]:
                norm = torch.nn.utils.clip_grad_norm_(self.groups[name], self.preset.grad_clip)
                out[f"grad_norm/{name}"] = float(norm)
                opt.step()
        raw = {k[4:]: v for k, v in metrics.items() if k.startswith("raw/")}
        self.model.update_rms(raw)
        self.grad_steps += 1
        self.imag_steps += int(imagining)
        out.update({_metric_name(k): float(v) for k, v in metrics.items()})
        out["wm/loss"] = float(loss.detach())
        out["train/grad_steps"] = float(self.grad_steps)
        return out

    def start_imagination(self) -> None:
        """Phase 3 begins: the policy starts as a copy of the BC policy (the prior stays)."""
        self.model.heads.init_policy_from_bc()
        self.imagining = True

    # -- functional access -------------------------------------------------------------------------
    def parts(self) -> dict[str, list[str]]:
        names = [n for n, _ in self.model.named_parameters()]
        return {"tokenizer": [n for n in names if n.startswith("tokenizer.")],
                "dynamics": [n for n in names if n.startswith("dynamics.")],
                "agent_heads": [n for n in names if n.startswith("heads.")]}

    def params(self, part: str = "all") -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters())
        if part == "all":
            return named
        parts = self.parts()
        if part not in parts:
            raise UserError(f"Unknown parameter part {part!r} of dreamer4. Valid parts: all, {', '.join(parts)}.")
        return {n: named[n] for n in parts[part]}

    def sample_batch(self, rng: torch.Generator | None = None, phases: tuple[str, ...] | None = None
                     ) -> dict[str, torch.Tensor] | None:
        """Windows (batch_size, batch_length) of the dataset, the phases to train, a seed for every
        random draw of the loss and, with imagination, ``imag_*`` context windows."""
        p = self.preset
        phases = phases or self.current_phases()
        if not self.dataset.can_sample(max(p.batch_length, p.imag_context)):
            return None
        batch: dict[str, torch.Tensor] = {}
        if WORLD_MODEL_PHASES & set(phases):
            batch.update(self._tensors(self.dataset.sample(p.batch_size, p.batch_length, rng)))
        if "imagination" in phases:
            ctx = self._tensors(self.dataset.sample(p.imag_batch, p.imag_context, rng))
            batch.update({f"imag_{k}": v for k, v in ctx.items()})
        batch["phases"] = torch.tensor([name in phases for name in PHASES], device=self.device)
        batch["seed"] = torch.randint(0, 2 ** 62, (), generator=rng).to(self.device)
        return batch

    def _tensors(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}
        out["action"] = torch.as_tensor(self.codec.normalize(arrays["action"]), device=self.device)
        return out

    def loss(self, params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
             hparams: Mapping[str, torch.Tensor | float] | None = None) -> tuple[torch.Tensor, Metrics]:
        """The loss of the batch's phases with ``params`` substituted (functional_call). Metrics are
        tensors (detached) so that calling this stays cheap inside meta-gradients. ``hparams`` (any
        of :meth:`hparams`, 0-d tensors) replaces the agent's values and the imagination phase's
        value loss is differentiable in them (meta-gradient RL, see :meth:`set_hparams`)."""
        if hparams:
            unknown = set(hparams) - set(self.hparams())
            if unknown:
                raise UserError(f"Dreamer 4's loss has no hyperparameters {sorted(unknown)}; it has "
                                f"{sorted(self.hparams())}.")
            batch = {**batch, "hparams": {k: v.to(self.device) if isinstance(v, torch.Tensor) else float(v)
                                          for k, v in hparams.items()}}
        return torch.func.functional_call(self.model, dict(params), (batch,), strict=False)

    def hparams(self) -> dict[str, float]:
        """The discount gamma and lambda of the imagined TD(lambda) returns (eq. 10), which
        meta-gradient RL may adapt (``meta.rule=meta_gradient``, Xu et al. 2018)."""
        return dict(self.model.hp)

    def set_hparams(self, values: Mapping[str, float]) -> None:
        """Set (any of) :meth:`hparams` for all further training; they are part of :meth:`state_dict`.

        Both enter only the imagination phase's returns R_t (eq. 10), so a meta-gradient reaches them
        through the value head's TD(lambda) targets; PMPO uses only the sign of R_t - v_t, which
        has no gradient. Before imagination training starts the losses do not depend on them
        (their meta-gradient is zero)."""
        for k, v in values.items():
            if k not in self.model.hp:
                raise UserError(f"Dreamer 4 has no hyperparameter {k!r} to set; it has {sorted(self.model.hp)}.")
            if not 0.0 <= float(v) <= 1.0:
                raise UserError(f"Dreamer 4 hyperparameter {k}={float(v)} is outside [0, 1].")
        self.model.hp.update({k: float(v) for k, v in values.items()})

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self, *, replay: bool = False) -> dict[str, Any]:
        state = {"agent": self.name, "preset": self.preset.name, "model": self.model.state_dict(),
                 "optims": {k: o.state_dict() for k, o in self.optims.items()}, "grad_steps": self.grad_steps,
                 "imagining": self.imagining, "imag_steps": self.imag_steps, "hparams": self.hparams()}
        if replay:
            state["dataset"] = self.dataset.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("agent") != self.name:
            raise UserError(f"the checkpoint holds agent {state.get('agent')!r}, not dreamer4.")
        if state.get("preset") != self.preset.name:
            raise UserError(f"the checkpoint holds a dreamer4 of size {state.get('preset')!r}, but size="
                            f"{self.preset.name!r} was asked for.")
        self.model.load_state_dict(state["model"])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
            for group in o.param_groups:  # the saved state carries its lr; this agent's preset decides
                group["lr"] = self.lrs[k]
        self.grad_steps = int(state["grad_steps"])
        self.imagining = bool(state["imagining"])
        self.imag_steps = int(state.get("imag_steps", 0))
        if "hparams" in state:
            self.set_hparams(state["hparams"])
        if "dataset" in state:
            self.dataset.load_state_dict(state["dataset"])

    # -- optional hooks ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        counts = {part: sum(self.model.get_parameter(n).numel() for n in names) for part, names in self.parts().items()}
        return {"preset": self.preset.name, "params": sum(counts.values()),
                **{f"params/{k}": v for k, v in counts.items()}}

    def write_plots(self, directory: str | Path, env_steps: int) -> Path | None:
        """A strip of real vs generated frames (images) from a dataset window, K = 4 steps."""
        if self.grad_steps < self.preset.dynamics_start:
            return None
        return self.plot_generation(directory, env_steps)

    def plot_generation(self, directory: str | Path, env_steps: int) -> Path | None:
        p = self.preset
        if not self.model.tokenizer.is_image:
            return None
        length = min(p.batch_length, p.context)
        if not self.dataset.can_sample(length) or length < 2:
            return None
        g = torch.Generator().manual_seed(env_steps)
        batch = self._tensors(self.dataset.sample(2, length, g))
        ctx = max(1, length // 2)
        out = self.model.predict_open_loop(batch["obs"], batch["action"], batch["has_action"], batch["is_first"],
                                           ctx, p.k_sample, g)
        real = batch["obs"][:, ctx:].float() / 255.0
        from metawm.agents.dreamer4.plots import save_strip

        return save_strip(Path(directory) / f"dreamer4_generation_{env_steps:08d}.png",
                          [("real", real[0]), ("generated (K=%d)" % p.k_sample, out["frames_gen"][0])])


def _metric_name(key: str) -> str:
    if key.startswith("raw/"):
        name = key[4:]
        return {"tok_mse": "wm/tokenizer_mse", "tok_perceptual": "wm/tokenizer_perceptual",
                "dynamics": "wm/dynamics_loss", "bc": "agent/bc_loss", "reward": "agent/reward_loss",
                "cont": "agent/cont_loss"}[name]
    return key
