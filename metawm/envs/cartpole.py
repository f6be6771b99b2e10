"""CartPole with its physical constants changed, built on gymnasium's ``CartPoleEnv``.

``make_cartpole()`` with the defaults is ``CartPole-v1``: same dynamics (Euler, tau 0.02 s, force
10 N), same termination (|x| > 2.4, |theta| > 12 deg), reward 1 per step, 500-step time limit.
The varied constants are set as attributes of the env, together with the two quantities gymnasium
derives from them in ``__init__`` (``total_mass`` and ``polemass_length``), which ``step`` reads.

``pole_length`` is gymnasium's ``length``, which is *half* the pole's length (the distance from the
pivot to the pole's centre of mass); 0.5 in CartPole-v1.

The actuator: ``force`` is the push's magnitude in N (gymnasium's ``force_mag``, 10 in CartPole-v1)
and ``actuator_sign`` its polarity: with -1 action 1 pushes the cart left, a motor wired the wrong
way round (the observation and action spaces do not change).
"""

from __future__ import annotations

import gymnasium as gym

DEFAULT_PHYSICS = {"pole_length": 0.5, "pole_mass": 0.1, "cart_mass": 1.0, "gravity": 9.8}
DEFAULT_ACTUATOR = {"force": 10.0, "actuator_sign": 1}
MAX_EPISODE_STEPS = 500  # CartPole-v1


def make_cartpole(*, pole_length: float = 0.5, pole_mass: float = 0.1, cart_mass: float = 1.0,
                  gravity: float = 9.8, force: float = 10.0, actuator_sign: int = 1,
                  max_episode_steps: int = MAX_EPISODE_STEPS) -> gym.Env:
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    for name, value in (("pole_length", pole_length), ("pole_mass", pole_mass), ("cart_mass", cart_mass),
                        ("gravity", gravity), ("force", force)):
        if not value > 0:
            raise ValueError(f"CartPole {name} must be positive, got {value}")
    if actuator_sign not in (1, -1):
        raise ValueError(f"CartPole actuator_sign must be 1 or -1, got {actuator_sign}")
    env = CartPoleEnv()
    env.gravity = float(gravity)
    env.masscart = float(cart_mass)
    env.masspole = float(pole_mass)
    env.length = float(pole_length)
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length
    env.force_mag = float(actuator_sign) * float(force)  # step() pushes +force_mag for action 1, -force_mag for 0
    return gym.wrappers.TimeLimit(env, max_episode_steps=int(max_episode_steps))
