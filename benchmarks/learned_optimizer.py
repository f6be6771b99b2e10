"""Does the meta-learned optimizer train a fresh agent faster than Adam on held-out tasks?

The learned-rule evidence of the issue, measured on the agent's own loss with everything else held
fixed. For each held-out task of ``--split``: a fresh agent (the suite's initialization for that
task index, the same for both optimizers) collects ``--env-steps`` transitions with its untrained
policy (the MPC agent acts uniformly at random until its first update) into its replay; a second,
independent collection of the same task is the validation set. Then two copies of the agent's
parameters are trained on the *same* sequence of replay batches, one with ``torch.optim.Adam``
(lr = the rule's ``base_lr``, torch's defaults otherwise: the hand-designed rule that
``meta.rule=learned_optimizer`` corrects), one with the learned rule of the checkpoint, and the
validation loss is recorded every few updates. Reported: mean validation loss over tasks, the
ratio learned / Adam, and how many Adam updates reach the loss the learned rule has after n.

(``metawm.adapt`` on a ``meta=learned_rule`` checkpoint measures the same rule by the return of a
fresh agent after 0..K episodes, where planning and exploration add their noise; this script
isolates the optimizer.)

    python benchmarks/meta_adaptation.py --suites point_nav --learners learned_opt --root runs/bench/lr
    python benchmarks/learned_optimizer.py --run runs/bench/lr/point_nav/learned_opt/s{0,1,2,3,4} \\
        --task point_nav --tasks 8 --updates 150

Measured (5 meta-training seeds x the same 8 test tasks, so Adam's 8 curves recur in the 40 pairs):
learned / Adam validation loss 0.49 +- 0.06 after 10 updates, 0.24 +- 0.07 after 20, 0.17 +- 0.04
after 50, 0.63 +- 0.10 after 100, 1.12 +- 0.16 after 150; Adam needs a median 110 updates to reach
the rule's loss after 50.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metawm.envs.rollout import Collector  # noqa: E402
from metawm.meta.base import Context, fresh_agent, meta_params  # noqa: E402
from metawm.ops.learned_optimizer import init_state, learned_step  # noqa: E402
from metawm.run.adapt import t_interval  # noqa: E402


def load_rule(checkpoint: str, task: str, extra: list[str]):
    """The checkpoint's LearnedRule, set up on ``task`` as ``metawm.adapt`` would."""
    from metawm.adapt import load_learner
    from metawm.infra import config as configlib

    meta, built, payload = load_learner(configlib.compose("adapt", [f"checkpoint={checkpoint}", f"+task={task}",
                                                                    "split=test", "shots=1", *extra]))
    if payload["header"].get("meta") != "learned_rule" or meta.rule_name != "learned_optimizer":
        raise SystemExit(f"{checkpoint} was not trained with meta=learned_rule meta.rule=learned_optimizer")
    return meta, meta.ctx, built


def collect(ctx: Context, spec, seed: int, steps: int):
    """A fresh agent whose replay holds ``steps`` transitions of ``spec`` from its untrained policy."""
    agent = fresh_agent(ctx.make_agent, ctx.tasks.env_spec, None, seed)
    collector = Collector([ctx.tasks.make_env(spec)], ctx.tasks.env_spec, [seed])
    n = 0
    while n < steps:
        n += collector.step(agent, explore=True)[0]
    return agent


