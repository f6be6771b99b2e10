"""Tier 3: ``python -m metawm.train`` run in a subprocess, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import read_jsonl, run_cli
from metawm.infra.config import group_choices

SMOKE = ["+exp=smoke", "tracker=disabled", "progress=false"]


def test_smoke_run_owns_a_complete_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli("metawm.train", "+task=cartpole_physics", "agent=random", "meta=none", "+exp=smoke",
                  f"run_dir={run_dir}")  # W&B offline (the default tracker)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"run directory: {run_dir}"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest.ckpt", "plots/curves.png"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["env_steps"] >= 400
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["eval/test/return"] == summary["objective"] > 0
    assert all("time/outer_step_s" not in r for r in rows)  # wall-clock stays out of metrics.jsonl
    assert list((run_dir / "wandb").glob("offline-run-*")), "an offline W&B run is recorded"


def test_same_seed_same_metrics_and_default_run_dir_resumes(tmp_path):
    a = run_cli("metawm.train", "+task=cartpole_physics", *SMOKE, "seed=5", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    run_dir = tmp_path / a.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    assert run_dir.parent.parent.name == "cartpole_physics"
    other = run_cli("metawm.train", "+task=cartpole_physics", *SMOKE, "seed=5", f"run_dir={tmp_path / 'b'}")
    assert other.returncode == 0, other.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()
    again = run_cli("metawm.train", "+task=cartpole_physics", *SMOKE, "seed=5", cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.parametrize("suite", ["cartpole_physics", "cheetah_vel", "atari_suite"])  # python, MuJoCo, ALE
def test_killed_run_resumes_and_continues_identically(tmp_path, suite):
    """The kill lands mid-episode: the resumed run must restore every env's exact state."""
    args = [f"+task={suite}", *SMOKE, "steps=1000", "checkpoint_every=300", "eval.every=300",
            "task.max_episode_steps=450"]
    ref = run_cli("metawm.train", *args, f"run_dir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr
    killed = run_cli("metawm.train", *args, f"run_dir={tmp_path / 'k'}", env={"METAWM_CRASH_AFTER_STEPS": "700"})
    assert killed.returncode == 137
    partial, full = read_jsonl(tmp_path / "k" / "metrics.jsonl"), read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    assert partial == full[: len(partial)] and len(partial) < len(full)
    assert partial[-1]["step"] >= 700  # it logged past its last checkpoint before dying
    resumed = run_cli("metawm.train", *args, f"run_dir={tmp_path / 'k'}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert (tmp_path / "k" / "metrics.jsonl").read_bytes() == (tmp_path / "ref" / "metrics.jsonl").read_bytes()
    assert json.loads((tmp_path / "k" / "summary.json").read_text())["objective"] == \
        json.loads((tmp_path / "ref" / "summary.json").read_text())["objective"]


@pytest.mark.parametrize("args, message", [
    (["+task=nope"], r"Unknown task 'nope'\. Valid choices: .*cartpole_physics"),
    ([], r"No task given\. Choose one with \+task=NAME from: .*cartpole_physics"),
    (["+task="], r"No task given after \+task="),
    (["+task=cartpole_physics", "agent=nope"], r"Unknown agent 'nope'\. Valid choices: .*random"),
    (["+task=cartpole_physics", "meta=nope"], r"Unknown meta 'nope'\. Valid choices: .*none"),
    (["+task=cartpole_physics", "+exp=nope"], r"Unknown exp 'nope'\. Valid choices: .*smoke"),
    (["+task=cartpole_physics", "tracker=nope"], r"Unknown tracker 'nope'\. Valid choices: disabled, offline, online"),
    (["+task=cartpole_physics", "seed=[1,"], r"Malformed override 'seed=\[1,'"),
    (["+task=cartpole_physics", "no_such_key=1"], r"Could not override 'no_such_key'"),
    (["+task=cartpole_physics", "device=tpu"], r"device='tpu' is not a device name"),
    (["+task=cartpole_physics", "eval.splits=[val]"], r"Unknown split .* 'val'\. Valid choices: test, train"),
    (["+task=cartpole_physics", "resume=maybe"], r"resume='maybe' is not valid"),
    (["+task=cheetah_vel", "agent=muzero"], r"agent=muzero supports discrete action spaces only"),
    (["+task=cartpole_physics", "agent=dreamerv3", "agent.size=huge"], r"Unknown DreamerV3 size preset .* tiny"),
])
def test_bad_input_gives_a_clean_error(tmp_path, args, message):
    res = run_cli("metawm.train", *args, *SMOKE[1:], f"run_dir={tmp_path / 'r'}")
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error (metawm.train): ")
    import re
    assert re.search(message, " ".join(res.stderr.split())), res.stderr


def test_changed_config_on_existing_run_dir_is_refused(tmp_path):
    assert run_cli("metawm.train", "+task=cartpole_physics", *SMOKE, f"run_dir={tmp_path}").returncode == 0
    res = run_cli("metawm.train", "+task=cartpole_physics", *SMOKE, "seed=9", f"run_dir={tmp_path}")
    assert res.returncode == 2 and "seed: 0 -> 9" in res.stderr


def test_help_and_cfg():
    res = run_cli("metawm.train", "--help")
    assert res.returncode == 0 and "+task:" in res.stdout and "cartpole_physics" in res.stdout
    res = run_cli("metawm.train", "+task=cartpole_physics", "seed=4", "--cfg")
    assert res.returncode == 0 and "seed: 4" in res.stdout


def test_help_piped_into_a_reader_that_closes_early_is_quiet():
    """``python -m metawm.train --help | head -1``: the closed pipe is not a traceback. Here the
    reader has gone before the first write, so the write fails every time (no race with ``head``)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run([sys.executable, "-m", "metawm.train", "--help"], stdout=write_end,
                             stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    err = res.stderr.decode()
    assert res.returncode == 0 and "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("suite", group_choices("task"))
def test_every_suite_runs_a_random_smoke(tmp_path, suite):
    res = run_cli("metawm.train", f"+task={suite}", "agent=random", *SMOKE, f"run_dir={tmp_path}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((Path(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["objective"] is not None


def test_wandb_online_without_network_falls_back_to_offline_quickly(tmp_path):
    import time

    t0 = time.perf_counter()
    res = run_cli("metawm.train", "+task=cartpole_physics", "+exp=smoke", "progress=false", "tracker=online",
                  f"run_dir={tmp_path}", env={"WANDB_MODE": "", "WANDB_BASE_URL": "http://127.0.0.1:9"})
    assert res.returncode == 0, res.stderr
    assert "not reachable; logging offline instead" in res.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert time.perf_counter() - t0 < 60  # online init without network would block ~100 s


def test_corrupt_checkpoint_in_run_dir_is_reported(tmp_path):
    args = ["+task=cartpole_physics", *SMOKE, "steps=600", f"run_dir={tmp_path}"]
    assert run_cli("metawm.train", *args, env={"METAWM_CRASH_AFTER_STEPS": "400"}).returncode == 137
    latest = tmp_path / "checkpoints" / "latest.ckpt"
    latest.write_bytes(latest.read_bytes()[:100])
    res = run_cli("metawm.train", *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "latest.ckpt" in res.stderr and "corrupt or truncated" in res.stderr
