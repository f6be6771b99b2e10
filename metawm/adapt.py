"""``python -m metawm.adapt checkpoint=PATH +task=NAME split=test shots=K [meta=NAME] [key=value ...]``

The composition root of few-shot adaptation: load a metawm checkpoint (meta-trained or plainly
pretrained), rebuild its agent and meta-learner from the run's ``config.yaml`` (found beside the
checkpoint), adapt to held-out tasks of ``split`` with the meta-learner's own adaptation and with
two baselines (the same agent fine-tuned, an agent trained from scratch), and write the curves
(``plots/adapt_return.png``), the table (``summary.json``) and one row per shot
(``metrics.jsonl``) into the adaptation's own run directory. The last line printed names it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Collection

from omegaconf import DictConfig, OmegaConf

from metawm.infra import checkpoint as ckptlib
from metawm.infra import config as configlib
from metawm.infra.errors import UserError, choices_error, cli
from metawm.infra.rundir import RunDir, config_hash

HEADER_KEYS = ("task", "agent", "meta")


def locate(path: str) -> tuple[dict[str, Any], Path]:
    """The checkpoint payload and its run's ``config.yaml``."""
    payload = ckptlib.load(path)
    ckpt = Path(payload["path"])
    for candidate in (ckpt.parent.parent / "config.yaml", ckpt.parent / "config.yaml"):
        if candidate.is_file():
            return payload, candidate
    raise UserError(f"checkpoint {str(ckpt)!r} has no config.yaml of its run beside it (looked in "
                    f"{ckpt.parent.parent} and {ckpt.parent}); metawm.adapt rebuilds the agent from that file. "
                    "Pass a checkpoint inside its run directory (runs/.../checkpoints/latest.ckpt).")


def build_config(cfg: DictConfig, run_cfg: DictConfig, header: dict[str, Any],
                 meta_keys: Collection[str] = (), task_keys: Collection[str] = ()) -> DictConfig:
    """The training run's config with the adaptation's task, meta-learner, seed and device.

    ``meta=NAME`` naming another meta-learner uses that learner's config. Naming the checkpoint's
    own learner (or none) keeps the checkpoint's meta config, with only the keys in ``meta_keys``
    (those given as ``meta.KEY=...`` on the command line) replaced: the group's defaults must not
    undo the run's settings (``meta=varibad meta.plan_belief=mean`` on a run trained with
    ``meta.reward_likelihood=bernoulli`` rebuilt a Gaussian decoder). The task is the command
    line's, except that ``observe_params`` (what the agent's observations hold) is the run's
    unless ``task.observe_params=...`` is in ``task_keys``: an oracle agent adapts as an oracle."""
    run = OmegaConf.to_container(run_cfg, resolve=True)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    if "observe_params" not in task_keys and run["task"].get("name") == task.get("name"):
        task["observe_params"] = bool(run["task"].get("observe_params", False))
    chosen = OmegaConf.to_container(cfg.meta, resolve=True) if "meta" in cfg and cfg.meta is not None else {}
    if chosen.get("name") and chosen["name"] != run["meta"]["name"]:
        meta = chosen  # another meta-learner's adaptation, with its own config
    else:
        given = set(meta_keys) if chosen.get("name") else set(chosen)  # +meta.KEY=...: only the given keys
        meta = {**run["meta"], **{k: v for k, v in chosen.items() if k in given and k != "name"}}
    return OmegaConf.create({**run, "task": task, "meta": meta, "seed": int(cfg.seed), "device": cfg.device})


def check_shots(shots: Any) -> int:
    if isinstance(shots, bool) or not isinstance(shots, int):
        raise UserError(f"shots={shots!r} is not a whole number; give the number of adaptation episodes, e.g. shots=5.")
    if shots < 0:
        raise UserError(f"shots={shots} is negative; give the number of adaptation episodes (0 = zero-shot only).")
    return shots


