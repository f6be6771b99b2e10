"""What every meta-learner shares: the context it is given, evaluation, episode summaries."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from metawm.envs.rollout import Collector, run_episodes
from metawm.infra.errors import UserError
from metawm.infra.seeding import Seeds, global_rng_state, set_global_rng_state
from metawm.protocols import Agent, AgentFactory, TaskDistribution
from metawm.types import EnvSpec, Metrics, TaskSpec


@dataclasses.dataclass
class Context:
    """Objects built at the composition root and handed to a meta-learner (never the config)."""

    tasks: TaskDistribution
    make_agent: AgentFactory
    device: torch.device
    seeds: Seeds


def summarize_episodes(episodes: Sequence[dict], prefix: str) -> Metrics:
    """Flat metrics over finished episodes: mean/std return, mean length, success rate."""
    if not episodes:
        return {}
    returns = np.array([e["return"] for e in episodes], np.float64)
    out = {f"{prefix}/return": float(returns.mean()), f"{prefix}/return_std": float(returns.std()),
           f"{prefix}/length": float(np.mean([e["length"] for e in episodes])),
           f"{prefix}/episodes": float(len(episodes))}
    successes = [e["success"] for e in episodes if not math.isnan(e.get("success", math.nan))]
    if successes:
        out[f"{prefix}/success"] = float(np.mean(successes))
    return out


def mean_metrics(rows: Iterable[Metrics]) -> Metrics:
    """Average a list of flat metric dicts key by key (keys missing from a row are skipped)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def evaluate_agent(agent: Agent, tasks: TaskDistribution, specs: Sequence[TaskSpec], episodes: int,
                   seed: int, prefix: str) -> Metrics:
    """Zero-shot evaluation: ``episodes`` greedy episodes of ``agent`` on every spec."""
    all_eps = []
    for k, spec in enumerate(specs):
        eps = run_episodes(agent, lambda: tasks.make_env(spec), tasks.env_spec, episodes,
                           seed=seed + 104729 * k, explore=False)
        all_eps.extend(eps)
    return summarize_episodes(all_eps, prefix)


# -------------------------------------------------------------------------------------------------
# Helpers of the meta-learners (metawm/meta/*.py): isolated randomness, fresh agents, data, params
# -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with the global torch / numpy / random generators seeded with ``seed`` and
    restore them afterwards, so that a population member's randomness depends on its own seed
    only: the same member gives the same result in-process, in another process or on another
    node, and the outer loop's own stream is untouched (a resumed run continues exactly)."""
    state = global_rng_state()
    try:
        reseed(seed)
        yield
    finally:
        set_global_rng_state(state)


def reseed(seed: int) -> None:
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % (1 << 32))
    random.seed(int(seed))


def fresh_agent(make_agent: AgentFactory, env_spec: EnvSpec, state: Mapping[str, Any] | None,
                seed: int | None = None) -> Agent:
    """A new agent (empty replay) holding ``state`` (an ``agent.state_dict(replay=False)``).
    The factory seeds the global RNG for initial weights; ``seed`` re-seeds it afterwards, so a
    member's acting is driven by its own seed, not by the init stream."""
    agent = make_agent(env_spec)
    if state is not None:
        agent.load_state_dict(state)
    if seed is not None:
        reseed(seed)
    return agent


@torch.no_grad()
def load_params(agent: Agent, params: Mapping[str, torch.Tensor]) -> None:
    """Copy ``params`` (by name) into the agent's live parameters, e.g. adapted ones to act with."""
    live = agent.params("all")
    for name, value in params.items():
        live[name].copy_(value.detach().to(live[name].device))


def meta_params(agent: Agent, part: str) -> dict[str, torch.Tensor]:
    """The live parameters of ``part`` (``all`` or one of ``agent.parts()``); an unknown part is a
    UserError naming the agent's parts."""
    if part != "all":
        parts = agent.parts()
        if part not in parts:
            from metawm.infra.errors import choices_error

            raise choices_error(f"parameter part (meta.part) of agent {getattr(agent, 'name', type(agent).__name__)!r}",
                                part, [*parts, "all"])
    return dict(agent.params(part))


