"""The shared machinery of task families: parameter ranges per split, seeded sampling.

A suite file in ``tasks/NAME.yaml`` names a family class (``_target_``) and, per split, the
ranges its parameters are drawn from::

    splits:
      train:
        pole_length: {low: 0.25, high: 1.0}          # uniform
        gravity: {low: 4.9, high: 19.6, log: true}   # log-uniform
        task_index: {low: 0, high: 49, int: true}    # uniform over the integers low..high
        game: {choices: [Pong, Breakout]}            # uniform over a list
        mass: 0.1                                    # fixed
      test: ...

``sample(split, n, rng)`` draws parameters in sorted-name order from the given numpy Generator,
so the same generator state always yields the same tasks, whatever agent consumes them.

A family that lists its ``param_names`` gets its suite file checked when it is built: a misspelt
parameter is a :class:`~metawm.infra.errors.UserError` naming the valid ones, not a silent no-op.

``task.observe_params=true`` (any vector suite) makes the *oracle*: every observation carries the
task's varying parameters, each scaled to [-1, 1] over its train range (log scale for a log range;
per coordinate over the choices for a list; outside [-1, 1] where the test split extrapolates).
An agent trained on it needs no task inference, so its return bounds what inferring the task
could add for that agent: the "oracle" row of the meta-learning benchmarks.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from metawm.infra.errors import UserError, choices_error
from metawm.types import EnvSpec, TaskSpec


def sample_param(name: str, spec: Any, rng: np.random.Generator) -> Any:
    """Draw one parameter value from its range spec (see module docstring)."""
    if isinstance(spec, Mapping):
        if "choices" in spec:
            choices = list(spec["choices"])
            return choices[int(rng.integers(len(choices)))]
        low, high = float(spec["low"]), float(spec["high"])
        if low > high:
            raise UserError(f"parameter {name!r}: low={low} is above high={high}.")
        if spec.get("int", False) and not spec.get("log", False):
            # Every integer in low..high equally likely (rounding a uniform draw would give the two
            # end points half the probability of the others).
            lo, hi = math.ceil(low), math.floor(high)
            if lo > hi:
                raise UserError(f"parameter {name!r}: no integer lies in [{low}, {high}].")
            return int(rng.integers(lo, hi + 1))
        if spec.get("log", False):
            if low <= 0:
                raise UserError(f"parameter {name!r}: a log range needs low > 0, got {low}.")
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        return int(round(value)) if spec.get("int", False) else float(value)
    return spec  # fixed value


def plain(value: Any) -> Any:
    """OmegaConf containers (what ``hydra.utils.instantiate`` passes for nested keys) as plain
    dicts and lists, so that parameters freeze into hashable, JSON-able TaskSpecs."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def reject_unknown_kwargs(suite: str, extra: Mapping[str, Any], valid: list[str]) -> None:
    """A misspelt suite option (``task.imagesize=84``) is a UserError, not silently ignored."""
    for key in extra:
        raise choices_error(f"option of task suite {suite!r}", key, valid)


class ParamsObservation(gym.ObservationWrapper):
    """Appends a fixed vector (the task's encoded parameters) to every vector observation."""

    def __init__(self, env: gym.Env, params: np.ndarray, space: gym.spaces.Box):
        super().__init__(env)
        self.params = np.asarray(params, np.float32)
        self.observation_space = space

    def observation(self, observation):
        return np.concatenate([np.asarray(observation, np.float32), self.params])


def _param_code(suite: str, name: str, spec: Any) -> tuple[int, Any] | None:
    """(width, encode(value) -> list of floats) of a parameter that varies under ``spec``; None if fixed."""
    if isinstance(spec, Mapping) and "choices" in spec:
        try:
            table = np.asarray(spec["choices"], np.float64).reshape(len(spec["choices"]), -1)
        except (TypeError, ValueError):
            raise UserError(f"task.observe_params=true appends numeric task parameters to the observation; parameter "
                            f"{name!r} of suite {suite!r} takes the values {list(spec['choices'])[:6]}..., which are not "
                            "numbers.") from None
        lo, hi = table.min(0), table.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return table.shape[1], lambda v: list(2 * (np.asarray(v, np.float64).reshape(-1) - lo) / span - 1)
    if isinstance(spec, Mapping):
        low, high = float(spec["low"]), float(spec["high"])
        if high <= low:
            return None
        f = math.log if spec.get("log", False) else float
        return 1, lambda v: [2 * (f(float(v)) - f(low)) / (f(high) - f(low)) - 1]
    return None


