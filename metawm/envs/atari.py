"""Atari through ale-py, preprocessed the standard way for world-model agents.

``make_atari(game)`` builds ``ale_py.env.AtariEnv`` with one emulator frame per call
(``frameskip=1``) and wraps it in :class:`AtariAdapter`, which

* repeats each agent action for ``frame_skip`` (4) frames and returns the pixel-wise maximum of
  the last two frames (the flicker fix of Mnih et al. 2015, as in gymnasium's
  ``AtariPreprocessing`` and Dopamine); the pooling costs one ``np.maximum`` per agent step;
* keeps the ALE v5 protocol of Machado et al. (2018): sticky actions with probability 0.25 applied
  by the emulator on every frame, no no-op starts, no life-loss terminals, no reward clipping
  (agents that want them add them; DreamerV3 squashes rewards itself with symlog);
* uses the full 18-action set for every game (``full_action_space=True``), so all games of a suite
  share one action space;
* truncates an episode after 108,000 frames (27,000 agent steps at frame skip 4, the usual
  30 minutes of play);
* resizes the pooled frame to ``image_size`` x ``image_size`` with ``cv2.INTER_AREA`` and returns
  uint8 channels-last images, RGB (C=3) or grayscale (C=1, the emulator's own luminance).

The adapter drives the emulator directly (``ale.act`` and ``getScreen*`` into preallocated
buffers) rather than through ``AtariEnv.step``, which would render a full observation for every
skipped frame; ``benchmarks/env_throughput.py`` measures the difference.
"""

from __future__ import annotations

import re
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

# The 26 games of the Atari 100k benchmark (Kaiser et al. 2020, "Model-Based Reinforcement
# Learning for Atari"), by their gymnasium names.
ATARI_100K = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)
NUM_ACTIONS = 18
MAX_FRAMES = 108_000


def rom_id(game: str) -> str:
    """ale-py's ROM id of a gymnasium game name: ``MsPacman`` -> ``ms_pacman``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def available_games() -> list[str]:
    """Every game whose ROM ships with ale-py, by its ROM id."""
    from ale_py import roms

    return list(roms.get_all_rom_ids())


class AtariAdapter(gym.Wrapper):
    """Frame skip with max-pooling, resizing and the full action set over an ``AtariEnv`` whose
    own frameskip is 1 (see module docstring)."""

    def __init__(self, env: gym.Env, *, frame_skip: int = 4, image_size: int = 64, grayscale: bool = False,
                 max_pool: bool = True):
        super().__init__(env)
        base = env.unwrapped
        if base._frameskip != 1:
            raise ValueError("AtariAdapter does the frame skipping itself; build AtariEnv with frameskip=1")
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        self._ale = base.ale  # a handle, not state: snapshots skip it and keep the fresh env's own
        self._action_set = list(base._action_set)
        self.frame_skip = int(frame_skip)
        self.image_size = int(image_size)
        self.grayscale = bool(grayscale)
        self.max_pool = bool(max_pool)
        height, width = base.ale.getScreenDims()
        shape = (2, height, width) if self.grayscale else (2, height, width, 3)
        self._frames = np.zeros(shape, dtype=np.uint8)  # [0] = last frame, [1] = the one before
        channels = 1 if self.grayscale else 3
        self.observation_space = gym.spaces.Box(0, 255, (self.image_size, self.image_size, channels), np.uint8)
        self.action_space = gym.spaces.Discrete(len(self._action_set))

    def _grab(self, out: np.ndarray) -> None:
        if self.grayscale:
            self._ale.getScreenGrayscale(out)
        else:
            self._ale.getScreenRGB(out)

    def _observation(self) -> np.ndarray:
        frame = np.maximum(self._frames[0], self._frames[1]) if self.max_pool else self._frames[0]
        size = (self.image_size, self.image_size)
        if frame.shape[:2] != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        else:
            frame = frame.copy()
        return frame[..., None] if self.grayscale else frame

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        self._grab(self._frames[0])
        self._frames[1] = self._frames[0]
        return self._observation(), {"lives": int(self._ale.lives())}

    def step(self, action):
        ale = self._ale
        ale_action = self._action_set[int(action)]
        reward = 0.0
        grabbed_previous = False
        for t in range(self.frame_skip):
            reward += ale.act(ale_action)
            if ale.game_over():  # also true once the frame limit truncates the episode
                break
            if t == self.frame_skip - 2:
                self._grab(self._frames[1])
                grabbed_previous = True
        self._grab(self._frames[0])
        if not grabbed_previous:  # frame_skip == 1 or the game ended early: nothing to pool with
            self._frames[1] = self._frames[0]
        terminated = ale.game_over(with_truncation=False)
        truncated = ale.game_truncated() and not terminated
        return self._observation(), float(reward), bool(terminated), bool(truncated), {"lives": int(ale.lives())}


def make_atari(game: str, *, image_size: int = 64, grayscale: bool = False, frame_skip: int = 4,
               repeat_action_probability: float = 0.25, max_frames: int = MAX_FRAMES,
               max_pool: bool = True) -> gym.Env:
    """An unseeded Atari env following metawm's conventions; ``game`` is a gymnasium name
    (``MsPacman``) or a ROM id (``ms_pacman``)."""
    import ale_py
    from ale_py.env import AtariEnv

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr per env
    base = AtariEnv(game if game.islower() else rom_id(game), obs_type="grayscale" if grayscale else "rgb",
                    frameskip=1, repeat_action_probability=float(repeat_action_probability),
                    full_action_space=True, max_num_frames_per_episode=int(max_frames))
    return AtariAdapter(base, frame_skip=frame_skip, image_size=image_size, grayscale=grayscale,
                        max_pool=max_pool)
