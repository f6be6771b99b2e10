"""Pixel versions of vector task suites, for Dreamer 4's CPU evidence.

The suites' only native pixel task is Atari; training a world model on it takes far longer than a
2-core CPU allows. These renderers draw the state of a vector suite into a small uint8 image, so
the tokenizer and the dynamics work on pixels while episodes stay short and cheap:

* ``point_nav``: the point (its position; the goal stays hidden, as in the suite) as a soft
  Gaussian dot on a dark canvas spanning [-1, 1]^2 (grayscale).
* ``cartpole_physics``, ``cartpole_actuator``: cart and pole (cart position in [-2.4, 2.4], pole angle), grayscale.

Only the observation changes: dynamics, rewards, episode ends and task parameters are the suite's.
A suite-level ``pixels: SIZE`` option would be the proper home for this (see the report); until
then :class:`PixelSuite` wraps a built suite.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from metawm.infra.errors import UserError, choices_error
from metawm.types import EnvSpec, TaskSpec


def render_point(obs: np.ndarray, size: int, extent: float = 1.0, sigma_px: float = 1.0) -> np.ndarray:
    """Position (2,) -> (size, size, 1) uint8 with a Gaussian dot (y up)."""
    x, y = float(obs[0]), float(obs[1])
    px = (x + extent) / (2 * extent) * (size - 1)
    py = (extent - y) / (2 * extent) * (size - 1)
    r = np.arange(size, dtype=np.float32)
    img = np.exp(-((r[None, :] - px) ** 2 + (r[:, None] - py) ** 2) / (2 * sigma_px ** 2))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None]


def render_cartpole(obs: np.ndarray, size: int) -> np.ndarray:
    """CartPole state (4,) -> (size, size, 1) uint8: a cart on a rail and its pole."""
    x, theta = float(obs[0]), float(obs[2])
    img = np.zeros((size, size), np.float32)
    rail = int(size * 0.75)
    img[rail + 1, :] = 0.3
    cx = (x + 2.4) / 4.8 * (size - 1)
    w = max(2, size // 10)
    c0, c1 = int(round(cx - w)), int(round(cx + w))
    img[rail - 1:rail + 1, max(c0, 0):max(min(c1, size), 0)] = 0.7
    length = size * 0.45
    for s in np.linspace(0, 1, 3 * size):
        px = cx + s * length * np.sin(theta)
        py = rail - 1 - s * length * np.cos(theta)
        i, j = int(round(py)), int(round(px))
        if 0 <= i < size and 0 <= j < size:
            img[i, j] = 1.0
    return (img * 255).astype(np.uint8)[..., None]


RENDERERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "point_nav": render_point, "cartpole_physics": render_cartpole, "cartpole_actuator": render_cartpole}


class PixelObservation(gym.ObservationWrapper):
    def __init__(self, env: gym.Env, render: Callable[[np.ndarray, int], np.ndarray], size: int):
        super().__init__(env)
        self.render_fn, self.size = render, int(size)
        self.observation_space = gym.spaces.Box(0, 255, (self.size, self.size, 1), np.uint8)

    def observation(self, observation):
        return self.render_fn(np.asarray(observation), self.size)


class PixelSuite:
    """A task distribution whose environments are ``suite``'s, observed as rendered images."""

    def __init__(self, suite: Any, size: int):
        if suite.name not in RENDERERS:
            raise choices_error("suite with a pixel renderer", suite.name, RENDERERS,
                                "Use pixels=null for its native observations.")
        if not 8 <= int(size) <= 256:
            raise UserError(f"pixels={size} is not a sensible image size; use 16 to 128.")
        self.suite, self.size = suite, int(size)
        self.name = suite.name
        self.render = RENDERERS[suite.name]
        self.env_spec = EnvSpec(gym.spaces.Box(0, 255, (self.size, self.size, 1), np.uint8), suite.env_spec.act_space)

    @property
    def splits(self):
        return self.suite.splits

    def check_split(self, split: str) -> None:
        self.suite.check_split(split)

    def sample(self, split: str, n: int, rng: np.random.Generator) -> list[TaskSpec]:
        return self.suite.sample(split, n, rng)

    def default_task(self, split: str = "train", index: int = 0) -> TaskSpec:
        return self.suite.default_task(split, index)

    def make_env(self, spec: TaskSpec) -> gym.Env:
        return PixelObservation(self.suite.make_env(spec), self.render, self.size)
