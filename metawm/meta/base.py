"""What every meta-learner shares: the context it is given, evaluation, episode summaries."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from metawm.envs.rollout import run_episodes
from metawm.infra.seeding import Seeds
from metawm.protocols import Agent, AgentFactory, TaskDistribution
from metawm.types import Metrics, TaskSpec


@dataclasses.dataclass
class Context:
    """Objects built at the composition root and handed to a meta-learner (never the config)."""

    tasks: TaskDistribution
    make_agent: AgentFactory
    device: torch.device
    seeds: Seeds


def summarize_episodes(episodes: Sequence[dict], prefix: str) -> Metrics:
    """Flat metrics over finished episodes: mean/std return, mean length, success rate."""
    if not episodes:
        return {}
    returns = np.array([e["return"] for e in episodes], np.float64)
    out = {f"{prefix}/return": float(returns.mean()), f"{prefix}/return_std": float(returns.std()),
           f"{prefix}/length": float(np.mean([e["length"] for e in episodes])),
           f"{prefix}/episodes": float(len(episodes))}
    successes = [e["success"] for e in episodes if not math.isnan(e.get("success", math.nan))]
    if successes:
        out[f"{prefix}/success"] = float(np.mean(successes))
    return out


def mean_metrics(rows: Iterable[Metrics]) -> Metrics:
    """Average a list of flat metric dicts key by key (keys missing from a row are skipped)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def evaluate_agent(agent: Agent, tasks: TaskDistribution, specs: Sequence[TaskSpec], episodes: int,
                   seed: int, prefix: str) -> Metrics:
    """Zero-shot evaluation: ``episodes`` greedy episodes of ``agent`` on every spec."""
    all_eps = []
    for k, spec in enumerate(specs):
        eps = run_episodes(agent, lambda: tasks.make_env(spec), tasks.env_spec, episodes,
                           seed=seed + 104729 * k, explore=False)
        all_eps.extend(eps)
    return summarize_episodes(all_eps, prefix)


class MetaLearnerBase:
    """Defaults shared by the meta-learners: zero-shot evaluation of the shared agent."""

    name = "base"
    ctx: Context

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx

    def evaluate(self, specs: Sequence[TaskSpec], episodes: int, seed: int, prefix: str) -> Metrics:
        return evaluate_agent(self.agent(), self.ctx.tasks, specs, episodes, seed, prefix)

    def agent(self) -> Agent:
        raise NotImplementedError

    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
