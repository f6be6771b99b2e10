"""``meta=varibad``: VariBAD (Zintgraf, Shiarlis, Igl, Schulze, Gal, Hofmann, Whiteson, "VariBAD: A Very
Good Method for Bayes-Adaptive Deep RL via Meta-Learning", ICLR 2020).

The story:

1. **Belief.** A recurrent encoder (GRU over embedded (a_{t-1}, r_t, s_t)) maps the trajectory so
   far tau_{:t} to a Gaussian posterior q(m | tau_{:t}) = N(mu_t, diag(exp(logvar_t))) over a latent
   task description m; the belief before any transition (t = 0) comes from the zero hidden state.
2. **Decoders.** A reward decoder p(r_j | s_{j-1}, a_{j-1}, s_j, m) and (``decode_state``) a
   transition decoder p(s_j | s_{j-1}, a_{j-1}, m) reconstruct the *whole* trajectory - past and
   future transitions - from a sample of the belief at every t.
3. **ELBO** (paper eq. 4 and sec. 4): sum over t of the reconstruction log-likelihood minus
   KL(q(m | tau_{:t}) || q(m | tau_{:t-1})) (the previous posterior as the prior; N(0, I) at t = 0),
   maximised on trajectories from a buffer of recent rollouts (:mod:`metawm.ops.elbo`).
4. **Policy.** The inner agent (any metawm agent, world-model agents included) is built on an
   augmented observation space: every observation is [s_t, mu_t, logvar_t], the belief appended
   and *detached* (the paper's default: the RL loss does not train the encoder). A world-model
   agent thus models and plans in the belief-augmented space: its world model and its policy are
   both conditioned on the belief. It trains with its own ``update`` on its own replay. An agent
   that declares context dims (``set_context_dims``, agent=mpc) treats [mu, logvar] as context:
   its model does not spend capacity predicting how the belief changes, and imagination holds the
   belief at the root's value (no anticipated information gain, as in the planning reward below).
   Where the tasks differ only in their rewards (``gridworld_goals``, ``point_nav``) pass
   ``agent.context_inputs=false`` too, so that the dynamics model does not see the belief at all:
   fed the (stale, replayed) beliefs, a gridworld model put 13% of its one-step predictions in a
   wrong cell, and 0% without them (benchmarks/meta_adaptation.py, seed 0).
   A *planning* agent (``agent=mpc``) plans with VariBAD's reward decoder instead of its own
   reward head (``plan_with_decoder``): the imagined reward is E[r | s, a, s', m] under beliefs
   m ~ q(m | tau_{:t}) of the state planning starts from - averaged over ``plan_samples`` of them
   (the posterior predictive reward), at the mean, or one sample (posterior sampling, which
   explores): ``plan_belief`` and :meth:`BeliefAgent.planning_reward`. (Deviation: the paper trains a model-free policy on the belief; a planner
   needs a belief-conditioned reward model, and the decoder is exactly that.) The planner reads
   the decoder at states no trajectory in the VAE's buffer visited from such a history, where
   nothing trains it: give the VAE covering data (``explore_members``; on gridworld, after a failed
   first episode p(goal) fell to ~0 at unvisited cells too and the planner stalled).
5. **Adaptation at test time is inference**: the belief is updated from the data the agent sees
   while acting; no gradient step is taken (``metawm.adapt`` meta rows: VariBAD's policy with
   belief inference; ``adapt_persist=true`` carries the belief across episodes of one task).

A gym episode is one rollout of one task; tasks are resampled per environment whenever its
episode ends (so on ``gridworld_goals`` every 4-episode BAMDP has a new goal, as in the paper).
``episodes_per_task=k`` makes a BAMDP of k consecutive episodes of one task for any suite: the
env is reset between them, the belief is not (the encoder steps on a boundary transition - no
action, no reward, the new start state - and the VAE's trajectory spans all k episodes, the
decoders skipping the boundary), like the authors' ``max_rollouts_per_task`` BAMDP wrapper. The inner
agent still sees k ordinary episodes, so its model learns no jump across the reset.
``adapt_persist=true`` then carries the belief across adaptation episodes as in training.

**RL^2-style baseline** in the same code: ``encoder=none rl2_inputs=true`` gives the agent
[s_t, a_{t-1}, r_t] and no belief model, so only the agent's own recurrence (DreamerV3's RSSM) can
integrate the task evidence - a recurrent policy on (obs, action, reward) without the decoder.

**Limits of this version.** Vector observations only: image suites (``atari_suite``) are refused
with an error (appending a belief to pixels needs an agent-side conditioning input, see the note in
the report). Beliefs stored in the agent's replay are those computed when acting (they go stale as
the encoder trains; the paper's on-policy A2C/PPO does not have this issue, its off-policy SAC
variant does). The state decoder is Gaussian (squared error); the reward decoder is Gaussian on
(s, a, s') by default, or, as in the authors' gridworld config (``rew_pred_type=bernoulli``,
``input_prev_state=input_action=False``), Bernoulli over two reward values on s' alone
(``reward_likelihood=bernoulli reward_range=[lo,hi] reward_inputs=next_state``). The authors'
gridworld decoder has one output head per cell (``multihead_for_reward``); ours is one MLP on the
cell's coordinates, which works for any vector suite.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metawm.envs.rollout import Collector
from metawm.infra.errors import UserError
from metawm.meta.base import (Context, MetaLearnerBase, fresh_agent, isolated_rng, mean_metrics, shot_row,
                              summarize_episodes)
from metawm.ops.adam import Adam
from metawm.ops.elbo import (belief_kl_terms, bernoulli_reconstruction_terms, elbo_loss, reconstruction_terms,
                             reparameterize)
from metawm.protocols import Agent
from metawm.types import EnvSpec, Metrics, Step, TaskSpec


# =================================================================================================
# The belief model: encoder and decoders
# =================================================================================================
def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class BeliefModel(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, latent: int = 5, hidden: int = 64, embed: int = 16,
                 decoder_hidden: int = 64, decode_state: bool = True, reward_inputs: str = "transition",
                 reward_likelihood: str = "gaussian", reward_range: Sequence[float] | None = None):
        super().__init__()
        self.obs_dim, self.act_dim, self.latent, self.hidden = obs_dim, act_dim, latent, hidden
        self.reward_inputs, self.reward_likelihood = reward_inputs, reward_likelihood
        self.reward_range = (float(reward_range[0]), float(reward_range[1])) if reward_range is not None else None
        self.s_emb, self.a_emb, self.r_emb = nn.Linear(obs_dim, embed), nn.Linear(act_dim, embed), nn.Linear(1, embed)
        self.gru = nn.GRU(3 * embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2 * latent)
        rew_in = obs_dim if reward_inputs == "next_state" else 2 * obs_dim + act_dim
        self.reward_decoder = _mlp(rew_in + latent, decoder_hidden, 1)
        self.state_decoder = _mlp(obs_dim + act_dim + latent, decoder_hidden, obs_dim) if decode_state else None

    def _inputs(self, prev_action: torch.Tensor, reward: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.a_emb(prev_action)), F.relu(self.r_emb(reward[..., None])),
                          F.relu(self.s_emb(obs))], -1)

    def belief(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(h)
        return out[..., :self.latent], out[..., self.latent:].clamp(-10.0, 5.0)

    def step(self, h: torch.Tensor, prev_action: torch.Tensor, reward: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """One GRU step on the transition that ended at ``obs``: (N, H) -> (N, H)."""
        x = self._inputs(prev_action, reward, obs)[:, None]
        return self.gru(x, h[None].contiguous())[1][0]

    def encode(self, obs: torch.Tensor, act: torch.Tensor, rew: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Beliefs after 0..T transitions: obs (B, T + 1, D), act (B, T, A), rew (B, T) -> mu, logvar (B, T + 1, Z)."""
        B = obs.shape[0]
        h0 = torch.zeros(1, B, self.hidden, device=obs.device)
        hs, _ = self.gru(self._inputs(act, rew, obs[:, 1:]), h0)
        return self.belief(torch.cat([h0.transpose(0, 1), hs], 1))

    def reward_features(self, s_prev: torch.Tensor, act: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        """The reward decoder's transition input: (s, a, s') or, with ``reward_inputs=next_state``, s'
        alone (the authors' gridworld setting ``input_prev_state=False input_action=False``)."""
        return s_next if self.reward_inputs == "next_state" else torch.cat([s_prev, act, s_next], -1)

    def decode_reward(self, s_prev, act, s_next, m) -> torch.Tensor:
        """s_prev, s_next (B, J, D), act (B, J, A), m (B, E, Z) -> decoder outputs (B, E, J): the
        reward's mean (gaussian) or the logit of the high reward (bernoulli); see :meth:`expected_reward`."""
        E, J = m.shape[1], s_prev.shape[1]
        x = self.reward_features(s_prev, act, s_next)[:, None].expand(-1, E, J, -1)
        return self.reward_decoder(torch.cat([x, m[:, :, None].expand(-1, E, J, -1)], -1))[..., 0]

    def expected_reward(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> E[r | s, a, s', m]: the mean itself, or lo + sigmoid(logit) * (hi - lo)."""
        if self.reward_likelihood == "bernoulli":
            lo, hi = self.reward_range
            return lo + torch.sigmoid(out) * (hi - lo)
        return out

    def reward_target(self, rew: torch.Tensor) -> torch.Tensor:
        """Rewards as the decoder's targets: themselves, or (bernoulli) (r - lo) / (hi - lo) in [0, 1]."""
        if self.reward_likelihood == "bernoulli":
            lo, hi = self.reward_range
            return ((rew - lo) / (hi - lo)).clamp(0.0, 1.0)
        return rew

    def decode_state(self, s_prev, act, m) -> torch.Tensor:
        """(B, J, D), (B, J, A), (B, E, Z) -> predicted next states (B, E, J, D)."""
        E, J = m.shape[1], s_prev.shape[1]
        x = torch.cat([s_prev, act], -1)[:, None].expand(-1, E, J, -1)
        return self.state_decoder(torch.cat([x, m[:, :, None].expand(-1, E, J, -1)], -1))


def pad_trajectories(trajs: Sequence[Mapping[str, np.ndarray]], device) -> dict[str, torch.Tensor]:
    """Stack trajectories of different lengths, zero-padded, with masks; ``trans_mask`` is 0 on
    padding and on the boundary transitions between the episodes of a multi-episode trajectory."""
    L = max(len(t["rew"]) for t in trajs)
    B, D, A = len(trajs), trajs[0]["obs"].shape[-1], trajs[0]["act"].shape[-1]
    obs, act, rew = np.zeros((B, L + 1, D), np.float32), np.zeros((B, L, A), np.float32), np.zeros((B, L), np.float32)
    lengths = np.zeros(B, np.int64)
    boundary = np.zeros((B, L), bool)
    for i, t in enumerate(trajs):
        n = len(t["rew"])
        obs[i, :n + 1], act[i, :n], rew[i, :n], lengths[i] = t["obs"], t["act"], t["rew"], n
        if "boundary" in t:
            boundary[i, :n] = t["boundary"]
    lengths_t = torch.as_tensor(lengths, device=device)
    steps = torch.arange(L + 1, device=device)
    trans = (steps[None, :L] < lengths_t[:, None]) & ~torch.as_tensor(boundary, device=device)
    return {"obs": torch.as_tensor(obs, device=device), "act": torch.as_tensor(act, device=device),
            "rew": torch.as_tensor(rew, device=device), "belief_mask": (steps[None] <= lengths_t[:, None]).float(),
            "trans_mask": trans.float()}


def vae_loss(model: BeliefModel, batch: Mapping[str, torch.Tensor], *, elbo_samples: int | None,
             decode_samples: int | None, kl_weight: float, rew_weight: float, state_weight: float,
             gen: torch.Generator | None = None) -> tuple[torch.Tensor, Metrics]:
    """The negative ELBO of VariBAD on a padded batch (see :mod:`metawm.ops.elbo`). ``elbo_samples``
    / ``decode_samples`` subsample the beliefs t and the decoded transitions j (the authors'
    ``vae_subsample_elbos`` / ``vae_subsample_decodes``; None = all)."""
    obs, act, rew = batch["obs"], batch["act"], batch["rew"]
    T = rew.shape[1]
    mu, logvar = model.encode(obs, act, rew)
    kl_all = belief_kl_terms(mu, logvar)
    E = _subset(T + 1, elbo_samples, gen, obs.device)
    J = _subset(T, decode_samples, gen, obs.device)
    m = reparameterize(mu[:, E], logvar[:, E])
    s_prev, s_next, a, tmask = obs[:, :-1][:, J], obs[:, 1:][:, J], act[:, J], batch["trans_mask"][:, J]
    terms = bernoulli_reconstruction_terms if model.reward_likelihood == "bernoulli" else reconstruction_terms
    rec_rew = terms(model.decode_reward(s_prev, a, s_next, m), model.reward_target(rew[:, J]), tmask)
    rec = rew_weight * rec_rew
    metrics = {"vae/rew_nll": rec_rew}
    if model.state_decoder is not None:
        rec_state = reconstruction_terms(model.decode_state(s_prev, a, m), s_next, tmask)
        rec = rec + state_weight * rec_state
        metrics["vae/state_nll"] = rec_state
    bmask = batch["belief_mask"][:, E]
    loss = elbo_loss(rec, kl_all[:, E], bmask, kl_weight)
    with torch.no_grad():
        out = {k: float((v * bmask).sum() / bmask.sum()) for k, v in metrics.items()}
        out["vae/kl"] = float((kl_all[:, E] * bmask).sum() / bmask.sum())
        out["vae/loss"] = float(loss)
        out["vae/belief_std"] = float(((0.5 * logvar).exp().mean(-1) * batch["belief_mask"]).sum() / batch["belief_mask"].sum())
    return loss, out


def _subset(n: int, k: int | None, gen, device) -> torch.Tensor:
    if k is None or k >= n:
        return torch.arange(n, device=device)
    return torch.randperm(n, generator=gen)[:k].sort().values.to(device)


# =================================================================================================
# The belief-conditioned agent
# =================================================================================================
def augmented_spec(spec: EnvSpec, latent: int, encoder: str, rl2_inputs: bool) -> EnvSpec:
    if spec.is_image:
        raise UserError(f"meta=varibad conditions the agent on its belief by appending it to vector observations; this "
                        f"suite has {spec.describe()}. Image suites are not supported by VariBAD in this version: use a "
                        "vector suite (gridworld_goals, point_nav, cartpole_physics, cheetah_*, metaworld_*).")
    extra = (2 * latent if encoder == "vae" else 0) + ((spec.num_actions + 1) if rl2_inputs else 0)
    dim = int(spec.obs_space.shape[0]) + extra
    return EnvSpec(gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32), spec.act_space)


class BeliefAgent:
    """Wraps an inner agent: infers the belief while acting and hands the inner agent
    [obs, mu, logvar] (+ [a_{t-1}, r_t] with ``rl2_inputs``); records trajectories for the VAE."""

    def __init__(self, inner: Agent, model: BeliefModel | None, base_spec: EnvSpec, rl2_inputs: bool,
                 device: torch.device, plan: tuple[str, int] | None = None):
        self.inner, self.model, self.base_spec, self.rl2_inputs = inner, model, base_spec, rl2_inputs
        self.env_spec = inner.env_spec
        self.device = device
        self.act_dim = base_spec.num_actions
        # carry the belief across the start of an episode: one bool, or one per env (the trainer's
        # multi-episode BAMDPs, ``episodes_per_task``); where False an episode starts from the prior
        self.persist: bool | np.ndarray = False
        self.record = True                         # keep finished trajectories for the VAE
        self.trajectories: list[dict[str, np.ndarray]] = []
        self._partial: list[dict[str, list] | None] = []
        self._pending: np.ndarray | None = None
        self._noise: torch.Tensor | None = None    # plan_belief=sample_episode: this rollout's eps
        self.random_envs: np.ndarray | None = None  # envs that act uniformly at random (explore_members)
        self.name = getattr(inner, "name", "agent")
        self.plan = plan
        if model is not None and not rl2_inputs and hasattr(inner, "set_context_dims"):
            inner.set_context_dims(2 * model.latent)  # [mu, logvar] is context: not predicted by its model
        if plan is not None and model is not None and hasattr(inner, "reward_fn"):
            inner.reward_fn = self.planning_reward  # only a planner that takes an outside reward model

    @torch.no_grad()
    def planning_reward(self, root: torch.Tensor, candidates: int):
        """The reward a planning agent (agent=mpc) sees in imagination from the (n, D + 2Z) augmented
        observations ``root`` it plans from: VariBAD's reward decoder E[r | s, a, s', m] under beliefs
        m from q(m | tau_{:t}) = N(mu, exp(logvar)) read off ``root``. ``plan`` = (mode, K):

        * ``average``: the mean over K samples of m, the posterior predictive reward (a planner
          maximising it goes where reward is likely, but does not seek information);
        * ``mean``: m = mu;
        * ``sample``: one m per environment (posterior sampling, Osband, Russo, Van Roy, NeurIPS 2013):
          the agent acts as if the sampled task were true, which explores - it heads for a goal the
          belief still allows, and the belief rules it out or confirms it;
        * ``sample_episode``: as ``sample``, but the standard-normal draw eps of m = mu + sigma * eps is
          made once per rollout (the carry's ``noise``) instead of at every step, so the agent keeps
          heading for one hypothesis until the evidence moves the posterior, as PSRL's once-per-
          episode sample does; a fresh draw at every step makes it dither between hypotheses.

        The beliefs are drawn once per planning step and shared by every candidate and horizon step
        (common random numbers), so candidates are compared under the same beliefs. Returns
        r(s, a, s') on flat (n * candidates, ...) tensors, env-major."""
        model = self.model
        D, Z = model.obs_dim, model.latent
        mu, logvar = root[:, D:D + Z], root[:, D + Z:D + 2 * Z]
        mode, K = self.plan
        if mode == "mean":
            m = mu[None]
        elif mode == "sample_episode":
            m = (mu + (0.5 * logvar).exp() * self._noise)[None]
        else:
            k = int(K) if mode == "average" else 1
            m = mu[None] + (0.5 * logvar[None]).exp() * torch.randn(k, *mu.shape, device=mu.device)
        m = m.repeat_interleave(candidates, 1)                                        # (k, n * N, Z)

        def reward(s: torch.Tensor, a: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
            x = model.reward_features(s[:, :D], a, s_next[:, :D])
            out = model.reward_decoder(torch.cat([x[None].expand(len(m), -1, -1), m], -1))[..., 0]
            return model.expected_reward(out).mean(0)

        return reward

    def _action_vec(self, action: np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(action), device=self.device)
        if self.base_spec.is_discrete:
            return F.one_hot(a.long(), self.act_dim).float()
        return a.float().reshape(len(a), -1)

    def initial_carry(self, n: int) -> dict[str, Any]:
        h = torch.zeros(n, self.model.hidden if self.model is not None else 1, device=self.device)
        carry = {"h": h, "prev_action": torch.zeros(n, self.act_dim, device=self.device),
                 "inner": self.inner.initial_carry(n)}
        if self._episode_noise():
            carry["noise"] = torch.randn(n, self.model.latent, device=self.device)
        return carry

    def _episode_noise(self) -> bool:
        return self.plan is not None and self.plan[0] == "sample_episode" and self.model is not None

    @torch.no_grad()
    def augment(self, step: Step, carry: dict[str, Any]) -> tuple[np.ndarray, torch.Tensor]:
        obs = torch.as_tensor(step["obs"], dtype=torch.float32, device=self.device)
        first = torch.as_tensor(np.asarray(step["is_first"], bool), device=self.device)
        reward = torch.as_tensor(np.asarray(step["reward"], np.float32), device=self.device) * (~first).float()
        prev_a = carry["prev_action"] * (~first)[:, None].float()
        parts = [obs]
        h = carry["h"]
        if self.model is not None:
            # a transition ended at obs unless it starts an episode; an episode starts from the prior
            # (hidden state zero), or, when persisting across episodes of one task, from the belief it
            # had, stepped on a boundary transition (no action, no reward, the new start state), as the
            # VAE's multi-episode trajectories encode it (:meth:`_record`)
            stepped = self.model.step(h, prev_a, reward, obs)
            keep = torch.as_tensor(np.broadcast_to(np.asarray(self.persist, bool), first.shape).copy(),
                                   device=self.device)
            h = torch.where((first & ~keep)[:, None], torch.zeros_like(h), stepped)
            mu, logvar = self.model.belief(h)
            parts += [mu, logvar]
        if self.rl2_inputs:
            parts += [prev_a, reward[:, None]]
        return torch.cat(parts, -1).cpu().numpy().astype(np.float32), h

    def act(self, step: Step, carry: dict[str, Any], *, explore: bool) -> tuple[np.ndarray, dict[str, Any]]:
        aug, h = self.augment(step, carry)
        out = {"h": h}
        if self._episode_noise():  # a new draw where a rollout starts
            first = torch.as_tensor(np.asarray(step["is_first"], bool), device=self.device)[:, None]
            out["noise"] = self._noise = torch.where(first, torch.randn_like(carry["noise"]), carry["noise"])
        action, inner_carry = self.inner.act({**step, "obs": aug}, carry["inner"], explore=explore)
        if self.random_envs is not None and self.random_envs.any():
            # the inner agent has planned for these envs too (its carry stays consistent); the action
            # taken, the one it stores in its replay, is a uniform draw
            action = np.array(action, copy=True)
            rows = np.flatnonzero(self.random_envs)
            space = self.base_spec.act_space   # torch's generator, so that a seeded run repeats
            if self.base_spec.is_discrete:
                action[rows] = torch.randint(int(space.n), (len(rows),)).numpy()
            else:
                u = torch.rand(len(rows), *space.shape).numpy()
                action[rows] = space.low + u * (space.high - space.low)
        self._pending = aug
        return action, {**out, "prev_action": self._action_vec(action), "inner": inner_carry}

    def observe(self, step: Step) -> None:
        self.inner.observe({**step, "obs": self._pending})
        if self.record:
            self._record(step)

    def _record(self, step: Step) -> None:
        """Append the step to each env's trajectory; a finished one goes to the VAE's buffer. Where
        the env's next episode continues the task (``persist`` True for it when its last step is
        observed), the trajectory goes on across the reset: a boundary transition with a zero
        action and zero reward leads from the final state to the new start state (what the encoder
        steps on while acting, :meth:`augment`), flagged in ``boundary`` so that the decoders are
        not asked to reconstruct it."""
        n = len(step["is_first"])
        if len(self._partial) != n:
            self._partial = [None] * n
        act = self._action_vec(step["action"]).cpu().numpy()
        persist = np.broadcast_to(np.asarray(self.persist, bool), (n,))
        for i in range(n):
            cur = self._partial[i]
            obs = np.asarray(step["obs"][i], np.float32)
            if cur is not None and cur.get("continues") and step["is_first"][i]:
                cur["obs"].append(obs)
                cur["rew"].append(0.0)
                cur["continues"] = False
            elif step["is_first"][i] or cur is None:
                cur = {"obs": [obs], "act": [], "rew": [], "boundary": []}
            else:
                cur["obs"].append(obs)
                cur["rew"].append(float(step["reward"][i]))
            if step["is_last"][i] and persist[i] and cur["rew"]:
                cur["act"].append(np.zeros_like(act[i]))
                cur["boundary"].append(len(cur["rew"]))
                cur["continues"] = True
            elif step["is_last"][i]:
                if cur["rew"]:
                    boundary = np.zeros(len(cur["rew"]), bool)
                    boundary[cur.get("boundary", [])] = True
                    self.trajectories.append({"obs": np.stack(cur["obs"]), "act": np.stack(cur["act"]),
                                              "rew": np.asarray(cur["rew"], np.float32), "boundary": boundary})
                cur = None
            else:
                cur["act"].append(act[i])
            self._partial[i] = cur

    def update(self, env_steps: int) -> Metrics:
        return self.inner.update(env_steps)

    # the functional interface is the inner agent's
    def parts(self):
        return self.inner.parts()

    def params(self, part: str = "all"):
        return self.inner.params(part)

    def sample_batch(self, rng=None):
        return self.inner.sample_batch(rng)

    def loss(self, params, batch):
        return self.inner.loss(params, batch)

    def state_dict(self, *, replay: bool = False) -> dict[str, Any]:
        return self.inner.state_dict(replay=replay)

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state)


# =================================================================================================
# The learner
# =================================================================================================
class VariBAD(MetaLearnerBase):
    name = "varibad"
    needs_meta_state = True

    def __init__(self, population: int = 4, inner_steps: int = 1000, encoder: str = "vae", rl2_inputs: bool = False,
                 latent: int = 5, hidden: int = 64, embed: int = 16, decoder_hidden: int = 64,
                 decode_state: bool = True, vae_lr: float = 1e-3, vae_batch: int = 16, vae_updates: int = 8,
                 vae_buffer: int = 1000, elbo_samples: int | None = None, decode_samples: int | None = None,
                 kl_weight: float = 1.0, rew_weight: float = 1.0, state_weight: float = 1.0,
                 adapt_persist: bool = False, plan_with_decoder: bool = True, plan_belief: str = "average",
                 plan_samples: int = 8,
                 reward_inputs: str = "transition", reward_likelihood: str = "gaussian",
                 reward_range: Sequence[float] | None = None, explore_members: int = 0, explore_steps: int = 0,
                 episodes_per_task: int = 1):
        if encoder not in ("vae", "none"):
            raise UserError(f"meta.encoder={encoder!r} is not valid; use vae (VariBAD) or none (no belief; with "
                            "meta.rl2_inputs=true an RL^2-style baseline).")
        if reward_inputs not in ("transition", "next_state"):
            raise UserError(f"meta.reward_inputs={reward_inputs!r} is not valid; use transition (the decoder sees s, a, "
                            "s') or next_state (s' only).")
        if plan_belief not in ("average", "mean", "sample", "sample_episode"):
            raise UserError(f"meta.plan_belief={plan_belief!r} is not valid; use average (posterior predictive reward over "
                            "meta.plan_samples beliefs), mean (the belief mean), sample (posterior sampling, a new draw "
                            "every step) or sample_episode (posterior sampling, one noise draw per rollout).")
        if reward_likelihood not in ("gaussian", "bernoulli"):
            raise UserError(f"meta.reward_likelihood={reward_likelihood!r} is not valid; use gaussian or bernoulli.")
        if reward_likelihood == "bernoulli":
            if reward_range is None or len(reward_range) != 2 or not float(reward_range[1]) > float(reward_range[0]):
                raise UserError(f"meta.reward_likelihood=bernoulli needs meta.reward_range=[low,high] with high > low "
                                f"(the two reward values, e.g. [-0.1,1.0] on gridworld_goals); got {reward_range}.")
            reward_range = [float(reward_range[0]), float(reward_range[1])]
        self.population, self.inner_steps = int(population), int(inner_steps)
        self.explore_members = int(explore_members)
        if not 0 <= self.explore_members < self.population:
            raise UserError(f"meta.explore_members must lie in [0, meta.population) = [0, {self.population}), got "
                            f"{explore_members}: at least one member must act with the agent's policy.")
        self.episodes_per_task = int(episodes_per_task)
        if self.episodes_per_task < 1:
            raise UserError(f"meta.episodes_per_task must be >= 1 (consecutive episodes of one task, the belief carried "
                            f"across them), got {episodes_per_task}.")
        self.explore_steps = int(explore_steps)
        if self.explore_steps < 0:
            raise UserError(f"meta.explore_steps must be >= 0 (env steps of uniformly random acting at the start), "
                            f"got {explore_steps}.")
        self.encoder, self.rl2_inputs = encoder, bool(rl2_inputs)
        self.dims = dict(latent=int(latent), hidden=int(hidden), embed=int(embed), decoder_hidden=int(decoder_hidden),
                         decode_state=bool(decode_state), reward_inputs=str(reward_inputs),
                         reward_likelihood=str(reward_likelihood), reward_range=reward_range)
        self.vae_lr, self.vae_batch, self.vae_updates = float(vae_lr), int(vae_batch), int(vae_updates)
        self.vae_buffer = int(vae_buffer)
        self.elbo_samples = int(elbo_samples) if elbo_samples else None
        self.decode_samples = int(decode_samples) if decode_samples else None
        self.weights = dict(kl_weight=float(kl_weight), rew_weight=float(rew_weight), state_weight=float(state_weight))
        self.adapt_persist = bool(adapt_persist)
        self.plan_with_decoder, self.plan_belief, self.plan_samples = bool(plan_with_decoder), str(plan_belief), \
            max(1, int(plan_samples))
        self.env_steps, self.episodes_started = 0, 0
        self.task_episodes: list[int] = []     # per env: episodes of its current task already finished
        self.collector: Collector | None = None
        self.specs: list[TaskSpec] = []

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        base = ctx.tasks.env_spec
        self.spec = augmented_spec(base, self.dims["latent"], self.encoder, self.rl2_inputs)
        inner = ctx.make_agent(self.spec)
        with isolated_rng(ctx.seeds.seed("varibad_init")):
            self.model = BeliefModel(int(base.obs_space.shape[0]), base.num_actions, **self.dims).to(ctx.device) \
                if self.encoder == "vae" else None
        self.opt = Adam(self.model.parameters(), lr=self.vae_lr) if self.model is not None else None
        self.belief_agent = BeliefAgent(inner, self.model, base, self.rl2_inputs, ctx.device, self._plan(inner))
        self.gen = torch.Generator().manual_seed(ctx.seeds.seed("vae_batches"))

    def agent(self) -> Agent:
        return self.belief_agent.inner

    # -- collection: envs whose task is resampled at each episode end -----------------------------
    def _next_spec(self) -> TaskSpec:
        spec = self.ctx.tasks.sample("train", 1, self.ctx.seeds.numpy("tasks", self.episodes_started))[0]
        self.episodes_started += 1
        return spec

    def _new_env(self, spec: TaskSpec, k: int):
        env = self.ctx.tasks.make_env(spec)
        env.reset(seed=self.ctx.seeds.seed("env", self.episodes_started, k))
        return env

    def _build_collector(self) -> None:
        envs = [self._new_env(s, k) for k, s in enumerate(self.specs)]
        self.collector = Collector(envs, self.ctx.tasks.env_spec,
                                   [self.ctx.seeds.seed("env0", k) for k in range(len(envs))])

    def outer_step(self, iteration: int) -> Metrics:
        if self.collector is None:
            self.specs = [self._next_spec() for _ in range(self.population)]
            self.task_episodes = [0] * self.population
            self._build_collector()
        # Random acting: the explore_members always, every member during the first explore_steps
        # (a warm-up on data that covers the task space, for the belief model and the agent's model).
        warmup = self.env_steps < self.explore_steps
        explorers = np.arange(self.population) < (self.population if warmup else self.explore_members)
        self.belief_agent.random_envs = explorers
        episodes, updates, taken = [], [], 0
        while taken < self.inner_steps:
            n, finished = self.collector.step(self.belief_agent, explore=True)
            taken += n
            self.env_steps += n
            for ep in finished:
                i = ep["env"]
                ep["spec"], ep["task_episode"] = self.specs[i], self.task_episodes[i]
                if not explorers[i]:  # the random explorers' returns say nothing of the policy
                    episodes.append(ep)
                self.task_episodes[i] += 1
                if self.task_episodes[i] < self.episodes_per_task:
                    continue  # the same task again: the collector resets the env, the belief carries over
                self.task_episodes[i] = 0
                self.specs[i] = self._next_spec()
                self.collector.envs[i] = self._new_env(self.specs[i], i)  # reset on the next step
            self.belief_agent.persist = np.asarray(self.task_episodes) > 0
            m = self.belief_agent.update(self.env_steps)
            if m:
                updates.append(m)
        buf = self.belief_agent.trajectories
        del buf[:max(0, len(buf) - self.vae_buffer)]
        vae_rows = [self._vae_step() for _ in range(self.vae_updates)] if self.model is not None and buf else []
        out = {**summarize_episodes(episodes, "train"), **mean_metrics(updates), **mean_metrics(vae_rows),
               "env_steps": float(taken), "varibad/trajectories": float(len(buf))}
        out.update(_sub_episode_means(episodes, "train"))
        if self.episodes_per_task > 1:  # the return of the k-th episode of a task, the belief carried
            for k in range(self.episodes_per_task):
                rets = [ep["return"] for ep in episodes if ep["task_episode"] == k]
                if rets:
                    out[f"train/return_task_ep{k + 1}"] = float(np.mean(rets))
        for ep in episodes:
            out[f"member/{ep['spec'].id}/return"] = ep["return"]
        return out

    def _vae_step(self) -> Metrics:
        buf = self.belief_agent.trajectories
        idx = torch.randint(len(buf), (min(self.vae_batch, len(buf)),), generator=self.gen).tolist()
        batch = pad_trajectories([buf[i] for i in idx], self.ctx.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=self.gen)))
            loss, metrics = vae_loss(self.model, batch, elbo_samples=self.elbo_samples,
                                     decode_samples=self.decode_samples, gen=self.gen, **self.weights)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return metrics

    # -- evaluation and adaptation: inference only -----------------------------------------------
    def evaluate(self, specs: Sequence[TaskSpec], episodes: int, seed: int, prefix: str) -> Metrics:
        agent = self._frozen(self.belief_agent.inner)
        all_eps = []
        for k, spec in enumerate(specs):
            all_eps += _belief_episodes(agent, self.ctx.tasks, spec, episodes, seed + 104729 * k)
        out = {**summarize_episodes(all_eps, prefix), **_sub_episode_means(all_eps, prefix)}
        if self.episodes_per_task > 1:  # also one chain of episodes_per_task episodes per task, belief carried
            chains = [_belief_chain(agent, self.ctx.tasks, spec, self.episodes_per_task, seed + 104729 * k + 1)
                      for k, spec in enumerate(specs)]
            for j, v in enumerate(np.mean(np.asarray(chains, np.float64), 0)):
                out[f"{prefix}/return_task_ep{j + 1}"] = float(v)
        return out

    def _plan(self, inner: Agent) -> tuple[str, int] | None:
        """How to plan with the reward decoder, or None: only a planning agent that takes an outside
        reward model (``reward_fn``, agent=mpc) plans with it, when asked to."""
        ok = self.plan_with_decoder and self.model is not None and hasattr(inner, "reward_fn")
        return (self.plan_belief, self.plan_samples) if ok else None

    def _frozen(self, inner: Agent) -> BeliefAgent:
        a = BeliefAgent(inner, self.model, self.ctx.tasks.env_spec, self.rl2_inputs, self.ctx.device,
                        self._plan(inner))
        a.record = False
        return a

    def adaptation_agent(self, agent_state: Mapping[str, Any], seed: int) -> BeliefAgent:
        inner = fresh_agent(self.ctx.make_agent, self.spec, agent_state, seed)
        return self._frozen(inner)

    def adapt(self, agent: Agent, task: TaskSpec, shots: int, *, seed: int = 0,
              eval_episodes_per_shot: int = 1) -> Iterator[Metrics]:
        """Belief inference only. Shot k: the greedy return of fresh episodes of ``task`` whose
        belief starts from the prior (``adapt_persist=false``: VariBAD adapts within a rollout,
        its BAMDP) or from the belief after the k previous episodes (``adapt_persist=true``)."""
        if not isinstance(agent, BeliefAgent):
            agent = self._frozen(agent)
        h = None
        tasks = self.ctx.tasks
        for k in range(shots + 1):
            if k > 0:  # one more episode of the task, exploring, the belief carried if persisting
                eps, h = _belief_episodes(agent, tasks, task, 1, seed + k, explore=True, h0=h,
                                          persist=self.adapt_persist, return_h=True)
            evals = _belief_episodes(agent, tasks, task, eval_episodes_per_shot, seed + 1_000_003, h0=h,
                                     persist=self.adapt_persist)
            yield shot_row(evals, k, eps[0]["return"] if k > 0 else None, 0)

    def baseline_adaptation(self, method: str, agent_state, task: TaskSpec, shots: int, *, seed: int,
                            eval_episodes_per_shot: int) -> Iterator[Metrics]:
        if method == "scratch":  # a non-adaptive agent on the plain observations, from scratch
            return super().baseline_adaptation(method, None, task, shots, seed=seed,
                                               eval_episodes_per_shot=eval_episodes_per_shot)
        agent = self.adaptation_agent(agent_state, seed)  # the belief-conditioned agent, fine-tuned
        from metawm.meta.base import finetune_adaptation

        return finetune_adaptation(agent, self.ctx.tasks, task, shots, seed=seed,
                                   eval_episodes_per_shot=eval_episodes_per_shot, clock=self.agent_clock())

    def load_agent_state(self, agent_state) -> None:
        raise UserError("meta=varibad needs its belief model; this checkpoint has none.")

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        ba = self.belief_agent
        return {"agent": ba.inner.state_dict(replay=replay), "env_steps": self.env_steps,
                "episodes_started": self.episodes_started, "specs": [s.to_dict() for s in self.specs],
                "task_episodes": list(self.task_episodes),
                "model": self.model.state_dict() if self.model is not None else None,
                "opt": self.opt.state_dict() if self.opt is not None else None,
                "gen": self.gen.get_state(),
                "buffer": list(ba.trajectories) if replay else [], "partial": ba._partial if replay else None,
                "collector": self.collector.state_dict() if (self.collector is not None and replay) else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ba = self.belief_agent
        if state.get("model") is None and self.model is not None:
            raise UserError("this checkpoint holds no VariBAD belief model (it was trained with meta.encoder=none).")
        ba.inner.load_state_dict(state["agent"])
        self.env_steps, self.episodes_started = int(state["env_steps"]), int(state["episodes_started"])
        if self.model is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        ba.trajectories = list(state["buffer"])
        ba._partial = state["partial"] or []
        self.specs = [TaskSpec.from_dict(d) for d in state["specs"]]
        self.task_episodes = list(state.get("task_episodes", [0] * len(self.specs)))
        ba.persist = np.asarray(self.task_episodes, int) > 0 if self.task_episodes else False
        self.collector = None
        if state.get("collector") is not None:
            self.collector = Collector([self.ctx.tasks.make_env(s) for s in self.specs], self.ctx.tasks.env_spec,
                                       [0] * len(self.specs))
            self.collector.load_state_dict(state["collector"])


def _belief_episodes(agent: BeliefAgent, tasks, spec: TaskSpec, n: int, seed: int, *, explore: bool = False,
                     h0: torch.Tensor | None = None, persist: bool = False, return_h: bool = False):
    """``n`` episodes one after another on one env; each starts from the belief hidden state ``h0``
    (the prior when None). With ``return_h`` also the hidden state at the end of the last one."""
    out, h_end = [], h0
    for e in range(n):
        env = tasks.make_env(spec)
        collector = Collector([env], tasks.env_spec, [seed + 7919 * e])
        carry = agent.initial_carry(1)
        if h0 is not None:
            carry["h"] = h0.clone()
        collector.carry = carry
        agent.persist = persist and h0 is not None
        try:
            while True:
                _, finished = collector.step(agent, explore=explore, observe=False)
                if finished:
                    out += finished
                    h_end = collector.carry["h"]
                    break
        finally:
            agent.persist = False
            env.close()
    return (out, h_end) if return_h else out


def _belief_chain(agent: BeliefAgent, tasks, spec: TaskSpec, n: int, seed: int) -> list[float]:
    """The greedy returns of ``n`` consecutive episodes of one task, the belief carried across them."""
    returns, h = [], None
    for e in range(n):
        eps, h = _belief_episodes(agent, tasks, spec, 1, seed + 15485863 * e, h0=h, persist=True, return_h=True)
        returns.append(eps[0]["return"])
    return returns


def _sub_episode_means(episodes: Sequence[dict], prefix: str) -> Metrics:
    subs = [e["episode_returns"] for e in episodes if "episode_returns" in e]
    if not subs:
        return {}
    return {f"{prefix}/return_ep{i + 1}": float(v) for i, v in enumerate(np.mean(np.asarray(subs, np.float64), 0))}


