"""MuZero as an inner-loop agent: plan with a learned model, learn the model from the plans.

Schrittwieser et al., "Mastering Atari, Go, Chess and Shogi by Planning with a Learned Model",
Nature 2020; with options from MuZero Reanalyze (same paper, appendix H), Gumbel MuZero
(Danihelka et al., ICLR 2022) and EfficientZero (Ye et al., NeurIPS 2021). The story:

1. **Act** (:meth:`MuZeroAgent.act`). The representation h encodes the last ``frame_stack``
   observations of each of the N environments; one batched MCTS over the N roots
   (:mod:`.search`) plans with the dynamics g and prediction f. Exploring, pUCT search adds
   Dirichlet noise at the root and the action is sampled from the visit counts with the
   temperature schedule (appendix D); Gumbel search samples Gumbel noise and plays its
   Sequential Halving winner. Evaluating, the most visited action (Gumbel: the noiseless
   winner). The search statistics are kept until :meth:`observe`.
2. **Observe** stores each step with the search's root policy and value in the game buffer
   (:mod:`.buffer`), one stream per environment.
3. **Update**, as often as ``replay_ratio`` (gradient updates per environment step) asks:
   sample B positions with priorities, build K-step targets (:meth:`sample_batch`): n-step
   value targets bootstrapped from stored search values (MuZero) or recomputed with the target
   network (``value_target=network``: MuZero Reanalyze's fresh value targets; ``search``:
   fresh MCTS root values, as EfficientZero does with its off-policy correction), and for a
   ``reanalyze_fraction`` of the batch fresh search policies from the latest network (MuZero
   Reanalyze); then one optimizer step on :func:`.losses.muzero_loss` and new priorities.

Parameters are explicit (DESIGN.md): :meth:`parts` names the representation, dynamics and
prediction parameters, :meth:`loss` evaluates the training loss through
``torch.func.functional_call`` with any of them substituted, so MAML-style learners can adapt
and differentiate through it.

Continuous actions are refused: Sampled MuZero (Hubert et al., ICML 2021) is not implemented.

Where this deviates from the papers (each also noted where it happens):

* Optimizer: AdamW with decoupled weight decay and a linear warm-up for the small presets; the
  ``base`` preset uses the paper's SGD with momentum 0.9, lr 0.05, weight decay 1e-4 and its
  exponential decay lr * 0.1^(updates / 350k) (pseudocode ``lr_decay_rate``/``lr_decay_steps``).
  The ``small`` preset decays by 0.1 over 15k updates: at constant lr CartPole's evaluation
  return oscillated after first reaching 500 and one seed in five stayed below 450 at 20k env
  steps. Weight decay lives in the optimizer, not in ``loss``.
* Norm layers are LayerNorm / GroupNorm, not BatchNorm (``loss`` must be a pure function of the
  parameters for meta-learners); frames are 64x64 (latent 4x4), history is stacked frames only.
* Search statistics follow mctx: a node's expansion counts as a visit with its network value.
* Reanalyze (appendix H) recomputes policy targets with the latest parameters, without root
  noise; value bootstraps come from a target network copied every ``target_update_interval``
  updates (``value_target=network``), from a fresh search with it (``search``), or from the
  acting-time search (``stored``, the original MuZero).
* EfficientZero: the off-policy correction measures the age of data in environment steps and
  shortens n as in sec. 4.3 (l = clip(n - floor(age / (tau T)), 1, n)); EfficientZero also
  switches its bootstrap to fresh root values, which here is the separate ``value_target=search``.
  The value-prefix LSTM (sec. 4.2) feeds ReLU + MLP heads (no BatchNorm); the SimSiam projector
  (sec. 4.1) uses LayerNorm.
* Episode ends: positions past a terminal state are absorbing (value, reward 0; policy masked),
  as in the pseudocode; past a time-limit truncation the value target is masked instead, and an
  n-step window that reaches the truncation bootstraps from the last state's value.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from metawm.agents.muzero import presets
from metawm.agents.muzero.buffer import GameBuffer
from metawm.agents.muzero.losses import muzero_loss
from metawm.agents.muzero.nets import MuZeroNet, build_net
from metawm.agents.muzero.search import SearchConfig, search
from metawm.infra.errors import UserError, choices_error
from metawm.ops.nstep import windowed_n_step
from metawm.ops.value_transform import categorical_to_scalar, support
from metawm.types import EnvSpec, Metrics, Step

VALUE_TARGETS = ("stored", "network", "search")


class NetModel:
    """Adapts :class:`MuZeroNet` to the search's narrow interface: decodes the categorical heads
    to scalars and, with a value prefix, keeps the LSTM state and the parent's prefix in the
    node state so that the edge reward is the prefix difference (EfficientZero sec. 4.2; reset
    every ``horizon`` levels below the root)."""

    def __init__(self, net: MuZeroNet, value_bins: torch.Tensor, reward_bins: torch.Tensor,
                 value_prefix: bool = False, horizon: int = 5):
        self.net, self.vb, self.rb = net, value_bins, reward_bins
        self.value_prefix, self.horizon = value_prefix, horizon

    def initial(self, obs: torch.Tensor):
        s, p, v = self.net.initial(obs)
        value = categorical_to_scalar(v, self.vb)
        if not self.value_prefix:
            return (s,), p, value
        B, H = s.shape[0], self.net.dynamics.lstm.hidden_size
        z = torch.zeros(B, H, dtype=s.dtype, device=s.device)
        return (s, z, z, torch.zeros(B, dtype=s.dtype, device=s.device),
                torch.zeros(B, dtype=torch.long, device=s.device)), p, value

    def recurrent(self, state, action: torch.Tensor):
        if not self.value_prefix:
            nxt, r, p, v, _ = self.net.recurrent(state[0], action)
            return (nxt,), categorical_to_scalar(r, self.rb), p, categorical_to_scalar(v, self.vb)
        s, h, c, prefix, depth = state
        reset = (depth % self.horizon == 0)
        keep = (~reset).to(s.dtype).unsqueeze(-1)
        nxt, r, p, v, (h2, c2) = self.net.recurrent(s, action, (h * keep, c * keep))
        new_prefix = categorical_to_scalar(r, self.rb)
        reward = new_prefix - torch.where(reset, torch.zeros_like(prefix), prefix)
        return (nxt, h2, c2, new_prefix, depth + 1), reward, p, categorical_to_scalar(v, self.vb)


class MuZeroAgent:
    name = "muzero"

    def __init__(self, env_spec: EnvSpec, device: torch.device | str = "cpu", size: str = "small", *,
                 # search
                 num_simulations: int | None = None, pb_c_init: float = 1.25, pb_c_base: float = 19652.0,
                 dirichlet_alpha: float = 0.25, dirichlet_fraction: float = 0.25, gumbel: bool = False,
                 gumbel_max_considered: int = 16, gumbel_c_visit: float = 50.0, gumbel_c_scale: float = 0.1,
                 temperature_schedule: Sequence[Sequence[float]] | None = None,
                 # targets and losses
                 discount: float = 0.997, unroll_steps: int = 5, n_step: int | None = None,
                 value_support: int | None = None, reward_support: int | None = None,
                 value_loss_weight: float = 0.25, reward_loss_weight: float = 1.0, policy_loss_weight: float = 1.0,
                 # optimization and replay
                 batch_size: int | None = None, optimizer: str | None = None, lr: float | None = None,
                 lr_warmup: int | None = None, lr_decay_rate: float | None = None,
                 lr_decay_steps: int | None = None, weight_decay: float = 1e-4, grad_clip: float | None = None,
                 replay_ratio: float | None = None, learning_starts: int | None = None,
                 replay_capacity: int | None = None, priority_alpha: float | None = None,
                 priority_beta: float | None = None, frame_stack: int | None = None,
                 reanalyze_fraction: float | None = None, reanalyze_simulations: int | None = None,
                 value_target: str | None = None, target_update_interval: int | None = None,
                 # EfficientZero options
                 consistency_loss: bool = False, consistency_weight: float = 2.0,
                 value_prefix: bool = False, lstm_horizon: int = 5,
                 offpolicy_correction: bool = False, offpolicy_tau: float = 0.3,
                 offpolicy_total_steps: int = 100_000,
                 cpu_threads: int | None = 1):
        if not env_spec.is_discrete:
            raise UserError(
                f"agent=muzero supports discrete action spaces only, and this suite has {env_spec.describe()}. "
                "Sampled MuZero (Hubert et al. 2021), which plans over sampled continuous actions, is not "
                "implemented in metawm yet; use an agent for continuous control (e.g. agent=dreamerv3).")
        local = dict(locals())
        given = {k: local[k] for k in presets.PRESETS["small"] if k in local}
        self.cfg = cfg = presets.resolve(size, given)
        self.size = size
        self.env_spec = env_spec
        self.device = torch.device(device)
        if self.device.type == "cpu" and cpu_threads:
            # Search runs thousands of tiny ops; intra-op threads only add synchronization (on a
            # loaded 2-core machine a 32x32 linear took 230 us with 2 threads, 26 us with 1).
            torch.set_num_threads(int(cpu_threads))
        if cfg["value_target"] not in VALUE_TARGETS:
            raise choices_error("MuZero value_target", cfg["value_target"], VALUE_TARGETS)
        if cfg["optimizer"] not in ("adam", "sgd"):
            raise choices_error("MuZero optimizer", cfg["optimizer"], ("adam", "sgd"))
        for key in ("num_simulations", "batch_size", "n_step"):
            if int(cfg[key]) < 1:
                raise UserError(f"agent.{key} must be at least 1, got {cfg[key]}.")
        if int(unroll_steps) < 1:
            raise UserError(f"agent.unroll_steps must be at least 1, got {unroll_steps}.")
        if not 0.0 <= float(cfg["reanalyze_fraction"]) <= 1.0:
            raise UserError(f"agent.reanalyze_fraction must lie in [0, 1], got {cfg['reanalyze_fraction']}.")

        self.discount, self.K, self.n = float(discount), int(unroll_steps), int(cfg["n_step"])
        self.loss_weights = dict(value_weight=float(value_loss_weight), reward_weight=float(reward_loss_weight),
                                 policy_weight=float(policy_loss_weight), consistency_weight=float(consistency_weight))
        self.value_prefix, self.lstm_horizon = bool(value_prefix), int(lstm_horizon)
        self.consistency = bool(consistency_loss)
        self.offpolicy = (bool(offpolicy_correction), float(offpolicy_tau), int(offpolicy_total_steps))
        if frame_stack is None:   # the preset's stack for this kind of observation
            frame_stack = cfg["image_frame_stack"] if env_spec.is_image else cfg["frame_stack"]
        self.frame_stack = int(frame_stack)
        if self.frame_stack < 1:
            raise UserError(f"agent.frame_stack must be at least 1, got {self.frame_stack}.")
        self.search_cfg = SearchConfig(
            num_simulations=int(cfg["num_simulations"]), discount=self.discount, pb_c_init=float(pb_c_init),
            pb_c_base=float(pb_c_base), dirichlet_alpha=float(dirichlet_alpha),
            dirichlet_fraction=float(dirichlet_fraction), gumbel=bool(gumbel),
            gumbel_max_considered=int(gumbel_max_considered), gumbel_c_visit=float(gumbel_c_visit),
            gumbel_c_scale=float(gumbel_c_scale))
        self.reanalyze_cfg = dataclasses.replace(self.search_cfg, num_simulations=int(cfg["reanalyze_simulations"]))
        self.temperature_schedule = [(float(a), float(b)) for a, b in cfg["temperature_schedule"]]

        self.value_bins = support(int(cfg["value_support"]), device=self.device)
        self.reward_bins = support(int(cfg["reward_support"]), device=self.device)
        self.net = build_net(
            env_spec, frame_stack=self.frame_stack, value_bins=len(self.value_bins), reward_bins=len(self.reward_bins),
            mlp_hidden=cfg["mlp_hidden"], latent=cfg["latent"], mlp_layers=cfg["mlp_layers"], channels=cfg["channels"],
            down_blocks=tuple(cfg["down_blocks"]), res_blocks=cfg["res_blocks"],
            reduced_channels=cfg["reduced_channels"], head_hidden=cfg["head_hidden"], value_prefix=self.value_prefix,
            lstm_hidden=cfg["lstm_hidden"], consistency=self.consistency, proj_hidden=cfg["proj_hidden"],
            proj_out=cfg["proj_out"]).to(self.device)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.lr, self.lr_warmup = float(cfg["lr"]), int(cfg["lr_warmup"])
        self.lr_decay_rate, self.lr_decay_steps = float(cfg["lr_decay_rate"]), int(cfg["lr_decay_steps"])
        if not 0.0 < self.lr_decay_rate <= 1.0 or self.lr_decay_steps < 1:
            raise UserError("agent.lr_decay_rate must lie in (0, 1] and agent.lr_decay_steps be at least 1, got "
                            f"{self.lr_decay_rate} and {self.lr_decay_steps}.")
        self.grad_clip = float(cfg["grad_clip"] or 0.0)
        if cfg["optimizer"] == "adam":
            self.opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=float(weight_decay))
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9, weight_decay=float(weight_decay))
        self.batch_size = int(cfg["batch_size"])
        self.replay_ratio = float(cfg["replay_ratio"])
        self.learning_starts = int(cfg["learning_starts"])
        self.reanalyze_fraction = float(cfg["reanalyze_fraction"])
        self.value_target = cfg["value_target"]
        self.target_update_interval = max(1, int(cfg["target_update_interval"]))
        # The replay's numpy generator is seeded from the global torch RNG (seeded at the root)
        # and its state is part of state_dict, so runs are reproducible and resume exactly.
        self.buffer = GameBuffer(int(cfg["replay_capacity"]), tuple(env_spec.obs_space.shape),
                                 env_spec.obs_space.dtype, env_spec.num_actions, frame_stack=self.frame_stack,
                                 unroll_steps=self.K, n_step=self.n, alpha=float(cfg["priority_alpha"]),
                                 beta=float(cfg["priority_beta"]), seed=int(torch.randint(2**62, (1,))))
        self.updates = 0
        self.env_steps = 0
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._search_stats = np.zeros(5)   # count, root value, visit entropy, depth, value - raw value

    # -- acting ---------------------------------------------------------------------------------
    def initial_carry(self, n: int) -> np.ndarray | None:
        """The last ``frame_stack`` observations per env (None without stacking)."""
        if self.frame_stack == 1:
            return None
        return np.zeros((n, self.frame_stack, *self.env_spec.obs_space.shape), self.env_spec.obs_space.dtype)

    def _stack(self, obs: np.ndarray, carry: np.ndarray | None, first: np.ndarray) -> tuple[np.ndarray, Any]:
        if carry is None:
            return obs, None
        carry = np.concatenate([carry[:, 1:], obs[:, None]], 1)
        carry[first] = obs[first][:, None]
        if self.env_spec.is_image:   # (N, S, H, W, C) -> (N, H, W, S * C), oldest frame first
            N, S, H, W, C = carry.shape
            return carry.transpose(0, 2, 3, 1, 4).reshape(N, H, W, S * C), carry
        return carry.reshape(len(carry), -1), carry

    def temperature(self) -> float:
        t = self.temperature_schedule[0][1]
        for start, value in self.temperature_schedule:
            if self.updates >= start:
                t = value
        return t

    def _model(self, net: MuZeroNet) -> NetModel:
        return NetModel(net, self.value_bins, self.reward_bins, self.value_prefix, self.lstm_horizon)

    def act(self, step: Step, carry: Any, *, explore: bool) -> tuple[np.ndarray, Any]:
        obs, carry = self._stack(np.asarray(step["obs"]), carry, np.asarray(step["is_first"], bool))
        x = torch.as_tensor(obs, device=self.device)
        res = search(self._model(self.net), x, self.search_cfg, explore=explore)
        if res.action is not None:                              # Gumbel: the Sequential Halving winner
            action = res.action
        elif explore:
            temp = self.temperature()
            logits = torch.log(res.visits.clamp_min(1e-12)) / max(temp, 1e-6)
            action = torch.multinomial(torch.softmax(logits, -1).cpu().double(), 1).squeeze(-1)
        else:
            action = torch.argmax(res.visits, -1)
        self._pending = (res.policy.float().cpu().numpy(), res.root_value.float().cpu().numpy())
        if explore:
            p = res.visits / res.visits.sum(-1, keepdim=True)
            ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
            self._search_stats += [len(obs), float(res.root_value.sum()), float(ent.sum()),
                                   res.max_depth * len(obs), float((res.root_value - res.raw_value).sum())]
        return action.cpu().numpy().astype(np.int64), carry

    def observe(self, step: Step) -> None:
        """Store the steps with the search statistics of the ``act`` call that chose them. Steps
        that no ``act`` call planned for (fed from elsewhere) get a uniform policy and value 0."""
        N = len(step["is_first"])
        if self._pending is not None and len(self._pending[0]) == N:
            policy, value = self._pending
        else:
            policy = np.full((N, self.env_spec.num_actions), 1.0 / self.env_spec.num_actions, np.float32)
            value = np.zeros(N, np.float32)
        self._pending = None
        self.buffer.add(step, policy, value, stamp=self.env_steps)

    # -- learning -------------------------------------------------------------------------------
    def update(self, env_steps: int) -> Metrics:
        self.env_steps = int(env_steps)
        if env_steps < self.learning_starts or self.buffer.num_sampleable() < self.batch_size:
            return {}
        due = int((env_steps - self.learning_starts) * self.replay_ratio) + 1
        rows = [self._train_step() for _ in range(max(0, due - self.updates))]
        if not rows:
            return {}
        out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        out.update({"replay/size": float(len(self.buffer)), "replay/episodes": float(self.buffer.episodes()),
                    "replay/max_priority": float(self.buffer.max_priority), "model/updates": float(self.updates),
                    "model/lr": self._lr(), "search/temperature": self.temperature()})
        count = self._search_stats[0]
        if count > 0:
            out.update({"search/root_value": self._search_stats[1] / count,
                        "search/visit_entropy": self._search_stats[2] / count,
                        "search/max_depth": self._search_stats[3] / count,
                        "search/value_gain": self._search_stats[4] / count})
            self._search_stats[:] = 0
        return out

    def _lr(self) -> float:
        """Linear warm-up, then the pseudocode's exponential decay lr * rate^(updates / steps)."""
        lr = self.lr * self.lr_decay_rate ** (self.updates / self.lr_decay_steps)
        if self.lr_warmup > 0:
            return lr * min(1.0, (self.updates + 1) / self.lr_warmup)
        return lr

    def _train_step(self) -> Metrics:
        batch = self.sample_batch()
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        self.net.train()
        loss, metrics, priority = self._loss(None, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            metrics["model/grad_norm"] = float(nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip))
        self.opt.step()
        self.buffer.update_priorities(batch["rows"].numpy(), batch["slot"].numpy(), batch["pos"].numpy(),
                                      priority.detach().cpu().numpy())
        self.updates += 1
        if self.updates % self.target_update_interval == 0:
            self.target.load_state_dict(self.net.state_dict())
        metrics["replay/weight"] = float(batch["weight"].mean())
        return metrics

    def _offpolicy_n(self):
        on, tau, total = self.offpolicy
        if not on:
            return None
        n = self.n

        def horizon(age: np.ndarray) -> np.ndarray:
            """EfficientZero sec. 4.3: l = clip(k - floor(age / (tau T)), 1, k), age in env steps."""
            return np.clip(n - np.floor(age / (tau * total)), 1, n)

        return horizon

    @torch.no_grad()
    def sample_batch(self, rng: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
        """A training batch with fresh targets (see the module docstring), or None while the
        replay has too little data. ``rng`` (optional) draws this batch's positions from its own
        stream and leaves the replay's generator untouched."""
        if self.buffer.num_sampleable() == 0:
            return None
        saved = None
        if rng is not None:
            saved = self.buffer.rng_state()
            self.buffer.rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=rng)))
        try:
            raw = self.buffer.sample(self.batch_size, now=self.env_steps, offpolicy_n=self._offpolicy_n())
        finally:
            if saved is not None:
                self.buffer.rng = np.random.default_rng()
                self.buffer.set_rng_state(saved)
        B, K = self.batch_size, self.K
        dev = self.device
        t = lambda a, dtype=None: torch.as_tensor(a, device=dev, dtype=dtype)  # noqa: E731

        # value targets: n-step windows with the chosen bootstrap values
        if self.value_target == "stored":
            boot = t(raw["stored_boot_value"], torch.float32)
        else:
            boot_obs = t(self.buffer.stacked_obs(raw["boot_rows"].ravel(), raw["boot_pos"].ravel()))
            model = self._model(self.target)
            if self.value_target == "network":
                _, _, value = model.initial(boot_obs)
            else:
                value = search(model, boot_obs, self.reanalyze_cfg, explore=False).root_value
            boot = value.float().view(B, K + 1)
        z = windowed_n_step(t(raw["window_reward"]), t(raw["horizon"]), boot, t(raw["boot_mask"]), self.discount)

        # policy targets: stored search statistics, or for a fraction of the batch a fresh search with
        # the latest parameters (MuZero Reanalyze, appendix H; without root noise)
        policy = t(raw["target_policy"])
        n_re = int(round(self.reanalyze_fraction * B))
        if n_re > 0:
            rows, pos = raw["boot_rows"][:n_re].ravel(), raw["unroll_pos"][:n_re].ravel()
            res = search(self._model(self.net), t(self.buffer.stacked_obs(rows, pos)), self.reanalyze_cfg,
                         explore=False)
            fresh = res.policy.float().view(n_re, K + 1, -1)
            mask = t(raw["policy_mask"][:n_re]).unsqueeze(-1) > 0
            policy[:n_re] = torch.where(mask, fresh, policy[:n_re])

        batch = {
            "obs": t(self.buffer.stacked_obs(raw["rows"], raw["pos"])),
            "actions": t(raw["actions"]), "target_value": z.float(), "value_mask": t(raw["value_mask"]),
            "target_reward": t(raw["target_reward"]), "target_policy": policy,
            "policy_mask": t(raw["policy_mask"]), "weight": t(raw["weight"]),
            "rows": torch.as_tensor(raw["rows"]), "slot": torch.as_tensor(raw["slot"]),
            "pos": torch.as_tensor(raw["pos"]),
        }
        if self.consistency:
            rr, pp = raw["boot_rows"][:, 1:], raw["unroll_pos"][:, 1:]
            batch["target_obs"] = t(self.buffer.stacked_obs(rr.ravel(), pp.ravel()).reshape(B, K, *batch["obs"].shape[1:]))
            batch["consistency_mask"] = t(raw["consistency_mask"])
        return batch

    def _loss(self, params: Mapping[str, torch.Tensor] | None, batch: Mapping[str, torch.Tensor]):
        args = (batch["obs"], batch["actions"], batch.get("target_obs"))
        kwargs = {"lstm_horizon": self.lstm_horizon}
        if params is None:
            out = self.net(*args, **kwargs)
        else:
            out = torch.func.functional_call(self.net, dict(params), args, kwargs)
        return muzero_loss(out, batch, value_bins=self.value_bins, reward_bins=self.reward_bins,
                           value_prefix=self.value_prefix, lstm_horizon=self.lstm_horizon, **self.loss_weights)

    def loss(self, params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """MuZero's loss (eq. 1) with ``params`` substituted for the live parameters of the same
        names (``torch.func.functional_call``); parameters not given keep their live values."""
        loss, metrics, _ = self._loss(params, batch)
        return loss, metrics

    # -- functional access ----------------------------------------------------------------------
    def parts(self) -> dict[str, list[str]]:
        out = {name: [f"{name}.{n}" for n, _ in getattr(self.net, name).named_parameters()]
               for name in ("representation", "dynamics", "prediction")}
        if self.net.projection is not None:
            out["projection"] = [f"projection.{n}" for n, _ in self.net.projection.named_parameters()]
        return out

    def params(self, part: str = "all") -> dict[str, torch.Tensor]:
        named = dict(self.net.named_parameters())
        if part == "all":
            return named
        parts = self.parts()
        if part not in parts:
            raise choices_error("MuZero parameter group", part, ["all", *parts])
        return {n: named[n] for n in parts[part]}

    # -- persistence ----------------------------------------------------------------------------
    def _signature(self) -> dict[str, Any]:
        return {"obs": list(self.env_spec.obs_space.shape), "actions": self.env_spec.num_actions,
                "params": {n: list(p.shape) for n, p in self.net.named_parameters()}}

    def state_dict(self, *, replay: bool = False) -> dict[str, Any]:
        return {"agent": self.name, "size": self.size, "signature": self._signature(),
                "net": self.net.state_dict(), "target": self.target.state_dict(), "optimizer": self.opt.state_dict(),
                "updates": self.updates, "env_steps": self.env_steps, "search_stats": self._search_stats.copy(),
                "replay_rng": self.buffer.rng_state(),
                "replay": self.buffer.state_dict() if replay else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        kind = state.get("agent") if isinstance(state, Mapping) else None
        if kind != self.name:
            raise UserError(f"this checkpoint holds the state of agent {kind!r}, not of agent 'muzero'; "
                            f"load it with agent={kind} or start a fresh muzero run.")
        if state["signature"] != self._signature():
            theirs, mine = state["signature"], self._signature()
            what = ("observation shape" if theirs["obs"] != mine["obs"] else
                    "number of actions" if theirs["actions"] != mine["actions"] else "network architecture")
            raise UserError(f"this MuZero checkpoint (size {state.get('size')!r}) does not fit the agent being "
                            f"built (size {self.size!r}): the {what} differs. Use the same agent.size and "
                            "network options as the run that wrote it.")
        self.net.load_state_dict(state["net"])
        self.target.load_state_dict(state["target"])
        # a deep copy: torch's loader keeps the given state tensors, so an in-process transfer
        # (a meta-learner cloning agents) would otherwise share Adam moments between agents
        self.opt.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.updates, self.env_steps = int(state["updates"]), int(state["env_steps"])
        self._search_stats = np.array(state["search_stats"], dtype=np.float64)
        if state.get("replay") is not None:
            self.buffer.load_state_dict(state["replay"])
        self.buffer.set_rng_state(state["replay_rng"])

    # -- reporting ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"preset": self.size, "params": int(sum(p.numel() for p in self.net.parameters())),
                "network": "resnet" if self.env_spec.is_image else "mlp",
                "search": "gumbel" if self.search_cfg.gumbel else "puct",
                "num_simulations": self.search_cfg.num_simulations, "unroll_steps": self.K, "n_step": self.n,
                "frame_stack": self.frame_stack, "value_target": self.value_target,
                "reanalyze_fraction": self.reanalyze_fraction,
                "efficientzero": {"consistency_loss": self.consistency, "value_prefix": self.value_prefix,
                                  "offpolicy_correction": self.offpolicy[0]}}
