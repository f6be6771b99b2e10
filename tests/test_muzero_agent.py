"""Contracts of the MuZero agent: acting, storing, learning, functional access, persistence,
replay targets, EfficientZero options, images, and the errors a user can meet."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from metawm.agents.muzero.agent import MuZeroAgent
from metawm.agents.muzero.buffer import GameBuffer
from metawm.agents.random import RandomAgent
from metawm.envs.rollout import Collector
from metawm.infra.errors import UserError
from metawm.ops.nstep import windowed_n_step
from metawm.types import EnvSpec

CARTPOLE = EnvSpec(gym.make("CartPole-v1").observation_space, gym.make("CartPole-v1").action_space)


def make_agent(seed=0, spec=CARTPOLE, **kw):
    torch.manual_seed(seed)
    return MuZeroAgent(spec, size="tiny", **kw)


def collect(agent, steps, n_envs=2, seed=0, train=True, start=0):
    envs = [gym.make("CartPole-v1") for _ in range(n_envs)]
    col = Collector(envs, CARTPOLE, seeds=[seed + i for i in range(n_envs)])
    total, metrics = start, []
    steps += start
    while total < steps:
        n, _ = col.step(agent, explore=True)
        total += n
        if train:
            m = agent.update(total)
            if m:
                metrics.append(m)
    return metrics


@pytest.fixture(scope="module")
def trained():
    agent = make_agent()
    metrics = collect(agent, 160)
    return agent, metrics


def test_act_observe_update_contract(trained):
    agent, metrics = trained
    assert metrics, "the agent never trained"
    m = metrics[-1]
    for key in ("model/loss", "model/value_loss", "model/policy_loss", "model/reward_loss", "replay/size",
                "search/root_value", "search/visit_entropy"):
        assert key in m and np.isfinite(m[key]), key
    assert all("/" in k for k in m)
    step = {"obs": np.zeros((3, 4), np.float32), "reward": np.zeros(3, np.float32), "is_first": np.ones(3, bool),
            "is_last": np.zeros(3, bool), "is_terminal": np.zeros(3, bool)}
    action, carry = agent.act(step, agent.initial_carry(3), explore=False)
    assert action.dtype == np.int64 and action.shape == (3,) and ((0 <= action) & (action < 2)).all()
    info = agent.info()
    assert info["preset"] == "tiny" and info["params"] == sum(p.numel() for p in agent.net.parameters())
    assert set(agent.parts()) == {"representation", "dynamics", "prediction"}
    names = [n for part in agent.parts().values() for n in part]
    assert sorted(names) == sorted(agent.params())


def test_loss_is_finite_and_decreases_on_a_fixed_batch(trained):
    agent, _ = trained
    agent = make_agent(seed=1)
    agent.load_state_dict(trained[0].state_dict(replay=True))
    batch = agent.sample_batch(torch.Generator().manual_seed(0))
    params = {k: v.detach().clone().requires_grad_() for k, v in agent.params().items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, metrics = agent.loss(params, batch)
        assert torch.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # cross-entropy against soft targets has an irreducible part; the fit must still make progress
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(b < a for a, b in zip(losses[:5], losses[1:6]))   # monotone at first


def test_gradients_reach_substituted_parameters_of_every_part(trained):
    agent, _ = trained
    batch = agent.sample_batch(torch.Generator().manual_seed(1))
    agent.opt.zero_grad(set_to_none=True)
    for part in agent.parts():
        sub = {k: v.detach().clone().requires_grad_() for k, v in agent.params(part).items()}
        loss, _ = agent.loss(sub, batch)
        grads = torch.autograd.grad(loss, list(sub.values()), allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
        assert all(p.grad is None for p in agent.net.parameters())
        # the substitution is used: other values give another loss
        moved = {k: v + 0.05 * torch.randn_like(v) for k, v in sub.items()}
        assert not torch.isclose(agent.loss(moved, batch)[0], loss)
    # second-order: a MAML-style inner step differentiates through the loss
    p = {k: v.detach().clone().requires_grad_() for k, v in agent.params("prediction").items()}
    loss, _ = agent.loss(p, batch)
    g = torch.autograd.grad(loss, list(p.values()), create_graph=True)
    adapted = {k: v - 0.1 * gk for (k, v), gk in zip(p.items(), g)}
    outer, _ = agent.loss(adapted, batch)
    meta = torch.autograd.grad(outer, list(p.values()))
    assert all(torch.isfinite(x).all() for x in meta)


def test_state_dict_round_trip_continues_identically(trained):
    agent, _ = trained
    state = agent.state_dict(replay=True)
    clone = make_agent(seed=7)
    clone.load_state_dict(state)
    rng_state = torch.get_rng_state()
    m1 = collect(agent, 40, seed=5, start=agent.env_steps)
    torch.set_rng_state(rng_state)
    m2 = collect(clone, 40, seed=5, start=clone.env_steps)
    assert m1 == m2 and m1
    assert agent.state_dict(replay=False)["replay"] is None


def test_user_errors():
    box = EnvSpec(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32))
    with pytest.raises(UserError, match="Sampled MuZero"):
        MuZeroAgent(box, size="tiny")
    with pytest.raises(UserError, match="tiny, small, base|base, small, tiny"):
        MuZeroAgent(CARTPOLE, size="huge")
    with pytest.raises(UserError, match="value_target"):
        MuZeroAgent(CARTPOLE, size="tiny", value_target="oracle")
    with pytest.raises(UserError, match="random"):
        make_agent().load_state_dict(RandomAgent(CARTPOLE).state_dict())
    other = EnvSpec(gym.spaces.Box(-1, 1, (5,), np.float32), gym.spaces.Discrete(2))
    with pytest.raises(UserError, match="observation shape"):
        make_agent().load_state_dict(MuZeroAgent(other, size="tiny").state_dict())
    with pytest.raises(TypeError):   # unknown keys: Hydra's builder turns this into a UserError
        MuZeroAgent(CARTPOLE, size="tiny", num_simulation=3)


def test_learning_rate_warms_up_then_decays_exponentially():
    """The pseudocode's schedule lr * rate^(updates / steps), after a linear warm-up; a rate of 1
    (the tiny preset) keeps it constant; a rate outside (0, 1] is refused."""
    agent = make_agent(lr=0.01, lr_warmup=10, lr_decay_rate=0.1, lr_decay_steps=1000)
    for updates, expected in [(0, 0.01 * 0.1), (4, 0.01 * 0.5 * 0.1 ** 0.004), (9, 0.01 * 0.1 ** 0.009),
                              (500, 0.01 * 0.1 ** 0.5), (1000, 0.001), (2000, 0.0001)]:
        agent.updates = updates
        assert agent._lr() == pytest.approx(expected, rel=1e-9)
    flat = make_agent()
    flat.updates = 10**6
    assert flat._lr() == pytest.approx(flat.lr)
    with pytest.raises(UserError, match="lr_decay_rate"):
        make_agent(lr_decay_rate=1.5)


def _episode_buffer(terminal: bool) -> GameBuffer:
    """One stream, one episode of 4 transitions: rewards 1, 2, 3, 4 arrive at steps 1..4, search
    values 10, 20, 30, 40, 50 at steps 0..4, actions 0, 1, 0, 1 (and 1 at the final step)."""
    buf = GameBuffer(100, (1,), np.float32, 2, unroll_steps=2, n_step=3, seed=0)
    for t in range(5):
        step = {"obs": np.array([[t]], np.float32), "reward": np.array([float(t)]), "is_first": np.array([t == 0]),
                "is_last": np.array([t == 4]), "is_terminal": np.array([t == 4 and terminal]), "action": np.array([t % 2])}
        buf.add(step, np.array([[0.25, 0.75]]), np.array([10.0 * (t + 1)]), stamp=t)
    return buf


def _sample_at(buf: GameBuffer, t: int) -> dict:
    buf.priority[:] = 0
    buf.priority[0, t] = 1.0
    return buf.sample(4)


@pytest.mark.parametrize("terminal", [True, False])
def test_replay_targets_by_hand(terminal):
    g = 0.5
    buf = _episode_buffer(terminal)
    assert buf.num_sampleable() == 4     # positions 0..3; the final observation is never a root

    def z(s):
        return windowed_n_step(torch.tensor(s["window_reward"]), torch.tensor(s["horizon"]),
                               torch.tensor(s["stored_boot_value"]), torch.tensor(s["boot_mask"]), g)[0].tolist()

    s = _sample_at(buf, 1)
    assert (s["pos"] == 1).all() and s["actions"][0].tolist() == [1, 0]
    assert s["target_reward"][0].tolist() == [2.0, 3.0]
    boot = 0.0 if terminal else g**3 * 50          # from t=1, n=3 reaches the final state 4
    assert z(s) == pytest.approx([2 + g * 3 + g**2 * 4 + boot, 3 + g * 4 + g**2 * (0 if terminal else 50),
                                  4 + g * (0 if terminal else 50)])
    assert s["policy_mask"][0].tolist() == [1, 1, 1] and s["value_mask"][0].tolist() == [1, 1, 1]

    s = _sample_at(buf, 3)                          # unrolls to the final state 4 and one past it
    assert s["actions"][0, 0] == 1 and s["target_reward"][0].tolist() == [4.0, 0.0]
    assert z(s)[:2] == pytest.approx([4 + g * (0 if terminal else 50), 0.0 if terminal else 50.0])
    assert s["policy_mask"][0].tolist() == ([1, 0, 0] if terminal else [1, 1, 0])
    assert s["value_mask"][0].tolist() == ([1, 1, 1] if terminal else [1, 1, 0])
    assert s["consistency_mask"][0].tolist() == [1, 0]
    np.testing.assert_allclose(s["target_policy"][0, 0], [0.25, 0.75])
    if terminal:
        np.testing.assert_allclose(s["target_policy"][0, 2], [0.5, 0.5])


def test_running_episode_positions_wait_for_their_targets():
    buf = GameBuffer(100, (1,), np.float32, 2, unroll_steps=2, n_step=3, seed=0)
    for t in range(7):
        step = {"obs": np.zeros((1, 1), np.float32), "reward": np.ones(1), "is_first": np.array([t == 0]),
                "is_last": np.array([False]), "is_terminal": np.array([False]), "action": np.zeros(1, np.int64)}
        buf.add(step, np.full((1, 2), 0.5), np.zeros(1), stamp=t)
    assert buf.num_sampleable() == 2     # t + K + n <= 6: t = 0, 1
    # a new episode starting in the same stream closes the running one as a truncation
    step["is_first"] = np.array([True])
    buf.add(step, np.full((1, 2), 0.5), np.zeros(1), stamp=7)
    assert buf.num_sampleable() == 6 and buf.ep_end[0, 0] == 6


@pytest.mark.parametrize("options", [
    dict(value_prefix=True, consistency_loss=True, offpolicy_correction=True, offpolicy_total_steps=100),
    dict(gumbel=True, gumbel_max_considered=2, reanalyze_fraction=0.5, value_target="search"),
    dict(value_target="stored", frame_stack=3),
])
def test_options_train(options):
    agent = make_agent(**options)
    metrics = collect(agent, 120)
    assert metrics and all(np.isfinite(v) for v in metrics[-1].values())
    if options.get("consistency_loss"):
        assert "model/consistency_loss" in metrics[-1] and "projection" in agent.parts()


def test_image_observations_with_residual_conv_nets():
    spec = EnvSpec(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(6))
    agent = make_agent(spec=spec, learning_starts=8, batch_size=4, value_prefix=True)
    assert agent.info()["network"] == "resnet" and agent.frame_stack == 2
    rng = np.random.default_rng(0)
    carry = agent.initial_carry(2)
    for t in range(24):
        step = {"obs": rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8), "reward": np.ones(2, np.float32),
                "is_first": np.array([t == 0, t % 10 == 0]), "is_last": np.array([False, t % 10 == 9]),
                "is_terminal": np.array([False, t % 10 == 9])}
        action, carry = agent.act(step, carry, explore=True)
        assert action.shape == (2,) and carry.shape == (2, 2, 64, 64, 3)
        step["action"] = action
        agent.observe(step)
        metrics = agent.update(t * 2 + 2)
    assert metrics and np.isfinite(metrics["model/loss"])
    latent = agent.net.representation(torch.zeros(1, 64, 64, 6, dtype=torch.uint8) + 7)
    assert latent.shape[-2:] == (4, 4) and latent.min() >= 0 and latent.max() <= 1
