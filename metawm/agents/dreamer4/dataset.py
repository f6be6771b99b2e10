"""Recorded experience for Dreamer 4: streams of steps, images kept as uint8, with or without actions.

A *stream* is what one environment produced, step after step, across episodes, in the Dreamer
step convention of :mod:`metawm.types` (``obs``, ``reward`` on arrival, ``is_first``, ``is_last``,
``is_terminal``, ``action`` chosen at the step). Training windows of T consecutive steps are drawn
uniformly over all streams and may cross episode starts; the transformer keeps the episodes
apart with segment ids (``cumsum(is_first)``), so short episodes need no padding.

``has_action`` marks steps whose action is known: False for unlabeled video (the paper's
action-free pretraining, sec. 3.2 and 4.3), for ``is_last`` steps (their action is never taken)
and for streams recorded with ``actions=False``.

Datasets are recorded by metawm itself (:func:`record`, or the agent's own ``observe``) with any
agent, random included, and saved as one compressed ``.npz`` per stream plus ``meta.json``.

Overlap to consolidate later: DreamerV3's generic sequence replay (``metawm/data/replay.py`` on
its branch) does the same uint8 storage and window sampling; this class adds ``has_action``,
stream files on disk and FIFO capacity, and could become a thin layer over it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

from metawm.infra.errors import UserError
from metawm.types import EnvSpec, Step

KEYS = ("obs", "action", "has_action", "reward", "is_first", "is_last", "is_terminal")


class Stream:
    """One growable stream of steps (amortized O(1) append, FIFO drop from the front)."""

    def __init__(self, spec: Mapping[str, tuple[tuple[int, ...], np.dtype]], capacity: int = 64):
        self.spec = dict(spec)
        self.arrays = {k: np.zeros((max(capacity, 1), *shape), dtype) for k, (shape, dtype) in self.spec.items()}
        self.start, self.end = 0, 0

    def __len__(self) -> int:
        return self.end - self.start

    def _grow(self, extra: int) -> None:
        n = len(self)
        size = self.arrays["obs"].shape[0]
        if self.end + extra <= size:
            return
        new_size = max(2 * n + extra, 64)
        for k, a in self.arrays.items():
            b = np.zeros((new_size, *a.shape[1:]), a.dtype)
            b[:n] = a[self.start:self.end]
            self.arrays[k] = b
        self.start, self.end = 0, n

    def append(self, values: Mapping[str, Any]) -> None:
        self._grow(1)
        for k in self.spec:
            self.arrays[k][self.end] = values[k]
        self.end += 1

    def extend(self, arrays: Mapping[str, np.ndarray]) -> None:
        n = len(arrays["obs"])
        self._grow(n)
        for k in self.spec:
            self.arrays[k][self.end:self.end + n] = arrays[k]
        self.end += n

    def drop_front(self, n: int) -> None:
        self.start = min(self.start + n, self.end)

    def view(self) -> dict[str, np.ndarray]:
        return {k: a[self.start:self.end] for k, a in self.arrays.items()}


class Dataset:
    """Streams of steps with FIFO ``capacity`` (in steps) and uniform window sampling."""

    def __init__(self, obs_space: gym.spaces.Box, act_space: gym.Space, capacity: int = 1_000_000):
        self.obs_space, self.act_space = obs_space, act_space
        self.capacity = int(capacity)
        discrete = isinstance(act_space, gym.spaces.Discrete)
        self.spec = {
            "obs": (tuple(obs_space.shape), np.dtype(np.uint8) if len(obs_space.shape) == 3 else np.dtype(np.float32)),
            "action": ((), np.dtype(np.int64)) if discrete else ((int(np.prod(act_space.shape)),), np.dtype(np.float32)),
            "has_action": ((), np.dtype(bool)), "reward": ((), np.dtype(np.float32)),
            "is_first": ((), np.dtype(bool)), "is_last": ((), np.dtype(bool)), "is_terminal": ((), np.dtype(bool)),
        }
        self.streams: list[Stream] = []

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)

    # -- adding ------------------------------------------------------------------------------------
    def add(self, step: Step, *, keep_actions: bool | Sequence[bool] = True) -> None:
        """Add a batch of N steps (one per environment; env i feeds stream i). ``keep_actions``
        for all streams or per stream (False stores the step as unlabeled video)."""
        n = len(step["is_first"])
        keep = [keep_actions] * n if isinstance(keep_actions, bool) else list(keep_actions)
        while len(self.streams) < n:
            self.streams.append(Stream(self.spec))
        action = step.get("action")
        for i in range(n):
            has = bool(keep[i] and action is not None and not step["is_last"][i])
            a = action[i] if action is not None else np.zeros(*self.spec["action"])
            self.streams[i].append({"obs": step["obs"][i], "action": a, "has_action": has,
                                    "reward": step["reward"][i], "is_first": step["is_first"][i],
                                    "is_last": step["is_last"][i], "is_terminal": step["is_terminal"][i]})
        self._evict()

    def add_stream(self, arrays: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in KEYS if k not in arrays]
        if missing:
            raise UserError(f"a dataset stream lacks the arrays {missing}; it has {sorted(arrays)}.")
        s = Stream(self.spec, len(arrays["obs"]))
        s.extend({k: np.asarray(arrays[k]).astype(self.spec[k][1], copy=False) for k in KEYS})
        self.streams.append(s)
        self._evict()

    def _evict(self) -> None:
        excess = len(self) - self.capacity
        while excess > 0:
            longest = max(self.streams, key=len)
            k = min(len(longest), max(excess, self.capacity // 20 or 1))
            longest.drop_front(k)
            excess -= k

    # -- sampling -----------------------------------------------------------------------------------
    def can_sample(self, length: int) -> bool:
        return any(len(s) >= length for s in self.streams)

    def sample(self, batch: int, length: int, generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
        """``batch`` windows of ``length`` consecutive steps, uniform over all window starts of all
        streams (torch's global RNG unless ``generator``). Returns arrays (batch, length, ...)."""
        counts = np.array([max(0, len(s) - length + 1) for s in self.streams], np.int64)
        total = int(counts.sum())
        if total <= 0:
            raise UserError(f"the dataset has no stream of {length} steps yet ({len(self)} steps in "
                            f"{len(self.streams)} streams).")
        draws = torch.randint(total, (batch,), generator=generator).numpy()
        cum = np.cumsum(counts)
        which = np.searchsorted(cum, draws, side="right")
        offset = draws - (cum[which] - counts[which])
        out = {k: np.zeros((batch, length, *shape), dtype) for k, (shape, dtype) in self.spec.items()}
        for b, (si, st) in enumerate(zip(which, offset)):
            view = self.streams[si].view()
            for k in self.spec:
                out[k][b] = view[k][st:st + length]
        return out

    # -- persistence -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "streams": [{k: v.copy() for k, v in s.view().items()} for s in self.streams]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.streams = []
        for arrays in state["streams"]:
            self.add_stream(arrays)

    def save(self, directory: str | Path, meta: Mapping[str, Any]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("stream_*.npz"):
            old.unlink()
        for i, s in enumerate(self.streams):
            np.savez_compressed(directory / f"stream_{i:04d}.npz", **s.view())
        info = {"format": "metawm-dreamer4-dataset", "version": 1, "steps": len(self), "streams": len(self.streams),
                "obs_shape": list(self.spec["obs"][0]), "obs_dtype": str(self.spec["obs"][1]),
                "action": _space_json(self.act_space), "labeled_steps": int(sum(s.view()["has_action"].sum()
                                                                              for s in self.streams)),
                **dict(meta)}
        (directory / "meta.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return directory

    @staticmethod
    def load(directory: str | Path, env_spec: EnvSpec, capacity: int | None = None) -> "Dataset":
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{str(directory)!r} is not a dreamer4 dataset (no meta.json). Record one with "
                            "`python -m metawm.dreamer4 record +task=NAME`.")
        meta = json.loads(meta_path.read_text())
        if tuple(meta["obs_shape"]) != tuple(env_spec.obs_space.shape) or meta["action"] != _space_json(env_spec.act_space):
            raise UserError(f"the dataset in {str(directory)!r} holds observations {tuple(meta['obs_shape'])} and "
                            f"actions {meta['action']}, but the task has {tuple(env_spec.obs_space.shape)} and "
                            f"{_space_json(env_spec.act_space)}.")
        files = sorted(directory.glob("stream_*.npz"))
        ds = Dataset(env_spec.obs_space, env_spec.act_space, capacity or max(meta["steps"], 1))
        for f in files:
            with np.load(f) as data:
                ds.add_stream({k: data[k] for k in KEYS})
        return ds


def _space_json(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Discrete):
        return {"discrete": int(space.n)}
    return {"box": list(space.shape), "low": np.asarray(space.low).tolist(), "high": np.asarray(space.high).tolist()}


def record(agent: Any, make_env: Callable[[int], gym.Env], env_spec: EnvSpec, steps: int, envs: int,
           seeds: Sequence[int], *, keep_actions: Sequence[bool] | bool = True, capacity: int | None = None,
           explore: bool = True, progress: Callable[[int], None] | None = None) -> Dataset:
    """Run ``agent`` (any metawm agent, e.g. random) on ``envs`` environments (``make_env(i)``) for
    ``steps`` environment steps in total and return what it saw. ``keep_actions`` per stream
    (or for all) decides whether the stream is stored with its actions (False: unlabeled video)."""
    from metawm.envs.rollout import Collector

    keep = [keep_actions] * envs if isinstance(keep_actions, bool) else list(keep_actions)
    ds = Dataset(env_spec.obs_space, env_spec.act_space, capacity or steps + 2 * envs)
    collector = Collector([make_env(i) for i in range(envs)], env_spec, seeds=list(seeds)[:envs])
    taken = 0
    recorder = _Recorder(agent, ds, keep)
    while taken < steps:
        n, _ = collector.step(recorder, explore=explore)
        taken += n
        if progress is not None:
            progress(taken)
    for env in collector.envs:
        env.close()
    return ds


class _Recorder:
    """Wraps an agent so that every step it acts on also lands in the dataset."""

    def __init__(self, agent, ds: Dataset, keep: Sequence[bool]):
        self.agent, self.ds, self.keep = agent, ds, keep

    def initial_carry(self, n):
        return self.agent.initial_carry(n)

    def act(self, step, carry, *, explore):
        return self.agent.act(step, carry, explore=explore)

    def observe(self, step):
        self.ds.add(step, keep_actions=self.keep)
