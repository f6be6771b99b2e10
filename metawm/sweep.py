"""``python -m metawm.sweep +task=NAME [agent=... meta=...] [sweep=SPACE] [launcher=local|slurm cluster=PROFILE] [n_trials=N] [workers=W]``

The composition root of a hyperparameter study: compose the sweep config (conf/sweep.yaml: every
group and key of metawm.train plus the sweep's own), validate the search space against the train
config, create or continue the Optuna study, and start workers (local processes, or one SLURM job
array through submitit) that pull trials until ``n_trials`` is spent. Each trial is an ordinary
metawm.train run in ``<sweep dir>/trials/<n>/`` that reports its objective at every evaluation (for
pruning) and its final ``objective`` from summary.json. At the end the best parameters are printed as
a ready-to-paste override line, plots are written to the sweep directory, and a W&B "study" run
records the best trial. Re-running the same command continues the study: nothing completed is
repeated, a killed worker's trial resumes from its checkpoint, and a larger n_trials runs only the
new trials. The last line printed names the sweep directory.

Examples:
  python -m metawm.sweep +task=cartpole_physics agent=random +exp=smoke sweep=smoke n_trials=8 workers=2
  python -m metawm.sweep +task=atari_suite agent=dreamerv3 launcher=slurm cluster=my_cluster n_trials=64
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf

from metawm import paths
from metawm.infra import config as configlib
from metawm.infra import launch
from metawm.infra import study as studylib
from metawm.infra.errors import UserError, choices_error, cli

SWEEP_GROUPS = ("sweep", "launcher", "cluster")
EXIT_FAILED = 3


def sweep_keys() -> set[str]:
    """Top-level keys that belong to the sweep (conf/sweep.yaml's own keys and groups); every other
    override is passed to each trial's train config."""
    raw = OmegaConf.load(paths.CONF / "sweep.yaml")
    return {str(k) for k in raw.keys() if k != "defaults"} | set(SWEEP_GROUPS)


def _root(arg: str) -> str:
    key = arg.split("=", 1)[0].lstrip("+~")
    return key.split(".", 1)[0].split("@", 1)[0]


# ---------------------------------------------------------------------------------------------
# The plan: everything a worker needs, resolved once by the sweep command (sweep.json)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    study_name: str
    sweep_dir: str
    storage: str
    space: dict[str, Any]
    train_argv: list[str]
    objectives: dict[str, str]
    objective_metric: str           # the train config's `objective` (intermediate values)
    n_trials: int
    workers: int
    sampler: str
    sampler_options: dict[str, Any]
    sampler_seed: int | None
    pruner: str
    pruner_options: dict[str, Any]
    min_resource: int
    max_resource: int
    heartbeat: dict[str, Any]
    launcher: dict[str, Any]
    cluster: dict[str, Any] | None
    cluster_name: str | None
    tracker: dict[str, Any]
    command: str

    @property
    def dir(self) -> Path:
        return Path(self.sweep_dir)

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def space_obj(self) -> studylib.Space:
        return studylib.parse_space(self.space, self.space.get("source", "search space"), self.space.get("name"))

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        studylib.write_json(self.dir / "sweep.json", dataclasses.asdict(self))

    @classmethod
    def load(cls, sweep_dir: str | Path) -> "Plan":
        data = studylib.read_json(Path(sweep_dir) / "sweep.json")
        if data is None:
            raise UserError(f"{sweep_dir} holds no sweep.json: not a sweep directory.")
        return cls(**data)

    def sampler_for(self, worker_index: int = 0, n_existing: int = 0) -> Any:
        # Distinct per worker and per (re-)start, or workers and re-runs would replay the same draws.
        seed = None if self.sampler_seed is None else \
            (int(self.sampler_seed) + 7919 * worker_index + 104729 * n_existing) % (2**31)
        return studylib.make_sampler(self.sampler, self.sampler_options, self.space_obj(), seed=seed,
                                     parallel=self.workers > 1, multi=self.multi)

    def pruner_obj(self) -> Any:
        return studylib.make_pruner(self.pruner, self.pruner_options, min_resource=self.min_resource,
                                    max_resource=self.max_resource, multi=self.multi)

    def open_study(self, worker_index: int = 0) -> Any:
        study = studylib.load_study(self.study_name, studylib.open_storage(self.storage), None, self.pruner_obj())
        study.sampler = self.sampler_for(worker_index, len(study.get_trials(deepcopy=False)))
        return study


def _load_space(argv: list[str]) -> tuple[list[str], studylib.Space | None]:
    """``sweep=path/to/space.yaml`` names a file outside sweeps/: load it here and keep it away
    from Hydra (which only knows the sweeps/ group)."""
    out, space = [], None
    for a in argv:
        key, _, value = a.partition("=")
        if key.lstrip("+") == "sweep" and (value.endswith((".yaml", ".yml")) or "/" in value):
            path = Path(value).expanduser()
            if not path.is_file():
                raise UserError(f"sweep={value}: no such file. Search spaces in sweeps/: "
                                f"{', '.join(configlib.group_choices('sweep'))}.")
            try:
                data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            except Exception as e:
                raise UserError(f"{path} is not valid YAML: {e}") from None
            space = studylib.parse_space(data, str(path))
            # Hydra still needs a choice for the sweep group: any shipped space composes; the
            # space actually used is the one loaded from the file above.
            out.append("sweep=" + (configlib.group_choices("sweep") or ["smoke"])[0])
        else:
            out.append(a)
    return out, space


def make_plan(argv: list[str]) -> tuple[Plan, Any]:
    """Compose, validate and resolve; raises UserError before anything is created or submitted."""
    argv = configlib.normalize(list(argv))
    keys = sweep_keys()
    argv, file_space = _load_space(argv)
    agent = next((a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] == "agent"), None)
    if agent is None:
        agent = next((str(d["agent"]) for d in OmegaConf.load(paths.CONF / "train.yaml").defaults
                      if hasattr(d, "keys") and "agent" in d), "random")
    space_name = next((a.split("=", 1)[1] for a in argv if _root(a) == "sweep"), agent)
    if file_space is None and not any(_root(a) == "sweep" for a in argv):
        if agent in configlib.group_choices("agent") and agent not in configlib.group_choices("sweep"):
            raise UserError(f"agent={agent} has no default search space (sweeps/{agent}.yaml). Choose one with "
                            f"sweep=NAME from: {', '.join(configlib.group_choices('sweep'))}, or sweep=path/to/space.yaml.")
    cfg = configlib.compose("sweep", argv)
    train_argv = [a for a in argv if _root(a) not in keys]
    space = file_space or studylib.parse_space(OmegaConf.to_container(cfg.sweep, resolve=True),
                                               f"sweeps/{space_name}.yaml", name=space_name)
    space_d = space.to_dict()

    base = configlib.compose("train", train_argv)
    groups = {g: configlib.group_choices(g) for g in configlib.groups()}
    studylib.check_keys(space, base, groups)
    try:
        fixed_cfg = configlib.compose("train", train_argv + space.overrides({}))
    except UserError as e:
        raise UserError(f"{space.source}: the fixed overrides do not compose: {e}") from None

    raw_obj = OmegaConf.to_container(cfg.objectives) if cfg.objectives is not None else {"objective": "maximize"}
    if not isinstance(raw_obj, dict):
        raise UserError(f"objectives must map metrics to directions, e.g. 'objectives={{objective:maximize,"
                        f"gpu_hours:minimize}}' (got {raw_obj!r}).")
    objectives = {str(k): str(v) for k, v in raw_obj.items()}
    directions = studylib.directions_of(objectives)
    study_name = cfg.study_name or "-".join(str(x) for x in (base.task.name, base.agent.name, base.meta.name,
                                                               base.get("exp_name", "default"), space.name))
    sweep_dir = Path(cfg.sweep_dir or Path("sweeps_out") / study_name).expanduser().resolve()
    n_trials = int(cfg.n_trials)
    if n_trials < 0:
        raise UserError(f"n_trials={n_trials}: must be >= 0.")
    if cfg.sampler == "grid":
        size = studylib.grid_size(space)
        if n_trials > size:
            print(f"sampler=grid: the grid has {size} points; n_trials {n_trials} -> {size}.", file=sys.stderr)
            n_trials = size

    launcher_cfg = OmegaConf.to_container(cfg.launcher, resolve=True)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True) if cfg.get("cluster") is not None else None
    cluster_name = next((a.split("=", 1)[1] for a in argv if _root(a) == "cluster"), None)
    if launcher_cfg["name"] == "slurm":
        if cluster is None:
            raise UserError("launcher=slurm needs a cluster profile: cluster=NAME, one of "
                            f"{', '.join(configlib.group_choices('cluster'))} (files in slurm/; copy "
                            "slurm/example_gpu_cluster.yaml for your site).")
        launch.check_profile(cluster, cluster_name or "?")
        why = launch.slurm_reachable()
        if why:
            hint = " Start the local test cluster with `bash slurm/start_local.sh` and `source .slurm/env.sh`," \
                   " or use launcher=local." if cluster_name == "local" else " Run on a SLURM login node, or use launcher=local."
            raise UserError(f"launcher=slurm but no SLURM is reachable here: {why}.{hint}")
    workers = cfg.workers
    if workers is None:
        workers = int((cluster or {}).get("array_parallelism") or 1) if launcher_cfg["name"] == "slurm" else 1
    workers = int(workers)
    if workers < 1:
        raise UserError(f"workers={workers}: must be >= 1.")

    plan = Plan(study_name=str(study_name), sweep_dir=str(sweep_dir),
                storage=studylib.storage_url(cfg.storage, sweep_dir), space=space_d, train_argv=train_argv,
                objectives=objectives, objective_metric=str(base.objective), n_trials=n_trials, workers=workers,
                sampler=str(cfg.sampler), sampler_options=OmegaConf.to_container(cfg.sampler_options) or {},
                sampler_seed=cfg.sampler_seed, pruner=str(cfg.pruner),
                pruner_options=OmegaConf.to_container(cfg.pruner_options) or {},
                min_resource=int(base.eval.every), max_resource=int(base.steps),
                heartbeat=OmegaConf.to_container(cfg.heartbeat, resolve=True), launcher=launcher_cfg,
                cluster=cluster, cluster_name=cluster_name,
                tracker=OmegaConf.to_container(base.tracker, resolve=True),
                command="python -m metawm.sweep " + " ".join(argv))
    plan.sampler_for(0)  # unknown sampler, cmaes without its package, grid without points: fail now
    plan.pruner_obj()
    if len(directions) > 1 and plan.pruner != "none":
        print(f"{len(directions)} objectives: Optuna cannot prune multi-objective studies; pruner={plan.pruner} "
              "is not used.", file=sys.stderr)
    return plan, fixed_cfg


