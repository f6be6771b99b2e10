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


@pytest.mark.parametrize("suite", ["point_nav", "cartpole_physics", "gridworld_goals"])
def test_every_learner_and_suite_override_composes(suite):
    ma = load_script()
    extra = ma.SUITES[suite].get("extra", [])
    for learner in ma.SUITES[suite]["learners"]:
        own = ma.SUITES[suite].get("learner_extra", {}).get(learner, [])
        train_extra = ma.SUITES[suite].get("train_extra", [])
        cfg = configlib.compose("train", [f"+task={suite}", *ma.AGENT, *ma.LEARNERS[learner], *ma.COMMON, *extra,
                                          *train_extra, *own])
        assert cfg.task.name == suite
        if suite == "gridworld_goals":   # train-only agent settings reach the agent config
            assert cfg.agent.size == "medium" and cfg.agent.candidate_repeat == 0.7
    if suite == "cartpole_physics":
        assert cfg.task.max_episode_steps == 200
    cfg = configlib.compose("adapt", ["checkpoint=x", f"+task={suite}", "split=test", "shots=1", *extra])
    assert cfg.task.name == suite
