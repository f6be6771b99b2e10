"""Atari games as tasks (suite ``atari_suite``): the task parameter is the game.

All games share one spec: uint8 ``image_size`` x ``image_size`` x 3 (or x 1 with ``grayscale``)
observations and the 18 actions of the full joystick. Preprocessing (frame skip 4 with max-pooling,
sticky actions 0.25, 108k-frame limit) is in :mod:`metawm.envs.atari`; the train/test games are
listed, with the reason for the split, in ``tasks/atari_suite.yaml``.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from metawm.envs import atari
from metawm.infra.errors import choices_error
from metawm.tasks.base import TaskFamily, reject_unknown_kwargs
from metawm.types import EnvSpec, TaskSpec

_OPTIONS = ["image_size", "grayscale", "frame_skip", "repeat_action_probability", "max_frames", "max_pool",
            "max_episode_steps"]


class AtariSuite(TaskFamily):
    param_names = ("game",)

    def __init__(self, name: str, splits: Mapping[str, Mapping[str, Any]], default: Mapping[str, Any] | None = None,
                 default_only: bool = False, image_size: int = 64, grayscale: bool = False, frame_skip: int = 4,
                 repeat_action_probability: float = 0.25, max_frames: int = atari.MAX_FRAMES,
                 max_pool: bool = True, max_episode_steps: int | None = None, observe_params: bool = False,
                 **extra: Any):
        reject_unknown_kwargs(name, extra, _OPTIONS)
        super().__init__(name, splits, {"game": "Pong", **dict(default or {})}, default_only, max_episode_steps,
                         observe_params=observe_params)
        self.options = {"image_size": int(image_size), "grayscale": bool(grayscale), "frame_skip": int(frame_skip),
                        "repeat_action_probability": float(repeat_action_probability),
                        "max_frames": int(max_frames), "max_pool": bool(max_pool)}
        known = set(atari.available_games())
        for where, params in [("default", self.default), *self.ranges.items()]:
            game = params.get("game")
            for g in game["choices"] if isinstance(game, Mapping) else [game]:
                if atari.rom_id(str(g)) not in known:
                    raise choices_error(f"Atari game (task suite {name!r}, {where})", str(g), atari.ATARI_100K,
                                        "Any game whose ROM ships with ale-py works, by its gymnasium name.")
        channels = 1 if self.options["grayscale"] else 3
        self.env_spec = EnvSpec(gym.spaces.Box(0, 255, (self.options["image_size"],) * 2 + (channels,), np.uint8),
                                gym.spaces.Discrete(atari.NUM_ACTIONS))

    def _make_env(self, spec: TaskSpec) -> gym.Env:
        return atari.make_atari(str(self.params_of(spec)["game"]), **self.options)
