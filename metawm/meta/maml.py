"""``meta=maml``: Model-Agnostic Meta-Learning (Finn, Abbeel, Levine, ICML 2017) over the
Agent protocol, with first-order MAML and Meta-SGD (Li et al. 2017) as options.

The meta-parameters theta are the initialization of one part of the agent (``meta.part``:
``all``, or a name from ``agent.parts()`` such as ``world_model`` or ``actor_critic``). One outer
step, for a population (meta-batch) of n tasks T_i from the train split:

1. **Support data**: a fresh agent holding theta collects ``inner_steps`` env steps on T_i
   (``support_actions=random``: uniformly random actions do, stored in that agent's replay; at
   test time the first shot is then a random episode, the later ones the adapted agent's).
2. **Inner loop** (eq. 1): k = ``grad_steps`` functional gradient steps on the agent's own loss,
   ``agent.loss(params, batch)`` (``torch.func.functional_call`` inside the agent), on support
   batches: theta'_i = theta - alpha * grad L(theta; S_i), repeated k times, with the graph kept
   (second order) unless ``first_order``. With ``meta_sgd`` alpha is a learned tensor per
   parameter (Li et al. 2017, eq. 3), initialised to ``inner_lr``.
3. **Query data**: with ``query=adapted`` (MAML-RL) an agent acting with theta'_i collects
   ``query_steps`` env steps on T_i, and the query batch comes from that; with ``query=support``
   it is a fresh batch from the support data (enough when the part is a world model, whose loss is
   a model-fitting loss on any data of the task).
4. **Outer loop** (eq. 2): theta <- theta - beta * grad_theta sum_i L(theta'_i; Q_i) / n, through
   the inner steps, with Adam (``meta_lr``) as in the paper's experiments. ``meta_updates`` = m
   repeats steps 2 and 4 m times per collected population on fresh batches of the same data (the
   query data of ``query=adapted`` is collected once, at the first of them): GrBAL meta-trains on
   a dataset of collected trajectories, and a model-fitting loss can reuse data many times, where
   one outer step per collection leaves a fixed env-step budget with very few outer steps.
   ``dataset`` = D > 0 keeps the last D members' data (support and query agents with their
   replays) across outer steps, and every meta-update after the first of an outer step draws its
   meta-batch of ``population`` members from them: GrBAL's meta-training on the dataset of all
   trajectories collected so far (Nagabandi et al. 2019, Alg. 1), where without it each outer step
   learns from the few hundred env steps just collected and then discards them.

Adapting the world model part from a few transitions of a new task is model-based meta-RL in the
sense of Nagabandi, Clavera, Liu, Fearing, Abbeel, Levine, Finn, "Learning to Adapt in Dynamic,
Real-World Environments through Meta-Reinforcement Learning" (ICLR 2019, GrBAL): the dynamics
model's initialization is meta-trained so that k gradient steps on the most recent transitions
fit the current task (``meta.part=world_model``).

**Batching.** ``vmap=true`` runs the inner and outer losses of all members as one
``torch.func.vmap`` over stacked support/query batches (with ``torch.func.grad`` inside); it needs
an agent loss that torch.func can transform (no ``.item()``/``.tolist()`` inside, no in-place
updates of module state). When that fails the learner says so once (metric ``maml/vmap`` = 0) and
loops over members.

**Memory.** Second-order MAML keeps the activations of every inner step for the outer backward,
so memory grows linearly with ``grad_steps``. ``checkpoint_inner=true`` recomputes them in the
backward pass instead (``torch.utils.checkpoint``); ``first_order=true`` drops the second-order
graph entirely. An out-of-memory error names both options.

**Deviations.** MAML-RL (sec. 5.3) uses policy gradients with linear feature baselines and TRPO
for the outer step; here the inner and outer losses are the agent's own loss (for DreamerV3:
world model + imagination actor-critic), the outer optimizer is Adam. Non-parameter state of the
agent (EMA targets, normalizers) is read by the loss but not meta-learned; it stays as built.
"""

