"""``python -m metawm.dreamer4 record|pretrain|finetune|imagine +task=NAME [key=value ...]``

Dreamer 4's three phases on recorded data (Hafner, Yan, Lillicrap 2025, Algorithm 1), one command
each, all in one pipeline directory (``run_dir``); re-running a command resumes it from its last
checkpoint, and a finished phase is reported, not repeated:

  record     run any metawm agent (``record.agent=random`` by default) on the suite and store the
             episodes (uint8 frames; ``record.actions=0.5`` keeps actions for half the streams only,
             the rest is unlabeled video) in ``<run_dir>/dataset``
  pretrain   phase 1: tokenizer by masked autoencoding, then the dynamics by shortcut forcing
  finetune   phase 2: behaviour-cloning, reward and continuation heads (multi-token prediction)
             while the video loss keeps applying; ends with the BC policy's real-env return
  imagine    phase 3: PMPO policy and TD(lambda) value on imagined rollouts, transformer frozen;
             evaluates in the real environment at its start (the BC policy) and every eval.every

Configuration: ``conf/dreamer4.yaml`` (pipeline) and ``conf/agent/dreamer4.yaml`` (model size:
``agent.size=tiny|small|base|large|paper``). ``pixels=32`` observes a vector suite (point_nav,
cartpole_physics) as rendered images. The last line printed names the phase directory.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from metawm import paths
from metawm.infra import checkpoint
from metawm.infra import config as configlib
from metawm.infra.build import instantiate, strip_names
from metawm.infra.device import pick_device
from metawm.infra.errors import UserError, choices_error, cli
from metawm.infra.rundir import RunDir
from metawm.infra.seeding import Seeds, global_rng_state, set_global_rng_state
from metawm.infra.tracking import JsonlSink

COMMANDS = ("record", "pretrain", "finetune", "imagine")
PREVIOUS = {"pretrain": None, "finetune": "pretrain", "imagine": "finetune"}


# -- building -------------------------------------------------------------------------------------------
def build_tasks(cfg: DictConfig):
    tasks = instantiate(cfg.task, "task suite")
    if cfg.pixels:
        from metawm.agents.dreamer4.pixels import PixelSuite

        tasks = PixelSuite(tasks, int(cfg.pixels))
    return tasks


def task_specs(cfg: DictConfig, tasks) -> list:
    n = int(cfg.tasks)
    if n <= 0:
        return [tasks.default_task("train", 0)]
    return tasks.sample("train", n, Seeds(cfg.seed).numpy("tasks", 0))


def pipeline_dir(cfg: DictConfig) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    px = f"-px{int(cfg.pixels)}" if cfg.pixels else ""
    return Path("runs") / cfg.task.name / "dreamer4" / f"{cfg.exp_name}{px}-s{cfg.seed}"


def dataset_dir(cfg: DictConfig) -> Path:
    return Path(cfg.dataset) if cfg.dataset else pipeline_dir(cfg) / "dataset"


def build_agent(cfg: DictConfig, env_spec, device):
    Seeds(cfg.seed).seed_globals("init")
    partial = instantiate(strip_names(cfg.agent), f"agent {cfg.agent.name!r}")
    agent = partial(env_spec=env_spec, device=device)
    if getattr(agent, "name", None) != "dreamer4":
        raise UserError(f"the phases train a dreamer4 agent, not agent={cfg.agent.name!r}; "
                        "use agent=dreamer4 (record.agent picks the recording agent).")
    return agent


def agent_state_of(ck: dict) -> dict:
    """The agent's state inside a checkpoint of a phase here or of a metawm.train run (meta=none)."""
    state = ck["state"]
    if "agent" in state:
        return state["agent"]
    if isinstance(state.get("meta"), dict) and "agent" in state["meta"]:
        return state["meta"]["agent"]
    raise UserError(f"checkpoint {ck['path']!r} holds no single agent (was it a meta-learner with a population?).")


