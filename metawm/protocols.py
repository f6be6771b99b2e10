"""The architecture on one page: the few protocols every component implements.

* A :class:`TaskDistribution` samples :class:`~metawm.types.TaskSpec` s and builds environments.
* An :class:`Agent` acts on batched steps with an explicit recurrent ``carry``, stores what it
  sees, learns from its own replay, and exposes its parameters by name so a meta-learner can adapt
  them functionally (``torch.func.functional_call``).
* A :class:`MetaLearner` owns the outer loop over a population of agents on sampled tasks.
* A :class:`Tracker` is a sink for flat metric dicts with slash names (``wm/kl``).

Everything here is a ``typing.Protocol``: implementations do not inherit, they conform.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch

from metawm.types import EnvSpec, Metrics, Step, TaskSpec

Carry = Any  # any pytree of tensors/arrays; agents define their own
Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]


@runtime_checkable
class TaskDistribution(Protocol):
    """A family of tasks with named splits, e.g. CartPole with varied physics."""

    name: str
    splits: tuple[str, ...]
    env_spec: EnvSpec  # identical for every task of the suite

    def sample(self, split: str, n: int, rng: np.random.Generator) -> list[TaskSpec]:
        """``n`` tasks of ``split`` drawn with ``rng``: same generator state -> same tasks."""

    def make_env(self, spec: TaskSpec) -> gym.Env:
        """A fresh environment for ``spec`` following the conventions of :mod:`metawm.types`;
        the caller seeds it with its first ``reset(seed=...)``."""


@runtime_checkable
class Agent(Protocol):
    """An inner-loop (world-model) agent on one environment spec.

    Acting is batched over N environments. ``update`` is called once per collected batch of
    steps and decides itself, from its replay ratio, how many gradient steps to take.
    """

    env_spec: EnvSpec

    def initial_carry(self, n: int) -> Carry: ...

    def act(self, step: Step, carry: Carry, *, explore: bool) -> tuple[np.ndarray, Carry]:
        """Actions for a batch of steps; resets the carry where ``step['is_first']``."""

    def observe(self, step: Step) -> None:
        """Store a batch of steps (with ``action``) in the agent's replay."""

    def update(self, env_steps: int) -> Metrics:
        """Train as the replay ratio asks, given the total env steps seen so far; flat metrics."""

    # -- functional access for meta-learners ------------------------------------------------
    def parts(self) -> dict[str, list[str]]:
        """Named parameter groups, e.g. ``{"world_model": [...], "actor_critic": [...]}``."""

    def params(self, part: str = "all") -> Params:
        """The live parameter tensors of ``part`` by name (``all`` = every trainable one)."""

    def sample_batch(self, rng: torch.Generator | None = None) -> Batch | None:
        """A training batch from the agent's replay, or None while it has too little data."""

    def loss(self, params: Params, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """The agent's own training loss with ``params`` substituted (functional_call)."""

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self, *, replay: bool = False) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    # Optional hooks the training loop calls when present:
    #   info() -> dict                       preset, parameter count, ... (into summary.json)
    #   write_plots(directory, env_steps)    PNGs into the run's plots/ (e.g. reconstructions)
    # and one that meta.rule=meta_gradient requires (DreamerV3 has it):
    #   hparams() / set_hparams(dict) / loss(params, batch, hparams={name: 0-d tensor})
    #                                        discount, lam, actent, differentiable (metawm/meta/learned_rule.py)


# make_agent(env_spec, init=None): a fresh agent; the same initial weights on every call, or with an
# integer ``init`` another reproducible draw of them (meta=learned_rule's members, ``vary_init``).
AgentFactory = Callable[..., Agent]


@runtime_checkable
class Tracker(Protocol):
    """A sink for metrics. ``log`` takes flat dicts with slash names at an env-step count."""

    def log(self, metrics: Metrics, step: int) -> None: ...

    def summary(self, summary: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class MetaLearner(Protocol):
    """The outer loop. One ``outer_step`` samples a population of tasks, runs inner-loop agents
    on them and updates what is shared (an initialization, a belief model, an update rule).
    ``adapt`` is the few-shot step ``metawm.adapt`` calls on a held-out task."""

    name: str

    def setup(self, ctx: "MetaContext") -> None: ...

    def outer_step(self, iteration: int) -> Metrics: ...

    def agent(self) -> Agent:
        """The shared agent as it stands (what gets evaluated and checkpointed)."""

    def evaluate(self, specs: list[TaskSpec], episodes: int, seed: int, prefix: str) -> Metrics:
        """Metrics of the shared agent on ``specs`` (after the learner's own adaptation, if any)."""

    def adapt(self, agent: Agent, task: TaskSpec, shots: int) -> Iterator[Metrics]:
        """Adapt ``agent`` to ``task`` over ``shots`` episodes, yielding metrics after each."""

    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        """Everything to continue exactly; ``replay`` includes the agents' replay buffers."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class MetaContext(Protocol):
    """What the composition root hands a meta-learner: built objects, never the config."""

    tasks: TaskDistribution
    make_agent: AgentFactory
    device: torch.device
    seeds: Any  # metawm.infra.seeding.Seeds
    tracker: Tracker
