"""2-D point navigation, the toy task of MAML (Finn et al. 2017, sec. 5.2).

The point starts at the origin; an action is a velocity, clipped to [-0.1, 0.1] per axis, added to
the position; the reward is the negative Euclidean distance to a goal the agent does not observe;
the episode terminates when the point is within 0.01 of the goal on both axes and is truncated at
100 steps. This follows the released code (``cbfinn/maml_rl``, ``point_env_rand_goal.py``); the
paper's text says "negative squared distance", the code uses the distance, which we keep.

Where we differ: MAML draws goals uniformly in the unit square [-0.5, 0.5]^2; we place them on a
circle of radius ``goal_radius`` (0.5 in the suite, inscribed in MAML's square) at angle
``goal_angle`` (degrees), so that a test split can hold out an arc of directions (see
``tasks/point_nav.yaml``).

Observations are the position, float32 (2,); actions are Box(-1, 1, (2,)) scaled by 0.1 inside.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from metawm.envs.conventions import clip_action


class PointNavEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, goal: tuple[float, float], *, max_speed: float = 0.1, horizon: int = 100,
                 success_radius: float = 0.01):
        self.goal = np.asarray(goal, dtype=np.float64)
        self.max_speed = float(max_speed)
        self.horizon = int(horizon)
        self.success_radius = float(success_radius)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = np.zeros(2, dtype=np.float64)
        self.steps = 0

    @staticmethod
    def goal_on_circle(angle_deg: float, radius: float) -> tuple[float, float]:
        angle = math.radians(float(angle_deg))
        return float(radius) * math.cos(angle), float(radius) * math.sin(angle)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.position = np.zeros(2, dtype=np.float64)
        self.steps = 0
        return self.position.astype(np.float32), {}

    def step(self, action):
        velocity = clip_action(action).astype(np.float64) * self.max_speed
        self.position = self.position + velocity
        self.steps += 1
        delta = self.position - self.goal
        reward = -float(np.sqrt(np.sum(delta ** 2)))
        terminated = bool(np.all(np.abs(delta) < self.success_radius))
        truncated = self.steps >= self.horizon and not terminated
        return self.position.astype(np.float32), reward, terminated, truncated, {"distance": -reward}
