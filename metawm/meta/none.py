"""``meta=none``: plain multi-task training, the baseline every report includes.

One agent is trained on a population of tasks drawn from the train split; every
``resample_every`` outer steps a new population is drawn (environments are rebuilt only when
the population changes, so a single-task suite such as ``cartpole_physics`` with
``task.default_only=true`` is ordinary single-task RL). Adaptation is plain fine-tuning.

A new population never cuts an episode short: each environment moves to its new task when its
current episode ends (its final step is still stored). Rebuilding every environment at once, as
this learner first did, truncated every episode longer than ``inner_steps / population`` env
steps: on ``cartpole_physics`` (200-step episodes, 100 env steps per env and outer step) the
agent never saw the second half of an episode, and its zero-shot test return was 104 against 188
with whole episodes (seed 0, 12 test tasks; ``benchmarks/meta_adaptation.py``).
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
        self.specs: list = []      # the current population
        self.running: list = []    # per env, the task it is running (a previous population's until its episode ends)
        self.pending: dict[int, int] = {}  # env -> seed: moves to its slot's task of ``specs`` at its episode end
        self.env_steps = 0

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self._agent = ctx.make_agent(ctx.tasks.env_spec)

    def agent(self) -> Agent:
        return self._agent

    def _population(self, iteration: int) -> list:
        draw = iteration - iteration % self.resample_every
        return self.ctx.tasks.sample("train", self.population, self.ctx.seeds.numpy("tasks", draw))

    def _slots(self) -> list[tuple[int, int]]:
        """(task index in the population, env index within the task) of each environment."""
        return [(k, j) for k in range(len(self.specs)) for j in range(self.envs_per_task)]

    def _env_seeds(self, iteration: int) -> list[int]:
        return [self.ctx.seeds.seed("env", iteration, k, j) for k, j in self._slots()]

    def _build_collector(self, iteration: int, running: list | None = None) -> None:
        tasks = self.ctx.tasks
        slots = self._slots()
        self.running = list(running) if running is not None else [self.specs[k] for k, _ in slots]
        self.collector = Collector([tasks.make_env(spec) for spec in self.running], tasks.env_spec,
                                   self._env_seeds(iteration), [k for k, _ in slots])

    def _switch_finished(self) -> None:
        """Envs whose episode has ended and whose slot has a new task start it at this step."""
        for i in [i for i in self.pending if self.collector.is_last[i]]:
            k = int(self.collector.task_ids[i])
            self.collector.replace(i, self.ctx.tasks.make_env(self.specs[k]), self.pending.pop(i))
            self.running[i] = self.specs[k]

    def outer_step(self, iteration: int) -> Metrics:
        specs = self._population(iteration)
        if self.collector is None:
            self.specs = specs
            self._build_collector(iteration)
        elif specs != self.specs:
            self.specs = specs
            self.pending = dict(enumerate(self._env_seeds(iteration)))
        episodes, updates, taken = [], [], 0
        while taken < self.inner_steps:
            self._switch_finished()
            n, finished = self.collector.step(self._agent, explore=True)
            taken += n
            self.env_steps += n
            for ep in finished:
                ep["spec"] = self.running[ep["env"]]
            episodes.extend(finished)
            metrics = self._agent.update(self.env_steps)
            if metrics:
                updates.append(metrics)
        out = {**summarize_episodes(episodes, "train"), **mean_metrics(updates), "env_steps": float(taken)}
        if len(self.specs) > 1:
            for spec in dict.fromkeys(e["spec"] for e in episodes):
                mine = [e for e in episodes if e["spec"] == spec]
                out[f"task/{spec.id}/return"] = summarize_episodes(mine, "x")["x/return"]
        return out

    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        return {"agent": self._agent.state_dict(replay=replay), "env_steps": self.env_steps,
                "specs": [s.to_dict() for s in self.specs], "running": [s.to_dict() for s in self.running],
                "pending": dict(self.pending), "collector": self.collector.state_dict() if self.collector else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from metawm.types import TaskSpec

        self._agent.load_state_dict(state["agent"])
        self.env_steps = state["env_steps"]
        self.specs = [TaskSpec.from_dict(d) for d in state["specs"]]
        running = [TaskSpec.from_dict(d) for d in state["running"]] if "running" in state else None
        self.pending = {int(i): int(s) for i, s in state.get("pending", {}).items()}
        self.collector = None
        if state["collector"] is not None:
            self._build_collector(0, running)  # seeds are irrelevant: the snapshot restores each env
            self.collector.load_state_dict(state["collector"])
