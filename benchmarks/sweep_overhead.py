"""How much a sweep costs beyond its trials' training: trials per second and per-trial dispatch
overhead with a trivial objective, on the local launcher and (if reachable) on the local SLURM.

The objective is a real metawm.train run of agent=random with a budget of a few env steps (one
outer step, one evaluation episode), so nearly all of a trial's time is the sweep's and the train
entry point's own machinery. For each trial the study records when it started and completed and
summary.json how long the train loop ran, which splits a trial's cost into:

* train loop: the loop itself (tiny here by construction),
* in-trial overhead: composing the trial's config, building task suite and agent, opening the run
  directory, W&B/JSONL sinks, plots, summary (everything of ``metawm.train.run`` but the loop),
* dispatch: from one trial's tell to the worker's next trial start (lock, reaping dead workers,
  budget count, ask, heartbeat, state file).

Usage:  python benchmarks/sweep_overhead.py [--trials 16] [--workers 1 2] [--slurm auto|yes|no]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRIVIAL = ["+task=cartpole_physics", "agent=random", "+exp=smoke", "tracker=disabled", "progress=false",
           "steps=10", "eval.every=10", "eval.tasks=1", "eval.episodes=1", "eval.splits=[test]",
           "checkpoint_every=10", "meta.population=1", "meta.inner_steps=10", "pruner=none"]
SPACE = "params:\n  seed: {type: int, low: 0, high: 1000000}\n"


def run(launcher: list[str], trials: int, workers: int, tmp: Path, label: str) -> dict:
    from metawm.infra import study as studylib
    import optuna

    d = tmp / label
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    t0, started = time.perf_counter(), time.time()
    r = subprocess.run([sys.executable, "-m", "metawm.sweep", *TRIVIAL, *launcher, f"sweep={space}",
                        f"n_trials={trials}", f"workers={workers}", f"sweep_dir={d}"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "WANDB_SILENT": "true"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{label}: sweep failed ({r.returncode}):\n{r.stderr[-3000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = studylib.open_storage(str(d / "study.journal"))
    (name,) = optuna.get_all_study_names(storage)
    ts = [t for t in optuna.load_study(study_name=name, storage=storage).trials if t.state.name == "COMPLETE"]
    loop, inside, gaps = [], [], []
    by_worker: dict[str, list] = {}
    for t in ts:
        s = json.loads((d / "trials" / f"{t.number:04d}" / "summary.json").read_text())
        dur = (t.datetime_complete - t.datetime_start).total_seconds()
        loop.append(s["wall_time_s"])
        inside.append(dur - s["wall_time_s"])
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    for wts in by_worker.values():
        wts.sort(key=lambda t: t.datetime_start)
        gaps += [(b.datetime_start - a.datetime_complete).total_seconds() for a, b in zip(wts, wts[1:])]
    first = min(t.datetime_start for t in ts)
    last = max(t.datetime_complete for t in ts)
    span = (last - first).total_seconds()
    return {"label": label, "trials": len(ts), "workers": workers, "command_wall_s": wall,
            "steady_trials_per_s": len(ts) / span if span > 0 else float("nan"),
            "command_trials_per_s": len(ts) / wall,
            "startup_s": first.timestamp() - started,
            "train_loop_s": statistics.mean(loop), "in_trial_overhead_s": statistics.mean(inside),
            "dispatch_s": statistics.mean(gaps) if gaps else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--slurm", choices=["auto", "yes", "no"], default="auto")
    args = ap.parse_args()
    from metawm.infra.launch import slurm_reachable

    why = slurm_reachable()
    if args.slurm == "yes" and why:
        raise SystemExit(f"--slurm yes but no SLURM is reachable: {why}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        for w in args.workers:
            rows.append(run(["launcher=local"], args.trials, w, Path(tmp), f"local-w{w}"))
        if args.slurm != "no" and not why:
            for w in args.workers:
                rows.append(run(["launcher=slurm", "cluster=local", "launcher.poll_s=1"], args.trials, w,
                                Path(tmp), f"slurm-w{w}"))
        elif args.slurm != "no":
            print(f"(SLURM skipped: {why})")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; {args.trials} trials each\n")
    print(f"{'launcher':10} {'W':>2} {'trials/s':>9} {'(command)':>10} {'start-up s':>10} {'loop s':>7} "
          f"{'in-trial s':>10} {'dispatch s':>10}")
    for r in rows:
        print(f"{r['label'].split('-')[0]:10} {r['workers']:>2} {r['steady_trials_per_s']:>9.2f} "
              f"{r['command_trials_per_s']:>10.2f} {r['startup_s']:>10.1f} {r['train_loop_s']:>7.3f} "
              f"{r['in_trial_overhead_s']:>10.3f} {r['dispatch_s']:>10.3f}")
    print("\ntrials/s: completed trials / (last completion - first start); (command): / whole command wall time;"
          "\nstart-up: command start to first trial start (imports, compose, worker or array job start);"
          "\nin-trial: a trial's time minus its train loop; dispatch: one trial's tell to the next trial's start.")


if __name__ == "__main__":
    main()
