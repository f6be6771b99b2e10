"""benchmarks/meta_adaptation.py: every suite's overrides compose (a wrong override failed every
cartpole_physics run at once with rc=2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from metawm.infra import config as configlib

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "meta_adaptation.py"


def load_script():
    spec = importlib.util.spec_from_file_location("meta_adaptation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("suite", ["point_nav", "cartpole_physics", "cartpole_actuator", "gridworld_goals", "point_nav_paper",
                                   "point_nav_paper_40k", "gridworld_paper"])
def test_every_learner_and_suite_override_composes(suite):
    ma = load_script()
    extra = ma.SUITES[suite].get("extra", [])
    task = ma.SUITES[suite].get("task", suite)
    for learner in ma.SUITES[suite]["learners"]:
        own = ma.SUITES[suite].get("learner_extra", {}).get(learner, [])
        train_extra = ma.SUITES[suite].get("train_extra", [])
        cfg = configlib.compose("train", [f"+task={task}", *ma.AGENT, *ma.LEARNERS[learner], *ma.COMMON, *extra,
                                          *train_extra, *own])
        assert cfg.task.name == task
        if task == "gridworld_goals":   # train-only agent settings reach the agent config
            assert cfg.agent.size == "medium" and cfg.agent.candidate_repeat == 0.7
    if suite.startswith("cartpole"):
        assert cfg.task.max_episode_steps == 200
    cfg = configlib.compose("adapt", ["checkpoint=x", f"+task={task}", "split=test", "shots=1", *extra])
    assert cfg.task.name == task


def test_varibad_decoder_bench_trains_and_reports_every_row():
    """benchmarks/varibad_decoder.py runs end to end on a tiny budget and prints one row per belief time."""
    import subprocess
    import sys

    script = SCRIPT.parent / "varibad_decoder.py"
    out = subprocess.run([sys.executable, str(script), "--updates", "3", "--tasks", "4", "--variant",
                          "hidden=16,embed=8,lr=0.003"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if "trained" not in line]
    assert [int(r[1]) for r in rows] == [0, 25, 50, 99]
    for r in rows:   # argmax distance to the goal lies in [0, 1.2] (goals on the 0.5 circle, grid within 0.7)
        assert 0.0 <= float(r[2]) <= 1.2 and abs(float(r[3])) < 10.0 and float(r[4]) > 0.0
