"""The real entry point: a MuZero run killed mid-way resumes to byte-identical metrics."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["+task=cartpole_physics", "agent=muzero", "+exp=smoke", "tracker=disabled", "progress=false", "steps=300",
        "eval.every=150", "checkpoint_every=100", "meta.inner_steps=100"]


def train(run_dir: Path, crash_after: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("METAWM_CRASH_AFTER_STEPS", None)
    if crash_after is not None:
        env["METAWM_CRASH_AFTER_STEPS"] = str(crash_after)
    return subprocess.run([sys.executable, "-m", "metawm.train", *ARGS, f"run_dir={run_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_crashed_run_resumes_to_the_same_metrics(tmp_path):
    whole = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    crashed = train(tmp_path / "crashed", crash_after=200)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert (tmp_path / "crashed" / "checkpoints" / "latest.ckpt").exists()
    resumed = train(tmp_path / "crashed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    a = (tmp_path / "whole" / "metrics.jsonl").read_bytes()
    b = (tmp_path / "crashed" / "metrics.jsonl").read_bytes()
    assert b"model/loss" in a and b"eval/test/return" in a   # it trained and evaluated
    assert a == b
