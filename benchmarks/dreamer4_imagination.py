"""Imagination training beats its behaviour-cloning start: Dreamer 4's phase 3, several seeds.

For each seed this runs (or resumes; finished phases are skipped) the whole pipeline of
``python -m metawm.dreamer4``: record episodes of a random agent, pretrain the world model,
finetune the BC/reward/continuation heads, then train the policy by PMPO in imagination. The
imagine phase evaluates the policy in the real environment at its start (the behaviour-cloning
policy, i.e. the "WM+BC" agent of the paper's Fig. 4) and every ``eval.every`` updates. The
summary compares the start with the end (and with the mean of the last three evaluations, which
is less noisy), per seed and on average, and plots eval return against imagination updates.

    python benchmarks/dreamer4_imagination.py --seeds 0 1 2 --root /tmp/d4ev \\
        --out benchmarks/results/dreamer4_imagination -- +task=point_nav pixels=16 agent.size=small
    # phase lengths: --record-steps, --tokenizer-steps, --dynamics-steps, --finetune-steps, --imagine-steps
    # --imagine-args: overrides of the imagine phase only (discount, learning rates, value warm-up)

Everything after ``--`` is passed to every command (task, pixels, model size, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_pipeline(seed: int, run_dir: Path, extra: list[str], a: argparse.Namespace) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = [*extra, f"seed={seed}", f"run_dir={run_dir}", "progress=false"]
    steps = {
        "record": [f"record.steps={a.record_steps}", f"record.envs={a.record_envs}"],
        "pretrain": [f"pretrain.tokenizer_steps={a.tokenizer_steps}", f"pretrain.dynamics_steps={a.dynamics_steps}",
                     "log_every=100", "checkpoint_every=500"],
        "finetune": [f"finetune.steps={a.finetune_steps}", f"eval.every={a.finetune_steps}",
                     f"eval.episodes={a.eval_episodes}", "log_every=100", "checkpoint_every=500"],
        "imagine": [f"imagine.steps={a.imagine_steps}", f"eval.every={a.eval_every}",
                    f"eval.episodes={a.eval_episodes}", "log_every=10", "checkpoint_every=50", *a.imagine_args],
    }
    for cmd, args in steps.items():
        res = subprocess.run([sys.executable, "-m", "metawm.dreamer4", cmd, *common, *args], cwd=ROOT, env=env)
        if res.returncode != 0:
            raise SystemExit(f"{cmd} failed for seed {seed} (exit {res.returncode})")


def summarize(seed: int, run_dir: Path) -> dict | None:
    rows = [r for r in read_jsonl(run_dir / "imagine" / "metrics.jsonl") if "eval/return" in r]
    if not rows:
        return None
    curve = [(r["step"], r["eval/return"]) for r in rows]
    last3 = [v for _, v in curve[-3:]]
    return {"seed": seed, "bc_start": curve[0][1], "end": curve[-1][1], "last3_mean": sum(last3) / len(last3),
            "best": max(v for _, v in curve), "curve": curve,
            "complete": (run_dir / "imagine" / "summary.json").exists()}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default="runs/dreamer4_imagination")
    ap.add_argument("--out", default="benchmarks/results/dreamer4_imagination")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--record-steps", type=int, default=20000)
    ap.add_argument("--record-envs", type=int, default=4)
    ap.add_argument("--tokenizer-steps", type=int, default=1500)
    ap.add_argument("--dynamics-steps", type=int, default=3000)
    ap.add_argument("--finetune-steps", type=int, default=1500)
    ap.add_argument("--imagine-steps", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--imagine-args", nargs="*", default=[],
                    help="overrides for the imagine phase only, e.g. agent.overrides.gamma=0.95")
    a = ap.parse_args(argv)
    root = Path(a.root)
    results = []
    for seed in a.seeds:
        run_dir = root / f"s{seed}"
        if not a.summarize_only:
            run_pipeline(seed, run_dir, extra, a)
        s = summarize(seed, run_dir)
        if s:
            results.append(s)
            print(f"seed {seed}: BC start {s['bc_start']:.2f} -> end {s['end']:.2f} "
                  f"(last-3 mean {s['last3_mean']:.2f}, best {s['best']:.2f})", flush=True)
    if not results:
        raise SystemExit("no imagine results yet")
    n = len(results)
    summary = {"args": extra, "imagine_args": a.imagine_args, "seeds": [r["seed"] for r in results],
               "bc_start_mean": sum(r["bc_start"] for r in results) / n,
               "end_mean": sum(r["end"] for r in results) / n,
               "last3_mean_mean": sum(r["last3_mean"] for r in results) / n,
               "improved_seeds": sum(r["last3_mean"] > r["bc_start"] for r in results), "runs": results}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in results:
        ax.plot([s for s, _ in r["curve"]], [v for _, v in r["curve"]], marker="o", ms=3, label=f"seed {r['seed']}")
    ax.set_xlabel("imagination updates (0 = behaviour-cloning start)")
    ax.set_ylabel("real-env eval return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(" ".join(extra)[:80], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
