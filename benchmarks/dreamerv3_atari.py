"""DreamerV3's world model on Atari Pong at 64x64: losses fall and reconstructions look like the game.

    python benchmarks/dreamerv3_atari.py                              # 6000 env steps, small preset
    python benchmarks/dreamerv3_atari.py --steps 20000 --size size1m --ratio 64 --out runs/bench/pong

A short run, not a score: the agent acts, stores and trains (replay ratio ``--ratio``, the paper's
Atari value is 32) on ``ALE/Pong-v5`` with all 18 actions, sticky actions (0.25), 4-frame repeat
with max-pooling, 30 no-op starts and RGB frames resized to 64x64 (gymnasium's
``AtariPreprocessing``). It prints the world-model losses as training goes, writes
``losses.png`` (losses against gradient steps) and ``plots/reconstruction.png`` (real frames,
reconstructions of the first half of a replayed window, open-loop imagination of the second half),
and ``results.json``. The environment is built here with gymnasium's wrapper, with the same
settings as ``atari_suite`` (metawm/envs/atari.py) plus its 30 no-op starts: one fixed game, no task
sampling, so the figures depend on nothing but the agent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOSSES = ("wm/loss/rec", "wm/loss/rew", "wm/loss/con", "wm/loss/dyn", "wm/kl")


def make_pong(size: int = 64):
    """ALE Pong with 18 actions, sticky actions, frame skip 4 (max-pooled), 64x64 RGB uint8 frames."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", frameskip=1, full_action_space=True, repeat_action_probability=0.25)
    return gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=size, grayscale_obs=False)


def main() -> int:
    import torch

    from metawm.agents.dreamerv3 import DreamerV3Agent
    from metawm.envs.rollout import Collector
    from metawm.infra.plots import read_jsonl  # noqa: F401  (keeps the plots backend consistent)
    from metawm.types import EnvSpec

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--size", default="small")
    parser.add_argument("--ratio", type=float, default=32.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "dreamerv3_pong")
    parser.add_argument("--plot-every", type=int, default=1000,
                        help="also write the plots every N gradient steps (to plots_<N>/), so a long run shows progress")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    env = make_pong()
    spec = EnvSpec(env.observation_space, env.action_space)
    agent = DreamerV3Agent(spec, size=args.size, replay_ratio=args.ratio)
    print(f"DreamerV3 on Pong 64x64: preset {args.size} ({agent.info()['params']:,} params), ratio {args.ratio}, "
          f"{args.steps} env steps, load {os.getloadavg()[0]:.1f}", flush=True)
    collector = Collector([env], spec, seeds=[args.seed])
    history, episodes, env_steps, t0 = [], [], 0, time.perf_counter()
    while env_steps < args.steps:
        taken, finished = collector.step(agent)
        env_steps += taken
        episodes += [e["return"] for e in finished]
        metrics = agent.update(env_steps)
        if metrics:
            history.append({"env_steps": env_steps, "updates": agent.updates, **{k: metrics[k] for k in LOSSES}})
            if agent.updates % 25 == 0:
                row = history[-1]
                print(f"env {env_steps:>6}  updates {agent.updates:>5}  " +
                      "  ".join(f"{k.split('/')[-1]} {row[k]:8.3f}" for k in LOSSES) +
                      f"  wall {time.perf_counter() - t0:6.0f} s", flush=True)
            if args.plot_every and agent.updates % args.plot_every == 0:
                agent.write_plots(args.out / f"plots_{agent.updates}", env_steps)
    agent.write_plots(args.out / "plots", env_steps)
    _plot_losses(history, args.out / "losses.png")
    first, last = _window(history, 0), _window(history, -1)
    result = {"env_steps": env_steps, "updates": agent.updates, "wall_s": time.perf_counter() - t0,
              "episode_returns": episodes, "first": first, "last": last, "info": agent.info()}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print("world-model losses, mean of the first vs the last 20 gradient steps:")
    for k in LOSSES:
        print(f"  {k:14s} {first[k]:9.3f} -> {last[k]:9.3f}")
    print(f"plots: {args.out / 'losses.png'}, {args.out / 'plots' / 'reconstruction.png'}")
    return 0


def _window(history: list[dict], where: int, n: int = 20) -> dict:
    rows = history[:n] if where == 0 else history[-n:]
    return {k: float(np.mean([r[k] for r in rows])) for k in LOSSES} if rows else {}


def _plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSSES), figsize=(3.2 * len(LOSSES), 3), squeeze=False)
    for ax, k in zip(axes[0], LOSSES):
        ax.plot([r["updates"] for r in history], [r[k] for r in history], lw=1)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("gradient steps", fontsize=8)
        ax.set_yscale("log" if k.endswith("rec") else "linear")
        ax.grid(alpha=0.3)
    fig.suptitle("DreamerV3 world-model losses on Pong 64x64")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