def _check_same_study(plan: Plan, fixed_cfg: Any) -> None:
    """A sweep directory holds one experiment: refuse to mix trials of different base configs."""
    from metawm.infra.rundir import config_diff

    path = plan.dir / "base_config.yaml"
    new = OmegaConf.to_container(fixed_cfg, resolve=True)
    if path.exists():
        old = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        searched = {p.lstrip("+") for p in plan.space["params"]}
        diff = [d for d in config_diff(old, new) if d.split(":")[0] not in searched and
                not d.startswith("run_dir")]
        if diff:
            raise UserError(f"{plan.dir} holds study {plan.study_name!r} of a different experiment ("
                            + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "") + "). Its trials would "
                            "not be comparable: choose another sweep_dir= / study_name=, or delete that directory.")
        old_space = (studylib.read_json(plan.dir / "sweep.json") or {}).get("space", {}).get("params")
        if old_space is not None and old_space != plan.space["params"]:
            print(f"note: the search space changed since study {plan.study_name!r} started; earlier trials "
                  "keep their values (Optuna handles the new ranges).", file=sys.stderr)
    else:
        plan.dir.mkdir(parents=True, exist_ok=True)
        path.write_text(OmegaConf.to_yaml(fixed_cfg, resolve=True))


# ---------------------------------------------------------------------------------------------
# The worker: pull trials until the budget is spent
# ---------------------------------------------------------------------------------------------

