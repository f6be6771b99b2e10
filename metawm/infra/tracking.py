"""Trackers are sinks for flat metric dicts. This is the only module that imports wandb.

* :class:`JsonlSink` always: one JSON object per log step in ``metrics.jsonl``. It can be
  truncated back to a checkpoint's byte offset so a resumed run's file continues exactly.
* :class:`ConsoleSink`: a live progress bar (rich) with rate and ETA and the headline metrics.
* :class:`WandbSink`: ``offline`` (default), ``online`` or ``disabled``. Online mode first checks
  that the W&B host is reachable (an unreachable host makes ``wandb.init`` block ~100 s and
  raise); if not, it falls back to offline and says so. The run id is derived from the run and
  kept in the checkpoint, so requeues and resumes continue the same W&B run.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from metawm.types import Metrics


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


class JsonlSink:
    """Append-only ``metrics.jsonl``; ``offset`` is what a checkpoint records."""

    def __init__(self, path: str | Path, truncate_to: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(truncate_to)
        elif truncate_to is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "ab")

    @property
    def offset(self) -> int:
        self._f.flush()
        return self._f.tell()

    def log(self, metrics: Metrics, step: int) -> None:
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._f.write((json.dumps(row, sort_keys=True) + "\n").encode())
        self._f.flush()

    def summary(self, summary: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        self._f.close()


class ConsoleSink:
    """Live progress (rich) over env steps with rate and ETA; prints headline metrics."""

    def __init__(self, total: int, start: int = 0, headline: Iterable[str] = (), enabled: bool = True,
                 description: str = "train"):
        self.enabled = enabled
        self.headline = tuple(headline)
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        console = Console(file=sys.stderr)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} steps/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
            transient=False, refresh_per_second=2, disable=not console.is_terminal and os.environ.get(
                "METAWM_PROGRESS", "") != "1")
        self._task = self._progress.add_task(description, total=total, completed=start, rate="-", info="")
        self._t0, self._s0 = time.perf_counter(), start
        self._progress.start()
        self._console = console
        self._plain = not console.is_terminal

    def log(self, metrics: Metrics, step: int) -> None:
        if not self.enabled:
            return
        rate = (step - self._s0) / max(time.perf_counter() - self._t0, 1e-9)
        shown = {k: metrics[k] for k in self.headline if k in metrics and metrics[k] is not None}
        info = "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
        self._progress.update(self._task, completed=step, rate=f"{rate:,.0f}", info=info)
        if self._plain and shown:  # no live display (a pipe, a SLURM log): print a line instead
            print(f"[{step}] " + info, file=sys.stderr, flush=True)

    def summary(self, summary: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def network_reachable(url: str = "https://api.wandb.ai", timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class WandbSink:
    """Weights & Biases. ``mode`` is ``offline``, ``online`` or ``disabled``."""

    def __init__(self, *, mode: str, project: str, group: str | None, name: str, run_id: str,
                 directory: str | Path, config: Mapping[str, Any], job_type: str = "train",
                 tags: Iterable[str] = (), entity: str | None = None):
        self.run = None
        if mode == "disabled":
            return
        if mode == "online":
            host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            if not network_reachable(host):
                print(f"wandb: {host} is not reachable; logging offline instead (upload later with "
                      f"`wandb sync {directory}/wandb/offline-run-*`).", file=sys.stderr)
                mode = "offline"
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        # The mode decided here (after the reachability check) is the one W&B uses: a stale or
        # empty WANDB_MODE in the environment would otherwise override it or fail validation.
        os.environ["WANDB_MODE"] = mode
        Path(directory).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                mode=mode, project=project, group=group, name=name, id=run_id, resume="allow",
                dir=str(directory), config=dict(config), job_type=job_type, tags=list(tags), entity=entity,
                reinit="finish_previous", settings=wandb.Settings(init_timeout=60, console="off",
                                                                  x_disable_stats=True))
        except Exception as e:  # never let tracking kill a training run
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"wandb: init failed ({type(e).__name__}: {first}); continuing without W&B.", file=sys.stderr)
            self.run = None

    def _guard(self, what: str, fn) -> None:
        """Run a W&B call; on failure (e.g. its service killed by a SIGTERM) warn once and stop
        logging to W&B: tracking must never end a training run."""
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:
            print(f"wandb: {what} failed ({type(e).__name__}: {str(e)[:200]}); continuing without W&B "
                  "(metrics.jsonl is complete).", file=sys.stderr)
            self.run = None

    def log(self, metrics: Metrics, step: int) -> None:
        self._guard("log", lambda: self.run.log({k: _clean(v) for k, v in metrics.items() if v is not None},
                                                step=int(step)))

    def summary(self, summary: Mapping[str, Any]) -> None:
        def write():
            for k, v in summary.items():
                if isinstance(v, (int, float, str, bool)):
                    self.run.summary[k] = v

        self._guard("summary", write)

    def close(self) -> None:
        self._guard("finish", lambda: self.run.finish())
        self.run = None


class Tee:
    """Fan metrics out to several sinks."""

    def __init__(self, *sinks: Any):
        self.sinks = [s for s in sinks if s is not None]

    def log(self, metrics: Metrics, step: int) -> None:
        for s in self.sinks:
            s.log(metrics, step)

    def summary(self, summary: Mapping[str, Any]) -> None:
        for s in self.sinks:
            s.summary(summary)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
