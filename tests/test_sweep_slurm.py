"""metawm.sweep with launcher=slurm against the real single-node SLURM of slurm/start_local.sh, as a
user runs it: a real sbatch job array, a real requeue after a simulated preemption (submitit's
``job._interrupt()``) that resumes the same trial from its checkpoint, and a cancelled sweep resumed
by re-running the command. Skipped when no SLURM is reachable (start it with
``eval "$(bash slurm/start_local.sh)"``; scripts/test.sh does)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from metawm.infra import launch
from metawm.infra import study as studylib

from test_sweep import BASE, load, sweep

_why = launch.slurm_reachable()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_why is not None, reason=f"no SLURM reachable ({_why}); start "
                                                    "it with: eval \"$(bash slurm/start_local.sh)\"")]

# Trials long enough to be caught mid-run, checkpointed every 1000 env steps. A tiny random-agent
# config runs 24000 steps in ~3 s on a quiet machine, so each outer step (~50 env steps) also sleeps
# 20 ms (the train loop's METAWM_SLOW_OUTER_STEP_S test hook): >= 10 s a trial on any machine.
LONG = ["steps=24000", "eval.every=4000", "checkpoint_every=1000"]


@pytest.fixture(autouse=True)
def _slow_trials(monkeypatch):
    monkeypatch.setenv("METAWM_SLOW_OUTER_STEP_S", "0.02")  # sbatch passes it on to the array tasks
SLURM = ["launcher=slurm", "cluster=local", "launcher.poll_s=1", "pruner=none"]


def wait_for(predicate, timeout: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def jobs_of(d: Path) -> list[str]:
    return json.loads((d / "slurm_jobs.json").read_text())["jobs"]


def checkpointed(d: Path, n: int = 1) -> list[Path]:
    found = sorted((d / "trials").glob("*/checkpoints/latest.ckpt")) if (d / "trials").exists() else []
    return found if len(found) >= n else []


def worker_logs(d: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((d / "slurm").glob("*/*_log.*")))


def test_slurm_preempted_worker_requeues_and_resumes_its_trial(tmp_path):
    import submitit

    d = tmp_path / "study"
    args = BASE + LONG + SLURM + ["sweep=smoke", "workers=1", "n_trials=1", "tracker=offline", f"sweep_dir={d}"]
    r = sweep(*[a for a in args if a != "tracker=disabled"], "launcher.wait=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "submitted job array" in r.stderr
    (job_id,) = jobs_of(d)
    wait_for(lambda: checkpointed(d), 90, "the trial's first checkpoint")
    time.sleep(1.0)
    before = json.loads((d / "heartbeats" / "0.json").read_text())
    # a preemption as SLURM delivers it: SIGTERM then the USR signal, to the running array task
    submitit.SlurmJob(folder=d / "slurm" / "%j", job_id=job_id)._interrupt()
    r = sweep(*[a for a in args if a != "tracker=disabled"])  # follow the study until the array is done
    assert r.returncode == 0, r.stderr[-3000:]
    assert "attaching to the running job array" in r.stderr
    (trial,) = load(d).trials
    assert trial.state.name == "COMPLETE"
    logs = worker_logs(d)
    # (submitit calls it "timed-out" rather than "preempted" when time_min <= 10: its guaranteed
    # wall time is then 0; either way it checkpoints and requeues)
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
    assert "resuming trial 0 (attempt 1, after preemption)" in logs
    assert "resuming " + str(d / "trials" / "0000") in logs  # from its checkpoint, not from scratch
    rows = [json.loads(x) for x in (d / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)) and steps[-1] >= 24000
    assert before["slurm_job"] == job_id  # the same array task id before and after the requeue
    # the W&B run id is stable across the requeue: every offline run dir of the trial has the same id
    ids = {p.name.rsplit("-", 1)[-1] for p in (d / "trials" / "0000" / "wandb").glob("offline-run-*")}
    assert len(ids) == 1 and len(list((d / "trials" / "0000" / "wandb").glob("offline-run-*"))) >= 2


def test_slurm_cancelled_sweep_resumes_when_the_command_is_rerun(tmp_path):
    d = tmp_path / "study"
    # longer trials: scancel's SIGTERM is ignored by submitit, so a worker runs on for KillWait (5 s)
    long = ["steps=40000", "eval.every=8000", "checkpoint_every=1000"]
    args = BASE + long + SLURM + ["sweep=smoke", "workers=2", "n_trials=3", "sampler_seed=0", f"sweep_dir={d}"]
    r = sweep(*args, "launcher.wait=false")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = jobs_of(d)
    assert len(jobs) == 2
    wait_for(lambda: checkpointed(d, 2), 90, "both workers' first checkpoints")
    launch.cancel(jobs)  # the whole sweep is killed (scancel)
    wait_for(lambda: not launch.active_jobs(jobs), 60, "the cancelled array to leave the queue")
    running = [t.number for t in load(d).trials if t.state.name == "RUNNING"]
    assert len(running) == 2
    r = sweep(*args)  # the same command again: a new array; the interrupted trials resume
    assert r.returncode == 0, r.stderr[-3000:]
    assert jobs_of(d)[0].split("_")[0] != jobs[0].split("_")[0]
    trials = load(d).trials
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials), \
        [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    logs = worker_logs(d)
    for n in running:  # taken over by the new workers: resumed from its checkpoint, or (if it
        # finished training in the kill window but was not told) reported without running again
        run_dir = str(d / "trials" / f"{n:04d}")
        assert f"resuming trial {n}" in logs
        assert "resuming " + run_dir in logs or "run already complete: " + run_dir in logs
    assert "resuming " + str(d / "trials") in logs
    assert not list((d / "heartbeats").glob("*.json"))
    assert studylib.budget_used(load(d)) == 3
