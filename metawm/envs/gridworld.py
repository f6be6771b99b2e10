"""VariBAD's 5x5 grid navigation as one gymnasium episode per task (a BAMDP).

After Zintgraf et al. (ICLR 2020, "VariBAD", sec. 5.1 and ``environments/navigation/gridworld.py``
of ``lmzintgraf/varibad``): the agent starts in the bottom-left cell (0, 0); a goal cell it cannot
see is fixed for the task; 5 actions: 0 stay, 1 up (y+1), 2 right (x+1), 3 down (y-1), 4 left
(x-1), moves into the wall leave the agent in place; after each move the reward is +1 on the goal
cell and -0.1 elsewhere (the agent may stay on the goal and collect +1 every step). An episode has
15 steps and the agent meets the same task for ``episodes_per_task`` = 4 episodes (H+ = 60), so a
Bayes-optimal agent explores in the first episode and exploits afterwards. VariBAD's goals are any
cell except the start and its three neighbours (21 cells).

One gymnasium episode here is the whole BAMDP: every 15 steps the agent is put back on (0, 0).
The observation returned by the 15th move of an episode is the cell that move reached, with
time feature t / 15 = 1, paired with the reward earned there; the next move starts from (0, 0).
(Returning the start cell instead paired a goal's +1 with the start cell whenever an episode
ended on the goal, which taught VariBAD's next-state reward decoder that the start can pay +1.)
After ``episodes_per_task`` such episodes the gym episode ends with ``truncated=True`` (the BAMDP
horizon is a time limit; nothing is terminal in the grid).

Observation (float32): the cell's coordinates ``(x, y)`` in 0..4 as in VariBAD, plus, with
``time_feature=True`` (default), ``t / 15`` where t is the number of steps taken in the current
episode (0 at the BAMDP's start, 1 on the last move of each episode). VariBAD's wrapper appends
a "done" flag for the same purpose (so that the policy knows an episode boundary happened); a
recurrent agent can read both the boundary and the time left from ``t / 15``.

``info`` of every step: ``episode_index`` (0-based index of the episode the step's reward belongs
to), ``episode_end`` (True on the step that ends an episode), and on the last step
``episode_returns`` (the list of the ``episodes_per_task`` undiscounted episode returns).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

START = (0, 0)
# stay, up, right, down, left as in VariBAD's GridNavi
MOVES = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0))


def varibad_goals(size: int = 5) -> list[tuple[int, int]]:
    """Every cell except the start (0, 0) and its neighbours (0, 1), (1, 0), (1, 1)."""
    excluded = {(0, 0), (0, 1), (1, 0), (1, 1)}
    return [(x, y) for x in range(size) for y in range(size) if (x, y) not in excluded]


class GridNaviBAMDP(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, goal: tuple[int, int], *, size: int = 5, horizon: int = 15, episodes_per_task: int = 4,
                 time_feature: bool = True):
        self.size = int(size)
        self.goal = (int(goal[0]), int(goal[1]))
        if not all(0 <= c < self.size for c in self.goal):
            raise ValueError(f"goal {self.goal} is outside the {self.size}x{self.size} grid")
        self.horizon = int(horizon)
        self.episodes_per_task = int(episodes_per_task)
        self.time_feature = bool(time_feature)
        dim = 3 if self.time_feature else 2
        high = np.full(dim, self.size - 1, dtype=np.float32)
        if self.time_feature:
            high[2] = 1.0
        self.observation_space = gym.spaces.Box(np.zeros(dim, np.float32), high, (dim,), np.float32)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.position = START
        self.t = 0
        self.episode = 0
        self.returns: list[float] = []

    def _obs(self) -> np.ndarray:
        obs = [self.position[0], self.position[1]]
        if self.time_feature:
            obs.append(self.t / self.horizon)
        return np.asarray(obs, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.position = START
        self.t = 0
        self.episode = 0
        self.returns = [0.0] * self.episodes_per_task
        return self._obs(), {"episode_index": 0}

    def step(self, action):
        if self.episode >= self.episodes_per_task:
            raise RuntimeError("the BAMDP is over; call reset()")
        dx, dy = MOVES[int(action)]
        x = min(max(self.position[0] + dx, 0), self.size - 1)
        y = min(max(self.position[1] + dy, 0), self.size - 1)
        self.position = (x, y)
        reward = 1.0 if self.position == self.goal else -0.1
        self.returns[self.episode] += reward
        self.t += 1
        info: dict[str, Any] = {"episode_index": self.episode, "episode_end": False}
        truncated = False
        obs = self._obs()  # the cell the move reached (t / 15 = 1 on the last move of an episode)
        if self.t >= self.horizon:
            info["episode_end"] = True
            self.episode += 1
            self.t = 0
            self.position = START
            if self.episode >= self.episodes_per_task:
                truncated = True
                info["episode_returns"] = list(self.returns)
        return obs, reward, False, truncated, info
