"""Optuna, driven directly: search spaces, storage, samplers, pruners, budget, heartbeats, reaping,
outcomes, plots. This is the only module that imports optuna.

Why not the Hydra Optuna sweeper: it pins ``optuna<3`` and never hands the trial to the app, so
there is no pruning (FACTS.md). metawm composes configs with Hydra and asks Optuna itself.

A search space (``sweeps/NAME.yaml``, or any YAML file given as ``sweep=path.yaml``)::

    fixed:                       # overrides applied to every trial
      steps: 50000
    params:                      # one entry per override key of metawm.train
      agent.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      agent.size: {type: categorical, choices: [size12m, size25m]}
      agent.replay_ratio: {type: int, low: 16, high: 512, log: true}
      agent.gumbel_topk: {type: int, low: 4, high: 16, when: {agent.gumbel: true}}

Types: ``float`` (``log: true`` or ``type: log-float`` for log-uniform), ``int`` (``step``,
``log``), ``categorical`` (``choices``: scalars). ``when`` makes a parameter conditional on
parameters listed before it (a value or a list of values). ``grid`` (a list of values) gives a
numeric parameter's points for ``sampler=grid``. A key with a leading ``+`` adds a key that the
train config does not have (Hydra's append syntax); any other key must exist in the train config.

Journal storage has no heartbeat (FACTS.md): each running trial's worker touches
``<sweep dir>/heartbeats/<trial>.json`` every few seconds, and every worker, before it asks for a
trial, reaps RUNNING trials whose owner is provably gone (same host and its process is dead, or its
SLURM job has left the queue) or silent for longer than the grace period: they are marked FAIL with
the reason and, by default, re-enqueued with the same parameters; the retry resumes from the dead
trial's checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from metawm.infra.errors import UserError

TYPES = {"float": ("float", False), "uniform": ("float", False), "log-float": ("float", True),
         "logfloat": ("float", True), "loguniform": ("float", True), "int": ("int", False),
         "log-int": ("int", True), "logint": ("int", True), "categorical": ("categorical", False)}
SAMPLERS = ("tpe", "cmaes", "random", "grid")
PRUNERS = ("hyperband", "median", "none")
DIRECTIONS = ("maximize", "minimize")


# ---------------------------------------------------------------------------------------------
# Search spaces
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Param:
    name: str                       # the override key, e.g. "agent.lr" or "+agent.extra"
    kind: str                       # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: tuple = ()                # ((param name, (allowed values...)), ...)
    grid: tuple = ()

    @property
    def key(self) -> str:
        """The config key without Hydra's ``+``/``++`` prefix."""
        return self.name.lstrip("+")

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid_points(self) -> list:
        if self.grid:
            return list(self.grid)
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log and (self.high - self.low) / (self.step or 1) <= 64:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.kind == "float" and self.step:
            n = int(round((self.high - self.low) / self.step))
            return [self.low + i * self.step for i in range(n + 1)]
        raise UserError(f"sampler=grid needs a finite set of values for every parameter; {self.name} is a "
                        f"{'log-' if self.log else ''}{self.kind} range: give it `grid: [v1, v2, ...]` or a step.")


