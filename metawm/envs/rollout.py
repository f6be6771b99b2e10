"""Stepping a list of environments with an agent, in the Dreamer step convention.

Each call of :meth:`Collector.step` makes the agent act once on the current batch of steps
(one per environment), hands the steps *with* their actions to ``agent.observe``, then advances
every environment: an environment whose step was ``is_last`` is reset (no env step counted),
every other one takes its action. An episode of L env steps thus yields L + 1 agent steps, the
last of which carries the final observation (``is_last``), exactly as Dreamer's replay expects.

Why not ``gymnasium.vector``: its autoreset (1.x: next-step) mixes the final and the first
observation into one call; stepping a list explicitly keeps the convention obvious and lets a
checkpoint capture each environment's state (:mod:`metawm.envs.snapshot`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from metawm.types import EnvSpec, Step


def _as_action(space: gym.Space, a: np.ndarray) -> Any:
    if isinstance(space, gym.spaces.Discrete):
        return int(a)
    return np.asarray(a, dtype=np.float32)


class Collector:
    """Runs ``envs`` with an agent; keeps per-env episode statistics.

    ``task_ids`` labels each environment with the index of its task in the population, so
    metrics can be reported per task.
    """

    def __init__(self, envs: Sequence[gym.Env], env_spec: EnvSpec, seeds: Sequence[int],
                 task_ids: Sequence[int] | None = None):
        self.envs = list(envs)
        self.env_spec = env_spec
        self.n = len(self.envs)
        self.task_ids = np.asarray(task_ids if task_ids is not None else range(self.n), dtype=np.int64)
        obs_shape, obs_dtype = env_spec.obs_space.shape, env_spec.obs_space.dtype
        self.obs = np.zeros((self.n, *obs_shape), dtype=obs_dtype)
        self.reward = np.zeros(self.n, np.float32)
        self.is_first = np.ones(self.n, bool)
        self.is_last = np.zeros(self.n, bool)
        self.is_terminal = np.zeros(self.n, bool)
        self.success = np.full(self.n, np.nan, np.float32)
        self.ep_return = np.zeros(self.n, np.float64)
        self.ep_length = np.zeros(self.n, np.int64)
        self.ep_success = np.full(self.n, np.nan, np.float32)
        self.carry: Any = None
        self._reset_seeds: dict[int, int] = {}  # env index -> seed of its next reset (see replace)
        for i, env in enumerate(self.envs):
            obs, info = env.reset(seed=int(seeds[i]))
            self.obs[i] = obs
            self._note_success(i, info)

    def _note_success(self, i: int, info: dict) -> None:
        if "success" in info:
            s = float(info["success"])
            self.success[i] = s
            self.ep_success[i] = s if math.isnan(self.ep_success[i]) else max(self.ep_success[i], s)

    def current(self) -> Step:
        return {"obs": self.obs.copy(), "reward": self.reward.copy(), "is_first": self.is_first.copy(),
                "is_last": self.is_last.copy(), "is_terminal": self.is_terminal.copy(),
                "success": self.success.copy(), "task": self.task_ids.copy()}

    def step(self, agent: Any, *, explore: bool = True, observe: bool = True,
             active: np.ndarray | None = None) -> tuple[int, list[dict]]:
        """One agent step on every env (those with ``active`` False stand still).
        Returns (env steps taken, episodes that ended)."""
        if self.carry is None:
            self.carry = agent.initial_carry(self.n)
        step = self.current()
        action, self.carry = agent.act(step, self.carry, explore=explore)
        step["action"] = action
        if observe:
            agent.observe(step)
        finished, env_steps = [], 0
        for i, env in enumerate(self.envs):
            if active is not None and not active[i]:
                continue
            if self.is_last[i]:
                obs, info = env.reset(seed=self._reset_seeds.pop(i, None))
                self.obs[i], self.reward[i] = obs, 0.0
                self.is_first[i], self.is_last[i], self.is_terminal[i] = True, False, False
                self.success[i] = np.nan
                self.ep_return[i], self.ep_length[i], self.ep_success[i] = 0.0, 0, np.nan
                self._note_success(i, info)
                continue
            obs, reward, terminated, truncated, info = env.step(_as_action(env.action_space, action[i]))
            env_steps += 1
            self.obs[i], self.reward[i] = obs, reward
            self.is_first[i], self.is_last[i], self.is_terminal[i] = False, terminated or truncated, terminated
            self.ep_return[i] += float(reward)
            self.ep_length[i] += 1
            self._note_success(i, info)
            if self.is_last[i]:
                finished.append({"env": i, "task": int(self.task_ids[i]), "return": float(self.ep_return[i]),
                                 "length": int(self.ep_length[i]), "success": float(self.ep_success[i]),
                                 **({"episode_returns": list(info["episode_returns"])}
                                    if "episode_returns" in info else {})})
        return env_steps, finished

    def replace(self, i: int, env: gym.Env, seed: int) -> None:
        """Swap env ``i``, whose episode has just ended (``is_last``), for ``env`` (another task):
        the next :meth:`step` still hands the old episode's final step to the agent, then starts
        the new env with ``reset(seed=seed)``. Call it right before a step (nothing pending is
        checkpointed)."""
        if not self.is_last[i]:
            raise ValueError(f"env {i} is inside an episode; it can be replaced only when its episode has ended")
        self.envs[i].close()
        self.envs[i] = env
        self._reset_seeds[i] = int(seed)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        from metawm.envs import snapshot

        arrays = {k: getattr(self, k).copy() for k in ("obs", "reward", "is_first", "is_last", "is_terminal",
                                                      "success", "ep_return", "ep_length", "ep_success")}
        return {"arrays": arrays, "carry": self.carry, "envs": [snapshot.capture(e) for e in self.envs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from metawm.envs import snapshot

        for k, v in state["arrays"].items():
            setattr(self, k, v.copy())
        self.carry = state["carry"]
        self.envs = [snapshot.restore(env, s) for env, s in zip(self.envs, state["envs"])]


def run_episodes(agent: Any, make_env: Callable[[], gym.Env], env_spec: EnvSpec, episodes: int, seed: int,
                 *, explore: bool = False, num_envs: int | None = None, observe: bool = False) -> list[dict]:
    """Run exactly ``episodes`` complete episodes, spread over up to ``num_envs`` parallel envs
    with a fixed quota each (so the result is not biased towards short episodes), and return
    their statistics in env order. Used for evaluation (``explore=False``) and few-shot data."""
    if episodes <= 0:
        return []
    # An agent that stores what it sees gets one env: a finished env standing still would
    # otherwise hand its final step to the replay again at every call.
    num_envs = 1 if observe else min(num_envs or episodes, episodes)
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    collector = Collector([make_env() for _ in range(num_envs)], env_spec,
                          seeds=[seed + 7919 * i for i in range(num_envs)])
    per_env: list[list[dict]] = [[] for _ in range(num_envs)]
    done = np.zeros(num_envs, np.int64)
    while (done < quota).any():
        _, finished = collector.step(agent, explore=explore, observe=observe, active=done < quota)
        for ep in finished:
            per_env[ep["env"]].append(ep)
            done[ep["env"]] += 1
    for env in collector.envs:
        env.close()
    return [ep for eps in per_env for ep in eps]
