"""``meta=learned_rule``: meta-learned update rules, selected with ``meta.rule``.

``rule=learned_optimizer`` - a learned optimizer (Andrychowicz et al. 2016; features after Metz et
al. 2020/2022, :mod:`metawm.ops.learned_optimizer`): a small MLP applied to every scalar
parameter, over its gradient, momenta at four decay rates, Adam's direction, the parameter and
loss/step features, giving a correction around Adam. It replaces the agent's optimizer. Meta-
training, each outer step, for a population of tasks:

1. a *fresh* agent (with ``vary_init``, the default, its own random draw of the agent's initial
   weights, as Metz et al. meta-train over initializations; otherwise the agent's one
   initialization) collects ``inner_steps`` env steps on its task
   and, ``updates_per_step`` times per env step, updates its parameters (``meta.part``) with the
   learned rule on a batch from its replay - functionally, theta_{i+1} = theta_i + delta_phi(...);
2. **truncated meta-gradients**: after every ``unroll`` updates the meta-loss - the mean of the
   agent's loss L(theta_{i+1}; fresh batch) over the unroll, divided (``meta_loss=relative``, the
   default) by |L| at the unroll's start, held constant - is backpropagated into phi through
   the unroll, then theta and the rule's state are detached (the truncation). By default the
   inner gradients are treated as constants (``second_order=false``: no Hessian-vector terms;
   cheap, and less prone to the exploding meta-gradients of long unrolls, Metz et al. 2019);
3. phi takes one Adam step (``meta_lr``, clipped to ``meta_grad_clip``) on the population's sum.

Why relative (our choice; Andrychowicz et al. sum the plain losses): a member's loss falls by one or
two orders of magnitude over its run, so with the plain loss the first unrolls dominate the
meta-gradient and the rule learns to be fast early at any later cost (point_nav: ``meta_loss=absolute``
rules were 10x faster than Adam over the first 20 updates and ended 2-20x above it after 150; see
benchmarks/learned_optimizer.py). Dividing each unroll by its starting loss weighs a halving of the
loss the same early and late.

We chose truncated meta-gradients over evolution strategies: the agents' losses are differentiable
functions of their parameters (the Agent protocol exposes them), and for the small rule (~1.5k
parameters) a gradient is far cheaper than the hundreds of perturbed unrolls ES needs; the price is
the truncation bias (short-horizon bias, Wu et al. 2018), documented here rather than hidden.

``rule=meta_gradient`` - meta-gradient RL (Xu, van Hasselt, Silver, NeurIPS 2018, eq. 1-4): the
return's discount gamma, lambda and the entropy scale eta are adapted online. Every
``meta_every`` env steps of a member's normal training:

    theta' = theta - alpha * d L(theta, tau; eta) / d theta          (eq. 1, one SGD step)
    eta   <- eta - beta * d J'(theta', tau'; eta_bar) / d eta         (eq. 2-4, J' with fixed reference eta_bar)

differentiating J' through theta'. Members are persistent agents that train with their own update
rule using the current eta (``agent.set_hparams``). This needs an agent hook: ``hparams() ->
dict[str, float]`` (names among ``discount``, ``lam``, ``actent``), ``set_hparams(dict)`` and
``loss(params, batch, hparams={name: 0-d tensor})`` differentiable in the hyperparameters. DreamerV3
has it (:meth:`~metawm.agents.dreamerv3.agent.DreamerV3Agent.set_hparams`: lambda-returns and
advantages from *detached* model outputs, so that gradients reach gamma and lambda but not the
networks; its discount, learned into the continue head, is applied as the head's continuation
probability times gamma). Dreamer 4 has it for gamma and lambda of its imagined returns
(:meth:`~metawm.agents.dreamer4.agent.Dreamer4Agent.set_hparams`; the meta-gradient reaches them
through the value head's TD(lambda) targets, PMPO reading only the advantage's sign). MPC and
MuZero do not; with them the rule stops with an error naming the hook.

Both rules are evaluated as the issue asks: ``metawm.adapt`` trains a *fresh* agent on a held-out
task with the learned rule (``meta`` rows) against the hand-designed rule (``scratch`` rows).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterator, Mapping

import torch

from metawm.envs.rollout import Collector
from metawm.infra.errors import UserError, choices_error
from metawm.meta.base import (Context, MetaLearnerBase, finetune_adaptation, fresh_agent, isolated_rng, load_params,
                              mean_metrics, meta_params, per_member, summarize_episodes)
from metawm.ops.adam import Adam
from metawm.ops.functional_sgd import grads_of
from metawm.ops.learned_optimizer import RuleMLP, detach_state, init_state, learned_step
from metawm.protocols import Agent
from metawm.types import Metrics, TaskSpec

RULES = ("learned_optimizer", "meta_gradient")
META_LOSSES = ("relative", "absolute")
HPARAM_TRANSFORMS = {  # unconstrained value <-> hyperparameter
    "discount": (lambda x: torch.sigmoid(x), lambda v: math.log(v / (1 - v))),
    "lam": (lambda x: torch.sigmoid(x), lambda v: math.log(v / (1 - v))),
    "actent": (lambda x: torch.exp(x), lambda v: math.log(v)),
}


class LearnedRule(MetaLearnerBase):
    name = "learned_rule"
    needs_meta_state = True

    def __init__(self, rule: str = "learned_optimizer", population: int = 4, inner_steps: int = 1000,
                 part: str = "all", updates_per_step: float = 0.5, unroll: int = 8, base_lr: float = 1e-3,
                 hidden: int = 32, second_order: bool = False, meta_lr: float = 1e-3, meta_grad_clip: float = 1.0,
                 meta_every: int = 50, inner_lr: float = 1e-2, envs_per_task: int = 1, eval_shots: int = 0,
                 vary_init: bool = True, meta_loss: str = "relative"):
        self.eval_shots = int(eval_shots)
        if rule not in RULES:
            raise choices_error("learned rule (meta.rule)", rule, RULES)
        self.rule_name = rule
        self.population, self.inner_steps, self.part = int(population), int(inner_steps), str(part)
        self.updates_per_step, self.unroll, self.base_lr = float(updates_per_step), int(unroll), float(base_lr)
        self.hidden, self.second_order = int(hidden), bool(second_order)
        self.meta_lr, self.meta_grad_clip = float(meta_lr), float(meta_grad_clip)
        self.meta_every, self.inner_lr, self.envs_per_task = int(meta_every), float(inner_lr), int(envs_per_task)
        self.vary_init = bool(vary_init)
        if meta_loss not in META_LOSSES:
            raise choices_error("meta-loss of the learned optimizer (meta.meta_loss)", meta_loss, META_LOSSES)
        self.meta_loss = str(meta_loss)
        self.env_steps = 0
        self.member_clock = 0  # meta_gradient: env steps each persistent member has trained for

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        with isolated_rng(ctx.seeds.seed("rule_init")):
            self.rule = RuleMLP(self.hidden)
        self._agent = ctx.make_agent(ctx.tasks.env_spec)   # the agent shown: last trained member
        meta_params(self._agent, self.part)
        self._init_state = self._agent.state_dict(replay=False)  # every member starts from this
        if self.rule_name == "learned_optimizer":
            self.opt = Adam(self.rule.parameters(), lr=self.meta_lr)
        else:
            self._check_hooks(self._agent)
            base = {k: float(v) for k, v in self._agent.hparams().items() if k in HPARAM_TRANSFORMS}
            if not base:
                raise UserError(f"meta.rule=meta_gradient adapts {sorted(HPARAM_TRANSFORMS)}; agent "
                                f"{getattr(self._agent, 'name', '?')} exposes none of them in hparams().")
            self.reference = dict(base)  # eta_bar of the meta-objective (Xu et al. eq. 4)
            self.raw = {k: torch.tensor(HPARAM_TRANSFORMS[k][1](v), requires_grad=True) for k, v in base.items()}
            # eps far below Adam's usual 1e-8: each hyperparameter is one scalar whose meta-gradient
            # may be tiny (DreamerV3's entropy scale: ~1e-11), and Adam's step is scale-free only
            # while sqrt(v) >> eps; with 1e-8 the entropy scale would never move.
            self.opt = Adam(list(self.raw.values()), lr=self.meta_lr, eps=1e-20)
            self.members: list[Agent] = []

    def _check_hooks(self, agent: Agent) -> None:
        ok = callable(getattr(agent, "hparams", None)) and callable(getattr(agent, "set_hparams", None)) and \
            "hparams" in inspect.signature(agent.loss).parameters
        if not ok:
            raise UserError(
                f"meta.rule=meta_gradient needs differentiable hyperparameters from the agent, and agent "
                f"{getattr(agent, 'name', type(agent).__name__)!r} does not expose them. It needs hparams() -> "
                "{'discount': ..., 'lam': ..., 'actent': ...}, set_hparams(dict) and loss(params, batch, hparams=...) "
                "differentiable in them (see metawm/meta/learned_rule.py). Use meta.rule=learned_optimizer instead.")

    def agent(self) -> Agent:
        return self._agent

    def hparams(self) -> dict[str, float]:
        return {k: float(HPARAM_TRANSFORMS[k][0](x.detach())) for k, x in self.raw.items()}

    # -- outer step ------------------------------------------------------------------------------
    def outer_step(self, iteration: int) -> Metrics:
        specs = self.ctx.tasks.sample("train", self.population, self.ctx.seeds.numpy("tasks", iteration))
        if self.rule_name == "learned_optimizer":
            return self._outer_learned_optimizer(iteration, specs)
        return self._outer_meta_gradient(iteration, specs)

    def _outer_learned_optimizer(self, iteration: int, specs: list[TaskSpec]) -> Metrics:
        self.opt.zero_grad()
        rows, taken = [], 0
        for k, spec in enumerate(specs):
            seed = self.ctx.seeds.seed("inner", iteration, k)
            row, agent, n = self._train_with_rule(spec, seed, meta_train=True)
            rows.append(row)
            taken += n
            if k == 0:
                self._agent.load_state_dict(agent.state_dict(replay=False))
        params = list(self.rule.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        gnorm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
        if grads:
            torch.nn.utils.clip_grad_norm_(params, self.meta_grad_clip)
            self.opt.step()
        self.env_steps += taken
        m = mean_metrics(rows)
        return {**{f"train/{k}": v for k, v in m.items() if k in ("return", "length", "success")},
                **{k: v for k, v in m.items() if k.startswith("rule/")}, **per_member(specs, rows),
                "rule/meta_grad_norm": gnorm, "env_steps": float(taken)}

    def _train_with_rule(self, spec: TaskSpec, seed: int, *, meta_train: bool) -> tuple[Metrics, Agent, int]:
        """A fresh agent collects ``inner_steps`` env steps on ``spec`` and trains with the learned
        rule; with ``meta_train`` the truncated meta-gradient is accumulated into the rule."""
        with isolated_rng(seed):
            if self.vary_init:  # the member's own draw of the initial weights (the rule must not fit one)
                agent = fresh_agent(lambda env_spec: self.ctx.make_agent(env_spec, init=seed), self.ctx.tasks.env_spec,
                                    None, seed)
            else:
                agent = fresh_agent(self.ctx.make_agent, self.ctx.tasks.env_spec, self._init_state, seed)
            trainer = RuleTrainer(self, agent, spec, seed, meta_train=meta_train)
            episodes = trainer.run(steps=self.inner_steps)
            trainer.finish()
        row = {**{k.split("/", 1)[1]: v for k, v in summarize_episodes(episodes, "x").items()},
               "rule/loss": float(sum(trainer.losses) / len(trainer.losses)) if trainer.losses else math.nan,
               "rule/unrolls": float(trainer.unrolls)}
        return row, agent, trainer.taken

    # -- meta-gradient RL ------------------------------------------------------------------------
    def _outer_meta_gradient(self, iteration: int, specs: list[TaskSpec]) -> Metrics:
        tasks = self.ctx.tasks
        if not self.members:
            self.members = [fresh_agent(self.ctx.make_agent, tasks.env_spec, self._init_state, None)
                            for _ in range(self.population)]
        rows, taken, metas = [], 0, []
        for k, (spec, agent) in enumerate(zip(specs, self.members)):
            seed = self.ctx.seeds.seed("inner", iteration, k)
            with isolated_rng(seed):
                agent.set_hparams(self.hparams())
                collector = Collector([tasks.make_env(spec)], tasks.env_spec, [seed])
                gen = torch.Generator().manual_seed(seed)
                eps, n, since = [], 0, 0
                while n < self.inner_steps:
                    s, fin = collector.step(agent, explore=True)
                    n, since = n + s, since + s
                    eps += fin
                    agent.update(self.member_clock + n)
                    if since >= self.meta_every:
                        since = 0
                        m = self._meta_gradient_step(agent, gen)
                        if m:
                            metas.append(m)
                            agent.set_hparams(self.hparams())
            taken += n
            rows.append({k2.split("/", 1)[1]: v for k2, v in summarize_episodes(eps, "x").items()})
        self.env_steps += taken
        self.member_clock += self.inner_steps
        self._agent.load_state_dict(self.members[0].state_dict(replay=False))
        out = {**{f"train/{k}": v for k, v in mean_metrics(rows).items() if k in ("return", "length", "success")},
               **per_member(specs, rows), **mean_metrics(metas), "env_steps": float(taken)}
        out.update({f"rule/{k}": v for k, v in self.hparams().items()})
        return out

    def _meta_gradient_step(self, agent: Agent, gen: torch.Generator) -> Metrics:
        b1, b2 = agent.sample_batch(gen), agent.sample_batch(gen)
        if b1 is None or b2 is None:
            return {}
        theta = {n: p.detach().clone().requires_grad_(True) for n, p in meta_params(agent, self.part).items()}
        eta = {k: HPARAM_TRANSFORMS[k][0](x) for k, x in self.raw.items()}
        loss = agent.loss(theta, b1, hparams=eta)[0]
        g = grads_of(loss, theta, create_graph=True)
        adapted = {n: theta[n] - self.inner_lr * g[n] for n in theta}
        ref = {k: torch.tensor(v) for k, v in self.reference.items()}
        meta_obj = agent.loss(adapted, b2, hparams=ref)[0]
        self.opt.zero_grad()
        grads = torch.autograd.grad(meta_obj, list(self.raw.values()), allow_unused=True)
        for x, gx in zip(self.raw.values(), grads):
            x.grad = torch.zeros_like(x) if gx is None else gx.clamp(-self.meta_grad_clip, self.meta_grad_clip)
        self.opt.step()
        return {"rule/meta_objective": float(meta_obj.detach()), "rule/inner_loss": float(loss.detach())}

    def agent_clock(self) -> int:
        # learned_optimizer: the shown agent was trained by the rule, never by its own update();
        # meta_gradient: it is member 0, whose own update() clock is member_clock
        return self.member_clock if self.rule_name == "meta_gradient" else 0

    # -- adaptation: a fresh agent trained with the learned rule ------------------------------------
    def adaptation_agent(self, agent_state: Mapping[str, Any], seed: int) -> Agent:
        """A *fresh* agent. learned_optimizer: initialised exactly as the ``scratch`` baseline (the
        adaptation run's own initialization, not the one the rule was meta-trained from), so the
        ``meta`` and ``scratch`` rows differ only in the update rule, and the rule is tested on an
        initialization it has not seen. meta_gradient: the members' initialization with the
        meta-learned hyperparameters."""
        if self.rule_name == "learned_optimizer":
            return fresh_agent(self.ctx.make_agent, self.ctx.tasks.env_spec, None, seed)
        agent = fresh_agent(self.ctx.make_agent, self.ctx.tasks.env_spec, self._init_state, seed)
        agent.set_hparams(self.hparams())
        return agent

    def adapt(self, agent: Agent, task: TaskSpec, shots: int, *, seed: int = 0,
              eval_episodes_per_shot: int = 1) -> Iterator[Metrics]:
        """Train ``agent`` (fresh, from :meth:`adaptation_agent`) on ``task`` with the learned rule:
        the learned optimizer in place of the agent's own, or the agent's own update with the
        meta-learned hyperparameters (meta_gradient)."""
        if self.rule_name == "meta_gradient":
            yield from finetune_adaptation(agent, self.ctx.tasks, task, shots, seed=seed,
                                           eval_episodes_per_shot=eval_episodes_per_shot)
            return
        from metawm.meta.base import _shot_metrics

        tasks = self.ctx.tasks
        yield _shot_metrics(agent, tasks, task, 0, seed, eval_episodes_per_shot, None, 0)
        trainer = RuleTrainer(self, agent, task, seed, meta_train=False)
        for k in range(1, shots + 1):
            finished = trainer.run(until_episode=True)
            yield _shot_metrics(agent, tasks, task, k, seed, eval_episodes_per_shot, finished[0]["return"], trainer.taken)

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        out = {"agent": self._agent.state_dict(replay=False), "rule": self.rule_name, "env_steps": self.env_steps,
               "member_clock": self.member_clock,
               "opt": self.opt.state_dict(), "init": self._init_state}
        if self.rule_name == "learned_optimizer":
            out["rule_params"] = {k: v.detach().clone() for k, v in self.rule.state_dict().items()}
        else:
            out["raw"] = {k: v.detach().clone() for k, v in self.raw.items()}
            out["members"] = [a.state_dict(replay=replay) for a in self.members]
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("rule") != self.rule_name:
            raise UserError(f"this checkpoint's learned rule is {state.get('rule')!r}, not meta.rule={self.rule_name!r}; "
                            f"pass meta.rule={state.get('rule')}.")
        self._agent.load_state_dict(state["agent"])
        self.env_steps = int(state["env_steps"])
        self.member_clock = int(state.get("member_clock", 0))
        self._init_state = state["init"]
        if self.rule_name == "learned_optimizer":
            self.rule.load_state_dict(state["rule_params"])
        else:
            with torch.no_grad():
                for k, v in state["raw"].items():
                    self.raw[k].copy_(v)
            self.members = []
            for s in state.get("members", []):
                a = fresh_agent(self.ctx.make_agent, self.ctx.tasks.env_spec, None, None)
                a.load_state_dict(s)
                self.members.append(a)
        self.opt.load_state_dict(state["opt"])

    def load_agent_state(self, agent_state) -> None:
        raise UserError("meta=learned_rule needs its learned rule; this checkpoint has none.")


class RuleTrainer:
    """An agent on one task trained by the learned optimizer (functional parameters theta, the
    rule's state), optionally accumulating truncated meta-gradients into the rule."""

    def __init__(self, learner: LearnedRule, agent: Agent, spec: TaskSpec, seed: int, *, meta_train: bool):
        tasks = learner.ctx.tasks
        self.l, self.agent, self.meta_train = learner, agent, meta_train
        self.collector = Collector([tasks.make_env(spec) for _ in range(learner.envs_per_task)], tasks.env_spec,
                                   [seed + 7919 * j for j in range(learner.envs_per_task)])
        self.theta = {n: p.detach().clone() for n, p in meta_params(agent, learner.part).items()}
        self.state = init_state(self.theta)
        self.gen = torch.Generator().manual_seed(seed)
        self.meta_terms: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.unrolls, self.taken, self.pending = 0, 0, 0.0

    def run(self, steps: int | None = None, until_episode: bool = False) -> list[dict]:
        """Collect (and train) for ``steps`` env steps, or until an episode ends."""
        episodes, start = [], self.taken
        while (steps is not None and self.taken - start < steps) or (until_episode and not episodes):
            n, finished = self.collector.step(self.agent, explore=True)
            self.taken += n
            episodes += finished
            self.pending += n * self.l.updates_per_step
            while self.pending >= 1 and self.theta:
                self.pending -= 1
                if not self._update():
                    self.pending = 0.0
        return episodes

    def _update(self) -> bool:
        l, agent = self.l, self.agent
        batch = agent.sample_batch(self.gen)
        if batch is None:
            return False
        second = self.meta_train and l.second_order
        theta = {k: (v if v.requires_grad else v.detach().requires_grad_(True)) for k, v in self.theta.items()}
        loss = agent.loss(theta, batch)[0]
        g = grads_of(loss, theta, create_graph=second)
        if not second:
            g = {k: v.detach() for k, v in g.items()}
        if self.meta_train:
            theta, self.state = learned_step(l.rule, theta, g, self.state, loss.detach(), l.base_lr)
            if not self.meta_terms:   # the unroll's starting loss: the scale of a relative meta-loss
                self.unroll_scale = loss.detach().abs() + 1e-8 if l.meta_loss == "relative" else 1.0
            self.meta_terms.append(agent.loss(theta, agent.sample_batch(self.gen))[0] / self.unroll_scale)
            if len(self.meta_terms) >= l.unroll:
                self._meta_backward()
        else:
            with torch.no_grad():
                theta, self.state = learned_step(l.rule, {k: v.detach() for k, v in theta.items()}, g, self.state,
                                                 loss.detach(), l.base_lr)
        if not self.meta_terms:  # truncation: the next unroll starts from detached values
            theta, self.state = {k: v.detach() for k, v in theta.items()}, detach_state(self.state)
        self.theta = theta
        self.losses.append(float(loss.detach()))
        load_params(agent, theta)
        return True

    def _meta_backward(self) -> None:
        (torch.stack(self.meta_terms).mean() / self.l.population).backward()
        self.meta_terms = []
        self.unrolls += 1

    def finish(self) -> None:
        if self.meta_terms:
            self._meta_backward()
            self.theta = {k: v.detach() for k, v in self.theta.items()}
            self.state = detach_state(self.state)
        load_params(self.agent, self.theta)
