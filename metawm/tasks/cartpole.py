"""CartPole with varied physics (suite ``cartpole_physics``; ranges in ``tasks/cartpole_physics.yaml``).

The classic system-identification meta-RL toy: the dynamics change from task to task, the
observation (cart position/velocity, pole angle/angular velocity) and the goal do not, so an agent
must infer the physics from interaction. Parameters: ``pole_length`` (gymnasium's half-length),
``pole_mass``, ``cart_mass``, ``gravity``; the default task is CartPole-v1 exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym

from metawm.envs.cartpole import DEFAULT_PHYSICS, MAX_EPISODE_STEPS, make_cartpole
from metawm.tasks.base import TaskFamily, reject_unknown_kwargs
from metawm.types import EnvSpec, TaskSpec


class CartPolePhysics(TaskFamily):
    param_names = tuple(DEFAULT_PHYSICS)

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, max_episode_steps: int | None = None, observe_params: bool = False,
                 **extra: Any):
        reject_unknown_kwargs(name, extra, ["max_episode_steps"])
        super().__init__(name, splits, {**DEFAULT_PHYSICS, **dict(default or {})}, default_only, max_episode_steps,
                         observe_params=observe_params)
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        probe = CartPoleEnv()  # the spaces do not depend on the physics
        self.env_spec = EnvSpec(probe.observation_space, probe.action_space)

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        p = self.params_of(spec)
        return make_cartpole(**{k: float(p[k]) for k in self.param_names}, max_episode_steps=MAX_EPISODE_STEPS)
