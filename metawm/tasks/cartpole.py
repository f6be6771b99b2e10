"""CartPole with varied physics (suites ``cartpole_physics`` and ``cartpole_actuator``; ranges in
``tasks/*.yaml``).

The classic system-identification meta-RL toy: the dynamics change from task to task, the
observation (cart position/velocity, pole angle/angular velocity) and the goal do not, so an agent
must infer the physics from interaction. Parameters: ``pole_length`` (gymnasium's half-length),
``pole_mass``, ``cart_mass``, ``gravity``, and the actuator's ``force`` (N) and ``actuator_sign``
(+1, or -1 for a motor wired the wrong way round); the default task is CartPole-v1 exactly.

The actuator parameters join a task's parameters only where a suite file names them (its
``default`` or a split), so ``cartpole_physics`` tasks keep their four.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym

from metawm.envs.cartpole import DEFAULT_ACTUATOR, DEFAULT_PHYSICS, MAX_EPISODE_STEPS, make_cartpole
from metawm.infra.errors import UserError
from metawm.tasks.base import TaskFamily, reject_unknown_kwargs
from metawm.types import EnvSpec, TaskSpec


class CartPolePhysics(TaskFamily):
    param_names = (*DEFAULT_PHYSICS, *DEFAULT_ACTUATOR)

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
        p = {**DEFAULT_ACTUATOR, **self.params_of(spec)}
        sign = float(p["actuator_sign"])
        if sign not in (1.0, -1.0):
            raise UserError(f"task {spec.id} of suite {self.name!r}: actuator_sign must be 1 or -1, got {sign:g}.")
        try:
            return make_cartpole(**{k: float(p[k]) for k in (*DEFAULT_PHYSICS, "force")}, actuator_sign=int(sign),
                                 max_episode_steps=MAX_EPISODE_STEPS)
        except ValueError as e:  # a non-positive length, mass, gravity or force from the suite file
            raise UserError(f"task {spec.id} of suite {self.name!r}: {e}.") from None