def _log(worker: str, msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} worker {worker}] {msg}", file=sys.stderr, flush=True)


def _worker_index(worker: str) -> int:
    tail = worker.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def trial_dir(plan: Plan, number: int) -> Path:
    return plan.dir / "trials" / f"{number:04d}"


_PREEMPTED: list[bool] = []  # set in this process by the preemption handler
_TERMINATED: list[float] = []  # times this process got SIGTERM (under SLURM: cancel or preemption)


def _watch_sigterm() -> None:
    """Under submitit, SIGTERM is logged and ignored (the USR signal that may follow checkpoints and
    requeues), but SLURM sends it to every process of the job: W&B's service dies, and the trial's
    next log call fails. Remember it, so such a failure is not blamed on the trial."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        _TERMINATED.append(time.time())
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


def mark_preempted(sweep_dir: str, worker: str) -> None:
    """Called from the SLURM worker's checkpoint (signal handler): the requeue is not a crash, and
    nothing this process sees afterwards is the trial's fault (SLURM also SIGTERMs the job's other
    processes, e.g. W&B's service, whose errors may then replace submitit's SystemExit)."""
    _PREEMPTED.append(True)
    path = Path(sweep_dir) / "workers" / f"{worker}.json"
    state = studylib.read_json(path) or {}
    state["preempted"] = True
    studylib.write_json(path, state)


def worker_main(sweep_dir: str, worker: str) -> int:
    """One worker's loop (a local process or a SLURM array task)."""
    from optuna.trial import Trial, TrialState

    plan = Plan.load(sweep_dir)
    if studylib.slurm_job_id():
        _watch_sigterm()
    study = plan.open_study(_worker_index(worker))
    hb_dir, state_path = plan.dir / "heartbeats", plan.dir / "workers" / f"{worker}.json"
    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock = plan.dir / "ask"
    hbs = plan.heartbeat
    mine = studylib.me(worker)
    _log(worker, f"started (pid {mine['pid']} on {mine['host']}" +
         (f", SLURM job {mine['slurm_job']})" if mine["slurm_job"] else ")"))
    done = 0
    while True:
        with studylib.locked(lock):
            trial, resumed = _take_over(plan, study, worker, state_path, hb_dir), True
            if trial is None:
                resumed = False
                for note in studylib.reap(study, hb_dir, grace_s=float(hbs["grace_s"]), retry=bool(hbs["retry"])):
                    _log(worker, "reaped " + note)
                used = studylib.budget_used(study)
                if used >= plan.n_trials:
                    _log(worker, f"budget spent ({used}/{plan.n_trials} trials); {done} run here. Exiting.")
                    return 0
                trial = study.ask()
                studylib.write_json(state_path, {"trial": trial.number, "attempts": 1, "preempted": False})
            heartbeat = studylib.Heartbeat(hb_dir, trial.number, worker, float(hbs["every_s"]))
        try:
            _run_trial(plan, study, trial, worker, resumed)
        except BaseException:  # interrupted (Ctrl-C, preemption): keep the heartbeat, so its owner is known
            heartbeat.stop(remove=False)
            raise
        heartbeat.stop(remove=True)
        studylib.write_json(state_path, {"trial": None})
        done += 1


