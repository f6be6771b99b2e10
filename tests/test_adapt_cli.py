"""Tier 3: ``python -m metawm.adapt`` as a user runs it, on a checkpoint of a smoke run, and its
bad-input cases (clean one-paragraph errors, exit status 2, no traceback)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import run_cli

torch.set_num_threads(1)  # tiny tensors: one thread is several times faster on a shared 2-core machine

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TRAIN = ["+exp=smoke", "tracker=disabled", "progress=false", "plots=false", "steps=200", "eval.every=200",
         "eval.tasks=1", "eval.splits=[test]"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A meta=maml and a meta=none smoke run of the MPC agent on point_nav."""
    from metawm.train import main

    root = tmp_path_factory.mktemp("ckpt")
    for meta in ("maml", "none"):
        assert main(["+task=point_nav", "agent=mpc", f"meta={meta}", *TRAIN, f"run_dir={root / meta}"]) == 0
    return root


def test_adapt_cli_writes_curves_and_a_summary(checkpoints, tmp_path):
    out = tmp_path / "adapt"
    res = run_cli("metawm.adapt", f"checkpoint={checkpoints / 'maml' / 'checkpoints' / 'latest.ckpt'}",
                  "+task=point_nav", "split=test", "shots=2", "seeds=2", "+exp=smoke", "progress=false",
                  f"run_dir={out}", env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == f"run directory: {out}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["shots"] == 2 and summary["split"] == "test"
    assert len(summary["tasks"]) == 2 and len(summary["seeds"]) == 2
    for method in ("meta", "finetune", "scratch"):
        curve = summary["methods"][method]
        assert [e["shot"] for e in curve] == [0, 1, 2]
        assert curve[2]["return"]["n"] == 4 and curve[2]["return"]["ci95"] >= 0  # 2 tasks x 2 seeds
        assert set(curve[2]["per_task"]) == {t["split"] + "/" + str(t["index"]) for t in summary["tasks"]}
    assert summary["objective"] == summary["methods"]["meta"][2]["return"]["mean"]
    assert (out / "plots" / "adapt_return.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "adapt/meta/return_ci95" in rows[1]


def test_a_plain_checkpoint_adapts_with_maml_and_reptile(checkpoints, tmp_path):
    from metawm.adapt import main

    for meta in ("maml", "reptile"):
        assert main([f"checkpoint={checkpoints / 'none'}", "+task=point_nav", "shots=1", "seeds=1", "eval.tasks=1",
                     "eval.episodes=1", f"meta={meta}", "progress=false", f"run_dir={tmp_path / meta}"]) == 0
        summary = json.loads((tmp_path / meta / "summary.json").read_text())
        assert summary["meta"] == meta and summary["checkpoint_header"]["meta"] == "none"


def test_checkpoint_of_a_smoke_run_adapts_without_the_smoke_overrides(checkpoints, tmp_path):
    """Adaptation starts no training episode again: the training environments held in the checkpoint
    (here wrapped by +exp=smoke's episode limit) are not restored into the adapt command's envs."""
    from metawm.adapt import main

    assert main([f"checkpoint={checkpoints / 'none'}", "+task=point_nav", "shots=1", "seeds=1", "eval.tasks=1",
                 "eval.episodes=1", "progress=false", f"run_dir={tmp_path / 'a'}"]) == 0
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("args, message", [
    (["shots=-1"], r"shots=-1 is negative"),
    (["shots=two"], r"shots='two' is not a whole number"),
    (["split=val"], r"Unknown split of task suite 'point_nav' 'val'\. Valid choices: test, train"),
    (["meta=varibad"], r"was trained with meta=maml and holds no varibad state, which meta=varibad's adaptation needs"),
    (["meta=learned_rule"], r"holds no learned_rule state"),
    (["+task=gridworld_goals"], r"task 'gridworld_goals' has vector observations \(3,\), actions Discrete\(5\), but the "
                                r"checkpoint's agent was trained on 'point_nav'"),
    (["methods=[meta,oracle]"], r"Unknown adaptation method \(methods=\[\.\.\.\]\) 'oracle'"),
])
def test_bad_input_gives_a_clean_error(checkpoints, tmp_path, capsys, args, message):
    from metawm.adapt import main

    argv = [f"checkpoint={checkpoints / 'maml'}", "+task=point_nav", "progress=false", f"run_dir={tmp_path / 'r'}"]
    task = [a for a in args if a.startswith("+task=")]
    if task:
        argv = [a for a in argv if not a.startswith("+task=")]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error (metawm.adapt): ") and "Traceback" not in err
    assert re.search(message, " ".join(err.split())), err


def test_missing_corrupt_and_configless_checkpoints(checkpoints, tmp_path, capsys):
    from metawm.adapt import main

    base = ["+task=point_nav", "progress=false", f"run_dir={tmp_path / 'r'}"]
    assert main([f"checkpoint={tmp_path / 'nope.ckpt'}", *base]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "run" / "checkpoints"
    shutil.copytree(checkpoints / "maml", tmp_path / "run")
    (bad / "latest.ckpt").write_bytes((bad / "latest.ckpt").read_bytes()[:200])
    assert main([f"checkpoint={bad / 'latest.ckpt'}", *base]) == 2
    assert "is corrupt or truncated" in " ".join(capsys.readouterr().err.split())
    lone = tmp_path / "lone" / "x.ckpt"
    lone.parent.mkdir()
    shutil.copy(checkpoints / "maml" / "checkpoints" / "latest.ckpt", lone)
    assert main([f"checkpoint={lone}", *base]) == 2
    assert "has no config.yaml of its run beside it" in " ".join(capsys.readouterr().err.split())
    assert main(["+task=point_nav"]) == 2
    assert "No checkpoint given" in capsys.readouterr().err


def test_cli_bad_input_in_a_subprocess(checkpoints, tmp_path):
    res = run_cli("metawm.adapt", f"checkpoint={checkpoints / 'none'}", "+task=point_nav", "meta=varibad",
                  f"run_dir={tmp_path}", env=ONE_THREAD)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "meta=none and holds no varibad state" in " ".join(res.stderr.split())
    res = run_cli("metawm.adapt", "--help")
    assert res.returncode == 0 and "checkpoint=PATH" in res.stdout


def test_meta_overrides_on_the_checkpoints_own_learner_keep_its_other_settings():
    """``meta=varibad meta.plan_belief=mean`` on a VariBAD checkpoint changes plan_belief only: the
    group's defaults must not undo how the run was trained (its decoder's likelihood, ...)."""
    from metawm.adapt import build_config
    from metawm.infra import config as configlib

    run_cfg = configlib.compose("train", ["+task=gridworld_goals", "agent=mpc", "meta=varibad",
                                          "meta.reward_likelihood=bernoulli", "meta.reward_range=[-0.1,1.0]",
                                          "meta.explore_steps=400"])
    for argv, keys in [(["meta=varibad", "meta.plan_belief=mean"], {"plan_belief"}),
                       (["+meta.plan_belief=mean"], set())]:
        cfg = configlib.compose("adapt", ["checkpoint=x", "+task=gridworld_goals", *argv])
        meta = build_config(cfg, run_cfg, {}, keys).meta
        assert meta.plan_belief == "mean"
        assert meta.reward_likelihood == "bernoulli" and list(meta.reward_range) == [-0.1, 1.0]
        assert meta.explore_steps == 400
    cfg = configlib.compose("adapt", ["checkpoint=x", "+task=gridworld_goals", "meta=maml"])
    assert build_config(cfg, run_cfg, {}).meta.name == "maml"   # another learner: its own config


def test_an_oracle_checkpoint_adapts_observing_the_task(tmp_path):
    """A run trained with task.observe_params=true adapts with the test tasks' parameters in its
    observations, without the user repeating the option; task.observe_params=false is refused
    with the two observation shapes named."""
    from metawm.train import main

    assert main(["+task=point_nav", "agent=mpc", "meta=none", "task.observe_params=true", *TRAIN,
                 f"run_dir={tmp_path / 'oracle'}"]) == 0
    args = [f"checkpoint={tmp_path / 'oracle'}", "+task=point_nav", "shots=1", "seeds=1", "eval.tasks=1",
            "eval.episodes=1", "methods=[meta]", "progress=false"]
    ok = run_cli("metawm.adapt", *args, f"run_dir={tmp_path / 'a'}", env=ONE_THREAD)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["methods"]["meta"][1]["return"]["n"] == 1
    bad = run_cli("metawm.adapt", *args, "task.observe_params=false", f"run_dir={tmp_path / 'b'}", env=ONE_THREAD)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert re.search(r"vector observations \(2,\).*trained on .*vector observations \(3,\)", " ".join(bad.stderr.split()))
