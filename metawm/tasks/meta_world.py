"""Meta-World ML1, ML10 and ML45 (suites ``metaworld_ml1``, ``metaworld_ml10``, ``metaworld_ml45``).

A task is ``metaworld.ML1(env_name, benchmark_seed).<goal_set>_tasks[task_index]``: an environment
class and one of the 50 object/goal configurations Meta-World draws for it, train goals from the
benchmark seed and test goals from seed + 1. The spec pins all of it, plus the drawn ``rand_vec``
itself (so a worker rebuilds the task without regenerating goals, and a later metaworld that drew
goals differently cannot silently change a recorded task) and the ``reward_function_version``.

* ML1: one class (``env_name``, default ``reach-v3``); train and test differ in their goals.
* ML10 / ML45: Meta-World's lists of 10 / 45 train classes and 5 held-out test classes.

Sampling never builds a benchmark object: ML45 takes ~49 s to build here, ML10 ~14 s. Goals are
generated for the sampled classes only and cached (see :func:`metawm.envs.meta_world.goals`; the one
difference to the benchmark objects is explained there).
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from metawm.envs import meta_world as mw
from metawm.infra.errors import UserError, choices_error
from metawm.tasks.base import TaskFamily, plain, reject_unknown_kwargs
from metawm.types import EnvSpec, TaskSpec

_OPTIONS = ["benchmark_seed", "reward_function_version", "max_episode_steps"]


class _MetaWorld(TaskFamily):
    benchmark = "ML1"
    success_metric = True
    param_names = ("env_name", "goal_set", "task_index", "benchmark_seed", "reward_function_version", "rand_vec")

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, benchmark_seed: int = 0,
                 reward_function_version: str = mw.REWARD_FUNCTION_VERSION, env_name: str | None = None,
                 max_episode_steps: int | None = None, observe_params: bool = False, **extra: Any):
        reject_unknown_kwargs(name, extra, _OPTIONS + (["env_name"] if self.benchmark == "ML1" else []))
        if env_name is not None and self.benchmark != "ML1":
            raise UserError(f"task suite {name!r} ({self.benchmark}) samples its env classes from the benchmark's "
                            "lists; env_name is an option of metaworld_ml1 only (e.g. +task=metaworld_ml1 "
                            f"task.env_name={env_name}).")
        classes = mw.benchmark_classes(self.benchmark)
        all_envs = mw.benchmark_classes("ML1")["train"]
        splits = {s: dict(r or {}) for s, r in plain(splits).items()}
        default = {"goal_set": "train", "task_index": 0, **dict(plain(default) or {})}
        if env_name is not None:  # ML1: the class is a suite option, the same in every split
            if env_name not in all_envs:
                raise choices_error(f"Meta-World env_name of task suite {name!r}", env_name, all_envs)
            default["env_name"] = env_name
            for r in splits.values():
                r["env_name"] = env_name
        for split, r in splits.items():
            if "env_name" not in r:
                if split not in classes:
                    raise UserError(f"task suite {name!r}: split {split!r} has no env_name and {self.benchmark} "
                                    f"only defines classes for {sorted(classes)}.")
                r["env_name"] = {"choices": classes[split]}
            r.setdefault("goal_set", "test" if split == "test" else "train")
            r.setdefault("task_index", {"low": 0, "high": mw.GOALS_PER_CLASS - 1, "int": True})
        default.setdefault("env_name", classes["train"][0])
        super().__init__(name, splits, default, default_only, max_episode_steps, observe_params=observe_params)
        self.benchmark_seed = int(benchmark_seed)
        self.reward_function_version = str(reward_function_version)
        for where, params in [("default", self.default), *self.ranges.items()]:
            env = params.get("env_name")
            for e in env["choices"] if isinstance(env, Mapping) else [env]:
                if e not in all_envs:
                    raise choices_error(f"Meta-World env_name (task suite {name!r}, {where})", str(e), all_envs)
            if params.get("goal_set") not in ("train", "test"):
                raise UserError(f"task suite {name!r} ({where}): goal_set must be train or test, "
                                f"got {params.get('goal_set')!r}.")
        self.env_spec = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (mw.OBS_DIM,), np.float32),
                                gym.spaces.Box(-1.0, 1.0, (mw.ACT_DIM,), np.float32))

    # -- specs pin everything ------------------------------------------------------------------
    def complete(self, spec: TaskSpec) -> TaskSpec:
        """The spec with the benchmark seed, reward version and the task's ``rand_vec`` filled in."""
        p = self.params_of(spec)
        p.setdefault("benchmark_seed", self.benchmark_seed)
        p.setdefault("reward_function_version", self.reward_function_version)
        if "rand_vec" not in p:
            index = int(p["task_index"])
            if not 0 <= index < mw.GOALS_PER_CLASS:
                raise UserError(f"Meta-World task_index must be in 0..{mw.GOALS_PER_CLASS - 1}, got {index}.")
            vec = mw.goals(p["env_name"], mw.goal_seed(p["benchmark_seed"], p["goal_set"]))[index]
            p["rand_vec"] = tuple(float(x) for x in vec)
        return TaskSpec.make(spec.suite, spec.split, spec.index, p)

    def sample(self, split: str, n: int, rng: np.random.Generator) -> list[TaskSpec]:
        return [self.complete(spec) for spec in super().sample(split, n, rng)]

    def default_task(self, split: str = "train", index: int = 0) -> TaskSpec:
        return self.complete(super().default_task(split, index))

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        p = self.params_of(self.complete(spec))
        return mw.make_metaworld(p["env_name"], p["rand_vec"], reward_function_version=p["reward_function_version"])


class MetaWorldML1(_MetaWorld):
    benchmark = "ML1"

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, env_name: str = "reach-v3", **kwargs: Any):
        super().__init__(name, splits, default, default_only, env_name=env_name, **kwargs)


class MetaWorldML10(_MetaWorld):
    benchmark = "ML10"


class MetaWorldML45(_MetaWorld):
    benchmark = "ML45"