def _take_over(plan: Plan, study: Any, worker: str, state_path: Path, hb_dir: Path) -> Any:
    """The trial this worker id was running when it was interrupted (requeue, kill, re-run), if it
    is still RUNNING and no live process owns it; counts crashes against max_attempts."""
    from optuna.trial import Trial, TrialState

    state = studylib.read_json(state_path) or {}
    number = state.get("trial")
    if number is None:
        return None
    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None or frozen.state != TrialState.RUNNING:
        studylib.write_json(state_path, {"trial": None})
        return None
    owner = studylib.read_json(hb_dir / f"{number}.json")
    me = studylib.me(worker)
    same_job = owner is not None and owner.get("slurm_job") and owner.get("slurm_job") == me["slurm_job"]
    if owner is not None and not same_job and studylib.owner_alive(owner):
        _log(worker, f"trial {number} is still run by {owner.get('worker')} (pid {owner.get('pid')} on "
                     f"{owner.get('host')}); leaving it")
        studylib.write_json(state_path, {"trial": None})
        return None
    attempts = int(state.get("attempts", 1)) + (0 if state.get("preempted") else 1)
    if attempts > int(plan.heartbeat["max_attempts"]):
        Trial(study, frozen._trial_id).set_user_attr(
            "error", f"the worker process died {attempts - 1} times while running this trial (max_attempts="
                     f"{plan.heartbeat['max_attempts']}); see {trial_dir(plan, number)}")
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        studylib.write_json(state_path, {"trial": None})
        _log(worker, f"trial {number} failed for good after {attempts - 1} worker deaths")
        return None
    studylib.write_json(state_path, {"trial": number, "attempts": attempts, "preempted": False})
    _log(worker, f"resuming trial {number} (attempt {attempts}" + (", after preemption)" if state.get("preempted") else ")"))
    return Trial(study, frozen._trial_id)