def load_learner(cfg: DictConfig, meta_keys: Collection[str] = (), task_keys: Collection[str] = ()):
    """The checkpoint's meta-learner (or the one ``cfg.meta`` names), set up on ``cfg.task`` with the
    checkpoint's state: what ``metawm.adapt`` adapts with, and what benchmarks probe. ``cfg`` is a
    composed ``adapt`` config. Returns (meta-learner, built objects, checkpoint payload)."""
    from metawm.meta.base import Context
    from metawm.train import build

    payload, run_config = locate(str(cfg.checkpoint))
    header = payload["header"]
    run_cfg = configlib.load_run_config(run_config)
    full = build_config(cfg, run_cfg, header, meta_keys, task_keys)
    built = build(full)
    built.tasks.check_split(str(cfg.split))
    ctx = Context(tasks=built.tasks, make_agent=built.make_agent, device=built.device, seeds=built.seeds)
    meta = built.meta
    meta.setup(ctx)
    if built.tasks.env_spec.describe() != _spec_of(run_cfg, built):
        raise UserError(f"task {cfg.task.name!r} has {built.tasks.env_spec.describe()}, but the checkpoint's agent was "
                        f"trained on {header.get('task')!r} with {_spec_of(run_cfg, built)}; adapt it to a suite with "
                        "the same observation and action spaces.")
    state = payload["state"]["meta"]
    if isinstance(state, dict) and state.get("collector") is not None:
        # The training environments mid-episode (kept for resuming the run) play no part in
        # adaptation, and the adapt command may build its environments differently (e.g. the
        # training run's +exp=smoke episode limit): never restore them here.
        state = {**state, "collector": None}
    if header.get("meta") == meta.name:
        meta.load_state_dict(state)
    elif getattr(meta, "needs_meta_state", False):
        raise UserError(f"checkpoint {payload['path']!r} was trained with meta={header.get('meta')} and holds no "
                        f"{meta.name} state, which meta={meta.name}'s adaptation needs (e.g. VariBAD's belief model, "
                        f"a learned update rule). Adapt it with meta=none, maml or reptile, or pass a checkpoint "
                        f"trained with meta={meta.name}.")
    else:
        if not isinstance(state, dict) or "agent" not in state:
            raise UserError(f"checkpoint {payload['path']!r} holds no agent state that meta={meta.name} can start from.")
        meta.load_agent_state(state["agent"])
    return meta, built, payload


def run(cfg: DictConfig, meta_keys: Collection[str] = (), task_keys: Collection[str] = ()) -> tuple[dict[str, Any], RunDir]:
    from metawm.infra.plots import curves_with_bands
    from metawm.infra.tracking import ConsoleSink, JsonlSink
    from metawm.run.adapt import METHODS, headline, jsonl_rows, run_adaptation, summarize

    shots = check_shots(cfg.shots)
    methods = list(cfg.methods)
    for m in methods:
        if m not in METHODS:
            raise choices_error("adaptation method (methods=[...])", m, METHODS)
    if int(cfg.seeds) < 1 or int(cfg.eval.tasks) < 1 or int(cfg.eval.episodes) < 1:
        raise UserError("seeds, eval.tasks and eval.episodes must each be at least 1.")
    meta, built, payload = load_learner(cfg, meta_keys, task_keys)
    header = payload["header"]

    run_dir = RunDir(cfg.run_dir or default_run_dir(cfg, header, payload["path"]))
    state_of_dir = run_dir.prepare(cfg, "auto")
    if state_of_dir == "complete":
        print(f"adaptation already complete: {run_dir.path}", file=sys.stderr)
        return run_dir.read_summary(), run_dir

    seeds = built.seeds
    specs = built.tasks.sample(str(cfg.split), int(cfg.eval.tasks), seeds.numpy("adapt_tasks", str(cfg.split)))
    unit_seeds = [seeds.seed("adapt", j) % (1 << 31) for j in range(int(cfg.seeds))]
    agent_state = meta.agent().state_dict(replay=False)
    total = len(methods) * len(specs) * len(unit_seeds)
    console = ConsoleSink(total=total, enabled=bool(cfg.progress), description=f"adapt {cfg.task.name}")
    done = [0]

    def on_unit(method, i, j, rows):
        done[0] += 1
        console.log({f"{method}/return@{shots}": rows[-1]["return"]}, done[0])

    results = run_adaptation(meta, meta.ctx, agent_state, specs, unit_seeds, shots, int(cfg.eval.episodes), methods,
                             on_unit)
    console.close()
    table = summarize(results, specs, len(unit_seeds), shots)
    sink = JsonlSink(run_dir.metrics)
    for k, row in jsonl_rows(table, shots):
        sink.log(row, k)
    sink.close()
    xs = list(range(shots + 1))
    title = f"{cfg.task.name} {cfg.split} · {header.get('agent')} · meta={meta.name} (ckpt meta={header.get('meta')})"
    for key in ("return", "success", *[f"return_ep{i}" for i in range(1, 9)]):
        series = {m: ([e.get(key, {}).get("mean", float("nan")) for e in table[m]],
                      [_nan0(e.get(key, {}).get("ci95", float("nan"))) for e in table[m]]) for m in table}
        if all(all(v != v for v in mean) for mean, _ in series.values()):
            continue
        curves_with_bands(xs, series, run_dir.plots / f"adapt_{key}.png", "adaptation episodes (shots)",
                          f"{key} (mean, 95% CI over tasks x seeds)", title)
    lead = headline(table, shots)
    summary = {"status": "complete", "objective": lead.get(f"meta/return@{shots}"),
               "objective_metric": f"meta/return@{shots}", "headline": lead,
               "checkpoint": payload["path"], "checkpoint_header": {k: header.get(k) for k in (*HEADER_KEYS, "env_steps", "seed")},
               "meta": meta.name, "task": cfg.task.name, "split": str(cfg.split), "shots": shots,
               "tasks": [s.to_dict() for s in specs], "seeds": unit_seeds, "eval_episodes": int(cfg.eval.episodes),
               "methods": table,
               "note": "units = tasks x seeds; ci95 = half-width of the 95% t-interval of the mean over units"}
    run_dir.write_summary(summary)
    return summary, run_dir