# -- record -----------------------------------------------------------------------------------------------
def cmd_record(cfg: DictConfig) -> Path:
    from metawm.agents.dreamer4.dataset import record

    out = dataset_dir(cfg)
    if (out / "meta.json").is_file():
        print(f"dataset already recorded: {out}", file=sys.stderr)
        return out
    device = pick_device(cfg.device)
    tasks = build_tasks(cfg)
    specs = task_specs(cfg, tasks)
    seeds = Seeds(cfg.seed)
    rc = cfg.record
    agent_file = paths.CONF / "agent" / f"{rc.agent}.yaml"
    if not agent_file.is_file():
        raise choices_error("record.agent", str(rc.agent), configlib.group_choices("agent"))
    seeds.seed_globals("init")
    node = OmegaConf.load(agent_file)
    if "size" in node and rc.agent == cfg.agent.name:
        node = OmegaConf.merge(node, cfg.agent)  # the pipeline's own agent settings (size, overrides)
    agent = instantiate(strip_names(node), f"agent {rc.agent!r}")(env_spec=tasks.env_spec, device=device)
    if rc.checkpoint:
        agent.load_state_dict(agent_state_of(checkpoint.load(rc.checkpoint)))
    envs, steps = int(rc.envs), int(rc.steps)
    if envs < 1 or steps < 1:
        raise UserError(f"record.envs ({envs}) and record.steps ({steps}) must be at least 1.")
    labeled = int(round(float(rc.actions) * envs))
    seeds.seed_globals("record")
    t0 = time.perf_counter()
    ds = record(agent, lambda i: tasks.make_env(specs[i % len(specs)]), tasks.env_spec, steps, envs,
                [seeds.seed("record_env", i) for i in range(envs)], keep_actions=[i < labeled for i in range(envs)],
                explore=bool(rc.explore))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save(tmp, {"task": cfg.task.name, "pixels": cfg.pixels, "recorder": str(rc.agent),
                  "checkpoint": rc.checkpoint, "seed": int(cfg.seed), "tasks": [s.to_dict() for s in specs],
                  "env_steps": steps, "wall_s": round(time.perf_counter() - t0, 1)})
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


# -- the phases -------------------------------------------------------------------------------------------
def phase_config(cfg: DictConfig, phase: str) -> DictConfig:
    """What a phase's results depend on (compared on resume, like metawm.train's run dirs)."""
    keys = ["task", "pixels", "tasks", "agent", "seed", "log_every", "checkpoint_every", phase]
    if phase != "pretrain":
        keys.append("eval")
    data = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
            for k in keys}
    data["dataset"] = str(dataset_dir(cfg))
    return OmegaConf.create(data)


def phase_plan(cfg: DictConfig, phase: str) -> list[tuple[int, tuple[str, ...]]]:
    """[(updates, phases to train), ...] of a command."""
    if phase == "pretrain":
        return [(int(cfg.pretrain.tokenizer_steps), ("tokenizer",)), (int(cfg.pretrain.dynamics_steps), ("dynamics",))]
    if phase == "finetune":
        return [(int(cfg.finetune.steps), ("dynamics", "agent"))]
    return [(int(cfg.imagine.steps), ("imagination",))]


def evaluate(agent, tasks, specs, cfg: DictConfig, seed: int) -> dict[str, float]:
    from metawm.envs.rollout import run_episodes
    from metawm.meta.base import summarize_episodes

    episodes = []
    per_task = max(1, math.ceil(int(cfg.eval.episodes) / len(specs)))
    for k, spec in enumerate(specs):
        episodes += run_episodes(agent, lambda: tasks.make_env(spec), tasks.env_spec, per_task,
                                 seed=seed + 104729 * k, explore=bool(cfg.eval.sample))
    return summarize_episodes(episodes, "eval")


