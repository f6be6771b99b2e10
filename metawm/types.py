"""Plain data types shared by every layer.

Conventions (one for every task suite, so an agent configures itself from the spaces it is given):

* Observations are either a float32 vector ``Box(shape=(D,))`` or a uint8 image
  ``Box(low=0, high=255, shape=(H, W, C))`` (channels last, C = 1 or 3).
* Actions are either ``Discrete(n)`` (int64 scalars) or ``Box(-1, 1, shape=(A,))`` float32.
* A *step* is a dict of numpy arrays batched over N environments, following the Dreamer
  convention: ``obs``, ``reward`` (received on arriving at ``obs``), ``is_first``, ``is_last``,
  ``is_terminal`` and, once the agent has acted, ``action`` (chosen at ``obs``). An episode of
  L environment steps yields L + 1 steps; the action of the ``is_last`` step is ignored.
  ``task`` holds the index of the environment's task in the current population, and ``success``
  (where the suite defines it, else NaN) whether the task counts as solved at this step.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

Step = dict[str, np.ndarray]
Metrics = dict[str, float]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a distribution: immutable, hashable and JSON-serializable.

    ``params`` is stored as a sorted tuple of (name, value) pairs so that the spec hashes and
    compares by value; values are JSON scalars or tuples of them.
    """

    suite: str
    split: str
    index: int
    params: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def make(suite: str, split: str, index: int, params: Mapping[str, Any]) -> "TaskSpec":
        return TaskSpec(suite, split, int(index), tuple(sorted((k, _freeze(v)) for k, v in params.items())))

    def __getitem__(self, name: str) -> Any:
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(f"task {self.id} has no parameter {name!r}; it has {[k for k, _ in self.params]}")

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    @property
    def id(self) -> str:
        """Short stable name used as a metric prefix and in logs, e.g. ``train/3``."""
        return f"{self.split}/{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "split": self.split, "index": self.index, "params": dict(self.params)}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TaskSpec":
        return TaskSpec.make(d["suite"], d["split"], d["index"], d["params"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know to configure itself for a suite."""

    obs_space: gym.spaces.Box
    act_space: gym.spaces.Space

    @property
    def is_image(self) -> bool:
        return len(self.obs_space.shape) == 3

    @property
    def is_discrete(self) -> bool:
        return isinstance(self.act_space, gym.spaces.Discrete)

    @property
    def num_actions(self) -> int:
        """Number of discrete actions, or the dimension of a continuous action."""
        if self.is_discrete:
            return int(self.act_space.n)
        return int(np.prod(self.act_space.shape))

    def describe(self) -> str:
        kind = "image" if self.is_image else "vector"
        act = f"Discrete({self.num_actions})" if self.is_discrete else f"Box({self.num_actions})"
        return f"{kind} observations {tuple(self.obs_space.shape)}, actions {act}"
