"""Dreamer 4 through the real entry points: ``metawm.train agent=dreamer4`` killed and resumed, and
the ``metawm.dreamer4`` phases end to end (record -> pretrain -> finetune -> imagine), resumed.

Only the runs that must die (``METAWM_CRASH_AFTER_STEPS`` calls ``os._exit``) run in a subprocess;
the others call the entry points' ``main`` in this process, which is what ``python -m`` runs too,
without paying the imports again on a busy 2-core machine."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import read_jsonl, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: threads only add overhead on 2 busy cores
TRAIN = ["+task=cartpole_physics", "agent=dreamer4", "+exp=smoke", "tracker=disabled", "progress=false", "steps=120",
         "meta.inner_steps=40", "eval.every=120", "eval.tasks=1", "checkpoint_every=40",
         "agent.overrides.learn_start=30", "agent.overrides.train_ratio=8", "agent.overrides.dynamics_start=2",
         "agent.overrides.imagination_start=12"]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_train_with_dreamer4_is_killed_and_resumes_byte_identically(tmp_path, capsys):
    from metawm.train import main as train

    killed = run_cli("metawm.train", *TRAIN, f"run_dir={tmp_path / 'k'}",
                     env={**ONE_THREAD, "METAWM_CRASH_AFTER_STEPS": "80"})
    assert killed.returncode == 137, killed.stderr
    assert train([*TRAIN, f"run_dir={tmp_path / 'k'}"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert train([*TRAIN, f"run_dir={tmp_path / 'ref'}"]) == 0
    assert (tmp_path / "k" / "metrics.jsonl").read_bytes() == (tmp_path / "ref" / "metrics.jsonl").read_bytes()
    rows = read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    assert any("imagine/policy_loss" in r for r in rows) and any("wm/dynamics_loss" in r for r in rows)
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["agent_info"]["preset"] == "tiny" and summary["agent_info"]["params"] > 0


def test_the_three_phases_run_from_the_cli_and_resume(tmp_path, capsys):
    from metawm.dreamer4 import main

    common = ["+task=point_nav", "pixels=16", "agent.size=tiny", f"run_dir={tmp_path / 'p'}", "progress=false",
              "log_every=2", "checkpoint_every=3", "eval.every=3", "eval.episodes=1", "task.horizon=20"]
    assert main(["record", *common, "record.steps=120", "record.envs=2", "record.actions=0.5"]) == 0
    meta = json.loads((tmp_path / "p" / "dataset" / "meta.json").read_text())
    assert meta["recorder"] == "random" and 0 < meta["labeled_steps"] < meta["steps"]
    pre = ["pretrain.tokenizer_steps=3", "pretrain.dynamics_steps=4"]
    killed = run_cli("metawm.dreamer4", "pretrain", *common, *pre, env={**ONE_THREAD, "METAWM_CRASH_AFTER_STEPS": "4"})
    assert killed.returncode == 137, killed.stderr
    capsys.readouterr()
    assert main(["pretrain", *common, *pre]) == 0
    assert "resuming pretrain at update 3" in capsys.readouterr().err
    assert main(["pretrain", *common, *pre, f"run_dir={tmp_path / 'q'}", f"dataset={tmp_path / 'p' / 'dataset'}"]) == 0
    assert (tmp_path / "p" / "pretrain" / "metrics.jsonl").read_bytes() == \
        (tmp_path / "q" / "pretrain" / "metrics.jsonl").read_bytes()
    assert list((tmp_path / "p" / "pretrain" / "plots").glob("*.png"))
    assert main(["finetune", *common, "finetune.steps=3"]) == 0
    assert main(["imagine", *common, "imagine.steps=3"]) == 0
    summary = json.loads((tmp_path / "p" / "imagine" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["eval_return_start"] is not None
    rows = read_jsonl(tmp_path / "p" / "imagine" / "metrics.jsonl")
    assert rows[0]["step"] == 0 and "eval/return" in rows[0] and "imagine/policy_loss" in rows[-1]
    capsys.readouterr()
    assert main(["imagine", *common, "imagine.steps=3"]) == 0
    assert "already complete" in capsys.readouterr().err


def test_smoke_preset_shrinks_the_phase_budgets():
    """+exp=smoke is the README's quick look for every entry point: for metawm.dreamer4 it also cuts
    the recorded steps and the updates of every phase (the measured quick look: 3-11 s per phase)."""
    from metawm.infra import config as configlib

    full = configlib.compose("dreamer4", ["+task=point_nav", "pixels=16"])
    smoke = configlib.compose("dreamer4", ["+task=point_nav", "pixels=16", "+exp=smoke"])
    assert smoke.agent.size == "tiny" and smoke.record.steps <= full.record.steps // 10
    for phase, key in [("pretrain", "tokenizer_steps"), ("pretrain", "dynamics_steps"), ("finetune", "steps"),
                       ("imagine", "steps")]:
        assert smoke[phase][key] <= full[phase][key] // 10
        assert smoke.eval.every <= 2 * smoke[phase][key]


@pytest.mark.parametrize("args, message", [
    ([], r"No task given"),
    (["nope", "+task=point_nav"], r"Unknown command 'nope'\. Valid choices: finetune, imagine, pretrain, record"),
    (["pretrain", "+task=point_nav", "agent.size=huge"], r"Unknown dreamer4 size preset 'huge'"),
    (["record", "+task=gridworld_goals", "pixels=16"], r"Unknown suite with a pixel renderer 'gridworld_goals'"),
    (["record", "+task=point_nav", "record.agent=nope"], r"Unknown record.agent 'nope'\. Valid choices: .*random"),
    (["finetune", "+task=point_nav", "agent.size=tiny"], r"finetune starts from a finished pretrain phase"),
    (["pretrain", "+task=point_nav", "agent.size=tiny"], r"is not a dreamer4 dataset"),
])
def test_cli_bad_input_is_a_clean_error(tmp_path, capsys, args, message):
    from metawm.dreamer4 import main

    argv = [*args, f"run_dir={tmp_path / 'r'}"] if args else ["record", f"run_dir={tmp_path / 'r'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error (metawm.dreamer4): ") and re.search(message, " ".join(err.split())), err
