"""HalfCheetah with the goal-velocity and goal-direction rewards of MAML.

The dynamics and observations are gymnasium's ``HalfCheetah-v5`` (MuJoCo 3; 17-d observation
``qpos[1:]`` + ``qvel``, 6 torques in [-1, 1], initial state noise 0.1 from the env's seeded
``np_random``). Only the reward is replaced, following Finn et al. (2017, sec. 5.3) as released in
``cbfinn/maml_rl`` (``half_cheetah_env_rand.py`` / ``..._rand_direc.py``) and reused by ProMP and
VariBAD:

* velocity task:  ``r = -|v - v_goal| - 0.05 * ||a||^2``
* direction task: ``r = d * v - 0.05 * ||a||^2`` with ``d`` in {-1, +1}

where ``v = (x_after - x_before) / dt`` is the forward velocity of the root over the step
(``info["x_velocity"]`` of v5, as in VariBAD's and ProMP's ports; MAML's rllab code read the torso's
instantaneous centre-of-mass velocity instead) and ``0.05 = 0.5 * 1e-1`` is rllab's control-cost
weight on the clipped action (v5's own is 0.1). Episodes are cut at 200 steps as in the MAML paper.
MAML's rllab cheetah observed 20 dimensions (it appended the torso's centre of mass); v5's 17 carry
the same information except the absolute x position.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from metawm.envs.conventions import clip_action

OBS_DIM = 17
ACT_DIM = 6
CTRL_COST_WEIGHT = 0.05
MAX_EPISODE_STEPS = 200


class CheetahGoalReward(gym.Wrapper):
    """Replaces HalfCheetah's reward by a velocity- or direction-tracking one (module docstring)."""

    def __init__(self, env: gym.Env, *, goal_velocity: float | None = None, direction: float | None = None,
                 ctrl_cost_weight: float = CTRL_COST_WEIGHT):
        super().__init__(env)
        if (goal_velocity is None) == (direction is None):
            raise ValueError("give exactly one of goal_velocity and direction")
        self.goal_velocity = None if goal_velocity is None else float(goal_velocity)
        self.direction = None if direction is None else float(direction)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return obs.astype(np.float32), {}

    def step(self, action):
        action = clip_action(action)  # HalfCheetah's native range is [-1, 1]
        obs, _, terminated, truncated, info = self.env.step(action)
        velocity = float(info["x_velocity"])
        ctrl_cost = self.ctrl_cost_weight * float(action @ action)
        if self.goal_velocity is not None:
            forward = -abs(velocity - self.goal_velocity)
        else:
            forward = self.direction * velocity
        info = {"x_velocity": velocity, "reward_forward": forward, "reward_ctrl": -ctrl_cost}
        return obs.astype(np.float32), forward - ctrl_cost, terminated, truncated, info


def make_cheetah(*, goal_velocity: float | None = None, direction: float | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, ctrl_cost_weight: float = CTRL_COST_WEIGHT) -> gym.Env:
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

    env = CheetahGoalReward(HalfCheetahEnv(), goal_velocity=goal_velocity, direction=direction,
                            ctrl_cost_weight=ctrl_cost_weight)
    return gym.wrappers.TimeLimit(env, max_episode_steps=int(max_episode_steps))
