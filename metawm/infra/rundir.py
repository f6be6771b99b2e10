"""Every run owns a directory::

    <run_dir>/config.yaml  metrics.jsonl  summary.json  checkpoints/{latest,best}.ckpt  plots/

Re-running the same command finds the same directory (its name holds a hash of the config) and
resumes it; a finished run is reported, not repeated. A directory whose ``config.yaml``
differs from the new config is refused with the differing keys named, so no run is ever
silently mixed with another.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from metawm.infra.errors import UserError

# Keys that do not change what a run computes: they may differ between a run and its resume.
RESUME_NEUTRAL = ("run_dir", "resume", "tracker", "progress", "plots", "device")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_hash(cfg: DictConfig) -> str:
    data = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in RESUME_NEUTRAL}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_run_dir(cfg: DictConfig, root: str = "runs") -> Path:
    return Path(root) / cfg.task.name / f"{cfg.agent.name}-{cfg.meta.name}" / \
        f"{cfg.get('exp_name', 'default')}-s{cfg.seed}-{config_hash(cfg)}"


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a = {k: v for k, v in _flatten(old).items() if k.split(".")[0] not in RESUME_NEUTRAL}
    b = {k: v for k, v in _flatten(new).items() if k.split(".")[0] not in RESUME_NEUTRAL}
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    latest = property(lambda self: self.path / "checkpoints" / "latest.ckpt")
    best = property(lambda self: self.path / "checkpoints" / "best.ckpt")
    plots = property(lambda self: self.path / "plots")

    def prepare(self, cfg: DictConfig, resume: str = "auto") -> str:
        """Create or check the directory. Returns ``fresh``, ``resume`` or ``complete``."""
        if resume not in ("auto", "never"):
            raise UserError(f"resume={resume!r} is not valid; use resume=auto or resume=never.")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run_dir {str(self.path)!r} exists and is not a directory.")
        state = "fresh"
        if self.config.exists():
            old = OmegaConf.to_container(OmegaConf.load(self.config), resolve=True)
            diff = config_diff(old, OmegaConf.to_container(cfg, resolve=True))
            if diff:
                raise UserError(f"run_dir {str(self.path)!r} holds a run with a different config ("
                                + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
                                + "). Choose another run_dir, or delete that directory to start over.")
            if self.summary_path.exists() and self.read_summary().get("status") == "complete":
                state = "complete"
            elif self.latest.exists():
                state = "resume"
        if state != "fresh" and resume == "never":
            raise UserError(f"run_dir {str(self.path)!r} already holds a {state} run and resume=never was "
                            "given. Choose another run_dir or drop resume=never to continue it.")
        for d in (self.path, self.checkpoints, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        if state == "fresh":
            self._write_text(self.config, OmegaConf.to_yaml(cfg, resolve=True))
        return state

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self._write_text(self.summary_path, json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
