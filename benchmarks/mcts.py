"""Batched MCTS against a plain one-root-at-a-time search, same network, same process.

    python benchmarks/mcts.py [--sims 50] [--roots 1 16 256] [--size small] [--gumbel] [--obs 4 --actions 2]

For each root count B it times ``metawm.agents.muzero.search.search`` (all B trees in tensors,
one batched network call per simulation) and ``search_single`` (the pseudocode's Python-node
search, one network call of batch 1 per simulation) on the same B observations with the same
MuZero network (the agent's NetModel adapter), and prints simulations per second and their
ratio. The machine is shared, so only the ratio within one run is meaningful; both searches
are timed interleaved, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metawm.agents.muzero.agent import MuZeroAgent  # noqa: E402
from metawm.agents.muzero.search import search, search_single  # noqa: E402
from metawm.types import EnvSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=50)
    ap.add_argument("--roots", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--size", default="small")
    ap.add_argument("--obs", type=int, default=4, help="vector observation size (CartPole: 4)")
    ap.add_argument("--actions", type=int, default=2, help="number of discrete actions (CartPole: 2)")
    ap.add_argument("--gumbel", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--single-max-roots", type=int, default=32,
                    help="time the plain search on at most this many roots and scale (it is linear in roots)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    torch.manual_seed(0)
    spec = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (args.obs,), np.float32), gym.spaces.Discrete(args.actions))
    agent = MuZeroAgent(spec, device=args.device, size=args.size, num_simulations=args.sims, gumbel=args.gumbel)
    model = agent._model(agent.net)
    cfg = agent.search_cfg
    print(f"network: {agent.info()['params']} parameters ({args.size}), {args.sims} simulations, "
          f"{'gumbel' if args.gumbel else 'puct'}, torch threads {torch.get_num_threads()}, device {args.device}")
    rows = []
    for B in args.roots:
        obs = torch.randn(B, args.obs, device=args.device)
        nb = min(B, args.single_max_roots)
        t_batched, t_single = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = search(model, obs, cfg, explore=True)
            if args.device != "cpu":
                torch.cuda.synchronize()
            t_batched.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for b in range(nb):
                search_single(model, obs[b:b + 1], cfg, explore=True)
            t_single.append((time.perf_counter() - t0) * B / nb)
        sb = B * args.sims / min(t_batched)
        ss = B * args.sims / min(t_single)
        row = {"roots": B, "batched_sims_per_s": sb, "single_sims_per_s": ss, "ratio": sb / ss,
               "batched_s": min(t_batched), "single_s": min(t_single), "max_depth": res.max_depth}
        rows.append(row)
        print(f"roots {B:4d}: batched {sb:10.0f} sims/s ({min(t_batched) * 1e3:8.1f} ms/search)   "
              f"one-at-a-time {ss:8.0f} sims/s   ratio {sb / ss:6.2f}x   (tree depth {res.max_depth})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