def collect(agent: Agent, tasks: TaskDistribution, spec: TaskSpec, steps: int, seed: int, *, envs: int = 1,
            train: bool = True, explore: bool = True, clock: int = 0,
            on_step: Callable[[int], None] | None = None) -> tuple[list[dict], list[Metrics], int]:
    """Run ``agent`` on ``envs`` fresh environments of ``spec`` for at least ``steps`` env steps
    (storing what it sees); with ``train`` it calls ``agent.update`` after every batch of steps,
    with env-step counts continuing from ``clock``. Returns (finished episodes, update metrics,
    env steps taken)."""
    collector = Collector([tasks.make_env(spec) for _ in range(envs)], tasks.env_spec,
                          [seed + 7919 * j for j in range(envs)])
    episodes, updates, taken = [], [], 0
    while taken < steps:
        n, finished = collector.step(agent, explore=explore)
        taken += n
        episodes.extend(finished)
        if train:
            m = agent.update(clock + taken)
            if m:
                updates.append(m)
        if on_step is not None:
            on_step(taken)
    for env in collector.envs:
        env.close()
    return episodes, updates, taken


def sample_batches(agent: Agent, n: int, gen: torch.Generator | None, what: str) -> list[dict[str, torch.Tensor]]:
    """``n`` batches from the agent's replay; a clear error if it holds too little data."""
    out = []
    for _ in range(n):
        b = agent.sample_batch(gen)
        if b is None:
            raise UserError(f"{what}: the agent's replay holds too little data to sample a training batch "
                            f"(agent {getattr(agent, 'name', '?')} needs more env steps before its first batch, "
                            "e.g. its train_after / batch_size x batch_length). Raise meta.inner_steps (or the "
                            "adaptation shots), or lower the agent's train_after.")
        out.append(b)
    return out


def per_member(specs: Sequence[TaskSpec], rows: Sequence[Metrics], keys: Sequence[str] = ("return",)) -> Metrics:
    """``member/<task id>/<key>`` for each member's metrics (keys a member lacks are skipped)."""
    out: Metrics = {}
    for spec, row in zip(specs, rows):
        for k in keys:
            if k in row and row[k] is not None:
                out[f"member/{spec.id}/{k}"] = float(row[k])
    return out


def eval_episodes(agent: Agent, tasks: TaskDistribution, spec: TaskSpec, episodes: int, seed: int) -> list[dict]:
    """Greedy episodes of ``agent`` on ``spec`` (stores nothing)."""
    return run_episodes(agent, lambda: tasks.make_env(spec), tasks.env_spec, episodes, seed=seed, explore=False)


def finetune_adaptation(agent: Agent, tasks: TaskDistribution, spec: TaskSpec, shots: int, *, seed: int,
                        eval_episodes_per_shot: int, explore: bool = True, clock: int = 0) -> Iterator[Metrics]:
    """Plain fine-tuning, the baseline adaptation: before any data (shot 0) and after each of
    ``shots`` episodes collected on ``spec`` with the agent's own update rule (``agent.update``),
    the greedy return of ``eval_episodes_per_shot`` episodes. Yields one metrics dict per shot:
    ``shot``, ``return``, ``success`` (NaN where the suite has none), ``support_return``, ``env_steps``.
    ``agent`` is changed in place. ``clock`` is the env-step count at which the agent's update()
    clock stands (a pretrained agent's replay-ratio counters continue from it; see
    :meth:`MetaLearnerBase.agent_clock`); reported ``env_steps`` count from 0."""
    yield _shot_metrics(agent, tasks, spec, 0, seed, eval_episodes_per_shot, None, 0)
    collector = Collector([tasks.make_env(spec)], tasks.env_spec, [seed])
    taken = 0
    for k in range(1, shots + 1):
        while True:
            n, finished = collector.step(agent, explore=explore)
            taken += n
            agent.update(clock + taken)
            if finished:
                break
        yield _shot_metrics(agent, tasks, spec, k, seed, eval_episodes_per_shot, finished[0]["return"], taken)


def _shot_metrics(agent, tasks, spec, k, seed, episodes, support_return, clock) -> Metrics:
    eps = eval_episodes(agent, tasks, spec, episodes, seed=seed + 1_000_003)
    return shot_row(eps, k, support_return, clock)


def shot_row(eps: Sequence[dict], k: int, support_return: float | None, clock: int) -> Metrics:
    """The metrics of one adaptation shot from its greedy evaluation episodes; BAMDP suites
    (``gridworld_goals``) add ``return_ep<i>``, the mean return of the i-th sub-episode."""
    s = summarize_episodes(eps, "x")
    row = {"shot": float(k), "return": s["x/return"], "success": s.get("x/success", math.nan),
           "support_return": math.nan if support_return is None else float(support_return),
           "env_steps": float(clock)}
    subs = [e["episode_returns"] for e in eps if "episode_returns" in e]
    if subs:
        for i, v in enumerate(np.mean(np.asarray(subs, np.float64), 0)):
            row[f"return_ep{i + 1}"] = float(v)
    return row


