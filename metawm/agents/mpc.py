"""A small model-based agent: a learned MLP world model and random-shooting MPC.

After Nagabandi, Kahn, Fearing, Levine, "Neural Network Dynamics for Model-Based Deep Reinforcement
Learning with Model-Free Fine-Tuning" (ICRA 2018), the agent that GrBAL/ReBAL (Nagabandi et al.,
ICLR 2019) meta-train: a feed-forward network predicts, from an observation and an action, the
change of the observation, the reward and the probability that the episode terminates; actions
come from model-predictive control by random shooting (``candidates`` random action sequences of
``horizon`` steps rolled through the model, the first action of the best one is taken, replanned
every step). With ``warm_start`` the previous step's best sequence, shifted by one step, is one of
the candidates (the warm start of PETS' CEM, Chua et al. NeurIPS 2018, and MPPI, Williams et al.
ICRA 2017), so a plan to a far target, once found, is kept and refined instead of being searched
for again from scratch; the plan is the agent's carry.

Why it is in metawm: it is a *real* world-model agent that learns the vector suites
(``point_nav``, ``cartpole_physics``, ``gridworld_goals``) in hundreds to a few thousand env steps
on a CPU, so the meta-learners can be developed, tested and measured on 2 cores, where DreamerV3
and MuZero need hours for the same evidence. It conforms to :class:`metawm.protocols.Agent`; its
one parameter part is ``world_model`` (the whole network) and its loss is a pure function of the
parameters (``torch.func`` can vmap and grad it; metrics are reported by ``update``).

Inputs are symlog-squashed and rewards are predicted in symlog space (Hafner et al., DreamerV3), so
that losses stay O(1) when the agent wanders far or rewards are large - which keeps the functional
SGD steps of MAML stable. Vector observations only (an image suite is refused with a clear error). Planned returns are
sum_h gamma^h * alive_h * r_h with alive_h the predicted probability of not having terminated.
With ``value`` a learned state value closes the horizon (the terminal value of POLO, Lowrey et al.,
ICLR 2019, and TD-MPC, Hansen, Wang, Su, ICML 2022): planned returns add gamma^H * alive_H * V(s_H),
where V is a separate MLP trained by TD(0) on replayed transitions, y = r + gamma (1 - terminal)
V_bar(s'), with V_bar an EMA copy (``value_tau``), in symlog space. Why: with an alive-only reward
(cartpole_physics) every candidate survives a 10-step horizon near the upright, so the planner cannot
see the cart drifting off the track until it is too late - 11 of 12 test tasks ended that way
(seed 0) - while V(s) sees past the horizon. Off by default (the measured benchmarks ran without it).
Exploration: with ``explore`` a random action with probability ``explore_eps`` (discrete) or
Gaussian noise of scale ``explore_noise`` (continuous); uniformly random actions while the model
is the untouched initial one (before its first gradient step, unless its parameters were loaded).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metawm.infra.errors import UserError, choices_error
from metawm.ops.adam import Adam
from metawm.ops.symlog import symexp, symlog
from metawm.types import EnvSpec, Metrics, Step


@dataclasses.dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    candidates: int
    horizon: int
    train_after: int


PRESETS = {"tiny": Preset(32, 2, 64, 6, 50), "small": Preset(64, 2, 256, 10, 100),
           "medium": Preset(128, 3, 512, 15, 200)}
KEYS = ("obs", "action", "reward", "next_obs", "terminal")


class MPCAgent:
    name = "mpc"

    def __init__(self, env_spec: EnvSpec, device: torch.device | str = "cpu", size: str = "small", *,
                 hidden: int | None = None, layers: int | None = None, candidates: int | None = None,
                 horizon: int | None = None, discount: float = 0.99, lr: float = 1e-3, batch_size: int = 64,
                 train_ratio: float = 0.5, train_after: int | None = None, replay_capacity: int = 100_000,
                 explore_eps: float = 0.1, explore_noise: float = 0.3, term_scale: float = 1.0,
                 warm_start: bool = False, candidate_repeat: float = 0.0, context_inputs: bool = True,
                 value: bool = False, value_tau: float = 0.01):
        if env_spec.is_image:
            raise UserError(f"agent=mpc plans with a vector world model and takes vector observations Box(shape=(D,)); "
                            f"this task has {env_spec.describe()}. Use agent=dreamerv3 for image suites.")
        if size not in PRESETS:
            raise choices_error("MPC agent size preset (agent.size)", size, PRESETS)
        p = PRESETS[size]
        self.env_spec, self.device, self.size = env_spec, torch.device(device), size
        self.hidden = int(hidden or p.hidden)
        self.layers = int(layers or p.layers)
        self.candidates, self.horizon = int(candidates or p.candidates), int(horizon or p.horizon)
        self.discount, self.lr, self.batch_size = float(discount), float(lr), int(batch_size)
        self.train_ratio, self.train_after = float(train_ratio), int(train_after if train_after is not None else p.train_after)
        self.explore_eps, self.explore_noise, self.term_scale = float(explore_eps), float(explore_noise), float(term_scale)
        self.warm_start = bool(warm_start)
        self.candidate_repeat = float(candidate_repeat)
        self.context_inputs = bool(context_inputs)
        if not 0.0 <= self.candidate_repeat < 1.0:
            raise UserError(f"agent.candidate_repeat is a probability in [0, 1), got {candidate_repeat}.")
        self.obs_dim = int(env_spec.obs_space.shape[0])
        self.act_dim = env_spec.num_actions
        dims = [self.obs_dim + self.act_dim] + [self.hidden] * self.layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        mods.append(nn.Linear(dims[-1], self.obs_dim + 2))
        self.model = nn.Sequential(*mods).to(self.device)
        self.value, self.value_tau = None, float(value_tau)
        if value:  # V(s) in symlog space, its own MLP (the world model's features serve prediction, not value)
            self.value = nn.Sequential(nn.Linear(self.obs_dim, self.hidden), nn.SiLU(), nn.Linear(self.hidden, self.hidden),
                                       nn.SiLU(), nn.Linear(self.hidden, 1)).to(self.device)
            self.value_target = copy.deepcopy(self.value).requires_grad_(False)
        self.opt = Adam(self._named_params().values(), lr=self.lr)
        self._init_weight = self.model[0].weight.detach().clone()
        self.capacity = int(replay_capacity)
        self.replay = {k: np.zeros((self.capacity, *s), np.float32) for k, s in self._shapes().items()}
        self.size_, self.pos = 0, 0
        self._last: dict[str, np.ndarray] | None = None
        self.updates, self.ratio_start, self.ratio_updates = 0, None, 0
        # An outside reward model for planning (None: the network's own reward head). A factory, called
        # once per planning step as reward_fn(obs, candidates) with the (n, D) observations planning
        # starts from; it returns r(s, a, s_next) -> rewards on flat (n * candidates, ...) tensors
        # (env-major), ``a`` one-hot (discrete) or the action. VariBAD installs its belief-conditioned
        # reward decoder here (metawm/meta/varibad.py).
        self.reward_fn: Callable[[torch.Tensor, int], Callable[..., torch.Tensor]] | None = None
        self.set_context_dims(0)

    def set_context_dims(self, k: int) -> None:
        """Declare the last ``k`` observation dims context rather than state (VariBAD's belief): the
        model does not predict their change (it is not in the loss) and imagination holds them at the
        planning root's values, as VariBAD's planning reward does with the belief."""
        if not 0 <= int(k) < self.obs_dim:
            raise ValueError(f"context dims must be in [0, {self.obs_dim}), got {k}")
        self.context_dims = int(k)
        self._state_mask = (torch.arange(self.obs_dim, device=self.device) < self.obs_dim - self.context_dims).float()
        # context_inputs=False: the model does not see the context either (task-independent dynamics,
        # e.g. gridworld_goals; the reward still comes from VariBAD's belief-conditioned decoder)
        self._input_mask = torch.ones_like(self._state_mask) if self.context_inputs else self._state_mask

    def _shapes(self) -> dict[str, tuple]:
        act = () if self.env_spec.is_discrete else (self.act_dim,)
        return {"obs": (self.obs_dim,), "action": act, "reward": (), "next_obs": (self.obs_dim,), "terminal": ()}

    # -- the model -------------------------------------------------------------------------------
    def _action_vec(self, action: torch.Tensor) -> torch.Tensor:
        if self.env_spec.is_discrete:
            return F.one_hot(action.long(), self.act_dim).float()
        return action.float()

    def _predict(self, params: Mapping[str, torch.Tensor] | None, obs: torch.Tensor, action: torch.Tensor):
        """(observation change, symlog reward, termination logit) for a batch of (obs, action)."""
        x = torch.cat([symlog(obs) * self._input_mask, self._action_vec(action)], -1)
        out = self.model(x) if params is None else torch.func.functional_call(self.model, dict(params), (x,), strict=False)
        return out[..., :self.obs_dim] * self._state_mask, out[..., self.obs_dim], out[..., self.obs_dim + 1]

    def _terms(self, params, batch) -> dict[str, torch.Tensor]:
        model = None if params is None else {k: v for k, v in params.items() if not k.startswith("value.")}
        delta, reward, term_logit = self._predict(model, batch["obs"], batch["action"])
        out = {"dyn": (((delta - (batch["next_obs"] - batch["obs"])) * self._state_mask) ** 2).sum(-1).mean(),
               "rew": ((reward - symlog(batch["reward"])) ** 2).mean(),
               "term": F.binary_cross_entropy_with_logits(term_logit, batch["terminal"])}
        if self.value is not None:
            vparams = None if params is None else {k[6:]: v for k, v in params.items() if k.startswith("value.")}
            with torch.no_grad():
                nxt = symexp(self.value_target(self._value_input(batch["next_obs"]))[..., 0])
                target = symlog(batch["reward"] + self.discount * (1 - batch["terminal"]) * nxt)
            out["value"] = ((self._v(vparams, batch["obs"]) - target) ** 2).mean()
        return out

    def _value_input(self, obs: torch.Tensor) -> torch.Tensor:
        return symlog(obs) * self._input_mask

    def _v(self, params: Mapping[str, torch.Tensor] | None, obs: torch.Tensor) -> torch.Tensor:
        """V(obs) in symlog space; ``params`` (names without the ``value.`` prefix) or the live net."""
        x = self._value_input(obs)
        out = self.value(x) if not params else torch.func.functional_call(self.value, dict(params), (x,), strict=False)
        return out[..., 0]

    @staticmethod
    def _total(t: Mapping[str, torch.Tensor], term_scale: float) -> torch.Tensor:
        return t["dyn"] + t["rew"] + term_scale * t["term"] + t.get("value", 0.0)

    def loss(self, params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """Model loss with ``params`` substituted: squared error of the observation change and the
        reward, binary cross-entropy of termination (and with ``value`` the TD(0) error of V).
        Pure (torch.func-friendly); metrics come from :meth:`update`."""
        t = self._terms(params, batch)
        return self._total(t, self.term_scale), {}

    # -- acting ----------------------------------------------------------------------------------
    def initial_carry(self, n: int) -> torch.Tensor | None:
        """None, or with ``warm_start`` the last best plan per env (none yet: an empty (n, 0) tensor)."""
        return torch.zeros(n, 0, device=self.device) if self.warm_start else None

    def _candidates(self, n: int) -> torch.Tensor:
        """Random action sequences (n, N, H[, A]): i.i.d. uniform, or with ``candidate_repeat`` = p each
        step repeats the sequence's previous action with probability p. Temporally correlated
        proposals (cf. the colored noise of iCEM, Pinneri et al., CoRL 2020) make the long straight
        runs that reach a far target likely: on gridworld_goals a goal 7 moves away is reached by
        a few of 256 i.i.d. sequences of 10 steps at best."""
        N, H = self.candidates, self.horizon
        if self.env_spec.is_discrete:
            seqs = torch.randint(self.act_dim, (n, N, H), device=self.device)
        else:
            seqs = torch.rand(n, N, H, self.act_dim, device=self.device) * 2 - 1
        if self.candidate_repeat > 0:
            repeat = torch.rand(n, N, H, device=self.device) < self.candidate_repeat
            for h in range(1, H):
                seqs[:, :, h] = torch.where(repeat[:, :, h].reshape(n, N, *([1] * (seqs.dim() - 3))),
                                            seqs[:, :, h - 1], seqs[:, :, h])
        return seqs

    @torch.no_grad()
    def act(self, step: Step, carry: torch.Tensor | None, *, explore: bool) -> tuple[np.ndarray, torch.Tensor | None]:
        n = len(step["is_first"])
        if not self._fitted():  # the untouched initial model: act at random
            return self._random(n), carry
        obs = torch.as_tensor(step["obs"], dtype=torch.float32, device=self.device)
        N, H = self.candidates, self.horizon
        seqs = self._candidates(n)
        if self.warm_start and carry is not None and carry.shape[:2] == (n, H):
            # candidate 0: last step's best plan shifted by one, its new last action drawn at random
            seqs[:, 0, :-1] = carry[:, 1:].to(seqs.dtype)
        s = obs[:, None].expand(n, N, self.obs_dim).reshape(n * N, self.obs_dim)
        outside = self.reward_fn(obs, N) if self.reward_fn is not None else None
        flat = seqs.reshape(n * N, H, *seqs.shape[3:])
        ret = torch.zeros(n * N, device=self.device)
        alive = torch.ones(n * N, device=self.device)
        for h in range(H):
            delta, r, term = self._predict(None, s, flat[:, h])
            r = symexp(r) if outside is None else outside(s, self._action_vec(flat[:, h]), s + delta)
            ret = ret + (self.discount ** h) * alive * r
            alive = alive * (1 - torch.sigmoid(term))
            s = s + delta
        if self.value is not None:
            ret = ret + (self.discount ** H) * alive * symexp(self._v(None, s))
        best = ret.reshape(n, N).argmax(-1)
        plan = seqs[torch.arange(n), best]
        if self.warm_start:
            carry = plan
        first = plan[:, 0]
        if self.env_spec.is_discrete:
            if explore:
                rand = torch.rand(n, device=self.device) < self.explore_eps
                first = torch.where(rand, torch.randint(self.act_dim, (n,), device=self.device), first)
            return first.cpu().numpy().astype(np.int64), carry
        if explore:
            first = (first + self.explore_noise * torch.randn_like(first)).clamp(-1, 1)
        return first.cpu().numpy().astype(np.float32), carry

    def _fitted(self) -> bool:
        """Planning starts once the model has been trained here, or its parameters were set from
        outside (a checkpoint, a meta-learned initialization, a learned optimizer)."""
        return self.updates > 0 or not torch.equal(self.model[0].weight, self._init_weight)

    def _random(self, n: int) -> np.ndarray:
        if self.env_spec.is_discrete:
            return torch.randint(self.act_dim, (n,)).numpy().astype(np.int64)
        return (torch.rand(n, self.act_dim) * 2 - 1).numpy().astype(np.float32)

    # -- storing ---------------------------------------------------------------------------------
    def observe(self, step: Step) -> None:
        """Pairs each step with the previous one of the same env into a transition."""
        last = self._last
        if last is not None and len(last["is_last"]) == len(step["is_first"]):
            ok = ~np.asarray(step["is_first"], bool) & ~last["is_last"]
            for i in np.flatnonzero(ok):
                self._add(last["obs"][i], last["action"][i], step["reward"][i], step["obs"][i], step["is_terminal"][i])
        self._last = {"obs": np.asarray(step["obs"], np.float32).copy(), "action": np.asarray(step["action"]).copy(),
                      "is_last": np.asarray(step["is_last"], bool).copy()}

    def _add(self, obs, action, reward, next_obs, terminal) -> None:
        i = self.pos
        for k, v in zip(KEYS, (obs, action, reward, next_obs, terminal)):
            self.replay[k][i] = v
        self.pos = (self.pos + 1) % self.capacity
        self.size_ = min(self.size_ + 1, self.capacity)

    def _waiting(self) -> bool:
        """Whether training waits for more data: a fresh model until ``train_after`` transitions are
        stored; a fitted one (a checkpoint, a meta-learned initialization being fine-tuned or
        adapted) only until its first transition, so that a few short episodes of a new task can
        adapt it. (Before, the wait applied to fitted models too: on cartpole_actuator, 10-step
        episodes of a failing pretrained agent never reached 50 transitions in 3 shots, and neither
        fine-tuning nor MAML's adaptation took a single step.)"""
        return self.size_ == 0 or (self.size_ < self.train_after and not self._fitted())

    def sample_batch(self, rng: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
        if self._waiting():
            return None
        idx = torch.randint(self.size_, (self.batch_size,), generator=rng).numpy()
        return {k: torch.from_numpy(v[idx]).to(self.device) for k, v in self.replay.items()}

    # -- learning --------------------------------------------------------------------------------
    def update(self, env_steps: int) -> Metrics:
        """``train_ratio`` gradient steps per env step since training started (Adam)."""
        if self._waiting():
            return {}
        if self.ratio_start is None:
            self.ratio_start = int(env_steps)
        due = 1 + math.floor((int(env_steps) - self.ratio_start) * self.train_ratio) - self.ratio_updates
        rows = []
        for _ in range(max(0, due)):
            terms = self._terms(None, self.sample_batch())
            total = self._total(terms, self.term_scale)
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            self.opt.step()
            if self.value is not None:
                with torch.no_grad():
                    for p_bar, p in zip(self.value_target.parameters(), self.value.parameters()):
                        p_bar.lerp_(p, self.value_tau)
            self.updates += 1
            self.ratio_updates += 1
            rows.append([float(total.detach()), *(float(terms.get(k, torch.zeros(())).detach())
                                                  for k in ("dyn", "rew", "term", "value"))])
        if not rows:
            return {}
        m = np.mean(rows, 0)
        out = {"loss/total": m[0], "wm/loss/dyn": m[1], "wm/loss/rew": m[2], "wm/loss/term": m[3],
               "replay/size": float(self.size_), "replay/updates": float(self.updates)}
        if self.value is not None:
            out["value/loss"] = m[4]
        return out

    # -- functional access -----------------------------------------------------------------------
    def parts(self) -> dict[str, list[str]]:
        """``world_model``: the whole network; ``head``: its output layer (the part an ANIL-style
        inner loop adapts, ``meta.inner_part=head``)."""
        names = [n for n, _ in self.model.named_parameters()]
        last = str(len(self.model) - 1)
        parts = {"world_model": names, "head": [n for n in names if n.split(".")[0] == last]}
        if self.value is not None:
            parts["value"] = [f"value.{n}" for n, _ in self.value.named_parameters()]
        return parts

    def _named_params(self) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters())
        if self.value is not None:
            named.update({f"value.{n}": p for n, p in self.value.named_parameters()})
        return named

    def params(self, part: str = "all") -> dict[str, torch.Tensor]:
        parts = self.parts()
        if part != "all" and part not in parts:
            raise choices_error("MPC agent parameter part", part, ["all", *parts])
        named = self._named_params()
        return named if part == "all" else {n: named[n] for n in parts[part]}

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self, *, replay: bool = False) -> dict[str, Any]:
        state = {"agent": self.name, "size": self.size, "spec": self.env_spec.describe(),
                 "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                 "opt": self.opt.state_dict(),
                 "value": None if self.value is None else {
                     "net": {k: v.detach().cpu().clone() for k, v in self.value.state_dict().items()},
                     "target": {k: v.detach().cpu().clone() for k, v in self.value_target.state_dict().items()}},
                 "counters": {"updates": self.updates, "ratio_start": self.ratio_start,
                              "ratio_updates": self.ratio_updates}, "replay": None}
        if replay:
            state["replay"] = {"data": {k: v[:self.size_].copy() for k, v in self.replay.items()},
                               "size": self.size_, "pos": self.pos, "last": self._last}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("agent") != self.name:
            raise UserError(f"this checkpoint holds the state of agent {state.get('agent') if isinstance(state, Mapping) else '?'!r}, "
                            f"not {self.name!r}; load it with that agent.")
        if state["spec"] != self.env_spec.describe():
            raise UserError(f"this MPC agent state was made on {state['spec']}, but the agent was built on "
                            f"{self.env_spec.describe()}.")
        if (state.get("value") is None) != (self.value is None):
            raise UserError(f"this MPC agent state was saved with agent.value={state.get('value') is not None}, but the "
                            f"agent was built with agent.value={self.value is not None}; build it as it was trained.")
        try:
            self.model.load_state_dict(state["model"])
            if self.value is not None:
                self.value.load_state_dict(state["value"]["net"])
                self.value_target.load_state_dict(state["value"]["target"])
        except RuntimeError as e:
            raise UserError(f"the MPC agent state does not fit this agent (agent.size / hidden / layers differ): "
                            f"{str(e)[:200]}") from None
        self.opt.load_state_dict(state["opt"])
        c = state["counters"]
        self.updates, self.ratio_start, self.ratio_updates = c["updates"], c["ratio_start"], c["ratio_updates"]
        r = state.get("replay")
        if r is not None:
            for k, v in r["data"].items():
                self.replay[k][:len(v)] = v
            self.size_, self.pos, self._last = r["size"], r["pos"], r["last"]

    def info(self) -> dict[str, Any]:
        return {"agent": self.name, "preset": self.size, "params": sum(p.numel() for p in self._named_params().values()),
                "hidden": self.hidden, "layers": self.layers, "candidates": self.candidates, "horizon": self.horizon}
