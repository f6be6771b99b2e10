"""Tier 2-3: every meta-learner x every agent meta-trains and adapts end to end through the real
entry points (``metawm.train`` then ``metawm.adapt`` on its checkpoint), and a killed meta-training
run resumes with a byte-identical ``metrics.jsonl``. ``meta=learned_rule`` runs its default rule
(``learned_optimizer``) in the matrix; ``meta.rule=meta_gradient`` needs an agent hook that
DreamerV3 and Dreamer 4 have, so it has its own tests below (both through the CLI, the others' clean
refusal).

The runs are in-process (``main(argv)``, the same code path as ``python -m``, without paying for
a new interpreter and torch import per run); ``tests/test_adapt_cli.py`` runs the CLI in a
subprocess as a user does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import read_jsonl, run_cli

torch.set_num_threads(1)

AGENTS = ["random", "mpc", "dreamerv3", "muzero", "dreamer4"]
METAS = ["none", "maml", "reptile", "varibad", "learned_rule"]
# the smallest run that still does everything once: one outer step of 2 members x 100 env steps,
# one evaluation on one test task
TINY = ["+exp=smoke", "tracker=disabled", "progress=false", "plots=false", "steps=200", "eval.every=200",
        "eval.tasks=1", "eval.splits=[test]", "checkpoint_every=200"]
AGENT_KNOBS = {"dreamerv3": ["agent.replay_ratio=2"], "muzero": ["agent.replay_ratio=0.05"]}
META_KNOBS = {"learned_rule": ["meta.updates_per_step=0.1", "meta.unroll=2"]}


def train(args, tmp: Path, name: str = "run") -> Path:
    from metawm.train import main

    run_dir = tmp / name
    assert main([*args, f"run_dir={run_dir}"]) == 0
    return run_dir


def adapt(ckpt: Path, task: str, out: Path, *extra: str) -> dict:
    from metawm.adapt import main

    assert main([f"checkpoint={ckpt}", f"+task={task}", "shots=1", "seeds=1", "eval.tasks=1", "eval.episodes=1",
                 "progress=false", "+exp=smoke", f"run_dir={out}", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("meta", METAS)
@pytest.mark.parametrize("agent", AGENTS)
def test_meta_learner_x_agent_trains_and_adapts(tmp_path, agent, meta):
    task = "cartpole_physics"
    run_dir = train([f"+task={task}", f"agent={agent}", f"meta={meta}", *TINY, *AGENT_KNOBS.get(agent, []),
                     *META_KNOBS.get(meta, [])], tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["env_steps"] >= 200
    assert (run_dir / "checkpoints" / "latest.ckpt").exists()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["eval/test/return"] > 0
    if meta in ("maml", "reptile", "learned_rule"):
        assert any(k.startswith("member/train/") for k in rows[0]), sorted(rows[0])
    out = adapt(run_dir, task, tmp_path / "adapt")
    assert set(out["methods"]) == {"meta", "finetune", "scratch"}
    for method, per_shot in out["methods"].items():
        assert [e["shot"] for e in per_shot] == [0, 1]
        assert per_shot[1]["return"]["n"] == 1 and per_shot[1]["return"]["mean"] > 0
    assert (tmp_path / "adapt" / "plots" / "adapt_return.png").exists()
    assert out["checkpoint_header"]["meta"] == meta and out["meta"] == meta


@pytest.mark.slow
def test_meta_gradient_rl_with_dreamerv3_from_the_command_line(tmp_path):
    """Xu et al. 2018 on DreamerV3 as a user runs it: discount, lambda and entropy scale adapt
    online, are logged as rule/*, and ``metawm.adapt`` trains fresh agents with them."""
    one = {"OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    res = run_cli("metawm.train", "+task=cartpole_physics", "agent=dreamerv3", "meta=learned_rule",
                  "meta.rule=meta_gradient", "+exp=smoke", "tracker=disabled", "progress=false", f"run_dir={run_dir}",
                  env=one)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "rule/lam" in r]
    assert len(rows) == 2 and "rule/meta_objective" in rows[-1]  # 2 outer steps of 2 members x 100 env steps
    last = rows[-1]
    assert abs(last["rule/lam"] - 0.95) > 1e-5 and abs(last["rule/discount"] - (1 - 1 / 333)) > 1e-6, last
    # the entropy scale's meta-gradient is ~1e-11 here, yet Adam (eps 1e-20) moves it as the others
    assert last["rule/actent"] != 3e-4 and last["rule/actent"] == pytest.approx(3e-4, rel=0.1), last
    out = tmp_path / "adapt"
    res = run_cli("metawm.adapt", f"checkpoint={run_dir}", "+task=cartpole_physics", "split=test", "shots=1",
                  "+exp=smoke", "progress=false", f"run_dir={out}", env=one)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and set(summary["methods"]) == {"meta", "finetune", "scratch"}
    assert summary["checkpoint_header"]["agent"] == "dreamerv3"


@pytest.mark.slow
def test_meta_gradient_rl_with_dreamer4_adapts_discount_and_lambda(tmp_path):
    """The Dreamer 4 hook: once imagination training has started, the meta-gradient through the
    value head's TD(lambda) targets moves gamma and lambda (the first outer step is pre-imagination
    in the smoke schedule, so they only move in the second)."""
    from metawm.train import main

    run_dir = tmp_path / "run"
    code = main(["+task=cartpole_physics", "agent=dreamer4", "meta=learned_rule", "meta.rule=meta_gradient",
                 "+exp=smoke", "tracker=disabled", "progress=false", "plots=false", f"run_dir={run_dir}"])
    assert code == 0
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "rule/lam" in r]
    assert len(rows) == 2
    assert rows[-1]["rule/lam"] != pytest.approx(0.95, abs=1e-6) and rows[-1]["rule/discount"] != pytest.approx(0.997, abs=1e-7)


@pytest.mark.parametrize("agent", ["mpc", "muzero"])
def test_meta_gradient_rl_names_the_hook_an_agent_lacks(tmp_path, capsys, agent):
    from metawm.train import main

    code = main(["+task=cartpole_physics", f"agent={agent}", "meta=learned_rule", "meta.rule=meta_gradient", *TINY,
                 f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "hparams()" in err and "learned_optimizer" in err and "Traceback" not in err, err


def test_varibad_on_the_bamdp_reports_sub_episode_returns(tmp_path):
    run_dir = train(["+task=gridworld_goals", "agent=mpc", "meta=varibad", *TINY], tmp_path)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert {f"eval/test/return_ep{i}" for i in range(1, 5)} <= set(rows[-1])
    assert rows[-1]["vae/loss"] > 0 and rows[-1]["varibad/trajectories"] >= 2
    out = adapt(run_dir, "gridworld_goals", tmp_path / "adapt")
    assert {"return_ep1", "return_ep4"} <= set(out["methods"]["meta"][0])


def test_rl2_style_variant_and_reptile_in_processes_run(tmp_path):
    train(["+task=gridworld_goals", "agent=mpc", "meta=varibad", "meta.encoder=none", "meta.rl2_inputs=true", *TINY],
          tmp_path, "rl2")
    run_dir = train(["+task=point_nav", "agent=mpc", "meta=reptile", "meta.runner=processes", "meta.workers=2", *TINY],
                    tmp_path, "procs")
    inline = train(["+task=point_nav", "agent=mpc", "meta=reptile", *TINY], tmp_path, "inline")
    assert (run_dir / "metrics.jsonl").read_bytes() == (inline / "metrics.jsonl").read_bytes()


class Crash(BaseException):
    pass


@pytest.mark.parametrize("meta, extra", [
    ("maml", ["meta.meta_sgd=true", "meta.dataset=3", "meta.meta_updates=2"]),
    ("reptile", []),
    ("varibad", ["meta.elbo_samples=8", "meta.decode_samples=16", "meta.vae_updates=2", "meta.episodes_per_task=2"]),
    ("learned_rule", []),
])
def test_killed_meta_training_resumes_byte_identical(tmp_path, monkeypatch, meta, extra):
    import metawm.run.train as loop

    args = ["+task=point_nav", "agent=mpc", f"meta={meta}", "+exp=smoke", "tracker=disabled", "progress=false",
            "plots=false", "steps=600", "eval.every=200", "eval.tasks=1", "checkpoint_every=200",
            "meta.inner_steps=100", *extra]
    ref = train(args, tmp_path, "ref")

    def crash(code):
        raise Crash()

    monkeypatch.setenv("METAWM_CRASH_AFTER_STEPS", "400")
    monkeypatch.setattr(loop.os, "_exit", crash)
    from metawm.train import main

    with pytest.raises(Crash):
        main([*args, f"run_dir={tmp_path / 'k'}"])
    partial = read_jsonl(tmp_path / "k" / "metrics.jsonl")
    assert partial[-1]["step"] >= 400 and len(partial) < len(read_jsonl(ref / "metrics.jsonl"))
    monkeypatch.delenv("METAWM_CRASH_AFTER_STEPS")
    assert main([*args, f"run_dir={tmp_path / 'k'}"]) == 0
    assert (tmp_path / "k" / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()