from __future__ import annotations

import contextlib

import math
from typing import Any, Iterator

import torch

from metawm.agents.random import RandomAgent
from metawm.envs.rollout import Collector
from metawm.infra.errors import UserError
from metawm.meta.base import (Context, MetaLearnerBase, _shot_metrics, collect, fresh_agent, isolated_rng,
                              load_params, mean_metrics, meta_params, per_member, sample_batches, summarize_episodes)
from metawm.ops.adam import Adam
from metawm.ops.functional_sgd import inner_loop, sgd_step, stack_batches
from metawm.protocols import Agent
from metawm.types import Metrics, TaskSpec

OOM_HINT = ("MAML ran out of memory: second-order meta-gradients keep the activations of all "
            "meta.grad_steps inner steps. Use meta.checkpoint_inner=true (recompute them in the backward pass), "
            "meta.first_order=true (no second-order terms), or fewer meta.grad_steps / a smaller meta.population.")


class MAML(MetaLearnerBase):
    name = "maml"

    def __init__(self, population: int = 4, inner_steps: int = 1000, query_steps: int | None = None,
                 grad_steps: int = 1, inner_lr: float = 0.01, meta_lr: float = 1e-3, part: str = "all",
                 first_order: bool = False, meta_sgd: bool = False, checkpoint_inner: bool = False,
                 vmap: bool = False, query: str = "adapted", envs_per_task: int = 1, grad_clip: float | None = None,
                 eval_shots: int = 0, meta_updates: int = 1, support_actions: str = "agent",
                 inner_part: str | None = None, dataset: int = 0):
        self.eval_shots = int(eval_shots)
        if int(dataset) < 0:
            raise UserError(f"meta.dataset={dataset} must be >= 0 (members kept for later meta-updates; 0 = none).")
        self.dataset = int(dataset)
        self.kept: list[dict[str, Any]] = []  # the last ``dataset`` members' data
        self.inner_part = str(inner_part) if inner_part else None
        if support_actions not in ("agent", "random"):
            raise UserError(f"meta.support_actions={support_actions!r} is not valid; use agent (the support episodes are "
                            "collected by the agent with the initialization) or random (uniformly random actions).")
        self.support_actions = support_actions
        if int(meta_updates) < 1:
            raise UserError(f"meta.meta_updates={meta_updates} must be at least 1.")
        self.meta_updates = int(meta_updates)
        if query not in ("adapted", "support"):
            raise UserError(f"meta.query={query!r} is not valid; use adapted (query data collected with the "
                            "adapted parameters, MAML-RL) or support (a fresh batch of the support data).")
        if int(grad_steps) < 1:
            raise UserError(f"meta.grad_steps={grad_steps} must be at least 1.")
        self.population = int(population)
        self.inner_steps = int(inner_steps)
        self.query_steps = int(query_steps) if query_steps is not None else int(inner_steps)
        self.grad_steps = int(grad_steps)
        self.inner_lr = float(inner_lr)
        self.meta_lr = float(meta_lr)
        self.part = str(part)
        self.first_order = bool(first_order)
        self.meta_sgd = bool(meta_sgd)
        self.checkpoint_inner = bool(checkpoint_inner)
        self.vmap = bool(vmap)
        self.query = query
        self.envs_per_task = int(envs_per_task)
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.env_steps = 0
        self._vmap_failed: str | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self._agent = ctx.make_agent(ctx.tasks.env_spec)
        self.theta = meta_params(self._agent, self.part)  # live tensors of the shared agent
        # inner_part: the parameters the inner loop adapts (ANIL: the head); the others are meta-learned
        # by the outer loop only (a zero inner step size)
        self.fast = set(meta_params(self._agent, self.inner_part)) & set(self.theta) if self.inner_part else set(self.theta)
        if self.inner_part and self.theta and not self.fast:
            raise UserError(f"meta.inner_part={self.inner_part!r} shares no parameter with meta.part={self.part!r}.")
        self.lrs = {n: torch.full_like(p, self.inner_lr, requires_grad=True) for n, p in self.theta.items()
                    if n in self.fast} if self.meta_sgd else None
        learnable = list(self.theta.values()) + (list(self.lrs.values()) if self.lrs else [])
        self.opt = Adam(learnable, lr=self.meta_lr) if learnable else None

    def agent(self) -> Agent:
        return self._agent

    def inner_rate(self) -> float | dict[str, torch.Tensor]:
        """The inner step size: a float, or per parameter (Meta-SGD's learned rates; 0 outside inner_part)."""
        if self.lrs is None and len(self.fast) == len(self.theta):
            return self.inner_lr
        rates = self.lrs if self.lrs is not None else {n: torch.tensor(self.inner_lr) for n in self.fast}
        return {n: rates[n] if n in self.fast else torch.zeros(()) for n in self.theta}

    # -- one outer step --------------------------------------------------------------------------
    def outer_step(self, iteration: int) -> Metrics:
        seeds = self.ctx.seeds
        specs = self.ctx.tasks.sample("train", self.population, seeds.numpy("tasks", iteration))
        state = self._agent.state_dict(replay=False)
        if self.opt is None:  # an agent without parameters (random): collect, nothing to learn
            rows, taken = [], 0
            for k, spec in enumerate(specs):
                with isolated_rng(seeds.seed("inner", iteration, k)):
                    a = fresh_agent(self.ctx.make_agent, self.ctx.tasks.env_spec, state, seeds.seed("inner", iteration, k))
                    eps, _, n = collect(a, self.ctx.tasks, spec, self.inner_steps, seeds.seed("env", iteration, k),
                                        envs=self.envs_per_task, train=False)
                rows.append(_ep_row(eps))
                taken += n
            self.env_steps += taken
            return {**_train_row(rows), **per_member(specs, rows, ("return",)), "env_steps": float(taken)}

        members = [self._member_data(iteration, k, spec, state) for k, spec in enumerate(specs)]
        batch = members
        for u in range(self.meta_updates):
            if u > 0:
                batch = self._meta_batch(members, iteration, u)
                for m in batch:
                    self._resample(m)
            rows, use_vmap, gnorm = self._meta_update(batch, iteration)
            if u == 0:
                fresh = rows  # this step's members: their returns are the step's training returns
        if self.dataset:
            self.kept = (self.kept + members)[-self.dataset:]
        taken = sum(m["env_steps"] for m in members)
        self.env_steps += taken
        out = {**_train_row(fresh), **per_member(specs, fresh, ("return", "return_pre")),
               **{k: v for k, v in mean_metrics(rows).items() if k.startswith("maml/")},
               "maml/meta_grad_norm": float(gnorm), "maml/vmap": float(use_vmap), "env_steps": float(taken)}
        if self.lrs is not None:
            out["maml/inner_lr_mean"] = float(torch.cat([a.detach().flatten() for a in self.lrs.values()]).mean())
        return out

    def _meta_update(self, members: list[dict], iteration: int) -> tuple[list[Metrics], bool, torch.Tensor]:
        """One outer (Adam) step from the members' current support/query batches."""
        self.opt.zero_grad(set_to_none=True)
        use_vmap = self.vmap and self._vmap_failed is None
        with contextlib.nullcontext() if self.first_order else double_backward_kernels():
            if use_vmap:
                try:
                    rows = self._meta_grad_vmapped(members, iteration)
                except Exception as e:  # a loss torch.func cannot transform: say so once, then loop
                    self._vmap_failed = f"{type(e).__name__}: {str(e)[:200]}"
                    import sys
                    print(f"maml: vmap over tasks failed ({self._vmap_failed}); looping over members instead.",
                          file=sys.stderr)
                    self.opt.zero_grad(set_to_none=True)
                    use_vmap = False
            if not use_vmap:
                rows = [self._meta_grad_member(m, iteration, k) for k, m in enumerate(members)]
        params = list(self.theta.values()) + (list(self.lrs.values()) if self.lrs else [])
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.zeros(())
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.opt.step()
        if self.lrs is not None:
            with torch.no_grad():
                for a in self.lrs.values():
                    a.clamp_(min=0.0)  # a negative step size would ascend the support loss
        return rows, use_vmap, gnorm

    def _meta_batch(self, members: list[dict], iteration: int, u: int) -> list[dict]:
        """The members of meta-update u > 0: this step's, or with ``dataset`` a draw of
        ``population`` from the kept members and this step's (without replacement)."""
        if not self.dataset:
            return members
        pool = self.kept + members
        gen = torch.Generator().manual_seed(self.ctx.seeds.seed("maml_dataset", iteration, u))
        return [pool[i] for i in torch.randperm(len(pool), generator=gen)[:self.population].tolist()]

    def _resample(self, m: dict) -> None:
        """Fresh support (and query) batches from a member's stored data, for the next outer step
        on the same collected data (``meta_updates`` > 1): the query of ``query=adapted`` comes
        from the data the adapted agent collected at the first outer step."""
        m["support"] = sample_batches(m["agent"], self.grad_steps, m["gen"], "maml support data")
        source = m["agent"] if self.query == "support" else m["q_agent"]
        m["query"] = sample_batches(source, 1, m["gen"], "maml query data")[0]

    def _support_actor(self, agent: Agent) -> Agent:
        """Who acts in the support episodes: the agent itself, or (``support_actions=random``) a
        uniformly random policy that stores its steps in ``agent``'s replay."""
        return agent if self.support_actions == "agent" else RandomSupport(self.ctx.tasks.env_spec, agent)

    def _member_data(self, iteration: int, k: int, spec: TaskSpec, state: dict) -> dict[str, Any]:
        """Support (and, for query=adapted, query) data of member k: agents and batches."""
        seed = self.ctx.seeds.seed("inner", iteration, k)
        tasks = self.ctx.tasks
        with isolated_rng(seed):
            agent = fresh_agent(self.ctx.make_agent, tasks.env_spec, state, seed)
            eps, _, n = collect(self._support_actor(agent), tasks, spec, self.inner_steps,
                                self.ctx.seeds.seed("env", iteration, k), envs=self.envs_per_task, train=False)
            gen = torch.Generator().manual_seed(seed)
            support = sample_batches(agent, self.grad_steps, gen, "maml support data")
            query_batch = sample_batches(agent, 1, gen, "maml query data")[0] if self.query == "support" else None
        return {"agent": agent, "support": support, "query": query_batch, "episodes": eps, "env_steps": n,
                "spec": spec, "seed": seed, "gen": gen}

    def _query_from_adapted(self, m: dict, adapted: dict[str, torch.Tensor], iteration: int, k: int) -> None:
        """MAML-RL's post-update data: an agent acting with the adapted parameters."""
        tasks = self.ctx.tasks
        with isolated_rng(m["seed"] + 1):
            q_agent = fresh_agent(self.ctx.make_agent, tasks.env_spec, self._agent.state_dict(replay=False), m["seed"] + 1)
            load_params(q_agent, adapted)
            eps, _, n = collect(q_agent, tasks, m["spec"], self.query_steps, self.ctx.seeds.seed("env_q", iteration, k),
                                envs=self.envs_per_task, train=False)
            m["query"] = sample_batches(q_agent, 1, m["gen"], "maml query data")[0]
        m["q_agent"], m["query_episodes"], m["env_steps"] = q_agent, eps, m["env_steps"] + n

    def _meta_grad_member(self, m: dict, iteration: int, k: int) -> Metrics:
        """Adapt, get the query loss, backpropagate (accumulating grads of theta and the rates)."""
        agent, support = m["agent"], m["support"]
        loss_fn = lambda p, i: agent.loss(p, support[i % len(support)])[0]  # noqa: E731
        try:
            with isolated_rng(m["seed"] + 2):
                adapted, sup_losses = inner_loop(loss_fn, self.theta, self.grad_steps, self.inner_rate(),
                                                 first_order=self.first_order, checkpoint=self.checkpoint_inner)
                if self.query == "adapted" and "q_agent" not in m:  # collected once per member
                    self._query_from_adapted(m, adapted, iteration, k)
                with torch.no_grad():
                    pre = agent.loss(self.theta, m["query"])[0]
                q_loss = agent.loss(adapted, m["query"])[0]
                (q_loss / self.population).backward()
        except torch.OutOfMemoryError:
            raise UserError(OOM_HINT) from None
        return {**_ep_row(m["episodes"], m.get("query_episodes")), "maml/support_loss": float(sup_losses[0]),
                "maml/query_loss_pre": float(pre), "maml/query_loss": float(q_loss.detach())}

    def _meta_grad_vmapped(self, members: list[dict], iteration: int) -> list[Metrics]:
        """All members' inner and outer losses as one vmap over stacked batches."""
        from torch.func import grad, vmap

        agent = members[0]["agent"]
        names = list(self.theta)
        rate = self.inner_rate()

        def loss_of(p, b):
            return agent.loss(p, b)[0]

        def adapt(theta, support):  # support: dict of (grad_steps, ...) tensors
            p = theta
            for i in range(self.grad_steps):
                g = grad(loss_of)(p, {key: v[i] for key, v in support.items()})
                if self.first_order:
                    g = {n: x.detach() for n, x in g.items()}
                p = sgd_step(p, g, rate)
            return p

        support = stack_batches([stack_batches(m["support"]) for m in members])
        theta = {n: self.theta[n] for n in names}
        with isolated_rng(members[0]["seed"] + 2):
            adapted = vmap(adapt, in_dims=(None, 0), randomness="different")(theta, support)
            if self.query == "adapted" and "q_agent" not in members[0]:  # collected once per member
                for k, m in enumerate(members):
                    self._query_from_adapted(m, {n: v[k] for n, v in adapted.items()}, iteration, k)
            query = stack_batches([m["query"] for m in members])
            q_losses = vmap(loss_of, in_dims=(0, 0), randomness="different")(adapted, query)
            with torch.no_grad():
                pre = vmap(loss_of, in_dims=(None, 0), randomness="different")(theta, query)
                sup = vmap(loss_of, in_dims=(None, 0), randomness="different")(
                    theta, {key: v[:, 0] for key, v in support.items()})
        (q_losses.sum() / self.population).backward()
        return [{**_ep_row(m["episodes"], m.get("query_episodes")), "maml/support_loss": float(sup[k]),
                 "maml/query_loss_pre": float(pre[k]), "maml/query_loss": float(q_losses[k].detach())}
                for k, m in enumerate(members)]

    # -- few-shot adaptation ---------------------------------------------------------------------
    def adapt(self, agent: Agent, task: TaskSpec, shots: int, *, seed: int = 0,
              eval_episodes_per_shot: int = 1) -> Iterator[Metrics]:
        """MAML's own adaptation: after each of ``shots`` episodes (collected with the parameters
        adapted so far), ``grad_steps`` SGD steps (with the learned rates under Meta-SGD) from the
        meta-learned initialization on batches of all the task's data so far, then a greedy
        evaluation. Before the replay can give a batch the agent acts unadapted (``adapted`` = 0)."""
        tasks = self.ctx.tasks
        theta0 = {n: p.detach().clone() for n, p in meta_params(agent, self.part).items()}
        rate = self.inner_rate()
        rate = {n: a.detach() for n, a in rate.items()} if isinstance(rate, dict) else rate
        gen = torch.Generator().manual_seed(seed)
        first = _shot_metrics(agent, tasks, task, 0, seed, eval_episodes_per_shot, None, 0)
        yield {**first, "adapted": 0.0}
        collector = Collector([tasks.make_env(task)], tasks.env_spec, [seed])
        clock = 0
        for k in range(1, shots + 1):
            actor = self._support_actor(agent) if k == 1 else agent  # the first episode is the support data
            while True:
                n, finished = collector.step(actor, explore=True)
                clock += n
                if finished:
                    break
            adapted = 0.0
            if theta0:
                batches = [agent.sample_batch(gen) for _ in range(self.grad_steps)]
                if all(b is not None for b in batches):
                    p = {n: t.clone().requires_grad_(True) for n, t in theta0.items()}
                    new, _ = inner_loop(lambda q, i: agent.loss(q, batches[i])[0], p, self.grad_steps, rate,
                                        first_order=True)
                    load_params(agent, new)
                    adapted = 1.0
            row = _shot_metrics(agent, tasks, task, k, seed, eval_episodes_per_shot, finished[0]["return"], clock)
            yield {**row, "adapted": adapted}

    def agent_clock(self) -> int:
        return 0  # the shared agent never runs its own update(): its replay-ratio clock has not started

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        return {"agent": self._agent.state_dict(replay=False), "env_steps": self.env_steps,
                "lrs": {n: a.detach().clone() for n, a in self.lrs.items()} if self.lrs is not None else None,
                "opt": self.opt.state_dict() if self.opt is not None else None,
                "kept": [self._member_state(m) for m in self.kept]}

    @staticmethod
    def _member_state(m: dict) -> dict[str, Any]:
        return {"agent": m["agent"].state_dict(replay=True), "spec": m["spec"].to_dict(), "seed": m["seed"],
                "gen": m["gen"].get_state(),
                "q_agent": m["q_agent"].state_dict(replay=True) if "q_agent" in m else None}

    def _member_from_state(self, st: dict[str, Any]) -> dict[str, Any]:
        spec_of = self.ctx.tasks.env_spec
        m = {"agent": fresh_agent(self.ctx.make_agent, spec_of, st["agent"]), "spec": TaskSpec.from_dict(st["spec"]),
             "seed": int(st["seed"]), "gen": torch.Generator(), "env_steps": 0, "episodes": []}
        m["gen"].set_state(st["gen"])
        if st["q_agent"] is not None:
            m["q_agent"] = fresh_agent(self.ctx.make_agent, spec_of, st["q_agent"])
        return m

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with isolated_rng(0):  # building agents draws initial weights; the run's generators stay as saved
            self.kept = [self._member_from_state(st) for st in state.get("kept", [])]
        self._agent.load_state_dict(state["agent"])
        self.env_steps = int(state["env_steps"])
        if self.lrs is not None and state.get("lrs") is not None:
            with torch.no_grad():
                for n, a in self.lrs.items():
                    a.copy_(state["lrs"][n])
        if self.opt is not None and state.get("opt") is not None:
            self.opt.load_state_dict(state["opt"])


