"""Does an agent find out which way its motor pushes? A behavioural probe on cartpole_actuator.

For each trained run (any meta-learner) and each of ``--tasks`` test tasks, the learner's own
zero-shot episode (``meta.adapt(..., shots=0)``: belief inference for VariBAD, the shared agent for
the others) is watched step by step. At every step the agent's action is compared with the push a
hand-written controller that *knows* the polarity would make,

    a* = [ sign * (theta + 0.3 theta_dot + 0.01 x + 0.05 x_dot) > 0 ]

(the controller balances every force 2-30 N for 200 of 200 steps with the right sign, see
``tasks/cartpole_actuator.yaml``). The script prints, per polarity, the agreement with a* over
windows of the episode's steps and the mean episode length. An agent that infers the polarity
agrees ~50% in its first steps and much more later, on both polarities; a memoryless agent that
has settled on one polarity agrees on that one and disagrees on the other from the first step.
Agreement is a diagnostic, not a score: many pushes near the upright are harmless either way.

    python benchmarks/cartpole_polarity.py runs/bench/ca_v1/cartpole_actuator/{none,varibad_cp,oracle}/s0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WINDOWS = [(0, 5), (5, 10), (10, 20), (20, 50), (50, 200)]


def probe(run: str, tasks: int, seed: int, max_steps: int) -> dict[int, dict]:
    from metawm.adapt import load_learner
    from metawm.infra import config as configlib

    meta, built, _ = load_learner(configlib.compose("adapt", [f"checkpoint={run}", "+task=cartpole_actuator", "split=test",
                                                              "shots=0", f"task.max_episode_steps={max_steps}"]))
    out: dict[int, dict] = {1: {"agree": [[] for _ in WINDOWS], "lengths": []},
                            -1: {"agree": [[] for _ in WINDOWS], "lengths": []}}
    for spec in built.tasks.sample("test", tasks, np.random.default_rng(seed)):
        sign = int(spec["actuator_sign"])
        agent = meta.adaptation_agent(meta.agent().state_dict(replay=False), seed)
        act, steps = agent.act, []

        def watched(step, carry, *, explore, _act=act, _steps=steps):
            action, info = _act(step, carry, explore=explore)
            x, v, th, w = np.asarray(step["obs"], np.float64)[0][:4]
            want = int(sign * (th + 0.3 * w + 0.01 * x + 0.05 * v) > 0)
            _steps.append(int(np.asarray(action).reshape(-1)[0]) == want)
            return action, info

        agent.act = watched
        next(iter(meta.adapt(agent, spec, 0, seed=seed, eval_episodes_per_shot=1)))
        # the watched steps of the first evaluation episode (later calls may be other episodes)
        length = len(steps)
        out[sign]["lengths"].append(length)
        for i, (lo, hi) in enumerate(WINDOWS):
            if length > lo:
                out[sign]["agree"][i].append(float(np.mean(steps[lo:min(hi, length)])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="metawm.train run directories trained on cartpole_actuator")
    p.add_argument("--tasks", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-steps", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(1)
    head = " | ".join(f"t {lo}-{hi - 1}" for lo, hi in WINDOWS)
    print(f"| run | polarity | tasks | mean length | agreement with the polarity-aware push: {head} |")
    print("|---|---|---|---|" + "---|" * len(WINDOWS))
    for run in a.runs:
        res = probe(run, a.tasks, a.seed, a.max_steps)
        for sign in (1, -1):
            r = res[sign]
            cells = " | ".join(f"{np.mean(v):.2f} ({len(v)})" if v else "-" for v in r["agree"])
            print(f"| {Path(run).parent.name}/{Path(run).name} | {sign:+d} | {len(r['lengths'])} | "
                  f"{np.mean(r['lengths']) if r['lengths'] else float('nan'):.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
