"""metawm.sweep as a user runs it (local launcher, real Optuna journal storage, real train runs of
agent=random +exp=smoke), plus the search-space parsing, outcomes and reaping it relies on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metawm.infra import study as studylib
from metawm.infra.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
BASE = ["+task=cartpole_physics", "agent=random", "+exp=smoke", "tracker=disabled", "progress=false"]


def sweep(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metawm.sweep", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT), **(env or {})})


def load(sweep_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = studylib.open_storage(str(sweep_dir / "study.journal"))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def space_file(tmp_path: Path, text: str, name: str = "space.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ---------------------------------------------------------------------------------------------
# Search spaces (fast, in-process)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ({"x.a": {"type": "float", "low": 2, "high": 1}}, "low (2) > high (1)"),
    ({"x.a": {"type": "log-float", "low": 0, "high": 1}}, "needs low > 0"),
    ({"x.a": {"type": "float", "low": 1e-3, "high": 1, "log": True, "step": 0.1}}, "cannot be combined"),
    ({"x.a": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"x.a": {"type": "categorical", "choices": [[1, 2]]}}, "not a scalar"),
    ({"x.a": {"type": "gaussian", "low": 0, "high": 1}}, "unknown type 'gaussian'"),
    ({"x.a": {"type": "int", "low": 0.5, "high": 3}}, "integer"),
    ({"x.a": {"type": "int", "low": 0}}, "missing high"),
    ({"x.a": {"type": "int", "low": 0, "high": 3, "choices": [1]}}, "unexpected key(s) choices"),
    ({"x.b": {"type": "int", "low": 0, "high": 3, "when": {"x.a": 1}}}, "not a parameter listed before it"),
])
def test_invalid_spaces_name_file_and_parameter(spec, message):
    with pytest.raises(UserError) as e:
        studylib.parse_space({"params": spec}, "sweeps/bad.yaml")
    assert "sweeps/bad.yaml" in str(e.value) and next(iter(spec)) in str(e.value) and message in str(e.value)


def test_space_sampling_conditional_and_overrides_roundtrip():
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser

    space = studylib.parse_space({
        "fixed": {"steps": 400},
        "params": {"a.lr": {"type": "log-float", "low": 1e-5, "high": 1e-2},
                   "a.n": {"type": "int", "low": 1, "high": 9, "step": 2},
                   "a.kind": {"type": "categorical", "choices": ["x y", True, None, 3, "1.5", "small"]},
                   "a.extra": {"type": "float", "low": 0, "high": 1, "when": {"a.kind": ["small", 3]}}}}, "t.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_extra = {True: 0, False: 0}
    parser = OverridesParser.create()
    for _ in range(40):
        trial = study.ask()
        values = space.sample(trial)
        assert 1e-5 <= values["a.lr"] <= 1e-2 and values["a.n"] in (1, 3, 5, 7, 9)
        seen_extra["a.extra" in values] += 1
        assert ("a.extra" in values) == (values["a.kind"] in ("small", 3))
        for ov, (k, v) in zip(space.overrides(values)[1:], values.items()):  # Hydra reads back each value
            assert parser.parse_overrides([ov])[0].value() == v, ov
        study.tell(trial, 0.0)
    assert seen_extra[True] and seen_extra[False]


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_are_valid_for_their_agent(path, capsys):
    """Every sweeps/*.yaml parses; a space named after an agent (dreamerv3, dreamerv3_cpu -> dreamerv3)
    composes with that agent once it exists here, so its agent.* keys are real keys of its config."""
    from omegaconf import OmegaConf

    from metawm.infra import config as configlib
    from metawm.sweep import make_plan

    space = studylib.parse_space(OmegaConf.to_container(OmegaConf.load(path)), str(path))
    agent = {"smoke": "random"}.get(space.name, space.name.split("_")[0])
    if agent not in configlib.group_choices("agent"):
        pytest.skip(f"agent {agent} is not in conf/agent yet: its keys cannot be checked")
    plan, _ = make_plan(["+task=cartpole_physics", f"agent={agent}", "+exp=smoke", f"sweep={path.stem}"])
    assert plan.space["params"].keys() == {p.name for p in space.params}


def test_outcomes():
    assert studylib.outcome({"status": "complete", "objective": 3.0, "final": {}}, ["objective"]) == \
        ("COMPLETE", [3.0], None)
    state, _, err = studylib.outcome({"status": "diverged", "error": "non-finite values in wm/loss"}, ["objective"])
    assert state == "FAIL" and "diverged" in err and "wm/loss" in err
    assert studylib.outcome({"status": "pruned"}, ["objective"])[0] == "PRUNED"
    state, _, err = studylib.outcome({"status": "complete", "objective": math.nan}, ["objective"])
    assert state == "FAIL" and "nan" in err
    s = {"status": "complete", "objective": 1.0, "wall_time_s": 7200, "gpus": 1, "final": {"eval/train/return": 5.0}}
    assert studylib.outcome(s, ["eval/train/return", "gpu_hours"]) == ("COMPLETE", [5.0, 2.0], None)


def test_reap_fails_and_retries_dead_and_silent_trials(tmp_path):
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study(storage=studylib.open_storage(str(tmp_path / "j.journal")))
    hb = tmp_path / "heartbeats"
    dead = subprocess.Popen(["true"])
    dead.wait()
    t_dead, t_silent, t_alive = study.ask(), study.ask(), study.ask()
    for t in (t_dead, t_silent, t_alive):
        t.suggest_float("x", 0, 1)
    hb.mkdir()
    studylib.write_json(hb / f"{t_dead.number}.json", {**studylib.me("w0"), "pid": dead.pid, "pid_start": None})
    studylib.write_json(hb / f"{t_silent.number}.json", {"worker": "w1", "host": "elsewhere", "pid": 1})
    os.utime(hb / f"{t_silent.number}.json", (0, 0))        # silent since 1970
    beat = studylib.Heartbeat(hb, t_alive.number, "w2", every_s=0.05)  # this process: alive
    notes = studylib.reap(study, hb, grace_s=60, retry=True)
    beat.stop()
    assert len(notes) == 2, notes
    trials = study.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]
    assert "process is gone" in trials[0].user_attrs["error"] and "no heartbeat" in trials[1].user_attrs["error"]
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [0, 1]
    assert studylib.budget_used(study) == 1  # retried failures do not count; waiting retries not yet


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2 before anything is created or submitted (in-process, fast)
# ---------------------------------------------------------------------------------------------

def _main(argv, capsys):
    from metawm.sweep import main

    rc = main(argv)
    return rc, " ".join(capsys.readouterr().err.split())  # undo the error's line wrapping


def test_bad_inputs_exit_2(tmp_path, capsys, monkeypatch):
    out = ["sweep_dir=" + str(tmp_path / "never")]
    rc, err = _main(["+task=", "agent=random"] + out, capsys)
    assert rc == 2 and "cartpole_physics" in err  # lists the suites
    rc, err = _main(["+task=cartpole_physics", "sweep=nope"] + out, capsys)
    assert rc == 2 and "smoke" in err and "random" in err
    rc, err = _main(BASE + ["launcher=slurm"] + out, capsys)
    assert rc == 2 and "cluster=NAME" in err
    bad = space_file(tmp_path, "params:\n  meta.inner_steps: {type: int, low: 5, high: 1}\n")
    rc, err = _main(BASE + [f"sweep={bad}"] + out, capsys)
    assert rc == 2 and bad in err and "meta.inner_steps" in err and "low (5) > high (1)" in err
    typo = space_file(tmp_path, "params:\n  meta.inner_stepz: {type: int, low: 1, high: 5}\n", "typo.yaml")
    rc, err = _main(BASE + [f"sweep={typo}"] + out, capsys)
    assert rc == 2 and "meta.inner_stepz" in err and "inner_steps" in err  # names it and what exists
    rc, err = _main(BASE + ["sweep=smoke", "sampler=annealing"] + out, capsys)
    assert rc == 2 and "tpe" in err
    rc, err = _main(BASE + ["sweep=smoke", "objectives={objective:up}"] + out, capsys)
    assert rc == 2 and "maximize or minimize" in err
    rc, err = _main(BASE + ["sweep=smoke", "sampler=grid"] + out, capsys)
    assert rc == 2 and "+agent.lr" in err and "grid" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    rc, err = _main(BASE + ["sweep=smoke", "launcher=slurm", "cluster=local"] + out, capsys)
    assert rc == 2 and "no SLURM is reachable" in err and "sbatch" in err
    assert not (tmp_path / "never").exists()


def test_help_and_cfg(capsys):
    rc, _ = _main(["--help"], capsys)
    assert rc == 0
    from metawm.sweep import main

    assert main(BASE + ["sweep=smoke", "--cfg", "n_trials=3"]) == 0
    out = capsys.readouterr().out
    assert "n_trials: 3" in out and "cartpole_physics-random-none-smoke-smoke" in out


# ---------------------------------------------------------------------------------------------
# End to end (subprocesses, as a user runs them)
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_local_sweep_completes_and_continues_without_repeating(tmp_path):
    d = tmp_path / "study"
    args = BASE + ["sweep=smoke", "workers=2", "pruner=none", "sampler_seed=0", f"sweep_dir={d}"]
    r = sweep(*args, "n_trials=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "best overrides: meta.inner_steps=" in r.stdout and r.stdout.strip().endswith(f"sweep directory: {d}")
    assert (d / "optimization_history.png").stat().st_size > 1000 and (d / "study.journal").exists()
    study = load(d)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    stamps = {t.number: (d / "trials" / f"{t.number:04d}" / "summary.json").stat().st_mtime_ns for t in study.trials}
    # the printed override line trains the same config (the line is valid for metawm.train)
    line = r.stdout.split("best overrides: ")[1].splitlines()[0]
    assert line.startswith("meta.inner_steps=") and "+agent.lr=" in line
    train_it = r.stdout.split("train it: python -m metawm.train ")[1].splitlines()[0].split()
    t = subprocess.run([sys.executable, "-m", "metawm.train", *train_it, f"run_dir={tmp_path / 'again'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert t.returncode == 0, t.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["objective"]
    assert again == load(d).best_value  # the printed command reproduces the best trial (seeded, CPU)

    r = sweep(*args, "n_trials=5")
    assert r.returncode == 0, r.stderr[-3000:]
    study = load(d)
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    for n, stamp in stamps.items():  # the first three were not run again
        assert (d / "trials" / f"{n:04d}" / "summary.json").stat().st_mtime_ns == stamp
    assert (d / "param_importances.png").exists()

    r = sweep(*args, "n_trials=5")  # nothing left: report only
    assert r.returncode == 0 and "starting" not in r.stderr and len(load(d).trials) == 5

    r = sweep(*[a for a in args if not a.startswith("sweep_dir")], f"sweep_dir={d}", "steps=800", "n_trials=6")
    assert r.returncode == 2 and "steps" in r.stderr  # another experiment in the same study: refused


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_study_goes_on_with_wandb_runs(tmp_path):
    d = tmp_path / "study"
    space = space_file(tmp_path, "params:\n  meta.inner_steps: {type: categorical, choices: [0, 100]}\n")
    r = sweep(*[a for a in BASE if a != "tracker=disabled"], "tracker=offline", f"sweep={space}", "sampler=grid",
              "n_trials=9", "pruner=none", f"sweep_dir={d}")
    assert r.returncode == 0, r.stderr[-3000:]
    study = load(d)
    by_state = {t.state.name: t for t in study.trials}
    assert len(study.trials) == 2 and set(by_state) == {"COMPLETE", "FAIL"}  # grid of 2 caps n_trials
    failed = by_state["FAIL"]
    assert failed.params == {"meta.inner_steps": 0} and "took no env steps" in failed.user_attrs["error"]
    assert "took no env steps" in r.stderr and "best overrides: meta.inner_steps=100" in r.stdout
    # one offline W&B run per trial, grouped by the study, job_type trial; plus the study run
    name = study.study_name.encode()
    for t in study.trials:
        (run,) = (d / "trials" / f"{t.number:04d}" / "wandb").glob("offline-run-*/run-*.wandb")
        data = run.read_bytes()
        assert name in data and b"trial" in data
    (study_run,) = (d / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"best/overrides" in study_run.read_bytes()


@pytest.mark.slow
def test_killed_worker_trial_resumes_from_its_checkpoint(tmp_path):
    d = tmp_path / "study"
    args = BASE + ["sweep=smoke", "pruner=none", "n_trials=1", "sampler_seed=1", f"sweep_dir={d}"]
    r = sweep(*args, env={"METAWM_CRASH_AFTER_STEPS": "250"})  # the worker process dies mid-trial
    assert r.returncode == 3 and "re-run the same command" in r.stderr
    assert [t.state.name for t in load(d).trials] == ["RUNNING"]
    r = sweep(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    (t,) = load(d).trials
    assert t.state.name == "COMPLETE"
    log = (d / "logs" / "worker-local-0.log").read_text()
    assert "resuming trial 0 (attempt 2)" in log and "resuming " + str(d / "trials" / "0000") in log
    summary = json.loads((d / "trials" / "0000" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["env_steps"] >= 400
    steps = [json.loads(line)["step"] for line in (d / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the resumed metrics continue, no duplicated rows


@pytest.mark.slow
def test_stale_running_trial_of_a_dead_worker_is_reaped_and_retried(tmp_path):
    import optuna

    d = tmp_path / "study"
    args = BASE + ["sweep=smoke", "pruner=none", f"sweep_dir={d}"]
    r = sweep(*args, "n_trials=0")  # creates the study only
    assert r.returncode == 3 and (d / "study.journal").exists()
    # a trial started by a worker that then vanished (killed with its machine, say)
    study = load(d)
    from metawm.sweep import Plan

    trial = study.ask()
    params = Plan.load(d).space_obj().sample(trial)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (d / "heartbeats").mkdir()
    studylib.write_json(d / "heartbeats" / f"{trial.number}.json", {**studylib.me("gone"), "pid": dead.pid,
                                                                     "pid_start": None})
    r = sweep(*args, "n_trials=1")
    assert r.returncode == 0, r.stderr[-3000:]
    trials = load(d).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert "died" in trials[0].user_attrs["error"] and trials[0].user_attrs["retried"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == params
    assert "reaped trial 0" in (d / "logs" / "worker-local-0.log").read_text()
    assert isinstance(optuna.__version__, str)
