"""A sequence replay for recurrent world-model agents, generic over the keys it stores.

Layout. Every environment of the batch that ``add`` receives is a *stream*; stream ``s`` owns a
preallocated numpy ring of ``capacity // streams`` time steps per key (arrays of shape
``(streams, per_stream, *shape)``). Steps are stored with their own dtype, so uint8 images stay
uint8: a stored 64x64x3 frame costs its 12,288 bytes plus the few bytes of the step's scalars
(``bytes_per_step``), never a float copy. Arrays are allocated with ``np.zeros`` and so are only
committed by the OS as they fill.

Sampling ("the Dreamer way"). A training example is a window of ``length`` consecutive steps of
one stream, drawn uniformly among all windows that lie inside the stream's valid data (for a full
ring: not across the write position, where the oldest and newest data meet). Windows may contain
episode boundaries: the Dreamer step convention (:mod:`metawm.types`) marks the first step of
every episode with ``is_first``, and the recurrent model resets its state there, exactly as the
authors' replay does (Hafner et al. 2023, "Replay buffer": uniform sampling of fixed-length
sequences from the online stream, not from single episodes). Nothing is padded or masked.

The number of streams is fixed by the first ``add`` (the agent's number of environments). A later
``add`` with fewer environments writes streams ``0..n-1``; one with more adds streams with the
same per-stream capacity (documented growth, not silent truncation). Only steps that a stream
actually received can be sampled.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch

from metawm.infra.errors import UserError


class SequenceReplay:
    """Per-stream ring buffers of steps with uniform sampling of (batch, length) windows.

    ``capacity``: total time steps (split evenly over the streams of the first ``add``);
    ``length``: window length of :meth:`sample`; ``keys``: which step keys to store (default:
    all keys of the first step added).
    """

    def __init__(self, capacity: int, length: int, keys: Iterable[str] | None = None):
        if int(length) < 1 or int(capacity) < int(length):
            raise UserError(f"replay capacity ({capacity}) must hold at least one window of length {length}.")
        self.capacity = int(capacity)
        self.length = int(length)
        self.keys = tuple(keys) if keys is not None else None
        self.per_stream = 0
        self.data: dict[str, np.ndarray] = {}
        self.pos = np.zeros(0, np.int64)     # next write index per stream
        self.count = np.zeros(0, np.int64)   # steps ever written per stream
        self.added = 0                       # steps ever added, all streams

    # -- writing ------------------------------------------------------------------------------
    @property
    def streams(self) -> int:
        return len(self.pos)

    def _allocate(self, step: Mapping[str, np.ndarray], n: int) -> None:
        keys = self.keys if self.keys is not None else tuple(sorted(step))
        missing = [k for k in keys if k not in step]
        if missing:
            raise KeyError(f"replay expects step keys {list(keys)}, missing {missing}")
        self.keys = keys
        self.per_stream = max(self.length, self.capacity // n)
        self.data = {k: np.zeros((n, self.per_stream, *np.shape(step[k])[1:]), np.asarray(step[k]).dtype)
                     for k in keys}
        self.pos = np.zeros(n, np.int64)
        self.count = np.zeros(n, np.int64)

    def _grow(self, n: int) -> None:
        extra = n - self.streams
        for k, arr in self.data.items():
            self.data[k] = np.concatenate([arr, np.zeros((extra, *arr.shape[1:]), arr.dtype)])
        self.pos = np.concatenate([self.pos, np.zeros(extra, np.int64)])
        self.count = np.concatenate([self.count, np.zeros(extra, np.int64)])

    def add(self, step: Mapping[str, np.ndarray]) -> None:
        """Append one step per stream: every stored key has shape (n, ...); row i goes to stream i."""
        n = len(step["is_first"]) if "is_first" in step else len(next(iter(step.values())))
        if not self.data:
            self._allocate(step, n)
        elif n > self.streams:
            self._grow(n)
        rows = np.arange(n)
        cols = self.pos[:n]
        for k, arr in self.data.items():
            value = np.asarray(step[k])
            if value.shape[1:] != arr.shape[2:]:
                raise ValueError(f"replay key {k!r}: step shape {value.shape[1:]} != stored {arr.shape[2:]}")
            arr[rows, cols] = value
        self.pos[:n] = (cols + 1) % self.per_stream
        self.count[:n] += 1
        self.added += n

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Steps currently stored (all streams)."""
        return int(np.minimum(self.count, self.per_stream).sum()) if self.data else 0

    def windows(self) -> np.ndarray:
        """Number of valid windows per stream (streams,)."""
        if not self.data:
            return np.zeros(0, np.int64)
        return np.maximum(np.minimum(self.count, self.per_stream) - self.length + 1, 0)

    def can_sample(self) -> bool:
        return bool(self.windows().sum() > 0)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
        """``batch`` windows drawn uniformly (with replacement) from all valid windows, as arrays of
        shape (batch, length, ...). Random numbers come from ``generator`` (default: torch's global
        generator, which the training loop seeds and checkpoints)."""
        windows = self.windows()
        total = int(windows.sum())
        if total == 0:
            raise RuntimeError(f"replay holds no complete window of length {self.length} yet")
        pick = torch.randint(total, (batch,), generator=generator).numpy()
        bounds = np.cumsum(windows)
        stream = np.searchsorted(bounds, pick, side="right")
        offset = pick - (bounds[stream] - windows[stream])
        # For a full ring the oldest valid step sits at the write position.
        oldest = np.where(self.count[stream] > self.per_stream, self.pos[stream], 0)
        index = (oldest[:, None] + offset[:, None] + np.arange(self.length)[None]) % self.per_stream
        return {k: arr[stream[:, None], index] for k, arr in self.data.items()}

    # -- accounting and persistence -----------------------------------------------------------
    def bytes_per_step(self) -> int:
        """Bytes one stored time step occupies over all keys (e.g. a uint8 frame plus scalars)."""
        return int(sum(arr.dtype.itemsize * int(np.prod(arr.shape[2:])) for arr in self.data.values()))

    def nbytes(self) -> int:
        """Bytes of the preallocated arrays (committed by the OS only as they fill)."""
        return int(sum(arr.nbytes for arr in self.data.values()))

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly; only the filled part of each ring is copied."""
        filled = int(np.minimum(self.count, self.per_stream).max()) if self.data else 0
        return {"capacity": self.capacity, "length": self.length, "keys": self.keys,
                "per_stream": self.per_stream, "pos": self.pos.copy(), "count": self.count.copy(),
                "added": self.added, "data": {k: arr[:, :filled].copy() for k, arr in self.data.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.capacity, self.length = int(state["capacity"]), int(state["length"])
        self.keys = tuple(state["keys"]) if state["keys"] is not None else None
        self.per_stream = int(state["per_stream"])
        self.pos, self.count = np.asarray(state["pos"]).copy(), np.asarray(state["count"]).copy()
        self.added = int(state["added"])
        self.data = {}
        for k, arr in state["data"].items():
            full = np.zeros((arr.shape[0], self.per_stream, *arr.shape[2:]), arr.dtype)
            full[:, :arr.shape[1]] = arr
            self.data[k] = full