def cmd_phase(cfg: DictConfig, phase: str) -> Path:
    from metawm.agents.dreamer4.dataset import Dataset
    from metawm.meta.base import mean_metrics

    root = pipeline_dir(cfg)
    run = RunDir(root / phase)
    state = run.prepare(phase_config(cfg, phase), "auto")
    if state == "complete":
        print(f"{phase} already complete: {run.path}", file=sys.stderr)
        return run.path
    device = pick_device(cfg.device)
    tasks = build_tasks(cfg)
    specs = task_specs(cfg, tasks)
    seeds = Seeds(cfg.seed)
    agent = build_agent(cfg, tasks.env_spec, device)
    prev = PREVIOUS[phase]
    if state != "resume" and prev is not None and RunDir(root / prev).read_summary().get("status") != "complete":
        raise UserError(f"{phase} starts from a finished {prev} phase, and {root / prev} has none. "
                        f"Run `python -m metawm.dreamer4 {prev}` with the same arguments first.")
    agent.dataset = Dataset.load(dataset_dir(cfg), tasks.env_spec)
    plan = phase_plan(cfg, phase)
    total = sum(n for n, _ in plan)
    step, offset, extra, pending = 0, None, {}, []
    if state == "resume":
        ck = checkpoint.load(run.latest, expect={"agent": "dreamer4", "phase": phase})
        agent.load_state_dict(ck["state"]["agent"])
        step, offset, extra = ck["state"]["step"], ck["state"]["jsonl_offset"], ck["state"]["extra"]
        pending = list(ck["state"]["pending"])  # metrics of updates not logged yet
        set_global_rng_state(ck["state"]["rng"])
        print(f"resuming {phase} at update {step}: {run.path}", file=sys.stderr)
    else:
        if prev is not None:
            ck = checkpoint.load(RunDir(root / prev).latest, expect={"agent": "dreamer4", "phase": prev})
            agent.load_state_dict(ck["state"]["agent"])
        seeds.seed_globals(phase)
        if phase == "imagine":
            agent.start_imagination()
    if not agent.dataset.can_sample(max(agent.preset.batch_length, agent.preset.imag_context)):
        raise UserError(f"the dataset in {dataset_dir(cfg)} has no stream of {agent.preset.batch_length} steps; "
                        "record more steps.")
    sink = JsonlSink(run.metrics, truncate_to=offset)
    t0 = time.perf_counter() - float(extra.get("wall_s", 0.0))
    header = {"agent": "dreamer4", "phase": phase, "task": cfg.task.name}

    def save() -> None:
        extra["wall_s"] = time.perf_counter() - t0
        checkpoint.save(run.latest, {**header, "env_steps": step},
                        {"agent": agent.state_dict(), "step": step, "jsonl_offset": sink.offset,
                         "rng": global_rng_state(), "extra": dict(extra), "pending": list(pending)})

    def do_eval() -> dict[str, float]:
        row = evaluate(agent, tasks, specs, cfg, seeds.seed("eval", phase, step))
        extra.setdefault("first_eval", row.get("eval/return"))
        extra["last_eval"] = row.get("eval/return")
        return row

    if phase == "imagine" and step == 0:  # the behaviour-cloning starting point
        sink.log({**do_eval(), "phase/update": 0.0}, 0)
    every = int(cfg.eval.every)
    while step < total:
        phases = _phases_at(plan, step)
        pending.append(agent.train_step(phases))
        step += 1
        evaluated = phase != "pretrain" and (step % every == 0 or step == total)
        if step % int(cfg.log_every) == 0 or step == total or evaluated:
            row = {**mean_metrics(pending), "phase/update": float(step)}
            pending = []
            if evaluated:
                row.update(do_eval())
            sink.log(row, step)
            _maybe_crash(step)
        if step % int(cfg.checkpoint_every) == 0 or step == total:
            save()
    plots = _phase_plots(agent, run, phase)
    extra["wall_s"] = time.perf_counter() - t0
    summary = {"status": "complete", "phase": phase, "updates": step, "task": cfg.task.name, "pixels": cfg.pixels,
               "seed": int(cfg.seed), "wall_time_s": round(extra["wall_s"], 1), "agent_info": agent.info(),
               "objective": extra.get("last_eval"), "objective_metric": "eval/return", "plots": plots}
    if phase == "imagine":
        summary.update({"eval_return_start": extra.get("first_eval"), "eval_return_end": extra.get("last_eval")})
    run.write_summary(summary)
    sink.close()
    return run.path