@dataclasses.dataclass(frozen=True)
class Space:
    name: str
    source: str                     # the file it came from, for error messages
    params: tuple[Param, ...]
    fixed: tuple[tuple[str, Any], ...] = ()

    def sample(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: suggest every active parameter (a resumed trial gets its stored values)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return values

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        return [f"{k}={override_value(v)}" for k, v in self.fixed] + \
               [f"{k}={override_value(v)}" for k, v in values.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "fixed": dict(self.fixed),
                "params": {p.name: _param_dict(p) for p in self.params}}


def _param_dict(p: Param) -> dict[str, Any]:
    d: dict[str, Any] = {"type": p.kind}
    if p.kind == "categorical":
        d["choices"] = list(p.choices)
    else:
        d.update(low=p.low, high=p.high, log=p.log)
        if p.step is not None:
            d["step"] = p.step
    if p.when:
        d["when"] = {k: list(v) for k, v in p.when}
    if p.grid:
        d["grid"] = list(p.grid)
    return d


def override_value(v: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if s and all(c.isalnum() or c in "_-./:@" for c in s) and s.lower() not in ("null", "true", "false"):
        try:
            float(s)
        except ValueError:
            return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_space(data: Mapping[str, Any], source: str, name: str | None = None) -> Space:
    """Validate a search-space mapping; every error names ``source`` and the parameter."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: a search space is a mapping with `params:` (and optional `fixed:`).")
    unknown = set(data) - {"name", "params", "fixed", "description", "source"}
    if unknown:
        raise UserError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; a search space has "
                        "`params:` and optionally `fixed:` and `name:`.")
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, Mapping) or not raw_params:
        raise UserError(f"{source}: `params:` must map override keys (e.g. agent.lr) to parameter specs; "
                        "it is empty or missing.")
    params: list[Param] = []
    for pname, spec in raw_params.items():
        params.append(_parse_param(str(pname), spec, source, {p.name: p for p in params}))
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise UserError(f"{source}: `fixed:` must map override keys to values.")
    for k in fixed:
        if k in raw_params:
            raise UserError(f"{source}: {k} is both fixed and searched; keep one.")
    return Space(name=str(name or data.get("name") or Path(source).stem), source=source,
                 params=tuple(params), fixed=tuple((str(k), v) for k, v in fixed.items()))


def _parse_param(name: str, spec: Any, source: str, earlier: Mapping[str, Param]) -> Param:
    where = f"{source}: parameter {name}"
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise UserError(f"{where}: needs a mapping with `type:` ({', '.join(sorted(set(TYPES)))}).")
    t = str(spec["type"]).lower()
    if t not in TYPES:
        raise UserError(f"{where}: unknown type {spec['type']!r}; use one of float, log-float, int, log-int, "
                        "categorical.")
    kind, log = TYPES[t]
    log = bool(spec.get("log", log))
    allowed = {"type", "when", "grid"} | ({"choices"} if kind == "categorical" else {"low", "high", "log", "step"})
    extra = set(spec) - allowed
    if extra:
        raise UserError(f"{where}: unexpected key(s) {', '.join(sorted(extra))} for a {kind} parameter "
                        f"(allowed: {', '.join(sorted(allowed))}).")
    when = _parse_when(spec.get("when"), where, earlier)
    grid = tuple(spec.get("grid") or ())
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, Sequence) or isinstance(choices, (str, bytes)) or len(choices) == 0:
            raise UserError(f"{where}: `choices` must be a non-empty list.")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise UserError(f"{where}: choice {c!r} is not a scalar (Optuna stores None, bool, int, float "
                                "or str); name presets instead, e.g. a size preset.")
        if len(set(map(repr, choices))) != len(choices):
            raise UserError(f"{where}: `choices` has duplicates.")
        return Param(name, kind, choices=tuple(choices), when=when, grid=grid)
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except KeyError as e:
        raise UserError(f"{where}: a {kind} parameter needs `low` and `high` (missing {e.args[0]}).") from None
    except (TypeError, ValueError):
        raise UserError(f"{where}: `low` and `high` must be numbers (got {spec.get('low')!r}, "
                        f"{spec.get('high')!r}).") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f"{where}: bounds must be finite.")
    if low > high:
        raise UserError(f"{where}: low ({low:g}) > high ({high:g}).")
    if log and low <= 0:
        raise UserError(f"{where}: a log-scaled range needs low > 0 (low is {low:g}).")
    step = spec.get("step")
    if step is not None:
        step = float(step)
        if step <= 0:
            raise UserError(f"{where}: step must be > 0.")
        if log:
            raise UserError(f"{where}: `step` and `log` cannot be combined (Optuna forbids it).")
    if kind == "int":
        if low != int(low) or high != int(high) or (step is not None and step != int(step)):
            raise UserError(f"{where}: an int parameter needs integer low/high/step.")
        low, high = int(low), int(high)
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when, grid=grid)


def _parse_when(when: Any, where: str, earlier: Mapping[str, Param]) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise UserError(f"{where}: `when` must map earlier parameters to a value or a list of values.")
    out = []
    for dep, allowed in when.items():
        if dep not in earlier:
            raise UserError(f"{where}: `when` refers to {dep!r}, which is not a parameter listed before it "
                            f"(earlier: {', '.join(earlier) or 'none'}).")
        allowed = tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,)
        out.append((str(dep), allowed))
    return tuple(out)


def check_keys(space: Space, cfg: Any, groups: Mapping[str, Sequence[str]]) -> None:
    """Every searched or fixed key must exist in the composed train config ``cfg`` (or be a config
    group with valid choices), so a typo fails before anything is launched."""
    from omegaconf import OmegaConf

    sentinel = object()
    keys = [(p.name, p) for p in space.params] + [(k, None) for k, _ in space.fixed]
    for name, p in keys:
        if name.startswith("+"):
            continue
        key = name.lstrip("~")
        if key in groups:
            values = p.choices if p is not None and p.kind == "categorical" else \
                ([dict(space.fixed)[name]] if p is None else None)
            if values is None:
                raise UserError(f"{space.source}: parameter {name} selects a config group; make it categorical "
                                f"with choices from: {', '.join(groups[key])}.")
            bad = [v for v in values if str(v) not in groups[key]]
            if bad:
                raise UserError(f"{space.source}: {name}: unknown choice(s) {', '.join(map(str, bad))}; valid: "
                                f"{', '.join(groups[key])}.")
            continue
        if OmegaConf.select(cfg, key, default=sentinel) is sentinel:
            top = ", ".join(sorted(k for k in cfg.keys()))
            parent = key.rsplit(".", 1)[0] if "." in key else None
            near = ""
            if parent is not None:
                node = OmegaConf.select(cfg, parent, default=None)
                if node is not None and hasattr(node, "keys"):
                    near = f" {parent} has: {', '.join(sorted(map(str, node.keys())))}."
            raise UserError(f"{space.source}: {name} is not a key of the train config for this experiment."
                            f"{near or ' Top-level keys: ' + top + '.'} Fix the name, or write +{name} to add a "
                            "key the config does not have.")


# ---------------------------------------------------------------------------------------------
# Storage, samplers, pruners
# ---------------------------------------------------------------------------------------------

def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """``null`` -> the journal file in the sweep directory; a path -> a journal file there; a URL
    (``postgresql://...``) -> an RDB storage."""
    if not storage:
        return str((sweep_dir / "study.journal").resolve())
    if "://" in str(storage):
        return str(storage)
    return str(Path(storage).expanduser().resolve())


def open_storage(url: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    if "://" in url:
        if url.startswith("sqlite"):
            warnings.warn("SQLite storage is discouraged for parallel workers (Optuna's own advice); the "
                          "default journal file is safer.", stacklevel=2)
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:
            raise UserError(f"Could not open the study storage {url!r}: {type(e).__name__}: {e}") from None
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    # The open(O_EXCL) lock works on NFSv3+ (shared filesystems of clusters) as well as locally.
    return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))


def directions_of(objectives: Mapping[str, str]) -> list[str]:
    dirs = []
    for metric, d in objectives.items():
        d = str(d).lower()
        d = {"max": "maximize", "min": "minimize"}.get(d, d)
        if d not in DIRECTIONS:
            raise UserError(f"objectives: {metric}: direction {d!r} is not maximize or minimize.")
        dirs.append(d)
    if not dirs:
        raise UserError("objectives is empty; e.g. objectives={objective:maximize}.")
    return dirs


def make_sampler(name: str, options: Mapping[str, Any], space: Space, *, seed: int | None, parallel: bool,
                 multi: bool) -> Any:
    import optuna

    name = str(name).lower()
    opts = dict(options or {})
    if name == "tpe":
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        opts.setdefault("constant_liar", parallel)
        opts.setdefault("multivariate", True)
        opts.setdefault("group", any(p.when for p in space.params))
        return _quiet(optuna.samplers.TPESampler, seed=seed, **opts)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed, **opts)
    if name == "cmaes":
        if multi:
            raise UserError("sampler=cmaes optimizes one objective; use sampler=tpe for several objectives.")
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("sampler=cmaes needs the `cmaes` package: pip install cmaes") from None
        return _quiet(optuna.samplers.CmaEsSampler, seed=seed, **opts)
    if name == "grid":
        grid = {p.name: p.grid_points() for p in space.params}
        return _AskTellGridSampler(grid, seed=seed, **opts)
    raise UserError(f"Unknown sampler {name!r}. Valid choices: {', '.join(SAMPLERS)}.")


def _grid_sampler_class() -> Any:
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler whose after_trial does not call ``study.stop()`` when the grid is exhausted
        (that only works inside ``study.optimize`` and, raised from ``tell``, would leave the trial
        RUNNING); the sweep caps n_trials at the grid size instead."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return AskTellGridSampler


def _AskTellGridSampler(*args: Any, **kw: Any) -> Any:  # noqa: N802 (a class, built lazily)
    return _grid_sampler_class()(*args, **kw)


def grid_size(space: Space) -> int:
    return math.prod(len(p.grid_points()) for p in space.params)


def make_pruner(name: str, options: Mapping[str, Any], *, min_resource: int, max_resource: int,
                multi: bool) -> Any:
    import optuna

    name = str(name).lower()
    if name not in PRUNERS:
        raise UserError(f"Unknown pruner {name!r}. Valid choices: {', '.join(PRUNERS)}.")
    if multi or name == "none":
        return optuna.pruners.NopPruner()
    opts = dict(options or {})
    if name == "hyperband":
        # Resources are env steps: the first rung is one evaluation, the last the whole budget.
        opts.setdefault("min_resource", max(1, int(min_resource)))
        opts.setdefault("max_resource", max(int(max_resource), int(opts["min_resource"])))
        opts.setdefault("reduction_factor", 3)
        return optuna.pruners.HyperbandPruner(**opts)
    opts.setdefault("n_startup_trials", 5)
    opts.setdefault("n_warmup_steps", max(0, int(min_resource)))
    return optuna.pruners.MedianPruner(**opts)


def _quiet(cls: Any, **kw: Any) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(**kw)


def create_study(name: str, storage: Any, directions: list[str], sampler: Any = None, pruner: Any = None) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise UserError(f"Study {name!r} already exists with directions {have}, not {directions} (from "
                        "objectives=...). Use another sweep_dir or study_name, or the original objectives.")
    return study


def load_study(name: str, storage: Any, sampler: Any, pruner: Any) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


# ---------------------------------------------------------------------------------------------
# Budget, ownership, heartbeats and reaping
# ---------------------------------------------------------------------------------------------

def counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def budget_used(study: Any) -> int:
    """Trials that count against ``n_trials``: finished or running. A reaped trial that was retried
    counts once (its retry counts), and WAITING (enqueued) trials do not count until started."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get("retried"):
            continue
        n += 1
    return n


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """A lock file shared by every worker (open(O_EXCL), NFS-safe; a holder dead for 30 s loses it)."""
    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(str(path), grace_period=30)
    lock.acquire()
    try:
        yield
    finally:
        try:
            lock.release()
        except RuntimeError:
            pass  # forcibly released by someone else after the grace period


def process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def slurm_job_id() -> str | None:
    """The id that names this SLURM task across requeues (``<array job>_<index>`` for arrays)."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID")


