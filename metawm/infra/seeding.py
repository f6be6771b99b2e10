"""One root seed, named generators.

Every stream of randomness in a run has a name (``tasks``, ``init``, ``env``, ``inner``, ...)
and its own seed derived from the root seed with a stable hash, so adding a new consumer of
randomness never shifts another's stream, and the same root seed gives the same task sequence
whatever agent or meta-learner is used.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def derive_seed(root: int, *names: Any) -> int:
    """A 63-bit seed from ``root`` and a path of names; stable across processes and platforms."""
    key = ":".join([str(int(root)), *map(str, names)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


class Seeds:
    """Named generators derived from one root seed."""

    def __init__(self, root: int):
        self.root = int(root)

    def seed(self, *names: Any) -> int:
        return derive_seed(self.root, *names)

    def numpy(self, *names: Any) -> np.random.Generator:
        return np.random.default_rng(self.seed(*names))

    def torch(self, *names: Any) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed(*names))
        return g

    def seed_globals(self, *names: Any) -> None:
        """Seed the global torch / numpy / random state (module init uses torch's global RNG)."""
        s = self.seed(*names)
        torch.manual_seed(s)
        np.random.seed(s % (1 << 32))
        random.seed(s)


def global_rng_state() -> dict[str, Any]:
    """Everything global that a resumed run must restore to continue bit-identically."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
