"""``meta=reptile``: Reptile (Nichol, Achiam, Schulman, "On First-Order Meta-Learning
Algorithms", 2018, Algorithm 2, the batched version).

Each outer step:

1. draw a population of n tasks from the train split;
2. every member starts from the shared initialization phi and trains *normally* on its task -
   the agent's own ``update`` with its own optimizer, for ``inner_steps`` env steps of its own
   data (``metawm.meta.population.train_member``), giving adapted parameters W_i;
3. phi <- phi + epsilon * (mean_i W_i - phi)   (Alg. 2), epsilon = ``meta_lr``, annealed linearly to
   ``meta_lr_final`` over ``anneal_iters`` outer steps when that is set (the paper anneals to 0).

No second-order terms and no shared graph: members talk to the outer loop only through their
parameters, so they can run in other processes (``meta.runner=processes``) or as SLURM array tasks.

What is meta-learned is the initialization of ``meta.part`` (``all`` by default). The rest of the
agent's state that is not a parameter of that part - optimizer moments, EMA targets such as
DreamerV3's slow critic, return normalizers, update counters, and the parameters outside
``part`` - continues from the first member's (``carry_state=true``), so that those statistics
keep tracking the parameters; with ``carry_state=false`` every member starts them afresh from the
initial agent's. Replay is never carried: each member collects its own task's data.

Adaptation to a new task (``metawm.adapt``) is what the members do: ordinary training from phi.
"""

from __future__ import annotations

from typing import Any

import torch

from metawm.meta.base import Context, MetaLearnerBase, isolated_rng, mean_metrics, meta_params, per_member
from metawm.meta.population import MemberJob, World, make_runner, train_member
from metawm.protocols import Agent
from metawm.types import Metrics


def reptile_update(init: dict[str, torch.Tensor], adapted: list[dict[str, torch.Tensor]],
                   meta_lr: float) -> dict[str, torch.Tensor]:
    """phi + epsilon * (mean_i W_i - phi) by name (Reptile Alg. 2). Pure; shapes per name equal."""
    out = {}
    for name, phi in init.items():
        mean = torch.stack([a[name].to(phi.device, phi.dtype) for a in adapted]).mean(0)
        out[name] = phi + meta_lr * (mean - phi)
    return out


class Reptile(MetaLearnerBase):
    name = "reptile"

    def __init__(self, population: int = 4, inner_steps: int = 1000, meta_lr: float = 1.0,
                 meta_lr_final: float = 0.0, anneal_iters: int | None = None, part: str = "all",
                 envs_per_task: int = 1, carry_state: bool = True, runner: str = "inline", workers: int = 2,
                 cluster: str = "local", slurm_folder: str = "slurm_members", eval_shots: int = 0):
        self.eval_shots = int(eval_shots)
        self.population = int(population)
        self.inner_steps = int(inner_steps)
        self.meta_lr, self.meta_lr_final = float(meta_lr), float(meta_lr_final)
        self.anneal_iters = int(anneal_iters) if anneal_iters else None
        self.part = str(part)
        self.envs_per_task = int(envs_per_task)
        self.carry_state = bool(carry_state)
        self.runner = make_runner(runner, workers, cluster, slurm_folder)
        self.clock = 0   # env steps of one member lineage: the agent's update() clock
        self.env_steps = 0

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self._agent = ctx.make_agent(ctx.tasks.env_spec)
        meta_params(self._agent, self.part)  # an unknown part fails before any run directory fills
        self._initial_state = self._agent.state_dict(replay=False)

    def agent(self) -> Agent:
        return self._agent

    def current_meta_lr(self, iteration: int) -> float:
        if not self.anneal_iters:
            return self.meta_lr
        frac = min(1.0, iteration / self.anneal_iters)
        return self.meta_lr + frac * (self.meta_lr_final - self.meta_lr)

    def outer_step(self, iteration: int) -> Metrics:
        seeds = self.ctx.seeds
        specs = self.ctx.tasks.sample("train", self.population, seeds.numpy("tasks", iteration))
        start = self._agent.state_dict(replay=False)
        if not self.carry_state:
            start = self._with_params(self._initial_state, start)
        jobs = [MemberJob(spec, start, self.inner_steps, seeds.seed("inner", iteration, k), clock=self.clock,
                          envs=self.envs_per_task, part=self.part) for k, spec in enumerate(specs)]
        results = self.runner.map(train_member, jobs, World(self.ctx.tasks, self.ctx.make_agent))

        phi = {n: p.detach().clone() for n, p in meta_params(self._agent, self.part).items()}
        eps = self.current_meta_lr(iteration)
        new = reptile_update(phi, [r.params for r in results], eps)
        if self.carry_state:
            self._agent.load_state_dict(results[0].agent_state)
        with torch.no_grad():
            for name, p in meta_params(self._agent, self.part).items():
                p.copy_(new[name])
        taken = sum(r.env_steps for r in results)
        self.clock += results[0].env_steps
        self.env_steps += taken
        step = torch.sqrt(sum(((new[n] - phi[n]) ** 2).sum() for n in phi)) if phi else torch.zeros(())
        rows = [r.metrics for r in results]
        out = {**{f"train/{k}": v for k, v in mean_metrics(rows).items()
                  if k in ("return", "return_std", "length", "success")},
               **{k: v for k, v in mean_metrics(rows).items() if "/" in k},
               **per_member(specs, rows, ("return", "success")),
               "reptile/meta_lr": eps, "reptile/step_norm": float(step), "env_steps": float(taken)}
        return out

    def _with_params(self, base: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        """``base`` agent state with the current meta-parameters (for carry_state=false)."""
        with isolated_rng(0):  # the factory re-seeds the global generators for initial weights
            probe = self.ctx.make_agent(self.ctx.tasks.env_spec)
        probe.load_state_dict(base)
        with torch.no_grad():
            for name, p in meta_params(probe, self.part).items():
                p.copy_(meta_params(self._agent, self.part)[name])
        return probe.state_dict(replay=False)

    def state_dict(self, *, replay: bool = True) -> dict[str, Any]:
        return {"agent": self._agent.state_dict(replay=False), "clock": self.clock, "env_steps": self.env_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._agent.load_state_dict(state["agent"])
        self.clock, self.env_steps = int(state["clock"]), int(state["env_steps"])
