"""Check that the local SLURM cluster works for metawm's sweeps: job arrays and requeue.

Run against a running cluster (slurm/start_local.sh), with the project's Python:

    .venv/bin/python slurm/selftest.py [--profile slurm/local.yaml] [--keep]

It uses submitit's AutoExecutor with the settings of the cluster profile to
  (a) run a 4-task job array (executor.map_array) and check results and task ids;
  (b) run a submitit.helpers.Checkpointable counter, simulate a preemption mid-way with
      job._interrupt(), and check that SLURM requeued the job and that it resumed from its
      checkpointed count rather than from zero.
Prints timings; exits 1 on failure. Job folders are kept on failure (or with --keep).

Notes on submitit against this cluster:
  * There is no accounting (slurmdbd), so `sacct` fails: submitit logs "Bypassing sacct
    error" on each poll (silenced here unless --verbose) and job.state is "UNKNOWN".
    Completion is detected by the result file, so a job killed without writing one would
    make job.result() wait forever: always wait with a deadline, as done here.
  * Jobs get the submitting environment (SLURM_CONF included) and run sys.executable.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Functions run inside SLURM jobs (pickled by value with cloudpickle, since this is __main__).


def array_task(x: int) -> dict:
    """Tiny array task: returns x**2 plus where and when it ran."""
    start = time.time()
    time.sleep(1.0)  # long enough to see whether tasks overlap
    return {
        "x": x,
        "y": x * x,
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "host": socket.gethostname(),
        "start": start,
        "end": time.time(),
    }


class Counter(submitit.helpers.Checkpointable):
    """Counts to `target`, one step every `step_s` seconds.

    On preemption submitit calls checkpoint() (inherited: it pickles `self`, count included)
    and requeues the job; the requeued job unpickles it and calls it again, so `count`
    continues from where it was. Each start is appended to `log_path` for the driver.
    """

    def __init__(self, target: int, step_s: float, log_path: str) -> None:
        self.target = target
        self.step_s = step_s
        self.log_path = log_path
        self.count = 0
        self.starts: list[dict] = []

    def __call__(self) -> dict:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self.starts.append({"count": self.count, "restart_count": restarts, "t": time.time()})
        with open(self.log_path, "a") as f:
            f.write(f"start count={self.count} restarts={restarts} t={time.time():.3f}\n")
        while self.count < self.target:
            time.sleep(self.step_s)
            self.count += 1
            with open(self.log_path, "a") as f:
                f.write(f"count={self.count}\n")
        return {"count": self.count, "starts": self.starts, "job_id": os.environ.get("SLURM_JOB_ID")}


# ---------------------------------------------------------------------------------------------
# Driver.


class SelftestError(RuntimeError):
    pass


def load_profile(path: Path) -> dict:
    with open(path) as f:
        profile = yaml.safe_load(f)
    required = ["partition", "account", "time_min", "gpus_per_task", "cpus_per_task", "mem_gb",
                "array_parallelism", "setup"]
    missing = [k for k in required if k not in profile]
    if missing:
        raise SelftestError(f"profile {path} lacks keys {missing}")
    return profile


def make_executor(folder: Path, profile: dict) -> submitit.AutoExecutor:
    """The mapping from a metawm cluster profile to submitit parameters."""
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(
        slurm_partition=profile["partition"],
        timeout_min=profile["time_min"],
        nodes=1,
        tasks_per_node=1,  # explicit task count: --gpus-per-task needs one on some SLURM versions
        cpus_per_task=profile["cpus_per_task"],
        mem_gb=profile["mem_gb"],
        slurm_array_parallelism=profile["array_parallelism"],
        slurm_setup=list(profile["setup"] or []),
    )
    if profile["account"]:
        params["slurm_account"] = profile["account"]
    if profile["gpus_per_task"]:
        params["slurm_gpus_per_task"] = profile["gpus_per_task"]
    executor.update_parameters(**params)
    return executor


def wait_done(jobs: list, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            raise SelftestError(f"{what}: not done after {timeout_s:.0f}s\n" + squeue())
        time.sleep(0.2)


def squeue() -> str:
    out = subprocess.run(["squeue", "-o", "%i %j %T %r %M"], capture_output=True, text=True)
    return "squeue:\n" + out.stdout + out.stderr


def job_logs(job) -> str:
    return f"--- stdout of {job.job_id}:\n{job.stdout()}\n--- stderr of {job.job_id}:\n{job.stderr()}"


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def test_array(folder: Path, profile: dict, timeout_s: float) -> dict:
    executor = make_executor(folder / "array", profile)
    executor.update_parameters(name="metawm-selftest-array")
    inputs = [0, 1, 2, 3]
    t0 = time.monotonic()
    jobs = executor.map_array(array_task, inputs)
    t_submitted = time.monotonic()
    wait_done(jobs, timeout_s, "job array")
    try:
        results = [job.result() for job in jobs]
    except Exception as e:
        raise SelftestError(f"array task failed: {e}\n" + "\n".join(job_logs(j) for j in jobs)) from e
    t1 = time.monotonic()

    if [r["y"] for r in results] != [x * x for x in inputs]:
        raise SelftestError(f"wrong array results: {results}")
    array_ids = {r["array_job_id"] for r in results}
    task_ids = sorted(int(r["array_task_id"]) for r in results)
    if len(array_ids) != 1 or task_ids != list(range(len(inputs))):
        raise SelftestError(f"not one array with tasks 0..3: job ids {array_ids}, task ids {task_ids}")
    overlap = max_overlap([(r["start"], r["end"]) for r in results])
    return {
        "array_job_id": array_ids.pop(),
        "submit_s": t_submitted - t0,
        "round_trip_s": t1 - t0,
        "max_concurrent": overlap,
    }


def test_requeue(folder: Path, profile: dict, timeout_s: float) -> dict:
    executor = make_executor(folder / "requeue", profile)
    executor.update_parameters(name="metawm-selftest-requeue")
    log_path = folder / "counter.log"
    target, step_s, interrupt_at = 30, 0.2, 8
    t0 = time.monotonic()
    job = executor.submit(Counter(target, step_s, str(log_path)))

    def counts() -> list[int]:
        text = log_path.read_text() if log_path.exists() else ""
        return [int(c) for c in re.findall(r"^count=(\d+)$", text, re.M)]

    deadline = time.monotonic() + timeout_s
    while not log_path.exists():
        if job.done() or time.monotonic() > deadline:
            raise SelftestError("counter job did not start\n" + squeue() + job_logs(job))
        time.sleep(0.05)
    t_started = time.monotonic()
    while not counts() or counts()[-1] < interrupt_at:
        if job.done() or time.monotonic() > deadline:
            raise SelftestError("counter job did not reach the interrupt point\n" + squeue() + job_logs(job))
        time.sleep(0.05)
    count_at_interrupt = counts()[-1]
    job._interrupt()  # SIGTERM then USR2, as SLURM does on preemption
    t_interrupt = time.monotonic()

    # Wait for the second start line (the requeued job running again).
    while log_path.read_text().count("start ") < 2:
        if job.done() or time.monotonic() > deadline:
            raise SelftestError("counter job was not restarted after the interrupt\n" + squeue() + job_logs(job))
        time.sleep(0.1)
    t_resumed = time.monotonic()
    wait_done([job], max(deadline - time.monotonic(), 1), "requeued counter job")
    try:
        result = job.result()
    except Exception as e:
        raise SelftestError(f"counter job failed: {e}\n" + job_logs(job)) from e
    t_done = time.monotonic()

    starts = result["starts"]
    if result["count"] != target:
        raise SelftestError(f"counter ended at {result['count']}, expected {target}")
    if len(starts) != 2:
        raise SelftestError(f"expected exactly 2 starts (original + 1 requeue), got {starts}")
    if starts[0]["count"] != 0 or starts[1]["count"] == 0:
        raise SelftestError(f"requeued job did not resume from its checkpoint: starts {starts}")
    if starts[1]["restart_count"] < 1:
        raise SelftestError(f"SLURM_RESTART_COUNT not incremented: starts {starts}")

    # The controller should also know the job was requeued (visible for MinJobAge seconds).
    show = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True).stdout
    m = re.search(r"Restarts=(\d+)", show)
    return {
        "job_id": job.job_id,
        "count_at_interrupt": count_at_interrupt,
        "resumed_from": starts[1]["count"],
        "scontrol_restarts": m.group(1) if m else "n/a",
        "submit_to_started_s": t_started - t0,
        "interrupt_to_resumed_s": t_resumed - t_interrupt,
        "interrupt_to_result_s": t_done - t_interrupt,
        "total_s": t_done - t0,
    }


def check_cluster(profile: dict) -> None:
    if "SLURM_CONF" not in os.environ:
        conf = Path(os.environ.get("METAWM_SLURM_DIR", REPO_ROOT / ".slurm")) / "slurm.conf"
        if conf.exists():
            os.environ["SLURM_CONF"] = str(conf)
    if shutil.which("sinfo") is None:
        raise SelftestError("sinfo not found: run slurm/start_local.sh first")
    out = subprocess.run(["sinfo", "-h", "-p", profile["partition"], "-o", "%a %T %D"],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise SelftestError(f"partition {profile['partition']!r} not available (is the cluster up? "
                            f"SLURM_CONF={os.environ.get('SLURM_CONF')}): {out.stderr.strip()}")
    print(f"cluster: SLURM_CONF={os.environ.get('SLURM_CONF')}, partition {profile['partition']}: "
          f"{out.stdout.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", type=Path, default=REPO_ROOT / "slurm" / "local.yaml")
    parser.add_argument("--folder", type=Path, help="job folder (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds allowed per test")
    parser.add_argument("--keep", action="store_true", help="keep the job folder")
    parser.add_argument("--verbose", action="store_true", help="show submitit's log messages")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.verbose:  # hide the per-poll "Bypassing sacct error" warnings
        logging.getLogger("submitit").setLevel(logging.ERROR)

    try:
        profile = load_profile(args.profile)
        check_cluster(profile)
    except SelftestError as e:
        print(f"SELFTEST FAILED: {e}", file=sys.stderr)
        return 1

    folder = args.folder or Path(tempfile.mkdtemp(prefix="metawm-slurm-selftest-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"job folder: {folder}")
    ok = False
    try:

        a = test_array(folder, profile, args.timeout)
        print(f"(a) job array {a['array_job_id']}: 4 tasks OK, submit {a['submit_s']:.2f}s, "
              f"round trip {a['round_trip_s']:.2f}s, up to {a['max_concurrent']} tasks at once")

        r = test_requeue(folder, profile, args.timeout)
        print(f"(b) checkpoint/requeue job {r['job_id']}: interrupted at count {r['count_at_interrupt']}, "
              f"resumed from {r['resumed_from']} (scontrol Restarts={r['scontrol_restarts']}); "
              f"submit->started {r['submit_to_started_s']:.2f}s, "
              f"interrupt->resumed {r['interrupt_to_resumed_s']:.2f}s, "
              f"interrupt->result {r['interrupt_to_result_s']:.2f}s, total {r['total_s']:.2f}s")
        ok = True
    except SelftestError as e:
        print(f"SELFTEST FAILED: {e}", file=sys.stderr)
    finally:
        if ok and not args.keep and args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"job folder kept: {folder}")
    print("SELFTEST PASSED" if ok else "SELFTEST FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