def curves(rule_learner, agent, val_agent, updates: int, every: int, seed: int, val_batches: int):
    part, base_lr = rule_learner.part, rule_learner.base_lr
    theta0 = {k: v.detach().clone() for k, v in meta_params(agent, part).items()}
    vgen = torch.Generator().manual_seed(seed + 1)
    vals = [val_agent.sample_batch(vgen) for _ in range(val_batches)]

    def val_loss(theta) -> float:
        with torch.no_grad():
            return float(np.mean([float(agent.loss(theta, b)[0]) for b in vals]))

    out = {}
    # Adam (torch's implementation): the hand-designed rule
    leaves = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
    opt = torch.optim.Adam(leaves.values(), lr=base_lr)
    gen = torch.Generator().manual_seed(seed)
    curve = [val_loss(leaves)]
    for i in range(1, updates + 1):
        loss = agent.loss(leaves, agent.sample_batch(gen))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % every == 0:
            curve.append(val_loss(leaves))
    out["adam"] = curve
    # the learned rule, on the same batches
    theta, state = {k: v.clone() for k, v in theta0.items()}, init_state(theta0)
    gen = torch.Generator().manual_seed(seed)
    curve = [val_loss(theta)]
    for i in range(1, updates + 1):
        t = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        loss = agent.loss(t, agent.sample_batch(gen))[0]
        g = dict(zip(t, torch.autograd.grad(loss, list(t.values()))))
        with torch.no_grad():
            theta, state = learned_step(rule_learner.rule, {k: v.detach() for k, v in t.items()}, g, state,
                                        loss.detach(), base_lr)
        if i % every == 0:
            curve.append(val_loss(theta))
    out["learned"] = curve
    return out


def updates_to_reach(curve: list[float], target: float, every: int) -> float:
    for j, v in enumerate(curve):
        if v <= target:
            return j * every
    return math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs="+", required=True, help="meta=learned_rule run directories or checkpoints")
    ap.add_argument("--task", required=True, help="the suite (its --split tasks are held out)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--env-steps", type=int, default=300, help="transitions per task (point_nav: 3 episodes)")
    ap.add_argument("--updates", type=int, default=150, help="300 env steps x 0.5 updates per step")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--out", default=None, help="write results.json here")
    ap.add_argument("overrides", nargs="*", help="adapt-style overrides, e.g. task.max_episode_steps=200")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.run:
        learner, ctx, built = load_rule(run, args.task, args.overrides)
        specs = ctx.tasks.sample(args.split, args.tasks, np.random.default_rng(12345))
        for i, spec in enumerate(specs):
            seed = 1000 + i
            agent = collect(ctx, spec, seed, args.env_steps)
            val = collect(ctx, spec, seed + 500, args.env_steps)
            c = curves(learner, agent, val, args.updates, args.every, seed, args.val_batches)
            rows.append({"run": run, "task": spec.id, **c})
            print(f"{run} task {i}: val loss after {args.updates} updates: adam {c['adam'][-1]:.4f} "
                  f"learned {c['learned'][-1]:.4f}", flush=True)
    xs = list(range(0, args.updates + 1, args.every))
    print(f"\nheld-out validation loss ({args.split} split, {len(rows)} (run, task) pairs; mean ± 95% CI)")
    print("| updates | Adam | learned rule | learned / Adam (per pair, mean) | Adam updates to match |")
    print("|---|---|---|---|---|")
    table = []
    for j, x in enumerate(xs):
        a = [r["adam"][j] for r in rows]
        lrn = [r["learned"][j] for r in rows]
        ratio = [l / max(b, 1e-12) for l, b in zip(lrn, a)]
        reach = [updates_to_reach(r["adam"], r["learned"][j], args.every) for r in rows]
        finite = [v for v in reach if v != math.inf]
        ma, _, ha = t_interval(a)
        ml, _, hl = t_interval(lrn)
        mr, _, hr = t_interval(ratio)
        reach_s = (f"{np.median(finite):.0f} (median; {len(rows) - len(finite)} never)" if finite else "never")
        table.append({"updates": x, "adam": ma, "learned": ml, "ratio": mr, "adam_updates_to_match": reach})
        if x in (0, 10, 20, 50, 100, 150) or x == xs[-1]:
            print(f"| {x} | {ma:.4f} ± {ha:.4f} | {ml:.4f} ± {hl:.4f} | {mr:.3f} ± {hr:.3f} | {reach_s} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
