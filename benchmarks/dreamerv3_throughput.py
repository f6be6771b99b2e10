"""DreamerV3 throughput on CPU: gradient steps/s and env steps/s per small preset, replay bytes/frame.

    python benchmarks/dreamerv3_throughput.py                       # tiny, small, size1m on vector + image
    python benchmarks/dreamerv3_throughput.py --presets small --steps 10 --json out.json

* gradient steps/s: median over ``--steps`` gradient steps (after one warm-up step) on replayed
  batches of the preset's size, vector observations (CartPole, 2 actions) and 64x64x3 images
  (18 actions). Also as CPU seconds per step (``time.process_time``), which is less sensitive to
  other processes on a shared machine than wall time.
* env steps/s: acting (posterior update + policy sample) and storing, with a real environment
  (CartPole-v1; for images ALE Pong at 64x64 when ale-py is installed, else a synthetic image env),
  one environment, no training.
* replay bytes per stored frame: the replay's bytes per time step (frame + action, reward and flags)
  against the raw uint8 frame (64 x 64 x 3 = 12,288 bytes), and the resident memory the process
  actually gained while storing 20,000 frames (target: within 5% of the raw frame).

On a shared machine, quote the load average printed in the header, and compare presets as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def vector_env():
    import gymnasium as gym

    return gym.make("CartPole-v1")


class SyntheticImageEnv:
    """A stand-in with Atari's spaces when ale-py is missing: a bright block moving on black."""

    def __init__(self):
        import gymnasium as gym

        self.observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(18)
        self.t = 0

    def _obs(self):
        obs = np.zeros((64, 64, 3), np.uint8)
        obs[(4 * self.t) % 56:(4 * self.t) % 56 + 8, 20:28] = 255
        return obs

    def reset(self, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 500, {}

    def close(self):
        pass


def image_env():
    try:
        from benchmarks.dreamerv3_atari import make_pong

        return make_pong(), "ALE/Pong-v5 64x64"
    except Exception as e:  # noqa: BLE001 - any failure to build ALE falls back to the synthetic env
        print(f"(ALE Pong unavailable: {type(e).__name__}: {e}; using a synthetic 64x64 image env)")
        return SyntheticImageEnv(), "synthetic 64x64x3"


def spec_of(env):
    from metawm.types import EnvSpec

    return EnvSpec(env.observation_space, env.action_space)


def gradient_steps(agent, steps: int) -> tuple[float, float]:
    """(wall s, CPU s) per gradient step, medians over ``steps`` after a warm-up step."""
    batch = agent.sample_batch()
    agent._train_step(batch)
    wall, cpu = [], []
    for _ in range(steps):
        batch = agent.sample_batch()
        t0, c0 = time.perf_counter(), time.process_time()
        agent._train_step(batch)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def env_steps_per_s(agent, env, n: int) -> float:
    from metawm.envs.rollout import Collector

    collector = Collector([env], agent.env_spec, seeds=[0])
    collector.step(agent)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        taken, _ = collector.step(agent)
        done += taken
    return done / (time.perf_counter() - t0)


def fill(agent, env, n: int) -> None:
    from metawm.envs.rollout import Collector

    collector = Collector([env], agent.env_spec, seeds=[1])
    while len(agent.replay) < n:
        collector.step(agent)


def replay_memory(frames: int = 20000) -> dict:
    """Bytes per stored 64x64x3 frame: accounted by the replay and measured as resident memory."""
    from metawm.data.replay import SequenceReplay

    raw = 64 * 64 * 3
    replay = SequenceReplay(capacity=frames, length=64,
                            keys=("obs", "action", "reward", "is_first", "is_last", "is_terminal"))
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    step = {"obs": frame, "action": np.zeros(1, np.int64), "reward": np.zeros(1, np.float32),
            "is_first": np.zeros(1, bool), "is_last": np.zeros(1, bool), "is_terminal": np.zeros(1, bool)}
    replay.add(step)  # allocates (the OS commits pages only when written)
    before = _rss()
    for _ in range(frames - 1):
        replay.add(step)
    grown = (_rss() - before) / (frames - 1)
    return {"raw_frame_bytes": raw, "replay_bytes_per_step": replay.bytes_per_step(),
            "accounted_overhead": replay.bytes_per_step() / raw - 1,
            "measured_rss_bytes_per_step": grown, "measured_overhead": grown / raw - 1}


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    import torch

    from metawm.agents.dreamerv3 import DreamerV3Agent

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "size1m"])
    parser.add_argument("--kinds", nargs="+", default=["vector", "image"])
    parser.add_argument("--steps", type=int, default=8, help="gradient steps timed per preset")
    parser.add_argument("--env-steps", type=int, default=300, help="env steps timed per preset")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"DreamerV3 throughput, torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    for kind in args.kinds:
        for preset in args.presets:
            torch.manual_seed(0)
            env, env_name = (vector_env(), "CartPole-v1") if kind == "vector" else image_env()
            agent = DreamerV3Agent(spec_of(env), size=preset)
            fill(agent, env, agent.train_after + agent.batch_length)
            wall, cpu = gradient_steps(agent, args.steps)
            sps = env_steps_per_s(agent, env, args.env_steps)
            row = {"kind": kind, "env": env_name, "preset": preset, "params": agent.info()["params"],
                   "batch": f"{agent.batch_size}x{agent.batch_length}", "imag_last": agent.imag_last,
                   "grad_steps_per_s": 1 / wall, "cpu_s_per_grad_step": cpu, "env_steps_per_s": sps,
                   "replayed_steps_per_s": agent.batch_size * agent.batch_length / wall,
                   "load": os.getloadavg()[0]}
            rows.append(row)
            print(f"{kind:6s} {preset:8s} params {row['params']:>10,}  batch {row['batch']:>6}  "
                  f"{row['grad_steps_per_s']:6.2f} grad steps/s ({cpu:5.2f} CPU s/step)  "
                  f"{sps:7.1f} env steps/s  load {row['load']:.1f}", flush=True)
    mem = replay_memory()
    print(f"replay: {mem['replay_bytes_per_step']} bytes per stored 64x64x3 step vs {mem['raw_frame_bytes']} raw "
          f"(+{100 * mem['accounted_overhead']:.2f}%); resident memory grew {mem['measured_rss_bytes_per_step']:.0f} "
          f"bytes per frame (+{100 * mem['measured_overhead']:.2f}%)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "replay": mem}, indent=1))
    return 0 if mem["measured_overhead"] < 0.05 and mem["accounted_overhead"] < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