def me(worker: str) -> dict[str, Any]:
    return {"worker": worker, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()), "slurm_job": slurm_job_id(), "time": time.time()}


class Heartbeat:
    """A thread that rewrites ``<sweep>/heartbeats/<trial>.json`` every ``every_s`` seconds."""

    def __init__(self, directory: Path, trial: int, worker: str, every_s: float):
        self.path = Path(directory) / f"{trial}.json"
        self.worker, self.every_s = worker, float(every_s)
        self._stop = threading.Event()
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial}", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, me(self.worker))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except OSError:
                pass

    def stop(self, remove: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if remove:
            self.path.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


write_json = _write_json

ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                       "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def slurm_job_state(job: str) -> str | None:
    """The job's state from squeue; ``""`` if SLURM says it is gone, None if SLURM cannot tell."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode == 0:
        return r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    if "invalid job id" in r.stderr.lower():
        return ""
    return None


def owner_alive(owner: Mapping[str, Any] | None) -> bool | None:
    """True/False when it can be proven, None when only the heartbeat's age can tell."""
    if not owner:
        return None
    if owner.get("slurm_job"):
        state = slurm_job_state(str(owner["slurm_job"]))
        if state is not None:
            return state in ACTIVE_SLURM_STATES
    if owner.get("host") == socket.gethostname() and owner.get("pid"):
        start = process_start_time(int(owner["pid"]))
        return start is not None and (owner.get("pid_start") is None or start == owner.get("pid_start"))
    return None


def reap(study: Any, heartbeats: Path, *, grace_s: float, retry: bool, skip: Iterable[int] = ()) -> list[str]:
    """Fail (and optionally re-enqueue) RUNNING trials whose worker is gone. Call under :func:`locked`.
    Returns one line per reaped trial."""
    from optuna.trial import Trial, TrialState

    notes = []
    now = time.time()
    skip = set(skip)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in skip:
            continue
        hb_path = heartbeats / f"{t.number}.json"
        owner = read_json(hb_path)
        try:
            age = now - hb_path.stat().st_mtime
        except OSError:
            started = t.datetime_start.timestamp() if t.datetime_start else now
            age = now - started
        alive = owner_alive(owner)
        if alive or (alive is None and age < grace_s):
            continue
        who = _who(owner)
        why = "its SLURM job left the queue" if alive is False and owner and owner.get("slurm_job") else \
            "its process is gone" if alive is False else f"no heartbeat for {age:.0f} s (grace {grace_s:.0f} s)"
        reason = f"worker {who} died: {why}"
        Trial(study, t._trial_id).set_user_attr("error", reason)
        if retry:
            Trial(study, t._trial_id).set_user_attr("retried", True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        hb_path.unlink(missing_ok=True)
        if retry:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        notes.append(f"trial {t.number}: {reason}" + ("; re-enqueued with the same parameters" if retry else ""))
    return notes


def _who(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "(unknown: no heartbeat)"
    s = f"{owner.get('worker')} (pid {owner.get('pid')} on {owner.get('host')}"
    if owner.get("slurm_job"):
        s += f", SLURM job {owner['slurm_job']}"
    return s + ")"


# ---------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------

def metric_value(summary: Mapping[str, Any], metric: str) -> float | None:
    """A metric of a finished run: a key of summary.json, of its ``final`` eval row, or derived
    ``hours`` (wall-clock) and ``gpu_hours`` (wall-clock x GPUs the run used)."""
    if metric == "hours":
        return float(summary.get("wall_time_s") or 0.0) / 3600.0
    if metric == "gpu_hours":
        return float(summary.get("wall_time_s") or 0.0) / 3600.0 * float(summary.get("gpus", 0) or 0)
    for src in (summary, summary.get("final") or {}):
        if metric in src and isinstance(src[metric], (int, float)) and not isinstance(src[metric], bool):
            return float(src[metric])
    return None


def outcome(summary: Mapping[str, Any], objectives: Sequence[str]) -> tuple[str, list[float] | None, str | None]:
    """(state, values, error) for a run's summary: COMPLETE with finite values, PRUNED, or FAIL."""
    status = summary.get("status")
    if status == "pruned":
        return "PRUNED", None, None
    if status != "complete":
        return "FAIL", None, f"run {status}: {summary.get('error')}"
    values = []
    for m in objectives:
        v = metric_value(summary, m)
        if v is None or not math.isfinite(v):
            return "FAIL", None, f"objective {m} is {'missing' if v is None else v} in summary.json"
        values.append(v)
    return "COMPLETE", values, None


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

def best_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return list(study.best_trials)


def write_plots(study: Any, out: Path, objective_names: Sequence[str]) -> list[str]:
    """optimization_history.png, param_importances.png (and intermediate_values.png, or
    pareto_front.png for two objectives). Returns notes on plots that could not be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    notes = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    jobs: list[tuple[str, Any]] = []
    if not complete:
        return ["no completed trial yet: no plots"]
    if multi:
        for i, name in enumerate(objective_names):
            jobs.append((f"optimization_history_{i}.png", lambda i=i, name=name: ovm.plot_optimization_history(
                study, target=lambda t: t.values[i], target_name=name)))
        if len(objective_names) == 2:
            jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(study, target_names=list(objective_names))))
        imp = lambda: ovm.plot_param_importances(study, target=lambda t: t.values[0],  # noqa: E731
                                                 target_name=objective_names[0])
    else:
        jobs.append(("optimization_history.png", lambda: ovm.plot_optimization_history(
            study, target_name=objective_names[0])))
        jobs.append(("intermediate_values.png", lambda: ovm.plot_intermediate_values(study)))
        imp = lambda: ovm.plot_param_importances(study, target_name=objective_names[0])  # noqa: E731
    values = {tuple(t.values) for t in complete}
    if len(complete) < 2 or len(values) < 2:
        notes.append(f"param importances need >= 2 completed trials with different values (have {len(complete)}"
                     f" completed, {len(values)} distinct): not plotted yet")
    else:
        jobs.append(("param_importances.png", imp))
    out.mkdir(parents=True, exist_ok=True)
    for fname, make in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = make()
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.tight_layout()
                fig.savefig(out / fname, dpi=110)
                plt.close(fig)
            except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError) as e:
                notes.append(f"{fname}: not plotted ({type(e).__name__}: {e})")
                plt.close("all")
    return notes
