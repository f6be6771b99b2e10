"""VariBAD's 5x5 gridworld with a hidden goal cell, as a 4-episode BAMDP (suite ``gridworld_goals``).

The one parameter is ``goal``, a cell ``[x, y]``; the splits in ``tasks/gridworld_goals.yaml``
partition VariBAD's 21 goal cells into train and held-out test goals. Dynamics, observation and the
BAMDP episode structure are in :mod:`metawm.envs.gridworld`.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym

from metawm.envs.gridworld import GridNaviBAMDP
from metawm.infra.errors import UserError
from metawm.tasks.base import TaskFamily, reject_unknown_kwargs
from metawm.types import EnvSpec, TaskSpec


class GridworldGoals(TaskFamily):
    param_names = ("goal",)

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, size: int = 5, horizon: int = 15, episodes_per_task: int = 4,
                 time_feature: bool = True, max_episode_steps: int | None = None, observe_params: bool = False,
                 **extra: Any):
        reject_unknown_kwargs(name, extra, ["size", "horizon", "episodes_per_task", "time_feature", "max_episode_steps"])
        super().__init__(name, splits, {"goal": [size - 1, size - 1], **dict(default or {})}, default_only,
                         max_episode_steps, observe_params=observe_params)
        self.size, self.horizon = int(size), int(horizon)
        self.episodes_per_task, self.time_feature = int(episodes_per_task), bool(time_feature)
        for where, params in [("default", self.default), *self.ranges.items()]:
            goal = params.get("goal")
            cells = goal["choices"] if isinstance(goal, Mapping) else [goal] if goal is not None else []
            for cell in cells:
                if len(cell) != 2 or not all(0 <= int(c) < self.size for c in cell):
                    raise UserError(f"task suite {name!r} ({where}): goal {list(cell)} is not a cell [x, y] of the "
                                    f"{self.size}x{self.size} grid (coordinates 0..{self.size - 1}).")
        self.env_spec = EnvSpec(self._build((0, 0)).observation_space, gym.spaces.Discrete(5))

    def _build(self, goal) -> GridNaviBAMDP:
        return GridNaviBAMDP(tuple(goal), size=self.size, horizon=self.horizon,
                             episodes_per_task=self.episodes_per_task, time_feature=self.time_feature)

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        return self._build(self.params_of(spec)["goal"])
