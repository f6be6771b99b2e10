"""2-D point navigation to a hidden goal on a circle (suite ``point_nav``; MAML sec. 5.2).

Parameters: ``goal_angle`` (degrees, counter-clockwise from +x) and ``goal_radius``; the dynamics
and reward are in :mod:`metawm.envs.point_nav`. The test split holds out an arc of goal angles.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from metawm.envs.point_nav import PointNavEnv
from metawm.tasks.base import TaskFamily, reject_unknown_kwargs
from metawm.types import EnvSpec, TaskSpec


class PointNav(TaskFamily):
    param_names = ("goal_angle", "goal_radius")

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, horizon: int = 100, max_speed: float = 0.1,
                 success_radius: float = 0.01, max_episode_steps: int | None = None,
                 observe_params: bool = False, **extra: Any):
        reject_unknown_kwargs(name, extra, ["horizon", "max_speed", "success_radius", "max_episode_steps"])
        super().__init__(name, splits, {"goal_angle": 0.0, "goal_radius": 0.5, **dict(default or {})}, default_only,
                         max_episode_steps, observe_params=observe_params)
        self.horizon, self.max_speed, self.success_radius = int(horizon), float(max_speed), float(success_radius)
        self.env_spec = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                                gym.spaces.Box(-1.0, 1.0, (2,), np.float32))

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        p = self.params_of(spec)
        goal = PointNavEnv.goal_on_circle(p["goal_angle"], p["goal_radius"])
        return PointNavEnv(goal, max_speed=self.max_speed, horizon=self.horizon, success_radius=self.success_radius)
