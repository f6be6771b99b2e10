"""The uniform-random baseline: keeps the loops honest and stays as a reference in reports.

It has no parameters and no loss, so meta-learners that adapt parameters leave it unchanged.
That is the point: it is the floor every learning agent must clear.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from metawm.types import EnvSpec, Metrics, Step


class RandomAgent:
    name = "random"

    def __init__(self, env_spec: EnvSpec, device: torch.device | str = "cpu", size: str = "none", **_: Any):
        # ``size`` is accepted (and ignored) so that size overlays such as +exp=smoke apply to
        # every agent; the random agent has no network to size.
        self.env_spec = env_spec
        self.device = torch.device(device)

    # -- acting ---------------------------------------------------------------------------------
    def initial_carry(self, n: int) -> None:
        return None

    def act(self, step: Step, carry: None, *, explore: bool) -> tuple[np.ndarray, None]:
        n = len(step["is_first"])
        if self.env_spec.is_discrete:  # the global torch RNG: seeded at the root, saved in checkpoints
            return torch.randint(self.env_spec.num_actions, (n,)).numpy(), carry
        return (torch.rand(n, self.env_spec.num_actions) * 2 - 1).numpy().astype(np.float32), carry

    def observe(self, step: Step) -> None:
        pass

    def update(self, env_steps: int) -> Metrics:
        return {}

    # -- functional access ----------------------------------------------------------------------
    def parts(self) -> dict[str, list[str]]:
        return {"all": []}

    def params(self, part: str = "all") -> dict[str, torch.Tensor]:
        return {}

    def sample_batch(self, rng: torch.Generator | None = None) -> None:
        return None

    def loss(self, params: dict[str, torch.Tensor], batch: Any) -> tuple[torch.Tensor, Metrics]:
        return torch.zeros((), device=self.device), {}

    # -- persistence ----------------------------------------------------------------------------
    def state_dict(self, *, replay: bool = False) -> dict[str, Any]:
        return {"agent": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