class RandomSupport(RandomAgent):
    """Uniformly random actions whose steps go to ``agent``'s replay (``support_actions=random``)."""

    def __init__(self, env_spec, agent: Agent):
        super().__init__(env_spec)
        self.agent = agent

    def observe(self, step) -> None:
        self.agent.observe(step)


def double_backward_kernels():
    """Second-order meta-gradients differentiate the inner gradient again, and PyTorch's fused
    attention kernels (flash / memory-efficient ``scaled_dot_product_attention``) have no double
    backward; the math kernel does. So the second-order graph of an attention-based agent
    (Dreamer 4) is built with the math kernel; other agents are unaffected."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _ep_row(episodes: list[dict], query_episodes: list[dict] | None = None) -> Metrics:
    """A member's returns: ``return_pre`` of the support episodes (initialization), ``return`` of
    the query episodes (adapted) when there are any, else of the support episodes."""
    row: Metrics = {}
    pre = summarize_episodes(episodes, "x")
    if pre:
        row["return_pre"] = pre["x/return"]
        row["length"] = pre["x/length"]
    post = summarize_episodes(query_episodes or [], "x") or pre
    if post:
        row["return"] = post["x/return"]
        if "x/success" in post:
            row["success"] = post["x/success"]
    return row


def _train_row(rows: list[Metrics]) -> Metrics:
    m = mean_metrics(rows)
    return {f"train/{k}": m[k] for k in ("return", "return_pre", "length", "success") if k in m}