def _nan0(x: float) -> float:
    return 0.0 if x != x else x


def _spec_of(run_cfg: DictConfig, built) -> str:
    """The env spec the checkpoint's suite had (rebuilt from its run config)."""
    if run_cfg.task.name == built.tasks.name and bool(run_cfg.task.get("observe_params", False)) == \
            built.tasks.observe_params:
        return built.tasks.env_spec.describe()
    from metawm.infra.build import instantiate

    return instantiate(run_cfg.task, "task suite of the checkpoint").env_spec.describe()


def default_run_dir(cfg: DictConfig, header: dict[str, Any], ckpt: str) -> Path:
    tag = hashlib.sha256((config_hash(cfg) + str(Path(ckpt).resolve())).encode()).hexdigest()[:8]
    meta = cfg.meta.name if "meta" in cfg and cfg.meta is not None and cfg.meta.get("name") else header.get("meta")
    return Path("runs") / "adapt" / str(cfg.task.name) / f"{header.get('agent')}-{meta}" / \
        f"{cfg.get('exp_name', 'default')}-{cfg.split}-k{cfg.shots}-s{cfg.seed}-{tag}"


@cli
def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip() + "\n\n" + configlib.usage("adapt", "adapt"))
        return 0
    show = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    if not any(a.split("=", 1)[0].lstrip("+") == "checkpoint" for a in argv):
        raise UserError("No checkpoint given. Pass checkpoint=PATH (a .ckpt file, or a run directory with "
                        "checkpoints/latest.ckpt), e.g. python -m metawm.adapt checkpoint=runs/.../checkpoints/latest.ckpt "
                        "+task=cartpole_physics split=test shots=5.")
    cfg = configlib.compose("adapt", argv)
    if show:
        print(configlib.to_yaml(cfg))
        return 0
    # the meta.KEY=... overrides given, which replace the checkpoint's own meta settings
    meta_keys, task_keys = ({a.lstrip("+").split("=", 1)[0].split(".")[1] for a in argv
                             if a.lstrip("+").startswith(group + ".") and "=" in a} for group in ("meta", "task"))
    summary, run_dir = run(cfg, meta_keys, task_keys)
    lead = summary.get("headline", {})
    shown = "  ".join(f"{k}={v:.4g}" for k, v in lead.items() if k.endswith(("@0", f"@{summary.get('shots')}")))
    print(f"adaptation ({summary.get('split')}, {summary.get('shots')} shots): {shown}", file=sys.stderr)
    print(f"run directory: {run_dir.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


