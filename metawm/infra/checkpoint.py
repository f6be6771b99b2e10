"""Atomic, self-describing checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed to disk and then
renamed over the old one (``os.replace`` is atomic on POSIX), so a killed process never leaves a
corrupt ``latest.ckpt``. Every checkpoint carries a header (format, version, agent, meta-learner,
task suite, env step) so that loading the wrong kind of file says what was expected.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from metawm.infra.errors import UserError

FORMAT = "metawm-checkpoint"
VERSION = 1


def save(path: str | Path, header: Mapping[str, Any], state: Mapping[str, Any]) -> Path:
    """Write ``{"header": ..., "state": ...}`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"header": {"format": FORMAT, "version": VERSION, **header}, "state": dict(state)}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str | Path, *, expect: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint; a missing, truncated or foreign file raises :class:`UserError`.

    ``expect`` maps header keys to required values (e.g. ``{"agent": "dreamerv3"}``).
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "latest.ckpt", path / "latest.ckpt"):
            if candidate.is_file():
                path = candidate
                break
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist. Pass a .ckpt file or a run directory "
                        "that has checkpoints/latest.ckpt.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError,
            io.UnsupportedOperation) as e:
        raise UserError(f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read "
                        f"({type(e).__name__}: {str(e)[:200]}).") from None
    header = payload.get("header") if isinstance(payload, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a metawm checkpoint (no metawm header found).")
    if header.get("version") != VERSION:
        raise UserError(f"checkpoint {str(path)!r} has format version {header.get('version')}, "
                        f"this metawm reads version {VERSION}.")
    for key, want in (expect or {}).items():
        if want is not None and header.get(key) != want:
            raise UserError(f"checkpoint {str(path)!r} holds {key}={header.get(key)!r}, but {key}={want!r} "
                            f"was expected.")
    payload["path"] = str(path)
    return payload
