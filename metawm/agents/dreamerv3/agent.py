"""DreamerV3 as a metawm inner-loop agent: the story, top to bottom.

Hafner, Pasukonis, Ba, Lillicrap, "Mastering Diverse Domains through World Models" (Nature 2025;
arXiv 2301.04104). We follow the Nature recipe as the authors' code (``danijar/dreamerv3``) states
it; deviations are listed at the end of this docstring.

1. **Acting** (:meth:`DreamerV3Agent.act`): the carry is (h_{t-1}, z_{t-1}, a_{t-1}), reset to zeros
   where ``is_first``. The RSSM folds in the new observation (posterior), the actor samples a_t.
2. **Storing** (:meth:`observe`): steps go to a :class:`~metawm.data.replay.SequenceReplay`
   (one ring per environment, uint8 frames).
3. **Learning** (:meth:`update`): as many gradient steps as the replay ratio asks. The replay ratio
   is the paper's ("train ratio"): *replayed time steps per environment step*, so one gradient step
   on a batch of B x T = 16 x 64 sequences consumes 1024 / ratio env steps (ratio 32: one gradient
   step every 32 env steps). Other code bases count gradient steps per env step ("update-to-data")
   or sequences per step; divide by B x T to compare.
4. **The loss** (:meth:`_objective`, one function of the parameters so that meta-learners can
   substitute them with ``torch.func.functional_call`` and differentiate through it):
   world model (eq. 4-5: prediction, dynamics and representation losses), imagination of H = 15
   steps from every replayed state, actor and critic losses on the imagined trajectories
   (eq. 7, 10-12), and the critic loss on replayed sequences (Nature version, scale 0.3).
5. **After each step**: LaProp with adaptive gradient clipping (``metawm.ops.optim``), then the slow
   critic's EMA (decay 0.98) and the return normalizer's state are committed.
6. **Hyperparameters for meta-gradient RL** (``meta.rule=meta_gradient``, Xu et al. 2018):
   :meth:`hparams` / :meth:`set_hparams` expose the return's discount, lambda and the entropy scale,
   and ``loss(..., hparams=...)`` is differentiable in them. The discount is applied as the continue
   head's continuation probability times gamma (the head keeps learning 1 - 1/horizon, see
   :meth:`set_hparams`); at the default values this is the recipe above, bit for bit.

Deviations from the paper and the authors' code (all deliberate, none on the math):

* Image encoder/decoder use stride-2 (transposed) convolutions with kernel 4, as the paper text
  describes; the current authors' code defaults to stride-1 kernel-5 convolutions with max-pooling
  / nearest upsampling, which costs about 4x the compute (prohibitive on CPU).
* Each training sequence starts from a zero latent state; the authors' code can also store the
  acting-time latents in the replay and start from them (``replay_context``).
* Replay is uniform over all stored windows (no "online" queue of the newest data) and its default
  capacity is 1e6 steps per agent (paper 5e6) to keep uint8 Atari frames within a workstation.
* CPU presets (``tiny``, ``small``) use higher learning rates and, for ``tiny``, smaller batches;
  see :mod:`metawm.agents.dreamerv3.presets`. Paper sizes use the paper's numbers.
* Float32 throughout (the authors compute in bfloat16 on accelerators).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch

from metawm.agents.dreamerv3 import losses, presets
from metawm.agents.dreamerv3.nets import ActorCritic, Nets, WorldModel, features
from metawm.data.replay import SequenceReplay
from metawm.infra.errors import UserError, choices_error
from metawm.ops.distributions import (bounded_normal, categorical_entropy, normal_entropy, normal_logprob, onehot,
                                      sample_index, twohot_mean, unimix_logprobs, unimix_probs)
from metawm.ops.kl import kl_balance
from metawm.ops.optim import LaProp, warmup_lr
from metawm.ops.symlog import symexp, symexp_bins
from metawm.types import EnvSpec, Metrics, Step

LOSS_SCALES = {"rec": 1.0, "rew": 1.0, "con": 1.0, "dyn": 1.0, "rep": 0.1, "policy": 1.0, "value": 1.0,
               "repval": 0.3}
REPLAY_KEYS = ("obs", "action", "reward", "is_first", "is_last", "is_terminal")


class DreamerV3Agent:
    """DreamerV3 on one :class:`~metawm.types.EnvSpec`; conforms to :class:`metawm.protocols.Agent`.

    ``size`` picks a preset (:mod:`~metawm.agents.dreamerv3.presets`); ``lr``, ``batch_size``,
    ``batch_length`` and ``imag_last`` default (None) to the preset's values. Every other default is
    the paper's. ``imag_last`` = K > 0 starts imagination (and the replay critic loss) only from the
    last K steps of each replayed sequence (the authors' ``imag_last``; 0 = all T steps).
    """

    name = "dreamerv3"

    def __init__(self, env_spec: EnvSpec, device: torch.device | str = "cpu", size: str = "small", *,
                 lr: float | None = None, batch_size: int | None = None, batch_length: int | None = None,
                 imag_last: int | None = None,
                 replay_ratio: float = 32.0, replay_capacity: int = 1_000_000, train_after: int | None = None,
                 imag_horizon: int = 15, horizon: float = 333.0, lam: float = 0.95, actent: float = 3e-4,
                 slow_critic_decay: float = 0.98, slowreg: float = 1.0, free_nats: float = 1.0,
                 unimix: float = 0.01, actor_unimix: float = 0.01, bins: int = 255, minstd: float = 0.1,
                 maxstd: float = 1.0, retnorm_rate: float = 0.01, retnorm_limit: float = 1.0,
                 retnorm_low: float = 5.0, retnorm_high: float = 95.0, agc: float = 0.3, eps: float = 1e-20,
                 beta1: float = 0.9, beta2: float = 0.999, warmup: int = 1000,
                 loss_scales: Mapping[str, float] | None = None):
        self.env_spec = env_spec
        self.device = torch.device(device)
        self.size = str(size)
        self.preset = presets.get(self.size)
        self._check_spec(env_spec)
        p = self.preset
        self.lr = float(lr if lr is not None else p.lr)
        self.batch_size = int(batch_size if batch_size is not None else p.batch_size)
        self.batch_length = int(batch_length if batch_length is not None else p.batch_length)
        self.imag_last = int(imag_last if imag_last is not None else p.imag_last)  # 0: every replayed state
        self.replay_ratio = float(replay_ratio)
        self.train_after = int(train_after if train_after is not None else self.batch_size * self.batch_length)
        self.imag_horizon, self.horizon, self.lam, self.actent = int(imag_horizon), float(horizon), float(lam), float(actent)
        self.discount = 1.0 - 1.0 / self.horizon  # of the returns; set_hparams may adapt it (meta_gradient)
        self.slow_rate, self.slowreg, self.free_nats = 1.0 - float(slow_critic_decay), float(slowreg), float(free_nats)
        self.actor_unimix, self.minstd, self.maxstd = float(actor_unimix), float(minstd), float(maxstd)
        self.retnorm_args = dict(retnorm_rate=float(retnorm_rate), retnorm_limit=float(retnorm_limit),
                                 retnorm_low=float(retnorm_low) / 100, retnorm_high=float(retnorm_high) / 100)
        unknown = set(loss_scales or {}) - set(LOSS_SCALES)
        if unknown:
            raise UserError(f"agent.loss_scales has unknown keys {sorted(unknown)}; expected {sorted(LOSS_SCALES)}.")
        self.scales = {**LOSS_SCALES, **{k: float(v) for k, v in (loss_scales or {}).items()}}

        self.image = env_spec.is_image
        self.discrete = env_spec.is_discrete
        self.act_dim = env_spec.num_actions
        obs_shape = tuple(int(s) for s in env_spec.obs_space.shape)
        self.nets = Nets(
            WorldModel(obs_shape, self.act_dim, units=p.units, deter=p.deter, stoch=p.stoch, classes=p.classes,
                       depth=p.depth, blocks=p.blocks, unimix=float(unimix), bins=int(bins)),
            ActorCritic(p.deter + p.stoch * p.classes, self.act_dim, self.discrete, units=p.units, bins=int(bins)),
        ).to(self.device)
        # The slow critic: an EMA of the critic's weights, a regularization target (not trained).
        self.slow_critic = copy.deepcopy(self.nets.actor_critic.critic).requires_grad_(False)
        self.bins = symexp_bins(int(bins), device=self.device)
        self.retnorm = torch.zeros(2, device=self.device)  # [lo, hi] EMA percentiles of returns
        self.opt = LaProp(self.nets.parameters(), lr=self.lr, betas=(beta1, beta2), eps=eps, agc=agc,
                          warmup=warmup)
        self.replay = SequenceReplay(int(replay_capacity), self.batch_length, REPLAY_KEYS)
        self.updates = 0             # gradient steps taken
        self.ratio_start: int | None = None   # env steps when training started (replay ratio clock)
        self.ratio_updates = 0       # gradient steps since then

    def _check_spec(self, spec: EnvSpec) -> None:
        obs, act = spec.obs_space, spec.act_space
        expected = ("DreamerV3 expects vector observations Box(shape=(D,)) or uint8 images Box(0, 255, "
                    "(H, W, C)) with C in {1, 3} and H, W multiples of 16 between 32 and 256 (e.g. 64x64), and "
                    "actions Discrete(n) or Box(-1, 1, shape=(A,))")
        shape = tuple(obs.shape or ())
        ok_obs = len(shape) == 1 or (len(shape) == 3 and obs.dtype == np.uint8 and shape[2] in (1, 3)
                                     and all(s % 16 == 0 and 32 <= s <= 256 for s in shape[:2]))
        ok_act = spec.is_discrete or (
            isinstance(act, gym.spaces.Box) and len(act.shape) == 1 and np.allclose(act.low, -1)
            and np.allclose(act.high, 1))
        if not (ok_obs and ok_act):
            raise UserError(f"{expected}; this task has observations {obs} and actions {act}.")

    # ======================================================================================
    # 1. Acting
    # ======================================================================================
    def initial_carry(self, n: int) -> dict[str, torch.Tensor]:
        deter, stoch = self.nets.world_model.rssm.initial(n, self.device)
        return {"deter": deter, "stoch": stoch, "action": torch.zeros(n, self.act_dim, device=self.device)}

    @torch.no_grad()
    def act(self, step: Step, carry: dict[str, torch.Tensor], *, explore: bool) -> tuple[np.ndarray, dict]:
        """Posterior update with the new observation, then an action: sampled when ``explore``,
        the mode (argmax / mean) otherwise. The carry is reset where ``step['is_first']``."""
        wm = self.nets.world_model
        keep = torch.as_tensor(~np.asarray(step["is_first"], bool), device=self.device).float()[:, None]
        deter, stoch, prev = (carry[k].to(self.device) for k in ("deter", "stoch", "action"))
        embed = wm.encoder(self._obs_tensor(step["obs"]))
        state = wm.rssm.obs_step(deter * keep, stoch * keep[..., None], prev * keep, embed)
        raw = self.nets.actor_critic.actor(features(state.deter, state.stoch))
        if self.discrete:
            probs = unimix_probs(raw, self.actor_unimix)
            index = sample_index(probs) if explore else probs.argmax(-1)
            vec, env_action = onehot(index, self.act_dim), index.cpu().numpy().astype(np.int64)
        else:
            mean, std = bounded_normal(raw[:, :self.act_dim], raw[:, self.act_dim:], self.minstd, self.maxstd)
            vec = (mean + std * torch.randn_like(std) if explore else mean).clamp(-1, 1)
            env_action = vec.cpu().numpy().astype(np.float32)
        return env_action, {"deter": state.deter, "stoch": state.stoch, "action": vec}

    def _obs_tensor(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(obs, device=self.device)
        return x if self.image else x.float()  # images stay uint8 until the encoder

    # ======================================================================================
    # 2. Storing
    # ======================================================================================
    def observe(self, step: Step) -> None:
        self.replay.add({"obs": step["obs"], "action": np.asarray(step["action"]),
                         "reward": np.asarray(step["reward"], np.float32), "is_first": step["is_first"],
                         "is_last": step["is_last"], "is_terminal": step["is_terminal"]})

    def sample_batch(self, rng: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
        """B windows of T steps from the replay as tensors on the device, or None before
        ``train_after`` steps are stored."""
        if len(self.replay) < self.train_after or not self.replay.can_sample():
            return None
        data = self.replay.sample(self.batch_size, rng)
        return {k: torch.from_numpy(v).to(self.device) for k, v in data.items()}

    # ======================================================================================
    # 3. Learning
    # ======================================================================================
    def update(self, env_steps: int) -> Metrics:
        """Gradient steps so that replayed steps / env steps = ``replay_ratio`` since training
        started (authors' ``embodied.when.Ratio``: the first eligible call trains once)."""
        if len(self.replay) < self.train_after or not self.replay.can_sample():
            return {}
        if self.ratio_start is None:
            self.ratio_start = int(env_steps)
        per_update = self.batch_size * self.batch_length
        due = 1 + math.floor((int(env_steps) - self.ratio_start) * self.replay_ratio / per_update)
        rows = [self._train_step(self.sample_batch()) for _ in range(max(0, due - self.ratio_updates))]
        if not rows:
            return {}
        out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        out.update({"replay/size": float(len(self.replay)), "replay/updates": float(self.updates),
                    "replay/ratio": self.ratio_updates * per_update / max(1, int(env_steps) - self.ratio_start + 1)})
        return out

    def _train_step(self, batch: dict[str, torch.Tensor]) -> Metrics:
        loss, metrics, aux = self._loss(dict(self.nets.named_parameters()), batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.nets.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.opt.step()
        self.updates += 1
        self.ratio_updates += 1
        with torch.no_grad():  # 5. commit the slow critic's EMA and the return normalizer
            slow = list(self.slow_critic.parameters())
            torch._foreach_lerp_(slow, list(self.nets.actor_critic.critic.parameters()), self.slow_rate)
            self.retnorm.copy_(aux["retnorm"])
        metrics["opt/grad_norm"] = grad_norm
        metrics["opt/lr"] = torch.tensor(warmup_lr(self.lr, self.updates, self.opt.defaults["warmup"]),
                                         device=self.device)
        return _to_floats(metrics)

    # ======================================================================================
    # 4. The loss, as a function of the parameters
    # ======================================================================================
    def loss(self, params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
             hparams: Mapping[str, torch.Tensor | float] | None = None) -> tuple[torch.Tensor, Metrics]:
        """The total training loss with ``params`` substituted (any subset of :meth:`params`; the
        rest keep their values), differentiable to any order w.r.t. ``params``. Does not change the
        agent's state (normalizer and slow critic are read, not updated).

        ``hparams`` (any subset of :meth:`hparams`, 0-d tensors) replaces the agent's own values, and
        the loss is differentiable w.r.t. them (meta-gradient RL, see :meth:`set_hparams`); None:
        the agent's current values, exactly the loss its :meth:`update` minimizes."""
        total, metrics, _ = self._loss(params, batch, hparams)
        return total, _to_floats(metrics)

    def _loss(self, params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
              hparams: Mapping[str, torch.Tensor | float] | None = None):
        return torch.func.functional_call(self.nets, dict(params), (self._objective, batch, hparams), strict=False)

    def _objective(self, nets: Nets, batch: Mapping[str, torch.Tensor],
                   hparams: Mapping[str, torch.Tensor | float] | None = None):
        wm, ac, sc = nets.world_model, nets.actor_critic, self.scales
        hp = self._resolve_hparams(hparams)
        is_first, is_last, is_terminal = batch["is_first"], batch["is_last"], batch["is_terminal"]
        reward, obs = batch["reward"].float(), batch["obs"]
        B, T = is_first.shape
        obs = obs if self.image else obs.float()

        # -- 4a. World model: posterior along the replayed sequences (eq. 1), losses (eq. 4-5)
        embed = wm.encoder(obs.flatten(0, 1)).unflatten(0, (B, T))
        act = self._action_vectors(batch["action"])
        prev_act = torch.cat([torch.zeros_like(act[:, :1]), act[:, :-1]], 1) * (~is_first)[..., None].float()
        post = wm.rssm.observe(embed, prev_act, is_first)
        prior_logits = wm.rssm.prior_logits(post.deter)
        post_logp = unimix_logprobs(post.logits, wm.rssm.unimix)
        prior_logp = unimix_logprobs(prior_logits, wm.rssm.unimix)
        dyn, rep = kl_balance(post_logp, prior_logp, self.free_nats)
        feat = features(post.deter, post.stoch)
        recon = wm.decoder(post.deter.flatten(0, 1), post.stoch.flatten(0, 1)).unflatten(0, (B, T))
        rec = losses.reconstruction_loss(recon, obs, self.image)
        rew = losses.reward_loss(wm.reward(feat), reward, self.bins)
        con = losses.continue_loss(wm.cont(feat)[..., 0], is_terminal, self.horizon)

        # -- 4b. Imagination from every replayed state (or the last K of each sequence). No gradients
        # flow through the rollout: the actor learns by REINFORCE, which needs only log-probabilities.
        K = min(self.imag_last or T, T)
        with torch.no_grad():
            img_feat, img_act = self._imagine(wm, ac, post.deter[:, -K:].flatten(0, 1),
                                              post.stoch[:, -K:].flatten(0, 1))
            img_rew = twohot_mean(wm.reward(img_feat), self.bins)
            img_con = torch.sigmoid(wm.cont(img_feat)[..., 0])
            img_slow = twohot_mean(self.slow_critic(img_feat), self.bins)
        base = 1.0 - 1.0 / self.horizon
        if isinstance(hp["discount"], torch.Tensor) or hp["discount"] != base:
            # the head predicts base * c (contdisc); the adapted discount replaces base (see set_hparams)
            img_con = img_con * (hp["discount"] / base)

        # -- 4c. Actor and critic on the imagined trajectories (eq. 7, 10-12)
        critic_logits = ac.critic(img_feat)
        logpi, entropy = self._policy_logprob(ac.actor(img_feat[:, :-1]), img_act)
        pad = torch.zeros_like(logpi[:, :1])  # the last state's action is never used
        imag = losses.imagination_loss(
            img_rew, img_con, twohot_mean(critic_logits.detach(), self.bins), img_slow, critic_logits,
            torch.cat([logpi, pad], 1), torch.cat([entropy, pad], 1), self.retnorm, self.bins,
            lam=hp["lam"], actent=hp["actent"], slowreg=self.slowreg, **self.retnorm_args)

        # -- 4d. Critic on the replayed sequences, bootstrapped from the imagined returns
        last_k = feat[:, -K:]
        with torch.no_grad():
            rep_slow = twohot_mean(self.slow_critic(last_k.detach()), self.bins)
        repval, rep_ret = losses.replay_value_loss(
            reward[:, -K:], is_last[:, -K:], is_terminal[:, -K:], imag.ret[:, 0].reshape(B, K), rep_slow,
            ac.critic(last_k), self.bins, horizon=self.horizon, lam=hp["lam"], slowreg=self.slowreg,
            discount=hp["discount"])

        terms = {"rec": rec.mean(), "rew": rew.mean(), "con": con.mean(), "dyn": dyn.mean(), "rep": rep.mean(),
                 "policy": imag.policy.mean(), "value": imag.value.mean(), "repval": repval.mean()}
        total = sum(sc[k] * v for k, v in terms.items())
        with torch.no_grad():
            kl = (post_logp.exp() * (post_logp - prior_logp)).sum((-2, -1))
            metrics = {
                "loss/total": total.detach(),
                **{f"wm/loss/{k}": terms[k].detach() for k in ("rec", "rew", "con", "dyn", "rep")},
                "wm/kl": kl.mean(), "wm/post_entropy": categorical_entropy(post_logp).sum(-1).mean(),
                "wm/prior_entropy": categorical_entropy(prior_logp).sum(-1).mean(),
                "wm/reward_pred": twohot_mean(wm.reward(feat.detach()), self.bins).mean(),
                "actor/loss": terms["policy"].detach(), "actor/entropy": entropy.mean(),
                "actor/adv_mag": imag.adv.abs().mean(), "actor/ret_scale": imag.scale,
                "actor/imag_return": imag.ret.mean(), "actor/imag_reward": img_rew[:, 1:].mean(),
                "actor/imag_weight": imag.weight.mean(),
                "critic/loss": terms["value"].detach(), "critic/replay_loss": terms["repval"].detach(),
                "critic/value": twohot_mean(critic_logits.detach(), self.bins).mean(),
                "critic/slow_value": img_slow.mean(), "critic/replay_return": rep_ret.mean(),
            }
        return total, metrics, {"retnorm": imag.retnorm}

    def _imagine(self, wm: WorldModel, ac: ActorCritic, deter: torch.Tensor, stoch: torch.Tensor):
        """Roll the prior forward ``imag_horizon`` steps with the actor from N start states.
        Returns features (N, H + 1, F) of the start and imagined states and the actions (N, H, A)
        taken in states 0..H-1 (one-hot for discrete actions, unclipped samples for continuous)."""
        weights = wm.rssm.core_weights()
        feats, acts = [features(deter, stoch)], []
        for _ in range(self.imag_horizon):
            action = self._sample_action(ac.actor(feats[-1]))
            state = wm.rssm.img_step(deter, stoch, action, weights)
            deter, stoch = state.deter, state.stoch
            feats.append(features(deter, stoch))
            acts.append(action)
        return torch.stack(feats, 1), torch.stack(acts, 1)

    # -- the policy distribution (categorical with 1% unimix, or bounded normal) ------------------
    def _sample_action(self, raw: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return onehot(sample_index(unimix_probs(raw, self.actor_unimix)), self.act_dim, raw.dtype)
        mean, std = bounded_normal(raw[..., :self.act_dim], raw[..., self.act_dim:], self.minstd, self.maxstd)
        return mean + std * torch.randn_like(std)

    def _policy_logprob(self, raw: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a | s) and the policy entropy, (...) each, for raw actor outputs (..., *)."""
        if self.discrete:
            logp = unimix_logprobs(raw, self.actor_unimix)
            return (logp * action).sum(-1), categorical_entropy(logp)
        mean, std = bounded_normal(raw[..., :self.act_dim], raw[..., self.act_dim:], self.minstd, self.maxstd)
        return normal_logprob(action, mean, std).sum(-1), normal_entropy(std).sum(-1)

    def _action_vectors(self, action: torch.Tensor) -> torch.Tensor:
        """Stored actions (B, T) int64 or (B, T, A) float -> vectors the RSSM takes (B, T, A)."""
        if self.discrete:
            return onehot(action.long(), self.act_dim)
        return action.float()

    # ======================================================================================
    # Functional access for meta-learners
    # ======================================================================================
    def hparams(self) -> dict[str, float]:
        """The return's discount gamma, lambda and the actor's entropy scale eta that :meth:`update`
        uses (the hyperparameters meta-gradient RL adapts, ``meta.rule=meta_gradient``)."""
        return {"discount": self.discount, "lam": self.lam, "actent": self.actent}

    def set_hparams(self, values: Mapping[str, float]) -> None:
        """Set (any of) :meth:`hparams` for all further training; they are part of :meth:`state_dict`.

        ``lam`` and ``actent`` enter the loss as in the paper. The discount needs a choice, because
        DreamerV3 learns it into the continue head: the head's target is c * gamma_0 with c the
        continuation flag and gamma_0 = 1 - 1/horizon (authors' ``contdisc``). We keep that target
        (the world model stays a model of the environment and does not move with gamma) and apply
        the adapted discount where returns are formed:

        * imagination: gamma_t = sigmoid(cont_t) / gamma_0 * gamma, i.e. the head's continuation
          probability times gamma (the weights w_t = prod_k gamma_k of the imagined states too);
        * replayed sequences: gamma_t = (1 - terminal_t) * gamma.

        With gamma = gamma_0 this is DreamerV3 unchanged. ``loss(..., hparams=...)`` is differentiable
        wherever gamma enters: the returns (as g_eta(tau) in Xu et al. 2018, eq. 1-4) and, unlike
        their actor-critic loss, which has no state weighting, DreamerV3's weights w_t. The return
        scale S stays a constant. The head's continuation probability is not clipped to 1, so that
        gamma = gamma_0 reproduces the recipe exactly."""
        limits = {"discount": (0.0, 1.0), "lam": (0.0, 1.0), "actent": (0.0, math.inf)}
        for k, v in values.items():
            if k not in limits:
                raise UserError(f"DreamerV3 has no hyperparameter {k!r} to set; it has {sorted(limits)}.")
            lo, hi = limits[k]
            if not lo <= float(v) <= hi:
                raise UserError(f"DreamerV3 hyperparameter {k}={float(v)} is outside [{lo}, {hi}].")
        for k, v in values.items():
            setattr(self, k, float(v))

    def _resolve_hparams(self, hparams: Mapping[str, torch.Tensor | float] | None) -> dict[str, Any]:
        """The agent's values, overridden by ``hparams`` (tensors moved to the agent's device)."""
        unknown = set(hparams or {}) - set(self.hparams())
        if unknown:
            raise UserError(f"DreamerV3's loss has no hyperparameters {sorted(unknown)}; "
                            f"it has {sorted(self.hparams())}.")
        over = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else float(v)) for k, v in (hparams or {}).items()}
        return {**self.hparams(), **over}

    def parts(self) -> dict[str, list[str]]:
        names = [n for n, _ in self.nets.named_parameters()]
        return {"world_model": [n for n in names if n.startswith("world_model.")],
                "actor_critic": [n for n in names if n.startswith("actor_critic.")]}

    def params(self, part: str = "all") -> dict[str, torch.Tensor]:
        named = dict(self.nets.named_parameters())
        if part == "all":
            return named
        groups = self.parts()
        if part not in groups:
            raise choices_error("DreamerV3 parameter part", part, [*groups, "all"])
        return {n: named[n] for n in groups[part]}

    # ======================================================================================
    # Persistence, info, plots
    # ======================================================================================
    def state_dict(self, *, replay: bool = False) -> dict[str, Any]:
        """A snapshot (copies, not views of the live tensors) of everything needed to continue
        exactly: weights, slow critic, optimizer moments, normalizer, counters, hyperparameters
        (:meth:`hparams`), and the replay when ``replay`` (the global RNG is the caller's: the
        training loop saves it)."""
        return {"agent": self.name, "version": 1, "preset": self.size, "spec": self.env_spec.describe(),
                "nets": copy.deepcopy(self.nets.state_dict()),
                "slow_critic": copy.deepcopy(self.slow_critic.state_dict()),
                "optimizer": copy.deepcopy(self.opt.state_dict()), "retnorm": self.retnorm.detach().cpu().clone(),
                "counters": {"updates": self.updates, "ratio_start": self.ratio_start,
                             "ratio_updates": self.ratio_updates},
                "hparams": self.hparams(),
                "replay": self.replay.state_dict() if replay else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        kind = state.get("agent") if isinstance(state, Mapping) else None
        if kind != self.name:
            raise UserError(f"this checkpoint holds the state of agent {kind!r}, but a {self.name!r} agent state "
                            f"was expected; load it with agent={kind}.")
        if state["preset"] != self.size or state["spec"] != self.env_spec.describe():
            raise UserError(f"this DreamerV3 checkpoint was made with size={state['preset']!r} on "
                            f"{state['spec']}, but the agent was built with size={self.size!r} on "
                            f"{self.env_spec.describe()}; rebuild it with the checkpoint's size and task.")
        try:
            self.nets.load_state_dict(state["nets"])
            self.slow_critic.load_state_dict(state["slow_critic"])
        except RuntimeError as e:
            raise UserError(f"the DreamerV3 checkpoint does not fit this agent's networks: {str(e)[:300]}") from None
        self.opt.load_state_dict(state["optimizer"])
        self.retnorm.copy_(state["retnorm"])
        c = state["counters"]
        self.updates, self.ratio_start, self.ratio_updates = c["updates"], c["ratio_start"], c["ratio_updates"]
        if "hparams" in state:  # older checkpoints: the constructor's values
            self.set_hparams(state["hparams"])
        if state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"])

    def info(self) -> dict[str, Any]:
        parts = self.parts()
        named = dict(self.nets.named_parameters())
        count = lambda names: int(sum(named[n].numel() for n in names))  # noqa: E731
        return {"agent": self.name, "preset": self.size, "params": count(named),
                "params_world_model": count(parts["world_model"]),
                "params_actor_critic": count(parts["actor_critic"]),
                "dims": self.preset.to_dict(), "lr": self.lr, "batch": [self.batch_size, self.batch_length],
                "imag_last": self.imag_last,
                "replay_ratio": self.replay_ratio, "replay_ratio_definition": "replayed time steps per env step",
                "updates": self.updates, "replay_bytes_per_step": self.replay.bytes_per_step(),
                "device": str(self.device), "spec": self.env_spec.describe()}

    def write_plots(self, directory: str | Path, env_steps: int) -> Path | None:
        """``reconstruction.png``: real observations, the model's reconstructions of the first half
        of a replayed window (posterior) and its open-loop imagination of the second half given the
        real actions. Uses a private RNG, so plotting never changes the course of training."""
        if not self.replay.can_sample():
            return None
        from metawm.agents.dreamerv3 import plots

        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(int(env_steps))
            gen = torch.Generator().manual_seed(int(env_steps))
            data = self.replay.sample(min(4, self.batch_size), gen)
            batch = {k: torch.from_numpy(v).to(self.device) for k, v in data.items()}
            real, model, context = self._open_loop(batch)
        return plots.reconstruction(Path(directory) / "reconstruction.png", real, model, context, self.image,
                                    title=f"DreamerV3 ({self.size}) at {env_steps} env steps")

    def _open_loop(self, batch: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, int]:
        wm = self.nets.world_model
        obs = batch["obs"] if self.image else batch["obs"].float()
        B, T = batch["is_first"].shape
        context = max(1, T // 2)
        act = self._action_vectors(batch["action"])
        prev = torch.cat([torch.zeros_like(act[:, :1]), act[:, :-1]], 1) * (~batch["is_first"])[..., None].float()
        embed = wm.encoder(obs[:, :context].flatten(0, 1)).unflatten(0, (B, context))
        post = wm.rssm.observe(embed, prev[:, :context], batch["is_first"][:, :context])
        deters, stochs = [post.deter[:, i] for i in range(context)], [post.stoch[:, i] for i in range(context)]
        deter, stoch = deters[-1], stochs[-1]
        for t in range(context, T):
            state = wm.rssm.img_step(deter, stoch, prev[:, t])
            deter, stoch = state.deter, state.stoch
            deters.append(deter)
            stochs.append(stoch)
        deter, stoch = torch.stack(deters, 1), torch.stack(stochs, 1)
        pred = wm.decoder(deter.flatten(0, 1), stoch.flatten(0, 1)).unflatten(0, (B, T))
        if self.image:
            model = (pred.clamp(0, 1) * 255).round().to(torch.uint8)
        else:
            model = symexp(pred)
        return obs.cpu().numpy(), model.cpu().numpy(), context


def _to_floats(metrics: Mapping[str, torch.Tensor]) -> Metrics:
    """One device->host transfer for all metrics."""
    keys = list(metrics)
    values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values))
