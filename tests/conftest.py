"""Shared test helpers: run the real entry points in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 300,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` from the repository root, W&B offline, no live progress."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT),
                **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def metaworld_cache(tmp_path_factory):
    """Meta-World goal files go to a temporary cache, not the user's home."""
    old = os.environ.get("METAWM_CACHE_DIR")
    os.environ["METAWM_CACHE_DIR"] = str(tmp_path_factory.mktemp("metawm-cache"))
    yield
    if old is None:
        os.environ.pop("METAWM_CACHE_DIR", None)
    else:
        os.environ["METAWM_CACHE_DIR"] = old
