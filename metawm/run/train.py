"""The (meta-)training loop: outer steps until the env-step budget is spent.

It takes built objects (a meta-learner, its context, a run directory, tracker sinks) and owns
only the schedule: evaluation, logging, checkpoints and resume. A resumed run restores the
meta-learner (agents, replay, environments mid-episode), the loop counters, the global RNG state
and the byte offset of ``metrics.jsonl``, so it continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

from metawm.infra import checkpoint
from metawm.infra.errors import UserError
from metawm.infra.rundir import RunDir
from metawm.infra.seeding import global_rng_state, set_global_rng_state
from metawm.meta.base import Context
from metawm.protocols import MetaLearner, Tracker
from metawm.types import Metrics


@dataclasses.dataclass
class Schedule:
    steps: int                      # env-step budget over the whole run
    eval_every: int = 5000
    eval_tasks: int = 5             # tasks per split, fixed for the run
    eval_episodes: int = 5
    eval_splits: Sequence[str] = ("train", "test")
    checkpoint_every: int = 5000
    objective: str = "eval/test/return"
    keep_replay: bool = True


class TrainingDiverged(Exception):
    """A loss or metric became NaN/inf: the run is marked failed, with the offending keys."""


class StopTraining(Exception):
    """Raised by a callback (e.g. a sweep's pruner) to end the run early with ``status``."""

    def __init__(self, status: str, message: str = ""):
        super().__init__(message or status)
        self.status = status


Callback = Callable[[int, Metrics], None]
TrackerFactory = Callable[[int, int | None], Tracker]  # (start step, jsonl offset) -> tracker


def _check_finite(metrics: Metrics) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)
           and ("loss" in k or k.startswith(("wm/", "actor/", "critic/", "model/")))]
    if bad:
        raise TrainingDiverged(f"non-finite values in {', '.join(sorted(bad)[:6])}")