def _run_trial(plan: Plan, study: Any, trial: Any, worker: str, resumed: bool) -> None:
    import torch
    from optuna.trial import TrialState

    from metawm import train
    from metawm.infra.rundir import RunDir
    from metawm.run.train import StopTraining

    space = plan.space_obj()
    params = space.sample(trial)
    run_dir = trial_dir(plan, trial.number)
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None and not run_dir.exists():
        src = trial_dir(plan, int(retry_of))
        if (src / "checkpoints" / "latest.ckpt").exists():
            shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("wandb", "*.tmp", "error.txt"))
            _log(worker, f"trial {trial.number} retries trial {retry_of}: resuming from its checkpoint")
    overrides = space.overrides(params)
    if "overrides" not in trial.user_attrs:
        trial.set_user_attr("overrides", " ".join(overrides))
        trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", worker)
    _log(worker, f"{'resuming' if resumed else 'starting'} trial {trial.number}: {' '.join(overrides)}")

    def finish(state: str, values: list[float] | None = None, error: str | None = None) -> None:
        if _TERMINATED and not _PREEMPTED:  # give the preemption signal time to arrive
            _log(worker, "got SIGTERM: waiting for SLURM's preemption signal or the kill; not telling the study")
            deadline = time.time() + 120
            while time.time() < deadline and not _PREEMPTED:
                time.sleep(0.2)
        if _PREEMPTED or _TERMINATED:  # the trial resumes in the requeued job or on the next run
            raise SystemExit(-1)
        if error:
            trial.set_user_attr("error", error[:2000])
        study.tell(trial, values=values, state=getattr(TrialState, state), skip_if_finished=True)
        _log(worker, f"trial {trial.number} {state}" + (f" {values}" if values else "") + (f": {error}" if error else ""))

    existing = RunDir(run_dir).read_summary()
    if existing.get("status") in ("pruned", "diverged"):  # decided before the worker died: tell it
        return finish(*studylib.outcome(existing, list(plan.objectives)))
    try:
        cfg = configlib.compose("train", plan.train_argv + overrides + [f"run_dir={run_dir}"])
    except UserError as e:
        return finish("FAIL", error=f"the trial's config does not compose: {e}")

    callbacks = []
    metric = next(iter(plan.objectives))
    report_key = cfg.objective if metric in ("objective", "best_objective") else metric
    if not plan.multi and metric not in ("hours", "gpu_hours"):
        def report(env_steps: int, row: Mapping[str, Any]) -> None:
            value = row.get(report_key)
            if value is None or not math.isfinite(float(value)):
                return
            trial.report(float(value), int(env_steps))
            if trial.should_prune():
                raise StopTraining("pruned", f"pruned at {env_steps} env steps ({report_key}={value:.4g})")
        callbacks.append(report)
    try:
        summary, _ = train.run(cfg, callbacks, job_type="trial", group=plan.study_name,
                               extra_config={"trial": trial.number, "params": params, "study": plan.study_name})
    except UserError as e:
        return finish("FAIL", error=str(e))
    except Exception as e:  # a bug or a broken trial: record it, the study goes on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return finish("FAIL", error=f"{type(e).__name__}: {e} (traceback in {run_dir / 'error.txt'})")
    device = str(cfg.device)
    summary = dict(summary, gpus=1 if (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())) else 0)
    finish(*studylib.outcome(summary, list(plan.objectives)))


# ---------------------------------------------------------------------------------------------
# The sweep command: launch, wait, report
# ---------------------------------------------------------------------------------------------

def _progress(study: Any, plan: Plan) -> str:
    c = studylib.counts(study)
    used = studylib.budget_used(study)
    best = ""
    bt = studylib.best_trials(study)
    if bt and not plan.multi:
        best = f"; best {bt[0].value:.4g} (trial {bt[0].number})"
    elif bt:
        best = f"; {len(bt)} on the Pareto front"
    parts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(c.items()))
    return f"{used}/{plan.n_trials} trials ({parts or 'none yet'}){best}"


