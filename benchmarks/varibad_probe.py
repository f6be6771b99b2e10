"""Watch a trained VariBAD + MPC agent on point_nav: where it goes and where its reward decoder puts the goal.

For a few test tasks, a chain of ``--episodes`` greedy episodes with the belief carried across them
(as ``meta.adapt_persist=true`` adapts), printing every ``--every`` steps: the agent's position, the
argmax of the decoder's E[r | s', m = belief mean] over a 29x29 grid of the disc, its distance to the
true goal, the largest E[r] (the truth is 0 at the goal) and the belief's mean std.

    python benchmarks/varibad_probe.py runs/bench/pn_v8/point_nav_paper/varibad_enc128/s0
    python benchmarks/varibad_probe.py RUN meta.plan_belief=sample_episode     # adapt-time meta overrides

The overrides ``task.splits.*`` default to point_nav_paper's (goals on the whole circle in both splits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAPER_SPLITS = ["task.splits.train.goal_angle.high=360.0", "task.splits.test.goal_angle.low=0.0"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a meta=varibad point_nav run directory")
    p.add_argument("overrides", nargs="*", help="adapt-time overrides, e.g. meta.plan_belief=mean")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--seed", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(1)

    from benchmarks.varibad_decoder import GRID, reward_at
    from metawm.adapt import load_learner
    from metawm.infra import config as configlib
    from metawm.meta import varibad as vb

    cfg = configlib.compose("adapt", [f"checkpoint={a.run}", "+task=point_nav", "split=test", "shots=0",
                                      *PAPER_SPLITS, *a.overrides])
    meta_keys = [o.split("=")[0].split(".", 1)[1] for o in a.overrides if o.startswith("meta.")]
    meta, built, _ = load_learner(cfg, meta_keys)
    agent, model = meta.adaptation_agent(meta.agent().state_dict(replay=False), 0), meta.model
    log: list[tuple] = []
    act = agent.act

    def watched(step, carry, *, explore):
        action, out = act(step, carry, explore=explore)
        with torch.no_grad():
            mu, logvar = model.belief(out["h"][:1])
        er = reward_at(model, GRID[None], mu)[0]
        log.append((np.asarray(step["obs"])[0].copy(), GRID[int(er.argmax())].numpy(), float(er.max()),
                    float((0.5 * logvar).exp().mean())))
        return action, out

    agent.act = watched
    for spec in built.tasks.sample("test", a.tasks, np.random.default_rng(a.seed)):
        goal = np.asarray(built.tasks.make_env(spec).unwrapped.goal)
        log.clear()
        returns = vb._belief_chain(agent, built.tasks, spec, a.episodes, 123)
        print(f"goal {goal.round(2)}  returns {np.round(returns, 1)}")
        for t, (pos, best, top, std) in enumerate(log):
            if t % a.every == 0:
                print(f"  t={t:3d} pos={pos.round(2)} argmax={best.round(2)} to goal {np.linalg.norm(best - goal):.2f} "
                      f"max E[r] {top:.2f} belief std {std:.3f}")


if __name__ == "__main__":
    main()