def train(meta: MetaLearner, ctx: Context, run: RunDir, schedule: Schedule, header: Mapping[str, Any],
          make_tracker: TrackerFactory, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run (or resume) meta-training in ``run``; returns the summary also written to summary.json."""
    meta.setup(ctx)
    loop = {"iteration": 0, "env_steps": 0, "last_eval": 0, "last_ckpt": 0, "best": None,
            "jsonl_offset": None, "wall_time": 0.0, "last_eval_row": {}}
    if run.latest.exists():
        ck = checkpoint.load(run.latest, expect={k: header.get(k) for k in ("agent", "meta", "task")})
        meta.load_state_dict(ck["state"]["meta"])
        loop.update(ck["state"]["loop"])
        set_global_rng_state(ck["state"]["rng"])
    tracker = make_tracker(loop["env_steps"], loop["jsonl_offset"])
    eval_specs = {split: ctx.tasks.sample(split, schedule.eval_tasks, ctx.seeds.numpy("eval_tasks", split))
                  for split in schedule.eval_splits}
    t_start = time.perf_counter() - loop["wall_time"]
    status, error = "complete", None

    def save(path) -> None:
        loop["wall_time"] = time.perf_counter() - t_start
        loop["jsonl_offset"] = _jsonl_offset(tracker)
        state = {"meta": meta.state_dict(replay=schedule.keep_replay),
                 "loop": dict(loop), "rng": global_rng_state()}
        checkpoint.save(path, {**header, "env_steps": loop["env_steps"]}, state)

    try:
        while loop["env_steps"] < schedule.steps:
            t0 = time.perf_counter()
            row = dict(meta.outer_step(loop["iteration"]))
            loop["iteration"] += 1
            taken = int(row.pop("env_steps", 0))
            if taken <= 0:
                raise RuntimeError(f"{meta.name}.outer_step took no env steps; the run would never end")
            loop["env_steps"] += taken
            _check_finite(row)
            row["outer/iteration"] = float(loop["iteration"])
            row["time/outer_step_s"] = time.perf_counter() - t0
            row["time/env_steps_per_s"] = taken / max(row["time/outer_step_s"], 1e-9)
            done = loop["env_steps"] >= schedule.steps
            evaluated = loop["env_steps"] - loop["last_eval"] >= schedule.eval_every or done
            if evaluated:
                row.update(_evaluate(meta, eval_specs, schedule, ctx))
                write_plots = getattr(meta.agent(), "write_plots", None)
                if write_plots is not None:  # optional agent hook, e.g. world-model reconstructions
                    write_plots(run.plots, loop["env_steps"])
                loop["last_eval"] = loop["env_steps"]
                loop["last_eval_row"] = {k: v for k, v in row.items() if k.startswith("eval/")}
            tracker.log(row, loop["env_steps"])
            _maybe_crash(loop["env_steps"])
            improved = False
            value = row.get(schedule.objective)
            if value is not None and math.isfinite(value) and (loop["best"] is None or value > loop["best"]):
                loop["best"], improved = float(value), True
            if loop["env_steps"] - loop["last_ckpt"] >= schedule.checkpoint_every or done:
                save(run.latest)
                loop["last_ckpt"] = loop["env_steps"]
            if improved:
                save(run.best)
            if evaluated:
                for cb in callbacks:
                    cb(loop["env_steps"], row)
    except TrainingDiverged as e:
        status, error = "diverged", str(e)
    except StopTraining as e:
        status, error = e.status, str(e)
    except Exception as e:  # a bug or a broken environment: the run is not complete
        status, error = "failed", f"{type(e).__name__}: {e}"
        raise
    except BaseException as e:  # Ctrl-C, SystemExit from a preemption handler: resumable
        status, error = "interrupted", f"{type(e).__name__}: {e}"
        raise
    finally:
        loop["wall_time"] = time.perf_counter() - t_start
        summary = _summary(loop, schedule, header, status, error)
        info = getattr(meta.agent(), "info", None)  # optional agent hook: preset, parameter count
        if info is not None:
            summary["agent_info"] = dict(info())
        run.write_summary(summary)
        tracker.summary(summary)
        tracker.close()
    return summary


def _maybe_crash(env_steps: int) -> None:
    """Fault injection for tests: ``METAWM_CRASH_AFTER_STEPS=N`` kills the process (no cleanup,
    like SIGKILL) right after logging the first outer step at or past N env steps and before its
    checkpoint, so metrics.jsonl then holds lines that a resume must drop."""
    limit = os.environ.get("METAWM_CRASH_AFTER_STEPS")
    if limit and env_steps >= int(limit):
        os._exit(137)
    # ``METAWM_SLOW_OUTER_STEP_S=S`` sleeps S seconds per outer step: the SLURM tests must catch a
    # trial mid-run (preempt it, cancel it) however fast the machine runs a tiny config.
    slow = os.environ.get("METAWM_SLOW_OUTER_STEP_S")
    if slow:
        time.sleep(float(slow))


def _jsonl_offset(tracker: Any) -> int | None:
    for sink in getattr(tracker, "sinks", [tracker]):
        if hasattr(sink, "offset"):
            return sink.offset
    return None


def _evaluate(meta: MetaLearner, specs: Mapping[str, list], schedule: Schedule, ctx: Context) -> Metrics:
    out: Metrics = {}
    for split, split_specs in specs.items():
        out.update(meta.evaluate(split_specs, schedule.eval_episodes, ctx.seeds.seed("eval", split),
                                 prefix=f"eval/{split}"))
    return out


def _summary(loop: Mapping[str, Any], schedule: Schedule, header: Mapping[str, Any], status: str,
             error: str | None) -> dict[str, Any]:
    final = dict(loop["last_eval_row"])
    objective = final.get(schedule.objective)
    return {"status": status, "error": error, "objective": objective, "objective_metric": schedule.objective,
            "best_objective": loop["best"], "env_steps": loop["env_steps"], "iterations": loop["iteration"],
            "wall_time_s": round(loop["wall_time"], 3), "final": final,
            **{k: header.get(k) for k in ("task", "agent", "meta", "seed", "size", "params")}}