def _driver_lock(plan: Plan) -> None:
    path = plan.dir / "driver.json"
    other = studylib.read_json(path)
    if other and other.get("pid") != os.getpid() and studylib.owner_alive({**other, "slurm_job": None}):
        raise UserError(f"Another sweep command (pid {other['pid']} on {other['host']}) is running study "
                        f"{plan.study_name!r} in {plan.dir}; wait for it or stop it first.")
    studylib.write_json(path, studylib.me("driver"))


def _follow(study: Any, plan: Plan, alive: Callable[[], Any], default_poll_s: float) -> None:
    """Print the study's progress line whenever it changes, while ``alive()`` (workers or jobs)."""
    last = ""
    while alive():
        time.sleep(float(plan.launcher.get("poll_s", default_poll_s)))
        line = _progress(study, plan)
        if line != last:
            print(f"[sweep] {line}", file=sys.stderr, flush=True)
            last = line


def run_local(plan: Plan, study: Any) -> list[str]:
    remaining = plan.n_trials - studylib.budget_used(study)
    running = studylib.counts(study).get("RUNNING", 0)
    n = max(1, min(plan.workers, remaining + running)) if remaining + running > 0 else 0
    if n == 0:
        return []
    print(f"starting {n} local worker(s); logs in {plan.dir / 'logs'}", file=sys.stderr)
    workers = launch.LocalWorkers("metawm.sweep", plan.dir, n)
    try:
        _follow(study, plan, workers.running, default_poll_s=2)
    except KeyboardInterrupt:
        print("stopping workers (their trials resume when you re-run the same command) ...", file=sys.stderr)
        workers.stop()
        raise
    return [f"worker {w} exited with status {rc} (log: {plan.dir / 'logs' / f'worker-{w}.log'})"
            for w, rc in workers.failed()]


def run_slurm(plan: Plan, study: Any) -> list[str]:
    import metawm.sweep as this  # the importable module (not __main__), so submitit pickles by reference

    jobs_path = plan.dir / "slurm_jobs.json"
    recorded = (studylib.read_json(jobs_path) or {}).get("jobs", [])
    active = launch.active_jobs(recorded)
    if active:
        print(f"attaching to the running job array ({', '.join(sorted(active))}) of this study", file=sys.stderr)
    else:
        remaining = plan.n_trials - studylib.budget_used(study)
        running = studylib.counts(study).get("RUNNING", 0)
        n = min(plan.workers, remaining + running)
        if n <= 0:
            return []
        params = launch.executor_parameters(plan.cluster or {}, name=f"sweep-{plan.study_name}"[:64], workers=n,
                                            signal_delay_s=int(plan.launcher.get("signal_delay_s", 90)))
        ids = launch.submit_array(this.worker_main, this.mark_preempted, plan.dir,
                                  [f"slurm-{i}" for i in range(n)], params,
                                  max_num_timeout=int(plan.launcher.get("max_num_timeout", 20)))
        recorded = ids
        studylib.write_json(jobs_path, {"jobs": ids, "submitted": time.time()})
        print(f"submitted job array {ids[0].split('_')[0]} ({n} workers, partition {plan.cluster['partition']}); "
              f"logs in {plan.dir / 'slurm'}", file=sys.stderr)
    if not plan.launcher.get("wait", True):
        print(f"not waiting (launcher.wait=false): re-run the same command to follow the study, or "
              f"`scancel {recorded[0].split('_')[0]}` to stop it.", file=sys.stderr)
        return ["nowait"]
    try:
        _follow(study, plan, lambda: launch.active_jobs(recorded), default_poll_s=10)
    except KeyboardInterrupt:
        print(f"stopped following; the job array keeps running. Re-run the same command to attach, or "
              f"`scancel {recorded[0].split('_')[0]}` to stop it.", file=sys.stderr)
        raise
    return []


