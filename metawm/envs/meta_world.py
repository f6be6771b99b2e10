"""Meta-World 3 tasks, one environment at a time, without building whole benchmarks.

A Meta-World *task* is an environment class (``reach-v3``) plus a ``rand_vec``: the object and goal
positions that ``reset`` uses. ``metaworld.ML1(env_name, seed)`` draws 50 of them per class for the
train set (from ``seed``) and 50 for the test set (from ``seed + 1``), by resetting an env of that
class 50 times with the global numpy RNG seeded. :func:`goals` reproduces exactly that, for one class
(``metaworld._make_tasks`` on a one-class dict, checked against ``ML1`` in the tests), and caches it
in the process and on disk.

Why not the benchmark classes themselves: building ``metaworld.ML45(seed)`` takes ~49 s and
``ML10`` ~14 s here (they reset every class 50 times per split), and a worker only needs one env.
The price: ML10/ML45 draw the goals of all classes from *one* seeded stream, so their concrete
``rand_vec``s differ from ours; the distribution per class is the same (each class's own
``_random_reset_space``), the class lists and the train/test class split are Meta-World's.

:func:`make_metaworld` builds the class with the pinned reward-function version, calls ``set_task``
with the given ``rand_vec`` (partially observable: the goal is zeroed in the observation, as in all
ML benchmarks) and wraps it in :class:`MetaWorldAdapter`: float32 39-d observations, Box(4) actions
in [-1, 1] (Meta-World's native range), ``info["success"]`` as a float on every step, truncation at
``max_path_length`` = 500 steps, no early termination on success.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from metawm.envs.conventions import clip_action

OBS_DIM = 39
ACT_DIM = 4
GOALS_PER_CLASS = 50
REWARD_FUNCTION_VERSION = "v2"  # Meta-World 3's default (and the only one of its v3 envs' paper)


def benchmark_classes(benchmark: str) -> dict[str, list[str]]:
    """The train/test env names of ``ML1`` (every v3 env, both splits), ``ML10`` or ``ML45``."""
    from metaworld import env_dict

    if benchmark == "ML1":
        names = list(env_dict.ALL_V3_ENVIRONMENTS)
        return {"train": names, "test": names}
    table = {"ML10": env_dict.ML10_V3, "ML45": env_dict.ML45_V3}[benchmark]
    return {"train": list(table["train"]), "test": list(table["test"])}


def env_class(env_name: str) -> type:
    from metaworld import env_dict

    return env_dict.ALL_V3_ENVIRONMENTS[env_name]


def goal_seed(benchmark_seed: int, goal_set: str) -> int:
    """``ML1(env, seed)`` draws train goals from ``seed`` and test goals from ``seed + 1``."""
    return int(benchmark_seed) + (1 if goal_set == "test" else 0)


def goals(env_name: str, seed: int) -> np.ndarray:
    """The 50 ``rand_vec``s that ``metaworld.ML1(env_name, seed).train_tasks`` holds, (50, d) float64.

    Cached per process and, unless ``METAWM_CACHE_DIR`` is set to an empty string, on disk under
    ``$METAWM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/metawm`` or ``~/.cache/metawm``), keyed by the
    metaworld version, so each class costs its ~1.2 s once per machine.
    """
    return _goals_cached(str(env_name), int(seed)).copy()


@functools.lru_cache(maxsize=None)
def _goals_cached(env_name: str, seed: int) -> np.ndarray:
    path = _cache_path(env_name, seed)
    if path is not None and path.is_file():
        try:
            cached = np.load(path)
            if cached.ndim == 2 and cached.shape[0] == GOALS_PER_CLASS:
                return cached
        except (OSError, ValueError):
            pass  # a corrupt cache file is recomputed and replaced
    vecs = _generate_goals(env_name, seed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, vecs)
            os.replace(tmp, path)
        except OSError:
            pass  # the cache is an optimisation; a read-only home must not break a run
    return vecs


def _cache_path(env_name: str, seed: int) -> Path | None:
    import metaworld

    root = os.environ.get("METAWM_CACHE_DIR")
    if root == "":
        return None
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metawm"
    version = getattr(metaworld, "__version__", None)
    if version is None:
        from importlib.metadata import version as pkg_version

        version = pkg_version("metaworld")
    return Path(root) / "metaworld-goals" / str(version) / f"{env_name}-seed{seed}.npy"


def _generate_goals(env_name: str, seed: int) -> np.ndarray:
    import metaworld
    from metaworld import env_dict

    classes = {env_name: env_dict.ALL_V3_ENVIRONMENTS[env_name]}
    args_kwargs = {env_name: env_dict.ML1_ARGS_KWARGS[env_name]}
    make_tasks = getattr(metaworld, "_make_tasks", None)
    if make_tasks is not None:  # exactly what ML1 does for one of its two splits
        tasks = make_tasks(classes, args_kwargs, metaworld._ML_OVERRIDE, seed=seed)
    else:  # pragma: no cover - a future metaworld without the private helper
        tasks = metaworld.ML1(env_name, seed=seed).train_tasks
    return np.stack([np.asarray(pickle.loads(t.data)["rand_vec"], dtype=np.float64) for t in tasks])


class MetaWorldAdapter(gym.Wrapper):
    """float32 observations, float ``info["success"]``; seeds the env the Meta-World way."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:  # Meta-World's reset ignores its seed argument
            self.env.unwrapped.seed(int(seed))
        obs, info = self.env.reset()
        return obs.astype(np.float32), dict(info)

    def step(self, action):
        action = clip_action(action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["success"] = float(info.get("success", 0.0))
        return obs.astype(np.float32), float(reward), bool(terminated), bool(truncated), info


def make_metaworld(env_name: str, rand_vec: Any, *,
                   reward_function_version: str = REWARD_FUNCTION_VERSION) -> gym.Env:
    """One Meta-World env with its task set (goal hidden from the observation)."""
    from metaworld.types import Task

    cls = env_class(env_name)
    env = cls(reward_function_version=reward_function_version)
    data = {"rand_vec": np.asarray(rand_vec, dtype=np.float64), "env_cls": cls, "partially_observable": True}
    env.set_task(Task(env_name=env_name, data=pickle.dumps(data)))
    return MetaWorldAdapter(env)
