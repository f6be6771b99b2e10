"""MuZero on CartPole-v1: mean greedy evaluation return vs environment steps and wall time.

    python benchmarks/muzero_cartpole.py --seeds 0 1 2 [--steps 20000] [--out runs/bench/muzero_cartpole] [key=value ...]

Each seed is an ordinary ``metawm.train`` run of ``agent=muzero`` on the ``cartpole_physics``
suite's default task (pole length 0.5 = CartPole-v1, population 1), evaluated every
``--eval-every`` env steps on 10 greedy episodes; extra ``key=value`` arguments are passed to
Hydra as overrides (e.g. ``agent.num_simulations=25``). Seeds run one after another in this
process. The script prints, per evaluation, env steps, wall time, process CPU time (the machine
is shared, so wall time depends on what else runs) and mean return; per seed the
first env step count at which the mean return reached the target (450); and writes
``curves.png`` (return vs env steps and vs wall time, all seeds) and ``results.json`` under
``--out``. The target of the issue: mean return >= 450 over 10 episodes within 20k env steps on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULTS = [
    "+task=cartpole_physics", "agent=muzero", "task.default_only=true", "meta.population=1",
    "meta.envs_per_task=8", "meta.inner_steps=1000", "eval.splits=[train]", "eval.tasks=1", "eval.episodes=10",
    "objective=eval/train/return", "tracker=disabled", "progress=false",
]


def run_seed(seed: int, steps: int, eval_every: int, out: Path, overrides: list[str]) -> dict:
    from metawm.infra import config as configlib
    from metawm.train import run

    run_dir = out / f"seed{seed}"
    cfg = configlib.compose("train", DEFAULTS + [f"seed={seed}", f"steps={steps}", f"eval.every={eval_every}",
                                                 f"checkpoint_every={steps}", f"run_dir={run_dir}"] + overrides)
    points = []
    t0, c0 = time.perf_counter(), time.process_time()

    def on_eval(env_steps: int, row: dict) -> None:
        ret = row.get("eval/train/return")
        points.append({"env_steps": env_steps, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                       "return": ret, "train_return": row.get("train/return")})
        print(f"seed {seed}  env steps {env_steps:6d}  wall {points[-1]['wall_s']:7.0f} s  "
              f"cpu {points[-1]['cpu_s']:7.0f} s  eval return {ret:6.1f}  "
              f"(train episodes {row.get('train/return', float('nan')):6.1f})", flush=True)

    summary, _ = run(cfg, callbacks=[on_eval])
    return {"seed": seed, "points": points, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "status": summary["status"],
            "final_return": summary.get("objective"), "best_return": summary.get("best_objective")}


def plot(results: list[dict], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for res in results:
        ys = [p["return"] for p in res["points"]]
        for ax, key, scale in zip(axes, ("env_steps", "wall_s", "cpu_s"), (1, 60, 60)):
            ax.plot([p.get(key, float("nan")) / scale for p in res["points"]], ys, marker="o", ms=3,
                    label=f"seed {res['seed']}")
    for ax, label in zip(axes, ("env steps", "wall time (min; 2 CPU cores, shared machine)",
                                "process CPU time (min)")):
        ax.axhline(target, color="k", ls="--", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("mean eval return (10 greedy episodes)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("MuZero on CartPole-v1 (metawm, agent=muzero)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--eval-every", type=int, default=2500)
    ap.add_argument("--target", type=float, default=450.0)
    ap.add_argument("--out", default="runs/bench/muzero_cartpole")
    ap.add_argument("--replot", action="store_true", help="only redraw curves.png from results.json")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. agent.num_simulations=25")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        plot(json.loads((out / "results.json").read_text())["results"], out / "curves.png", args.target)
        return
    results = []
    for seed in args.seeds:
        res = run_seed(seed, args.steps, args.eval_every, out, list(args.overrides))
        hit = next((p for p in res["points"] if p["return"] is not None and p["return"] >= args.target), None)
        res["reached_target_at"] = hit["env_steps"] if hit else None
        res["reached_target_wall_s"] = hit["wall_s"] if hit else None
        results.append(res)
        (out / "results.json").write_text(json.dumps({"overrides": args.overrides, "results": results}, indent=2))
        plot(results, out / "curves.png", args.target)
        print(f"seed {seed}: final {res['final_return']}, best {res['best_return']}, reached {args.target} at "
              f"{res['reached_target_at']} env steps ({res['reached_target_wall_s'] and round(res['reached_target_wall_s'])} s); "
              f"total {res['wall_s']:.0f} s", flush=True)
    print(f"curves: {out / 'curves.png'}; results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
