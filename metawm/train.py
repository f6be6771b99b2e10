"""``python -m metawm.train +task=NAME agent=NAME meta=NAME [key=value ...]``

The composition root of one experiment: compose the config (Hydra), build the task suite, the
agent factory and the meta-learner, open the run directory and the trackers, and hand them to
:func:`metawm.run.train.train`. The last line printed names the run directory.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from metawm.infra import config as configlib
from metawm.infra.build import instantiate, strip_names
from metawm.infra.device import pick_device
from metawm.infra.errors import UserError, cli
from metawm.infra.rundir import RunDir, default_run_dir
from metawm.infra.seeding import Seeds
from metawm.infra.tracking import ConsoleSink, JsonlSink, Tee, WandbSink
from metawm.meta.base import Context
from metawm.run.train import Callback, Schedule
from metawm.run.train import train as train_loop

EXIT_FAILED_RUN = 3


@dataclasses.dataclass
class Built:
    """The objects of one experiment, built from its config."""

    tasks: Any
    make_agent: Any
    meta: Any
    device: Any
    seeds: Seeds


def build(cfg: DictConfig) -> Built:
    device = pick_device(cfg.device)
    seeds = Seeds(cfg.seed)
    tasks = instantiate(cfg.task, "task suite")
    agent_partial = instantiate(strip_names(cfg.agent), f"agent {cfg.agent.name!r}")

    def make_agent(env_spec, init: int | None = None):
        # the same initial weights whichever meta-learner asks; ``init`` picks another draw of them
        seeds.seed_globals("init") if init is None else seeds.seed_globals("init", int(init))
        return agent_partial(env_spec=env_spec, device=device)

    # Build one agent now, so that an agent that cannot handle the suite says so before any run
    # directory is created.
    make_agent(tasks.env_spec)
    meta = instantiate(strip_names(cfg.meta), f"meta-learner {cfg.meta.name!r}")
    return Built(tasks, make_agent, meta, device, seeds)


def header_of(cfg: DictConfig) -> dict[str, Any]:
    return {"task": cfg.task.name, "agent": cfg.agent.name, "meta": cfg.meta.name, "seed": int(cfg.seed),
            "size": cfg.agent.get("size")}


def make_tracker_factory(cfg: DictConfig, run: RunDir, *, job_type: str = "train", group: str | None = None,
                         extra_config: dict | None = None):
    def factory(start_step: int, jsonl_offset: int | None):
        jsonl = JsonlSink(run.metrics, truncate_to=jsonl_offset if start_step > 0 else None)
        console = ConsoleSink(total=int(cfg.steps), start=start_step, enabled=bool(cfg.progress),
                              headline=("train/return", cfg.objective), description=cfg.task.name)
        t = cfg.tracker
        wandb = WandbSink(mode=t.wandb_mode, project=t.project, entity=t.entity,
                          group=group or t.group or f"{cfg.task.name}-{cfg.agent.name}-{cfg.meta.name}",
                          name=run.path.name, run_id=wandb_id(run), directory=run.path, job_type=job_type,
                          tags=list(t.tags), config={**OmegaConf.to_container(cfg, resolve=True),
                                                     **(extra_config or {})})
        return _FilteredTee(jsonl, console, wandb)

    return factory


class _FilteredTee(Tee):
    """Wall-clock metrics (``time/*``) go to the console and W&B but not to metrics.jsonl, which
    must be identical for the same config and seed."""

    def log(self, metrics, step):
        jsonl, *rest = self.sinks
        jsonl.log({k: v for k, v in metrics.items() if not k.startswith("time/")}, step)
        for s in rest:
            s.log(metrics, step)


def wandb_id(run: RunDir) -> str:
    """A W&B run id derived from the run directory, so requeues and resumes continue one run."""
    import hashlib

    return "mw-" + hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()[:16]


def run(cfg: DictConfig, callbacks: Sequence[Callback] = (), *, job_type: str = "train",
        group: str | None = None, extra_config: dict | None = None) -> tuple[dict[str, Any], RunDir]:
    """Build and run (or resume) the experiment of ``cfg``; returns (summary, run directory)."""
    built = build(cfg)
    run_dir = RunDir(cfg.run_dir or default_run_dir(cfg))
    state = run_dir.prepare(cfg, cfg.resume)
    if state == "complete":
        print(f"run already complete: {run_dir.path} (objective {run_dir.read_summary().get('objective')})",
              file=sys.stderr)
        return run_dir.read_summary(), run_dir
    if state == "resume":
        print(f"resuming {run_dir.path}", file=sys.stderr)
    schedule = Schedule(steps=int(cfg.steps), eval_every=int(cfg.eval.every), eval_tasks=int(cfg.eval.tasks),
                        eval_episodes=int(cfg.eval.episodes), eval_splits=tuple(cfg.eval.splits),
                        checkpoint_every=int(cfg.checkpoint_every), objective=str(cfg.objective),
                        keep_replay=bool(cfg.keep_replay))
    for split in schedule.eval_splits:
        built.tasks.check_split(split)
    ctx = Context(tasks=built.tasks, make_agent=built.make_agent, device=built.device, seeds=built.seeds)
    summary = train_loop(built.meta, ctx, run_dir, schedule, header_of(cfg),
                         make_tracker_factory(cfg, run_dir, job_type=job_type, group=group,
                                              extra_config=extra_config), callbacks)
    if cfg.get("plots", True):
        _plots(run_dir, cfg)
    return summary, run_dir


def _plots(run_dir: RunDir, cfg: DictConfig) -> None:
    from metawm.infra.plots import learning_curves

    learning_curves(run_dir.metrics, run_dir.plots / "curves.png",
                    keys=["train/return", "eval/train/return", cfg.objective],
                    title=f"{cfg.task.name} · {cfg.agent.name} · meta={cfg.meta.name} · seed {cfg.seed}")


@cli
def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip() + "\n\n" + configlib.usage("train", "train"))
        return 0
    show = "--cfg" in argv
    cfg = configlib.compose("train", [a for a in argv if a != "--cfg"])
    if show:
        print(configlib.to_yaml(cfg))
        return 0
    summary, run_dir = run(cfg)
    if summary.get("status") != "complete":
        print(f"run {summary.get('status')}: {summary.get('error')}", file=sys.stderr)
        print(f"run directory: {run_dir.path}")
        return EXIT_FAILED_RUN
    print(f"objective ({summary['objective_metric']}): {summary['objective']}", file=sys.stderr)
    print(f"run directory: {run_dir.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
