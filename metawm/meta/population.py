"""Populations: the inner-loop agents of one outer step, run in-process or as separate processes.

A *member* is a pure function of plain data,

    member(job: MemberJob, world: World) -> MemberResult
    job    = (agent state to start from, task spec, inner env steps, seed, clock, envs)
    result = (adapted parameters, the agent's state after training, metrics, env steps taken)

with all of its randomness drawn from ``job.seed`` (:func:`metawm.meta.base.isolated_rng`), so a
member gives the same result wherever it runs. ``World`` holds what builds agents and environments
(the task suite and the agent factory); it is cloudpickle-able, which is what a SLURM array task
needs (submitit pickles with cloudpickle).

Runners (``meta.runner``):

* ``inline`` - members one after another in this process (deterministic, no overhead);
* ``processes`` - a pool of ``meta.workers`` forked processes, one member per task, results sent
  back as ``torch.save`` bytes. Each worker uses one intra-op thread.
* ``slurm`` - one SLURM job array per outer step, one member per array task (submitit's
  ``map_array``, the cluster profile ``meta.cluster`` from ``slurm/``, as the sweeps use).

Reptile (:mod:`metawm.meta.reptile`) is the learner built to scale this way: its members need no
second-order terms and talk to the outer loop only through parameters.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Callable, Mapping, Sequence

import torch

from metawm.infra.errors import UserError, choices_error
from metawm.meta.base import collect, fresh_agent, isolated_rng, mean_metrics, summarize_episodes
from metawm.protocols import AgentFactory, TaskDistribution
from metawm.types import Metrics, TaskSpec


@dataclasses.dataclass(frozen=True)
class World:
    """What a member needs to build its agent and environments."""

    tasks: TaskDistribution
    make_agent: AgentFactory


@dataclasses.dataclass
class MemberJob:
    task: TaskSpec
    agent_state: Mapping[str, Any]   # agent.state_dict(replay=False) to start from
    inner_steps: int                 # env steps to collect and train on
    seed: int
    clock: int = 0                   # env-step count the agent's update() clock continues from
    envs: int = 1
    part: str = "all"                # which parameters to send back


@dataclasses.dataclass
class MemberResult:
    task: TaskSpec
    params: dict[str, torch.Tensor]  # adapted parameters of ``part`` (detached, CPU)
    agent_state: dict[str, Any]      # the agent's state after training (replay=False)
    metrics: Metrics
    env_steps: int


def train_member(job: MemberJob, world: World) -> MemberResult:
    """The Reptile member: a fresh agent from ``job.agent_state`` trains normally (its own
    ``update`` and optimizer) on ``job.task`` for ``job.inner_steps`` env steps."""
    with isolated_rng(job.seed):
        agent = fresh_agent(world.make_agent, world.tasks.env_spec, job.agent_state, seed=job.seed)
        episodes, updates, taken = collect(agent, world.tasks, job.task, job.inner_steps, job.seed,
                                           envs=job.envs, clock=job.clock)
        params = {n: p.detach().cpu().clone() for n, p in agent.params(job.part).items()}
        state = agent.state_dict(replay=False)
    metrics = {**{k.split("/", 1)[1]: v for k, v in summarize_episodes(episodes, "x").items()},
               **mean_metrics(updates)}
    return MemberResult(job.task, params, state, metrics, taken)


class InlineRunner:
    """Members one after another in this process."""

    name = "inline"

    def map(self, fn: Callable[[MemberJob, World], MemberResult], jobs: Sequence[MemberJob],
            world: World) -> list[MemberResult]:
        return [fn(job, world) for job in jobs]

    def close(self) -> None:
        pass


_WORKER: dict[str, Any] = {}


def _worker_init() -> None:
    torch.set_num_threads(1)


def _worker_call(index: int) -> bytes:
    fn, jobs, world = _WORKER["fn"], _WORKER["jobs"], _WORKER["world"]
    buf = io.BytesIO()
    torch.save(fn(jobs[index], world), buf)
    return buf.getvalue()


class ProcessRunner:
    """A pool of forked worker processes, one member per task. The function, the jobs and the
    world are inherited through fork (nothing but an index is pickled on the way in); results
    come back as ``torch.save`` bytes. Forking needs Linux/macOS; each worker uses one thread."""

    name = "processes"

    def __init__(self, workers: int = 2):
        self.workers = max(1, int(workers))

    def map(self, fn: Callable[[MemberJob, World], MemberResult], jobs: Sequence[MemberJob],
            world: World) -> list[MemberResult]:
        import multiprocessing as mp

        if "fork" not in mp.get_all_start_methods():
            raise UserError("meta.runner=processes forks worker processes, which this platform cannot; "
                            "use meta.runner=inline.")
        _WORKER.update(fn=fn, jobs=list(jobs), world=world)
        try:
            with mp.get_context("fork").Pool(min(self.workers, len(jobs)), initializer=_worker_init) as pool:
                blobs = pool.map(_worker_call, range(len(jobs)))
        finally:
            _WORKER.clear()
        return [torch.load(io.BytesIO(b), weights_only=False) for b in blobs]

    def close(self) -> None:
        pass


class SlurmRunner:
    """Members as the tasks of one SLURM job array per outer step (submitit ``map_array``; the
    member function, its job and the world are pickled with cloudpickle). ``cluster`` names a
    profile in ``slurm/`` (e.g. ``local``, or your copy of ``example_gpu_cluster.yaml``), read
    with the sweep's :func:`metawm.infra.launch.executor_parameters`. Blocks until every member
    has returned; a failed member raises with its log's path."""

    name = "slurm"

    def __init__(self, cluster: str = "local", folder: str = "slurm_members", workers: int = 2):
        from omegaconf import OmegaConf

        from metawm import paths
        from metawm.infra import launch

        path = paths.SLURM / f"{cluster}.yaml"
        if not path.is_file():
            raise choices_error("cluster profile (meta.cluster)", cluster,
                                sorted(p.stem for p in paths.SLURM.glob("*.yaml")))
        self.profile = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        launch.check_profile(self.profile, cluster)
        self.folder = folder

    def map(self, fn: Callable[[MemberJob, World], MemberResult], jobs: Sequence[MemberJob],
            world: World) -> list[MemberResult]:
        import submitit

        from metawm.infra import launch

        why = launch.slurm_reachable()
        if why is not None:
            raise UserError(f"meta.runner=slurm: no SLURM reachable ({why}). Start one (slurm/start_local.sh) or use "
                            "meta.runner=inline|processes.")
        executor = submitit.AutoExecutor(folder=os.path.join(self.folder, "%j"), cluster="slurm")
        executor.update_parameters(**launch.executor_parameters(self.profile, name="metawm-members",
                                                                workers=len(jobs), signal_delay_s=60))
        handles = executor.map_array(fn, list(jobs), [world] * len(jobs))
        return [h.result() for h in handles]

    def close(self) -> None:
        pass


RUNNERS = {"inline": InlineRunner, "processes": ProcessRunner, "slurm": SlurmRunner}


def make_runner(name: str, workers: int = 2, cluster: str = "local", folder: str = "slurm_members"):
    if name not in RUNNERS:
        raise choices_error("population runner (meta.runner)", name, RUNNERS)
    if name == "processes":
        return ProcessRunner(workers)
    if name == "slurm":
        return SlurmRunner(cluster, folder)
    return InlineRunner()


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2))
