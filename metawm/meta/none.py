"""``meta=none``: plain multi-task training, the baseline every report includes.

One agent is trained on a population of tasks drawn from the train split; every
``resample_every`` outer steps a new population is drawn (environments are rebuilt only when
the population changes, so a single-task suite such as ``cartpole_physics`` with
``task.default_only=true`` is ordinary single-task RL). Adaptation is plain fine-tuning.
"""

from __future__ import annotations

from typing import Any

from metawm.envs.rollout import Collector
from metawm.meta.base import Context, MetaLearnerBase, mean_metrics, summarize_episodes
from metawm.protocols import Agent
from metawm.types import Metrics


class MultiTask(MetaLearnerBase):
    name = "none"

    def __init__(self, population: int = 1, envs_per_task: int = 1, inner_steps: int = 1000,
                 resample_every: int = 1):
        """``population`` tasks at a time, ``envs_per_task`` envs each, ``inner_steps`` env steps
        per outer step, a new population every ``resample_every`` outer steps."""
        self.population = int(population)
        self.envs_per_task = int(envs_per_task)
        self.inner_steps = int(inner_steps)
        self.resample_every = max(1, int(resample_every))
        self.collector: Collector | None = None
        self.specs: list = []
        self.env_steps = 0

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self._agent = ctx.make_agent(ctx.tasks.env_spec)

    def agent(self) -> Agent:
        return self._agent

    def _population(self, iteration: int) -> list:
        draw = iteration - iteration % self.resample_every
        return self.ctx.tasks.sample("train", self.population, self.ctx.seeds.numpy("tasks", draw))

    def _build_collector(self, iteration: int) -> None:
        tasks = self.ctx.tasks
        envs, seeds, ids = [], [], []
        for k, spec in enumerate(self.specs):
            for j in range(self.envs_per_task):
                envs.append(tasks.make_env(spec))
                seeds.append(self.ctx.seeds.seed("env", iteration, k, j))
                ids.append(k)
        self.collector = Collector(envs, tasks.env_spec, seeds, ids)

    def outer_step(self, iteration: int) -> Metrics:
        specs = self._population(iteration)
        if self.collector is None or specs != self.specs:
            self.specs = specs
            self._build_collector(iteration)
        episodes, updates, taken = [], [], 0
        while taken < self.inner_steps:
            n, finished = self.collector.step(self._agent, explore=True)
            taken += n
            self.env_steps += n
            episodes.extend(finished)
            metrics = self._agent.update(self.env_steps)
            if metrics:
                updates.append(metrics)
        out = {**summarize_episodes(episodes, "train"), **mean_metrics(updates), "env_steps": float(taken)}
        for k, spec in enumerate(self.specs):
            mine = [e for e in episodes if e["task"] == k]
            if mine and len(self.specs) > 1:
                out[f"task/{spec.id}/return"] = summarize_episodes(mine, "x")["x/return"]
        return out

    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        return {"agent": self._agent.state_dict(replay=replay), "env_steps": self.env_steps,
                "specs": [s.to_dict() for s in self.specs],
                "collector": self.collector.state_dict() if self.collector else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from metawm.types import TaskSpec

        self._agent.load_state_dict(state["agent"])
        self.env_steps = state["env_steps"]
        self.specs = [TaskSpec.from_dict(d) for d in state["specs"]]
        self.collector = None
        if state["collector"] is not None:
            self._build_collector_from_specs()
            self.collector.load_state_dict(state["collector"])

    def _build_collector_from_specs(self) -> None:
        self._build_collector(iteration=0)  # seeds are irrelevant: the snapshot restores each env