def _phases_at(plan, step: int) -> tuple[str, ...]:
    for n, phases in plan:
        if step < n:
            return phases
        step -= n
    return plan[-1][1]


def _maybe_crash(step: int) -> None:
    """Fault injection for tests (as metawm.train): METAWM_CRASH_AFTER_STEPS=N dies right after
    logging the first update at or past N, before its checkpoint."""
    limit = os.environ.get("METAWM_CRASH_AFTER_STEPS")
    if limit and step >= int(limit):
        os._exit(137)


def _phase_plots(agent, run: RunDir, phase: str) -> list[str]:
    out = agent.plot_generation(run.plots, agent.grad_steps) if phase in ("pretrain", "finetune") else None
    return [str(out)] if out else []


# -- entry point -----------------------------------------------------------------------------------------
@cli
def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("--help", "-h") or "--help" in argv:
        print(__doc__.strip() + "\n\n" + configlib.usage("dreamer4 COMMAND", "dreamer4"))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise choices_error("command", command, COMMANDS, "Usage: python -m metawm.dreamer4 COMMAND +task=NAME ...")
    cfg = configlib.compose("dreamer4", [a for a in rest if a != "--cfg"])
    if "--cfg" in rest:
        print(configlib.to_yaml(cfg))
        return 0
    out = cmd_record(cfg) if command == "record" else cmd_phase(cfg, command)
    if command != "record":
        summary = RunDir(out).read_summary()
        if summary.get("objective") is not None:
            print(f"eval/return: {summary['objective']:.4g}", file=sys.stderr)
    print(f"{'dataset' if command == 'record' else 'phase directory'}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- helpers for the evidence scripts (benchmarks/dreamer4_*.py) ----------------------------------------
def load_phase(phase_dir: str | Path, device: str = "cpu"):
    """(agent, task distribution, specs, phase config) of a finished or checkpointed phase directory."""
    phase_dir = Path(phase_dir)
    cfg = configlib.load_run_config(phase_dir / "config.yaml")
    tasks = build_tasks(cfg)
    agent = build_agent(cfg, tasks.env_spec, torch.device(device))
    ck = checkpoint.load(phase_dir / "checkpoints" / "latest.ckpt", expect={"agent": "dreamer4"})
    agent.load_state_dict(ck["state"]["agent"])
    return agent, tasks, task_specs(cfg, tasks), cfg


def heldout_windows(tasks, specs, env_spec, length: int, count: int, seed: int, steps: int = 4000,
                    envs: int = 4) -> dict[str, np.ndarray]:
    """``count`` windows of ``length`` steps inside single episodes, from fresh random-agent
    episodes recorded with ``seed`` (not the training data's seed): held-out futures."""
    from metawm.agents.dreamer4.dataset import record
    from metawm.agents.random import RandomAgent

    torch.manual_seed(seed)
    ds = record(RandomAgent(env_spec), lambda i: tasks.make_env(specs[i % len(specs)]), env_spec, steps, envs,
                [seed + 7919 * i for i in range(envs)])
    g = torch.Generator().manual_seed(seed)
    out: list[dict[str, np.ndarray]] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 100 * count:
            raise UserError(f"could not find {count} windows of {length} steps inside episodes; record more steps.")
        w = ds.sample(1, length, g)
        if w["is_first"][0, 1:].any():
            continue
        out.append({k: v[0] for k, v in w.items()})
    return {k: np.stack([o[k] for o in out]) for k in out[0]}
