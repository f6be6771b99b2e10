"""Few-shot adaptation of a (meta-)trained agent to held-out tasks, next to two baselines.

For every held-out task of the split and every adaptation seed, three methods adapt for K
episodes ("shots") on the task, and each is evaluated greedily after 0, 1, ..., K episodes:

* ``meta``     - the meta-learner's own adaptation (:meth:`MetaLearner.adapt`): gradient steps
  from the meta-learned initialization (MAML), ordinary training from it (Reptile), belief
  inference with no gradient step (VariBAD), training with the learned rule (learned_rule),
  fine-tuning (none);
* ``finetune`` - the same checkpoint's agent fine-tuned with its own update rule (plain gradient
  steps with its optimizer);
* ``scratch``  - an agent freshly initialised (no checkpoint) trained the same way.

All three see the same tasks, the same environment seeds and the same number of episodes; each
collects its own episodes with its own current policy (online adaptation), so "the same data"
means the same data budget and the same task instances, not identical transitions.

The result is a table: for each method and shot, the mean return over (task, seed) units, its
standard deviation and a 95% t-interval, per-task means, success rates where the suite has them,
and BAMDP sub-episode returns (``gridworld_goals``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from metawm.meta.base import Context, fresh_agent, isolated_rng
from metawm.types import Metrics, TaskSpec

METHODS = ("meta", "finetune", "scratch")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, std, half-width of the ``level`` t-interval of the mean); NaN-free input."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), 0.0, math.nan
    try:
        from scipy import stats

        t = float(stats.t.ppf(0.5 + level / 2, len(x) - 1))
    except ImportError:  # normal approximation
        t = 1.959964
    std = float(x.std(ddof=1))
    return float(x.mean()), std, t * std / math.sqrt(len(x))


def run_adaptation(meta: Any, ctx: Context, agent_state: Mapping[str, Any], specs: Sequence[TaskSpec],
                   seeds: Sequence[int], shots: int, eval_episodes: int, methods: Iterable[str] = METHODS,
                   on_unit: Callable[[str, int, int, list[Metrics]], None] | None = None) -> dict[str, Any]:
    """Adapt with every method on every (task, seed); returns ``{method: [[rows per shot] per unit]}``
    with units in (task, seed) order. ``meta`` is a set-up meta-learner holding the checkpoint."""
    results: dict[str, list[list[Metrics]]] = {}
    for method in methods:
        units = []
        for i, spec in enumerate(specs):
            for j, seed in enumerate(seeds):
                with isolated_rng(seed):
                    rows = list(_adapt_one(meta, ctx, agent_state, method, spec, int(seed), shots, eval_episodes))
                units.append(rows)
                if on_unit is not None:
                    on_unit(method, i, j, rows)
        results[method] = units
    return results


def _adapt_one(meta, ctx: Context, agent_state, method: str, spec: TaskSpec, seed: int, shots: int, episodes: int):
    if method == "meta":
        agent = meta.adaptation_agent(agent_state, seed)
        return meta.adapt(agent, spec, shots, seed=seed, eval_episodes_per_shot=episodes)
    if method in ("finetune", "scratch"):
        return meta.baseline_adaptation(method, agent_state, spec, shots, seed=seed, eval_episodes_per_shot=episodes)
    raise ValueError(f"unknown adaptation method {method!r}")


def summarize(results: Mapping[str, list[list[Metrics]]], specs: Sequence[TaskSpec], n_seeds: int,
              shots: int) -> dict[str, Any]:
    """Per method and shot: mean / std / 95% CI over units, per-task means; the table of the report."""
    out: dict[str, Any] = {}
    for method, units in results.items():
        per_shot = []
        for k in range(shots + 1):
            rows = [u[k] for u in units if len(u) > k]
            entry: dict[str, Any] = {"shot": k}
            keys = sorted({key for r in rows for key in r if key.startswith(("return", "success"))})
            for key in keys:
                vals = [r.get(key, math.nan) for r in rows]
                if all(v is None or math.isnan(v) for v in vals):
                    continue
                mean, std, half = t_interval(vals)
                entry[key] = {"mean": mean, "std": std, "ci95": half, "n": int(sum(not math.isnan(v) for v in vals))}
            entry["per_task"] = {spec.id: float(np.nanmean([units[i * n_seeds + j][k].get("return", math.nan)
                                                            for j in range(n_seeds) if len(units[i * n_seeds + j]) > k]))
                                 for i, spec in enumerate(specs)}
            per_shot.append(entry)
        out[method] = per_shot
    return out


def headline(summary: Mapping[str, Any], shots: int) -> dict[str, Any]:
    """The numbers a reader quotes: mean return after 0, 1 and K shots per method, and the area
    under each curve (mean return over shots 0..K)."""
    line: dict[str, Any] = {}
    for method, per_shot in summary.items():
        curve = [e.get("return", {}).get("mean", math.nan) for e in per_shot]
        line[f"{method}/return@0"] = curve[0]
        if shots >= 1:
            line[f"{method}/return@1"] = curve[1]
        line[f"{method}/return@{shots}"] = curve[shots]
        line[f"{method}/auc"] = float(np.nanmean(curve)) if curve else math.nan
    return line


def jsonl_rows(summary: Mapping[str, Any], shots: int) -> list[tuple[int, Metrics]]:
    """One metrics row per shot: ``adapt/<method>/<key>`` means and CI half-widths."""
    rows = []
    for k in range(shots + 1):
        row: Metrics = {}
        for method, per_shot in summary.items():
            for key, v in per_shot[k].items():
                if isinstance(v, dict) and "mean" in v:
                    row[f"adapt/{method}/{key}"] = v["mean"]
                    row[f"adapt/{method}/{key}_ci95"] = v["ci95"]
        rows.append((k, row))
    return rows
