"""Steps per second of each suite's environment through metawm's adapter vs the raw env underneath.

    python benchmarks/env_throughput.py [--seconds 2] [--suites cartpole_physics atari_suite ...]

One process, one env, random actions sampled beforehand, reset at episode ends (resets count in
the time, not in the steps); the rate of the fastest burst of 100 steps, with adapter and raw env
measured in alternation (robust to other processes on a shared machine). "raw" is what the
adapter wraps, stepped directly:

* cartpole_physics: gymnasium's ``CartPoleEnv`` (no time limit);
* cheetah_*: gymnasium's ``HalfCheetahEnv`` (v5, its own reward);
* metaworld_*: the Meta-World env class after ``set_task`` (float64 obs, no adapter);
* atari_suite: ``AtariEnv`` with ``frameskip=4`` (ALE v5 as registered: same emulator frames per
  step, but neither max-pooling nor resizing); for reference also gymnasium's
  ``AtariPreprocessing`` doing what our adapter does (frame skip 4 with pooling, 64x64 resize);
* point_nav, gridworld_goals: pure-Python envs with no underlying library env (no ratio).

ratio = adapter / raw: 1.0 means the adapter is free; below 1 is its overhead per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metawm.tasks import load_suite, suite_names  # noqa: E402


def steps_per_second(env, seconds: float, seed: int = 0, burst: int = 100) -> float:
    """The rate of the fastest burst of ``burst`` steps within ``seconds`` (like ``timeit``'s
    minimum: on a shared machine, slower bursts measure the neighbours, not the env)."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(burst)]
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
        best = max(best, burst / (time.perf_counter() - t0))
    return best


def raw_env(name: str, family, spec) -> Callable[[], object] | None:
    p = family.params_of(spec)
    if name == "cartpole_physics":
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        return CartPoleEnv
    if name.startswith("cheetah"):
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

        return HalfCheetahEnv
    if name.startswith("metaworld"):
        from metawm.envs.meta_world import make_metaworld

        return lambda: make_metaworld(p["env_name"], p["rand_vec"]).unwrapped
    if name == "atari_suite":
        from ale_py.env import AtariEnv

        from metawm.envs.atari import rom_id

        return lambda: AtariEnv(rom_id(p["game"]), frameskip=4, repeat_action_probability=0.25,
                                full_action_space=True, max_num_frames_per_episode=108_000)
    return None


def gymnasium_atari_preprocessing(game: str):
    import gymnasium as gym
    from ale_py.env import AtariEnv

    from metawm.envs.atari import rom_id

    base = AtariEnv(rom_id(game), frameskip=1, repeat_action_probability=0.25, full_action_space=True,
                    max_num_frames_per_episode=108_000)
    return gym.wrappers.AtariPreprocessing(base, noop_max=0, frame_skip=4, screen_size=64, grayscale_obs=False)


def best_of(makers: list, seconds: float, rounds: int) -> list[float]:
    """Steps/s of each env, measured in alternation over ``rounds`` rounds, best burst each."""
    envs = [make() for make in makers]
    best = [0.0] * len(envs)
    for _ in range(rounds):
        for i, env in enumerate(envs):
            best[i] = max(best[i], steps_per_second(env, seconds / rounds))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per env and suite")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best one counts")
    parser.add_argument("--suites", nargs="*", default=None, help="suites to measure (default: all)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.suites or suite_names():
        family = load_suite(name)
        spec = family.default_task()
        makers = [lambda: family.make_env(spec)]
        make_raw = raw_env(name, family, spec)
        if make_raw:
            makers.append(make_raw)
        if name == "atari_suite":
            makers.append(lambda: gymnasium_atari_preprocessing(spec["game"]))
        speeds = best_of(makers, args.seconds, args.rounds)
        raw = speeds[1] if make_raw else None
        rows.append((f"{name} ({spec.get('game') or spec.get('env_name') or 'default task'})", speeds[0], raw))
        if name == "atari_suite":
            rows.append(("  gymnasium AtariPreprocessing, same work", speeds[2], raw))
    print(f"{'suite':<46} {'adapter steps/s':>16} {'raw steps/s':>12} {'ratio':>6}")
    for label, adapter, raw in rows:
        raw_s = f"{raw:12.0f}" if raw else f"{'-':>12}"
        ratio = f"{adapter / raw:6.2f}" if raw else f"{'-':>6}"
        print(f"{label:<46} {adapter:16.0f} {raw_s} {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
