"""HalfCheetah goal-velocity and goal-direction suites (``cheetah_vel``, ``cheetah_dir``; MAML sec. 5.3).

Same body, dynamics and spaces in both; the task is the reward (see :mod:`metawm.envs.cheetah`):
``goal_velocity`` (m/s) for ``cheetah_vel``, ``direction`` (+1 forward, -1 backward) for
``cheetah_dir``.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from metawm.envs import cheetah
from metawm.tasks.base import TaskFamily, reject_unknown_kwargs
from metawm.types import EnvSpec, TaskSpec

_OPTIONS = ["horizon", "ctrl_cost_weight", "max_episode_steps"]


class _Cheetah(TaskFamily):
    _defaults: dict[str, Any] = {}

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, horizon: int = cheetah.MAX_EPISODE_STEPS,
                 ctrl_cost_weight: float = cheetah.CTRL_COST_WEIGHT, max_episode_steps: int | None = None,
                 observe_params: bool = False, **extra: Any):
        reject_unknown_kwargs(name, extra, _OPTIONS)
        super().__init__(name, splits, {**self._defaults, **dict(default or {})}, default_only, max_episode_steps,
                         observe_params=observe_params)
        self.horizon, self.ctrl_cost_weight = int(horizon), float(ctrl_cost_weight)
        self.env_spec = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (cheetah.OBS_DIM,), np.float32),
                                gym.spaces.Box(-1.0, 1.0, (cheetah.ACT_DIM,), np.float32))


class CheetahVel(_Cheetah):
    param_names = ("goal_velocity",)
    _defaults = {"goal_velocity": 1.0}

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        return cheetah.make_cheetah(goal_velocity=float(self.params_of(spec)["goal_velocity"]),
                                    max_episode_steps=self.horizon, ctrl_cost_weight=self.ctrl_cost_weight)


class CheetahDir(_Cheetah):
    param_names = ("direction",)
    _defaults = {"direction": 1.0}

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        return cheetah.make_cheetah(direction=float(self.params_of(spec)["direction"]),
                                    max_episode_steps=self.horizon, ctrl_cost_weight=self.ctrl_cost_weight)