class MetaLearnerBase:
    """Defaults shared by the meta-learners: zero-shot evaluation of the shared agent, plain
    fine-tuning as the few-shot adaptation."""

    name = "base"
    ctx: Context
    needs_meta_state = False  # True: adapting needs this learner's own state in the checkpoint

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx

    eval_shots = 0  # > 0: evaluate after the learner's own adaptation from that many episodes

    def evaluate(self, specs: Sequence[TaskSpec], episodes: int, seed: int, prefix: str) -> Metrics:
        """Zero-shot greedy return of the shared agent; with ``eval_shots`` = K > 0 the return after
        the learner's own K-shot adaptation to each task (what MAML/Reptile/learned rules optimise),
        reported as ``<prefix>/return`` (and ``<prefix>/return@0`` for the zero-shot value)."""
        if self.eval_shots <= 0:
            return evaluate_agent(self.agent(), self.ctx.tasks, specs, episodes, seed, prefix)
        state = self.agent().state_dict(replay=False)
        rows = []
        for k, spec in enumerate(specs):
            s = seed + 104729 * k
            with isolated_rng(s):
                rows.append(list(self.adapt(self.adaptation_agent(state, s), spec, self.eval_shots, seed=s,
                                            eval_episodes_per_shot=episodes)))
        out = {f"{prefix}/return": float(np.mean([r[-1]["return"] for r in rows])),
               f"{prefix}/return@0": float(np.mean([r[0]["return"] for r in rows])),
               f"{prefix}/episodes": float(len(specs) * episodes)}
        success = [r[-1]["success"] for r in rows if not math.isnan(r[-1]["success"])]
        if success:
            out[f"{prefix}/success"] = float(np.mean(success))
        return out

    def agent(self) -> Agent:
        raise NotImplementedError

    def adapt(self, agent: Agent, task: TaskSpec, shots: int, *, seed: int = 0,
              eval_episodes_per_shot: int = 1) -> Iterator[Metrics]:
        """Few-shot adaptation (default: plain fine-tuning of ``agent`` in place)."""
        return finetune_adaptation(agent, self.ctx.tasks, task, shots, seed=seed,
                                   eval_episodes_per_shot=eval_episodes_per_shot, clock=self.agent_clock())

    def agent_clock(self) -> int:
        """The env-step count the shared agent's ``update()`` clock stands at: agents keep replay-ratio
        counters (updates due = ratio x (env steps - start) - updates done), so fine-tuning a
        checkpoint's agent must continue its clock, not restart it at 0 (which would hold back every
        update until the old count is reached). Learners that pass another clock override this."""
        return int(getattr(self, "clock", getattr(self, "env_steps", 0)))

    # -- what metawm.adapt calls (metawm/run/adapt.py) --------------------------------------------
    def adaptation_agent(self, agent_state: Mapping[str, Any], seed: int) -> Agent:
        """A fresh copy of the shared agent for one adaptation run (empty replay)."""
        return fresh_agent(self.ctx.make_agent, self.ctx.tasks.env_spec, agent_state, seed)

    def baseline_adaptation(self, method: str, agent_state: Mapping[str, Any], task: TaskSpec, shots: int, *,
                            seed: int, eval_episodes_per_shot: int) -> Iterator[Metrics]:
        """``finetune``: the checkpoint's agent trained with its own update rule; ``scratch``: a
        freshly initialised agent trained the same way. Both on the plain task observations."""
        state = agent_state if method == "finetune" else None
        agent = fresh_agent(self.ctx.make_agent, self.ctx.tasks.env_spec, state, seed)
        return finetune_adaptation(agent, self.ctx.tasks, task, shots, seed=seed,
                                   eval_episodes_per_shot=eval_episodes_per_shot,
                                   clock=self.agent_clock() if method == "finetune" else 0)

    def load_agent_state(self, agent_state: Mapping[str, Any]) -> None:
        """Start from a plain agent state (a checkpoint of another meta-learner); learners whose
        adaptation needs more than the agent set ``needs_meta_state`` and refuse."""
        self.agent().load_state_dict(agent_state)

    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