def report(plan: Plan, study: Any) -> int:
    """Print the best trial(s) and the override line, write plots and the W&B study run."""
    from optuna.trial import TrialState

    names = list(plan.objectives)
    print(f"study {plan.study_name}: {_progress(study, plan)}", file=sys.stderr)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if not t.user_attrs.get("retried"):
            print(f"  trial {t.number} failed: {t.user_attrs.get('error', '(no reason recorded)')}", file=sys.stderr)
    notes = studylib.write_plots(study, plan.dir, names)
    for n in notes:
        print(f"  plots: {n}", file=sys.stderr)
    best = studylib.best_trials(study)
    _wandb_study_run(plan, study, best)
    if not best:
        print("no trial completed yet.", file=sys.stderr)
        return EXIT_FAILED
    space = plan.space_obj()
    for t in best[:5]:
        vals = ", ".join(f"{n}={v:.6g}" for n, v in zip(names, t.values))
        line = " ".join(space.overrides(_active_params(space, t.params))[len(space.fixed):])
        print(f"best trial {t.number}: {vals}  (run dir {trial_dir(plan, t.number)})")
        print(f"best overrides: {line}")
        print("train it: python -m metawm.train " + " ".join(plan.train_argv + space.overrides(
            _active_params(space, t.params))))
    if len(best) > 5:
        print(f"... and {len(best) - 5} more trials on the Pareto front", file=sys.stderr)
    return 0


def _active_params(space: studylib.Space, params: Mapping[str, Any]) -> dict[str, Any]:
    return {p.name: params[p.name] for p in space.params if p.name in params}


def _wandb_study_run(plan: Plan, study: Any, best: list[Any]) -> None:
    from metawm.infra.tracking import WandbSink

    t = plan.tracker
    if t.get("wandb_mode", "disabled") == "disabled":
        return
    run_id = "mw-study-" + hashlib.sha1(str(plan.dir).encode()).hexdigest()[:12]
    sink = WandbSink(mode=t["wandb_mode"], project=t.get("project", "metawm"), entity=t.get("entity"),
                     group=plan.study_name, name=f"study-{plan.study_name}", run_id=run_id, directory=plan.dir,
                     job_type="study", tags=list(t.get("tags") or []),
                     config={k: v for k, v in dataclasses.asdict(plan).items() if k not in ("tracker",)})
    counts = studylib.counts(study)
    summary: dict[str, Any] = {f"trials/{k.lower()}": v for k, v in counts.items()}
    if best:
        b = best[0]
        summary.update({"best/trial": b.number, **{f"best/{n}": v for n, v in zip(plan.objectives, b.values)},
                        **{f"best/params/{k}": v for k, v in b.params.items()},
                        "best/overrides": b.user_attrs.get("overrides", "")})
    sink.summary(summary)
    sink.close()


def _terminate_as_interrupt() -> None:
    """SIGTERM/SIGHUP (a closed terminal, `timeout`, `kill`) stop like Ctrl-C: the local driver
    then stops its workers, and a worker leaves its trial resumable, instead of orphans running on."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


@cli
def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:  # a local worker process (SLURM workers run worker_main under submitit)
        if len(argv) != 3:
            raise UserError("usage: python -m metawm.sweep --worker SWEEP_DIR WORKER_ID (started by the sweep command)")
        _terminate_as_interrupt()
        return worker_main(argv[1], argv[2])
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip() + "\n\n" + configlib.usage("sweep", "sweep"))
        print("\nSweep keys (conf/sweep.yaml): " + ", ".join(sorted(sweep_keys())))
        return 0
    show = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    plan, fixed_cfg = make_plan(argv)
    if show:
        print(OmegaConf.to_yaml(OmegaConf.create({"sweep": dataclasses.asdict(plan)})))
        return 0
    _check_same_study(plan, fixed_cfg)
    _driver_lock(plan)
    _terminate_as_interrupt()
    try:
        study = studylib.create_study(plan.study_name, studylib.open_storage(plan.storage),
                                      studylib.directions_of(plan.objectives), plan.sampler_for(0), plan.pruner_obj())
        plan.save()
        print(f"study {plan.study_name} ({plan.storage}): {_progress(study, plan)}", file=sys.stderr)
        problems = run_slurm(plan, study) if plan.launcher["name"] == "slurm" else run_local(plan, study)
        if problems == ["nowait"]:
            print(f"sweep directory: {plan.dir}")
            return 0
        for p in problems:
            print(p, file=sys.stderr)
        rc = report(plan, study)
        remaining = plan.n_trials - studylib.budget_used(study)
        running = studylib.counts(study).get("RUNNING", 0)
        if problems and (remaining > 0 or running > 0):
            print(f"workers died with {running} trial(s) unfinished and {remaining} not started; re-run the "
                  "same command to continue (unfinished trials resume from their checkpoints).", file=sys.stderr)
            rc = EXIT_FAILED
    finally:
        (plan.dir / "driver.json").unlink(missing_ok=True)
    print(f"sweep directory: {plan.dir}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