class TaskFamily:
    """Base class of the suites; a subclass implements ``_make_env`` and sets ``env_spec`` (the
    spaces of its own observations; with ``observe_params`` the family's ``env_spec`` is that
    with the encoded parameters appended)."""

    name: str
    success_metric: bool = False  # whether episodes report info["success"]
    param_names: tuple[str, ...] | None = None  # when set, suite files are checked against it

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, max_episode_steps: int | None = None, observe_params: bool = False,
                 **_: Any):
        """``max_episode_steps`` (any suite) truncates episodes earlier than the suite would, e.g.
        for smoke runs; ``default_only`` makes every sampled task the family's default task;
        ``observe_params`` appends the task's parameters to the observation (the oracle)."""
        self.name = name
        self.observe_params = bool(observe_params)
        self.max_episode_steps = int(max_episode_steps) if max_episode_steps else None
        splits, default = plain(splits), plain(default)
        self.ranges = {split: dict(params or {}) for split, params in splits.items()}
        self.default = dict(default or {})
        self.default_only = bool(default_only)
        if self.param_names is not None:
            self.check_param_names()
        self._codes = self._param_codes() if self.observe_params else []

    @property
    def env_spec(self) -> EnvSpec:
        return self._spec

    @env_spec.setter
    def env_spec(self, spec: EnvSpec) -> None:
        """A subclass sets its own spaces; with ``observe_params`` the family's spec appends the codes."""
        if self.observe_params:
            if spec.is_image:
                raise UserError(f"task.observe_params=true appends the task's parameters to vector observations; "
                                f"suite {self.name!r} has {spec.describe()}.")
            width = int(spec.obs_space.shape[0]) + sum(w for _, w, _ in self._codes)
            spec = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (width,), np.float32), spec.act_space)
        self._spec = spec

    def _param_codes(self) -> list[tuple[str, int, Any]]:
        """(name, width, encoder) of every parameter that varies in some split, in name order,
        scaled over its train range (or the first split's where train keeps it fixed)."""
        codes = []
        names = sorted({k for r in self.ranges.values() for k in r})
        order = ["train", *[s for s in self.ranges if s != "train"]]
        for name in names:
            for split in order:
                code = _param_code(self.name, name, self.ranges.get(split, {}).get(name))
                if code is not None:
                    codes.append((name, *code))
                    break
        return codes

    def encode_params(self, spec: TaskSpec) -> np.ndarray:
        """The task's parameters as the oracle observes them (see the module docstring)."""
        p = self.params_of(spec)
        return np.asarray([x for name, _, f in self._codes for x in f(p[name])], np.float32)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.ranges)

    def check_param_names(self) -> None:
        """Every parameter named in ``default`` or a split must be one the family knows."""
        valid = set(self.param_names or ())
        for where, params in [("default", self.default), *((f"split {s!r}", r) for s, r in self.ranges.items())]:
            for key in params:
                if key not in valid:
                    raise choices_error(f"parameter of task suite {self.name!r} (in {where})", key, valid)

    def check_split(self, split: str) -> None:
        if split not in self.ranges:
            raise choices_error(f"split of task suite {self.name!r}", split, self.ranges)

    def sample(self, split: str, n: int, rng: np.random.Generator) -> list[TaskSpec]:
        self.check_split(split)
        if self.default_only:
            return [self.default_task(split, i) for i in range(n)]
        specs = []
        for _ in range(n):
            params = {k: sample_param(k, self.ranges[split][k], rng) for k in sorted(self.ranges[split])}
            index = int(rng.integers(1 << 31))  # a stable name for the task, for logs and seeding
            specs.append(TaskSpec.make(self.name, split, index, {**self.default, **params}))
        return specs

    def params_of(self, spec: TaskSpec) -> dict[str, Any]:
        """The spec's parameters over the family's defaults (a hand-made spec may omit some)."""
        return {**self.default, **dict(spec.params)}

    def default_task(self, split: str = "train", index: int = 0) -> TaskSpec:
        """The family's default task (e.g. CartPole-v1's physics), for single-task benchmarks."""
        return TaskSpec.make(self.name, split, index, self.default)

    def make_env(self, spec: TaskSpec) -> gym.Env:
        """A fresh environment for ``spec``; the caller seeds it with its first ``reset(seed=...)``."""
        if spec.suite != self.name:
            raise UserError(f"task {spec.id} belongs to suite {spec.suite!r}, not {self.name!r}.")
        env = self._make_env(spec)
        if self.observe_params:
            env = ParamsObservation(env, self.encode_params(spec), self.env_spec.obs_space)
        if self.max_episode_steps:
            env = gym.wrappers.TimeLimit(env, self.max_episode_steps)
        return env

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        raise NotImplementedError(f"{type(self).__name__} must implement _make_env")
