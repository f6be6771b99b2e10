"""Launching sweep workers: local processes, or one SLURM job array through submitit (the only
module that imports submitit).

A worker is ``worker_fn(sweep_dir, worker_id)``: it pulls trials from the study until the budget is
spent. Locally, each worker is its own process (``python -m metawm.sweep --worker DIR ID``), so a
crash of one does not take the others down. On SLURM the workers are the tasks of one job array
(``executor.map_array``), not batches: a task that finishes a trial asks for the next at once.
The hydra-submitit-launcher is not used because it blocks on whole batches (FACTS.md).

Preemption and time-outs: SLURM sends SIGUSR2 ``signal_delay_s`` before the end; submitit calls
:meth:`SlurmWorker.checkpoint`, which marks the worker as preempted (so the requeue does not count
as a crash of its trial) and returns the same call, and submitit requeues the array task. The
requeued task has the same ``<array job>_<index>`` id, so the worker finds its trial in
``workers/<id>.json`` and resumes it from the trial's latest checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from metawm.infra.errors import UserError

WorkerFn = Callable[[str, str], int]


# ---------------------------------------------------------------------------------------------
# Local worker processes
# ---------------------------------------------------------------------------------------------

class LocalWorkers:
    """W worker processes of ``python -m <module> --worker SWEEP_DIR local-<i>``, logs in
    ``<sweep dir>/logs/``. Each runs in its own session: Ctrl-C reaches the driver, which forwards
    SIGINT so that each worker stops cleanly (its trial resumes on the next run)."""

    def __init__(self, module: str, sweep_dir: Path, n: int, env: Mapping[str, str] | None = None):
        self.sweep_dir = Path(sweep_dir)
        logs = self.sweep_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        for i in range(n):
            wid = f"local-{i}"
            log = open(logs / f"worker-{wid}.log", "ab")
            proc = subprocess.Popen([sys.executable, "-m", module, "--worker", str(self.sweep_dir), wid],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
            log.close()
            self.procs.append((wid, proc))

    def running(self) -> int:
        return sum(p.poll() is None for _, p in self.procs)

    def failed(self) -> list[tuple[str, int]]:
        return [(w, p.returncode) for w, p in self.procs if p.poll() is not None and p.returncode != 0]

    def stop(self, timeout: float = 60.0) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------------------------
# SLURM
# ---------------------------------------------------------------------------------------------

def slurm_reachable() -> str | None:
    """None if sbatch is installed and the controller answers; else why not."""
    for tool in ("sbatch", "squeue", "sinfo", "scontrol"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 20 s"
    if r.returncode != 0:
        return f"`sinfo` failed: {(r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout).strip() else r.returncode}"
    return None


def check_profile(profile: Mapping[str, Any], name: str) -> None:
    need = ("partition", "time_min", "cpus_per_task", "mem_gb")
    missing = [k for k in need if profile.get(k) is None]
    if missing:
        raise UserError(f"Cluster profile {name!r} lacks {', '.join(missing)} (see slurm/example_gpu_cluster.yaml).")
    known = {"name", "partition", "account", "time_min", "gpus_per_task", "cpus_per_task", "mem_gb",
             "array_parallelism", "setup", "constraint", "qos", "additional"}
    unknown = set(profile) - known
    if unknown:
        raise UserError(f"Cluster profile {name!r} has unknown key(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(known))}.")


def executor_parameters(profile: Mapping[str, Any], *, name: str, workers: int, signal_delay_s: int) -> dict[str, Any]:
    """submitit's AutoExecutor parameters for one array of ``workers`` tasks from a cluster profile."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": int(profile["time_min"]),
        "slurm_partition": profile["partition"],
        "cpus_per_task": int(profile["cpus_per_task"]),
        "mem_gb": float(profile["mem_gb"]),
        "slurm_array_parallelism": int(min(workers, profile.get("array_parallelism") or workers)),
        "slurm_signal_delay_s": int(signal_delay_s),
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if profile.get("gpus_per_task"):
        params["gpus_per_node"] = int(profile["gpus_per_task"])
    if profile.get("account"):
        params["slurm_account"] = str(profile["account"])
    if profile.get("qos"):
        params["slurm_qos"] = str(profile["qos"])
    if profile.get("constraint"):
        params["slurm_constraint"] = str(profile["constraint"])
    if profile.get("setup"):
        params["slurm_setup"] = [str(s) for s in profile["setup"]]
    if profile.get("additional"):
        params["slurm_additional_parameters"] = dict(profile["additional"])
    return params


class SlurmWorker:
    """A checkpointable sweep worker (``submitit.helpers.Checkpointable`` semantics, see module doc)."""

    def __init__(self, worker_fn: WorkerFn, on_preempt: Callable[[str, str], None]):
        self.worker_fn = worker_fn
        self.on_preempt = on_preempt

    def __call__(self, sweep_dir: str, worker: str) -> int:
        return self.worker_fn(sweep_dir, worker)

    def checkpoint(self, sweep_dir: str, worker: str) -> Any:
        # Runs in the signal handler, in the middle of a trial's outer step: it cannot save the
        # trial's state consistently here, so the trial resumes from its last periodic checkpoint
        # (train's checkpoint_every); a resumed run continues the same metrics exactly.
        import submitit

        self.on_preempt(sweep_dir, worker)
        return submitit.helpers.DelayedSubmission(self, sweep_dir, worker)


def submit_array(worker_fn: WorkerFn, on_preempt: Callable[[str, str], None], sweep_dir: Path,
                 worker_ids: Sequence[str], params: Mapping[str, Any], max_num_timeout: int = 20) -> list[str]:
    """Submit one job array, one task per worker id; returns the task ids (``<array>_<i>``)."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(Path(sweep_dir) / "slurm" / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=int(max_num_timeout))
    executor.update_parameters(**params)
    jobs = executor.map_array(SlurmWorker(worker_fn, on_preempt), [str(sweep_dir)] * len(worker_ids),
                              list(worker_ids))
    return [j.job_id for j in jobs]


def active_jobs(job_ids: Sequence[str]) -> dict[str, str]:
    """{task id: state} of those of ``job_ids`` still queued or running (squeue)."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {j: "UNKNOWN" for j in job_ids}
    if r.returncode != 0:
        if "invalid job id" in r.stderr.lower():
            return {}
        return {j: "UNKNOWN" for j in job_ids}
    states = dict(line.split(None, 1) for line in r.stdout.strip().splitlines() if " " in line)
    return {j: s for j, s in states.items() if j in set(job_ids)}


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *sorted({j.split("_")[0] for j in job_ids})], capture_output=True, timeout=30)
