"""DreamerV3 agent and sequence replay: contracts, learning on a fixed batch, functional access for
meta-learners, exact resume, bad input. Everything runs the ``tiny`` preset on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from metawm.agents.dreamerv3 import DreamerV3Agent
from metawm.agents.random import RandomAgent
from metawm.data.replay import SequenceReplay
from metawm.infra.errors import UserError
from metawm.protocols import Agent
from metawm.types import EnvSpec

ROOT = Path(__file__).resolve().parents[1]

VECTOR = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2))
CONTINUOUS = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32))
ATARI = EnvSpec(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(18))


def make_agent(spec: EnvSpec = VECTOR, seed: int = 0, **kw) -> DreamerV3Agent:
    torch.manual_seed(seed)
    return DreamerV3Agent(spec, size="tiny", **kw)


def fake_steps(spec: EnvSpec, n_steps: int, n_envs: int = 1, seed: int = 0, episode: int = 9):
    """Steps in the Dreamer convention from a toy world: episodes of ``episode`` env steps whose
    reward is 1 when the action matches the sign of the first observation."""
    rng = np.random.default_rng(seed)
    for t in range(n_steps):
        pos = t % (episode + 1)
        if spec.is_image:
            obs = np.zeros((n_envs, *spec.obs_space.shape), np.uint8)
            obs[:, 8 * (pos % 8): 8 * (pos % 8) + 8, :16] = 255  # a moving bright block
        else:
            obs = rng.normal(size=(n_envs, *spec.obs_space.shape)).astype(np.float32)
        if spec.is_discrete:
            action = rng.integers(spec.num_actions, size=n_envs).astype(np.int64)
        else:
            action = rng.uniform(-1, 1, size=(n_envs, spec.num_actions)).astype(np.float32)
        yield {"obs": obs, "action": action, "reward": rng.integers(2, size=n_envs).astype(np.float32),
               "is_first": np.full(n_envs, pos == 0), "is_last": np.full(n_envs, pos == episode),
               "is_terminal": np.full(n_envs, pos == episode), "success": np.full(n_envs, np.nan, np.float32),
               "task": np.zeros(n_envs, np.int64)}


def filled(agent: DreamerV3Agent, n_steps: int | None = None, **kw) -> DreamerV3Agent:
    for step in fake_steps(agent.env_spec, n_steps or agent.train_after + 8, **kw):
        agent.observe(step)
    return agent


# -- the protocol: acting with an explicit carry ---------------------------------------------------------
@pytest.mark.parametrize("spec", [VECTOR, CONTINUOUS, ATARI], ids=["vector", "continuous", "atari18"])
def test_acts_with_explicit_carry(spec):
    agent = make_agent(spec)
    assert isinstance(agent, Agent)
    carry = agent.initial_carry(3)
    steps = fake_steps(spec, 3, n_envs=3)
    for step in steps:
        action, carry = agent.act(step, carry, explore=True)
        if spec.is_discrete:
            assert action.dtype == np.int64 and action.shape == (3,)
            assert ((0 <= action) & (action < spec.num_actions)).all()
        else:
            assert action.dtype == np.float32 and action.shape == (3, 2) and np.abs(action).max() <= 1
        agent.observe({**step, "action": action})
    greedy, _ = agent.act(step, carry, explore=False)
    assert greedy.shape[0] == 3


def test_carry_is_reset_where_an_episode_starts():
    agent = make_agent()
    step = next(fake_steps(VECTOR, 1, n_envs=2))
    step["is_first"] = np.array([True, True])
    torch.manual_seed(1)
    _, fresh = agent.act(step, agent.initial_carry(2), explore=True)
    junk = {k: torch.randn_like(v) for k, v in fresh.items()}
    step["is_first"] = np.array([True, False])
    torch.manual_seed(1)
    _, out = agent.act(step, junk, explore=True)
    torch.testing.assert_close(out["deter"][0], fresh["deter"][0])   # reset: as from zeros
    assert not torch.allclose(out["deter"][1], fresh["deter"][1])     # continued from its carry


# -- learning ---------------------------------------------------------------------------------------------
def test_loss_is_finite_and_decreases_on_a_fixed_batch():
    agent = filled(make_agent(warmup=0))
    batch = agent.sample_batch()
    first = agent._train_step(batch)
    assert all(np.isfinite(v) for v in first.values())
    for _ in range(12):
        last = agent._train_step(batch)
    wm = lambda m: m["wm/loss/rec"] + m["wm/loss/rew"] + m["wm/loss/con"]  # noqa: E731
    assert wm(last) < 0.8 * wm(first), (wm(first), wm(last))
    assert last["loss/total"] < first["loss/total"]
    assert {"wm/kl", "actor/entropy", "critic/loss", "opt/grad_norm"} <= set(last)


def test_update_follows_the_replay_ratio():
    agent = make_agent(replay_ratio=8)  # tiny: 4 x 16 = 64 replayed steps per update
    assert agent.update(0) == {}  # nothing stored yet
    filled(agent, agent.train_after)
    m = agent.update(100)
    assert agent.updates == 1 and m["replay/updates"] == 1  # the first eligible call trains once
    agent.update(100 + 24)  # 24 env steps later: 24 * 8 / 64 = 3 more
    assert agent.updates == 4
    agent.update(100 + 27)
    assert agent.updates == 4  # 3 * 8 / 64 < 1 update owed: not yet
    agent.update(100 + 32)
    assert agent.updates == 5


def test_image_agent_learns_and_plots(tmp_path):
    agent = filled(make_agent(ATARI))
    batch = agent.sample_batch()
    assert batch["obs"].dtype == torch.uint8 and batch["obs"].shape[-3:] == (64, 64, 3)
    m = agent._train_step(batch)
    assert np.isfinite(m["wm/loss/rec"])
    path = agent.write_plots(tmp_path / "plots", env_steps=100)
    assert path is not None and path.name == "reconstruction.png" and path.stat().st_size > 1000
    info = agent.info()
    assert info["preset"] == "tiny" and info["params"] == sum(p.numel() for p in agent.nets.parameters())


def test_continuous_agent_trains():
    agent = filled(make_agent(CONTINUOUS))
    m = agent._train_step(agent.sample_batch())
    assert all(np.isfinite(v) for v in m.values())


def test_plotting_does_not_change_the_course_of_training(tmp_path):
    a, b = filled(make_agent()), filled(make_agent())
    torch.manual_seed(5)
    a.write_plots(tmp_path, env_steps=10)
    m1 = a._train_step(a.sample_batch())
    torch.manual_seed(5)
    m2 = b._train_step(b.sample_batch())
    assert m1 == m2


# -- functional access for meta-learners ----------------------------------------------------------------------
def test_parts_and_params():
    agent = make_agent()
    parts = agent.parts()
    assert set(parts) == {"world_model", "actor_critic"}
    everything = agent.params()
    assert sorted(parts["world_model"] + parts["actor_critic"]) == sorted(everything)
    assert all(agent.params("world_model")[n] is everything[n] for n in parts["world_model"])
    with pytest.raises(UserError, match="actor_critic"):
        agent.params("policy")


def test_loss_with_substituted_params_is_differentiable_to_second_order():
    agent = filled(make_agent())
    batch = agent.sample_batch()
    state_before = (agent.retnorm.clone(), [p.clone() for p in agent.slow_critic.parameters()])
    live = agent.params()
    fast = {n: (p + 0.01 * torch.randn_like(p)).detach().requires_grad_() for n, p in live.items()}
    torch.manual_seed(3)
    loss_live, _ = agent.loss(live, batch)
    torch.manual_seed(3)
    loss_fast, metrics = agent.loss(fast, batch)
    assert torch.isfinite(loss_fast) and float(loss_fast.detach()) != float(loss_live.detach())
    assert "wm/loss/rec" in metrics
    names = list(fast)
    grads = torch.autograd.grad(loss_fast, [fast[n] for n in names], create_graph=True, allow_unused=True)
    got = {n for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}
    for part, members in agent.parts().items():
        assert len(got & set(members)) >= 0.9 * len(members), part
    assert all(live[n].grad is None for n in names)  # the live parameters were not used
    # second order (MAML): the gradient of the gradient norm w.r.t. the substituted parameters
    norm = sum((g ** 2).sum() for g in grads if g is not None)
    second = torch.autograd.grad(norm, [fast[n] for n in parts_of(agent, "world_model")], allow_unused=True)
    assert sum(float(g.abs().sum()) for g in second if g is not None) > 0
    # loss() reads but never updates the normalizer or the slow critic
    assert torch.equal(agent.retnorm, state_before[0])
    assert all(torch.equal(a, b) for a, b in zip(agent.slow_critic.parameters(), state_before[1]))


def parts_of(agent, part):
    return agent.parts()[part][:6]


def test_substituting_only_the_world_model():
    agent = filled(make_agent())
    batch = agent.sample_batch()
    wm = {n: p.detach().clone().requires_grad_() for n, p in agent.params("world_model").items()}
    loss, _ = agent.loss(wm, batch)
    grads = torch.autograd.grad(loss, list(wm.values()), allow_unused=True)
    assert sum(g is not None for g in grads) >= 0.9 * len(wm)


# -- hyperparameters as differentiable inputs (meta.rule=meta_gradient, Xu et al. 2018) ----------------------
def test_loss_is_differentiable_in_its_hyperparameters():
    """d loss / d (lambda, entropy scale, discount) of the agent's loss on a fixed batch equal central
    finite differences (float32: loose tolerance; the float64 check of the same math is in
    test_ops_dreamer.py); hparams=None is the loss at the agent's own values, and the gradients
    w.r.t. the networks do not change when the hyperparameters are tensors."""
    agent = filled(make_agent(warmup=0))
    for _ in range(3):
        agent._train_step(agent.sample_batch())
    batch = agent.sample_batch(torch.Generator().manual_seed(0))
    params = {n: p.detach().requires_grad_() for n, p in agent.params().items()}

    def loss(hparams):
        torch.manual_seed(7)  # the same imagined actions every time
        return agent.loss(params, batch, hparams=hparams)

    base, base_metrics = loss(None)
    cur = agent.hparams()
    assert cur == {"discount": 1 - 1 / 333, "lam": 0.95, "actent": 3e-4}
    assert base_metrics["actor/ret_scale"] == 1.0  # S = limit: a constant, as the gradient assumes
    eta = {k: torch.tensor(v, requires_grad=True) for k, v in cur.items()}
    total, _ = loss(eta)
    torch.testing.assert_close(total, base, rtol=0, atol=1e-6)
    got = dict(zip(eta, torch.autograd.grad(total, list(eta.values()), retain_graph=True)))
    names = list(params)
    same = torch.autograd.grad(base, [params[n] for n in names], allow_unused=True)
    tens = torch.autograd.grad(total, [params[n] for n in names], allow_unused=True)
    for n, a, b in zip(names, same, tens):
        assert (a is None) == (b is None), n
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=n)
    # the loss is linear in the entropy scale (a wide step is exact); smooth in lambda and gamma
    for k, e, rel in [("actent", 0.05, 1e-3), ("lam", 1e-3, 5e-2), ("discount", 1e-3, 1e-2)]:
        at = lambda v: float(loss({k: torch.tensor(v)})[0].detach())  # noqa: E731
        fd = (at(cur[k] + e) - at(cur[k] - e)) / (2 * e)
        assert float(got[k]) == pytest.approx(fd, rel=rel), k
        assert abs(float(got[k])) > 1e-4, k


def test_set_hparams_changes_training_and_is_checkpointed():
    a, b = filled(make_agent()), filled(make_agent())
    b.set_hparams({"lam": 0.5, "actent": 0.1, "discount": 0.9})
    assert b.hparams() == {"lam": 0.5, "actent": 0.1, "discount": 0.9}
    batch = a.sample_batch(torch.Generator().manual_seed(0))
    rows = []
    for agent in (a, b):  # the agent's own update uses them
        torch.manual_seed(1)
        rows.append([agent._train_step(batch) for _ in range(3)])
    (first_a, *_, last_a), (first_b, *_, last_b) = rows
    assert first_a["wm/loss/rec"] == first_b["wm/loss/rec"]  # the world model's loss does not depend on them
    assert first_a["actor/loss"] != first_b["actor/loss"]
    assert last_a["actor/imag_return"] != last_b["actor/imag_return"]
    other = make_agent(seed=3)
    other.load_state_dict(b.state_dict())
    assert other.hparams() == b.hparams()
    with pytest.raises(UserError, match="gamma.*actent"):
        b.set_hparams({"gamma": 0.9})
    with pytest.raises(UserError, match="lam"):
        b.set_hparams({"lam": 1.5})


# -- persistence: exact resume ------------------------------------------------------------------------------
def test_checkpoint_mid_training_resumes_to_the_same_metrics():
    def run(agent, env_steps):
        rows = []
        for i, step in enumerate(fake_steps(VECTOR, 16, seed=env_steps)):
            agent.observe(step)
            rows.append(agent.update(env_steps + i + 1))
        return rows

    torch.manual_seed(0)
    a = filled(make_agent(replay_ratio=16))
    run(a, 100)
    state = a.state_dict(replay=True)
    rng = torch.get_rng_state()
    uninterrupted = run(a, 116)

    b = make_agent(replay_ratio=16, seed=123)  # different initial weights, empty replay
    b.load_state_dict(state)
    torch.set_rng_state(rng)
    resumed = run(b, 116)
    assert uninterrupted == resumed and any(uninterrupted)
    assert b.updates == a.updates


def test_state_dict_without_replay_is_small_and_complete():
    agent = filled(make_agent())
    agent._train_step(agent.sample_batch())
    state = agent.state_dict()
    assert state["replay"] is None and state["agent"] == "dreamerv3"
    other = make_agent(seed=9)
    other.load_state_dict(state)
    for (n, p), q in zip(agent.nets.named_parameters(), other.nets.parameters()):
        assert torch.equal(p, q), n
    assert other.updates == 1 and len(other.opt.state) == len(agent.opt.state)


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "tasks" / "cartpole_physics.yaml").exists(), reason="needs the cartpole_physics suite")
def test_train_entry_point_resumes_bit_identically(tmp_path):
    """``python -m metawm.train ... agent=dreamerv3`` killed after logging (before its checkpoint)
    and run again continues to exactly the metrics.jsonl of an uninterrupted run."""
    args = [sys.executable, "-m", "metawm.train", "+task=cartpole_physics", "agent=dreamerv3", "+exp=smoke",
            "steps=150", "eval.every=100", "checkpoint_every=50", "meta.inner_steps=50", "meta.population=1",
            "eval.tasks=1", "tracker=disabled", "progress=false", "agent.replay_ratio=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def train(run_dir, crash=None):
        e = {**env, **({"METAWM_CRASH_AFTER_STEPS": str(crash)} if crash else {})}
        return subprocess.run([*args, f"run_dir={run_dir}"], cwd=ROOT, env=e, capture_output=True, text=True,
                              timeout=300)

    full = train(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    crashed = train(tmp_path / "resumed", crash=100)
    assert crashed.returncode == 137
    resumed = train(tmp_path / "resumed")
    assert resumed.returncode == 0 and "resuming" in resumed.stderr, resumed.stderr[-2000:]
    want = (tmp_path / "full" / "metrics.jsonl").read_bytes()
    assert (tmp_path / "resumed" / "metrics.jsonl").read_bytes() == want
    rows = [json.loads(line) for line in want.decode().splitlines()]
    assert any("wm/loss/rec" in r for r in rows)
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["agent_info"]["preset"] == "tiny"


# -- bad input ------------------------------------------------------------------------------------------------
def test_unknown_size_lists_the_presets():
    with pytest.raises(UserError, match="size1m.*small.*tiny") as e:
        DreamerV3Agent(VECTOR, size="huge")
    assert "huge" in str(e.value)


@pytest.mark.parametrize("spec", [
    EnvSpec(gym.spaces.Box(0, 255, (63, 63, 3), np.uint8), gym.spaces.Discrete(4)),
    EnvSpec(gym.spaces.Box(0, 1, (4, 4), np.float32), gym.spaces.Discrete(4)),
    EnvSpec(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.MultiDiscrete([2, 3])),
    EnvSpec(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Box(-1, 1, (2, 2), np.float32)),
    EnvSpec(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Box(0, 5, (2,), np.float32)),
], ids=["odd-image", "matrix-obs", "multidiscrete", "matrix-action", "unscaled-action"])
def test_unsupported_tasks_say_what_is_expected(spec):
    with pytest.raises(UserError, match="DreamerV3 expects vector observations .* and actions Discrete"):
        DreamerV3Agent(spec, size="tiny")


def test_checkpoint_of_another_agent_is_refused():
    agent = make_agent()
    with pytest.raises(UserError, match="agent 'random'.*'dreamerv3'"):
        agent.load_state_dict(RandomAgent(VECTOR).state_dict())
    with pytest.raises(UserError, match="size='small'"):
        agent.load_state_dict({**agent.state_dict(), "preset": "small"})


def test_unknown_loss_scale_is_refused():
    with pytest.raises(UserError, match="loss_scales"):
        make_agent(loss_scales={"recon": 1.0})


# -- the sequence replay ----------------------------------------------------------------------------------------
def _steps(n_envs, t, obs_shape=(2,), dtype=np.float32):
    return {"obs": np.full((n_envs, *obs_shape), t, dtype), "is_first": np.full(n_envs, t % 5 == 0),
            "stream": np.arange(n_envs, dtype=np.int64), "t": np.full(n_envs, t, np.int64)}


def test_replay_windows_are_contiguous_within_a_stream_and_skip_the_write_head():
    replay = SequenceReplay(capacity=20, length=4)  # 2 streams of 10
    for t in range(27):  # each ring wrapped: holds t = 17..26
        replay.add(_steps(2, t))
    assert len(replay) == 20 and replay.windows().tolist() == [7, 7]
    torch.manual_seed(0)
    batch = replay.sample(500)
    assert batch["t"].shape == (500, 4)
    assert (np.diff(batch["t"], axis=1) == 1).all()                 # consecutive, never across the head
    assert batch["t"].min() == 17 and batch["t"].max() == 26        # only valid data
    assert (batch["stream"] == batch["stream"][:, :1]).all()       # one stream per window
    starts, counts = np.unique(batch["t"][:, 0], return_counts=True)
    assert starts.tolist() == list(range(17, 24)) and counts.min() > 40  # every window, roughly uniformly


def test_replay_windows_may_span_episodes_marked_by_is_first():
    replay = SequenceReplay(capacity=100, length=8)
    for t in range(30):
        replay.add(_steps(1, t))
    torch.manual_seed(1)
    batch = replay.sample(64)
    assert batch["is_first"].any(axis=1).all()  # every 8-window crosses an episode start (every 5 steps)
    assert (batch["is_first"] == (batch["t"] % 5 == 0)).all()


def test_replay_stores_uint8_frames_without_overhead():
    replay = SequenceReplay(capacity=64, length=4, keys=("obs", "is_first"))
    replay.add(_steps(2, 0, (64, 64, 3), np.uint8))
    assert replay.data["obs"].dtype == np.uint8
    assert replay.bytes_per_step() == 64 * 64 * 3 + 1
    with pytest.raises(KeyError):
        SequenceReplay(capacity=8, length=2, keys=("obs", "action")).add(_steps(1, 0))


def test_replay_state_round_trip_and_growth():
    replay = SequenceReplay(capacity=30, length=3)
    for t in range(12):
        replay.add(_steps(3, t))
    replay.add(_steps(4, 12))  # a fourth stream appears
    assert replay.streams == 4 and replay.count.tolist() == [13, 13, 13, 1]
    clone = SequenceReplay(capacity=1, length=1)
    clone.load_state_dict(replay.state_dict())
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a, b = replay.sample(16, g1), clone.sample(16, g2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not replay.can_sample() or replay.windows()[3] == 0
