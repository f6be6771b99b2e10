"""Numbers of the meta-learners' math, checked by hand: the Reptile update, VariBAD's ELBO terms, the
learned optimizer's update; the population runners agree; the MPC agent's transitions; the
meta-gradient RL step on a small agent that exposes differentiable hyperparameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metawm.ops.elbo import (belief_kl_terms, bernoulli_reconstruction_terms, elbo_loss, gaussian_kl,
                             reconstruction_terms)
from metawm.ops.learned_optimizer import RuleMLP, init_state, learned_step
from metawm.meta.reptile import reptile_update

torch.set_num_threads(1)


def test_reptile_update_by_hand():
    phi = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.5)}
    adapted = [{"w": torch.tensor([3.0, 2.0]), "b": torch.tensor(1.5)},
               {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor(-0.5)}]
    new = reptile_update(phi, adapted, 0.5)
    # mean W = [2, 1], b 0.5; phi + 0.5 (mean - phi) = [1.5, 1.5], 0.5
    torch.testing.assert_close(new["w"], torch.tensor([1.5, 1.5]))
    torch.testing.assert_close(new["b"], torch.tensor(0.5))
    torch.testing.assert_close(reptile_update(phi, adapted, 1.0)["w"], torch.tensor([2.0, 1.0]))


def test_gaussian_kl_by_hand():
    # KL(N(1, 1) || N(0, 1)) = 0.5; KL(N(0, e^2) || N(0, 1)) = 0.5 (e^2 - 2 - 1) per dim
    kl = gaussian_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2), torch.zeros(1, 2))
    torch.testing.assert_close(kl, torch.tensor([0.5 + 0.5 * (math.exp(2) - 3)]))
    # against a prior that is not standard: KL(N(0,1) || N(1, e^1)) = 0.5 (1 + (1 + 1) / e - 1)
    kl2 = gaussian_kl(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1))
    torch.testing.assert_close(kl2, torch.tensor(0.5 * (1 + 2 / math.e - 1)))


def test_belief_kl_terms_use_previous_posterior():
    mu = torch.tensor([[[0.0], [1.0], [1.0]]])       # B=1, T+1=3, Z=1
    logvar = torch.tensor([[[0.0], [0.0], [math.log(4.0)]]])
    kl = belief_kl_terms(mu, logvar)
    # t=0 vs N(0,1): 0; t=1 N(1,1) vs N(0,1): 0.5; t=2 N(1,4) vs N(1,1): 0.5 (0 - ln4 + 4 - 1)
    torch.testing.assert_close(kl, torch.tensor([[0.0, 0.5, 0.5 * (3 - math.log(4.0))]]))


def test_reconstruction_and_elbo_by_hand():
    pred = torch.tensor([[[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]]])   # B=1, E=2 beliefs, J=3
    target = torch.tensor([[0.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])                      # the third transition is padding
    rec = reconstruction_terms(pred, target, mask)
    torch.testing.assert_close(rec, torch.tensor([[0.5, 2.0]]))  # 0.5*1 ; 0.5*(0 + 4)
    kl = torch.tensor([[0.2, 1.0]])
    loss = elbo_loss(rec, kl, torch.tensor([[1.0, 0.0]]), kl_weight=2.0)
    torch.testing.assert_close(loss, torch.tensor(0.5 + 0.4))   # only the first belief exists
    # vector targets are summed over features
    rec_v = reconstruction_terms(torch.ones(1, 1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 2))
    torch.testing.assert_close(rec_v, torch.tensor([[3.0]]))


def test_bernoulli_reconstruction_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0), 5.0]]])          # B=1, E=1, J=3
    target = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # -log sigmoid(0) = ln 2 ; -log(1 - sigmoid(ln 3)) = -log(1/4) = ln 4 ; padding dropped
    rec = bernoulli_reconstruction_terms(logits, target, mask)
    torch.testing.assert_close(rec, torch.tensor([[math.log(2.0) + math.log(4.0)]]))


def test_bernoulli_reward_decoder_targets_and_expectation():
    from metawm.infra.errors import UserError
    from metawm.meta.varibad import BeliefModel, VariBAD

    model = BeliefModel(3, 5, latent=2, reward_inputs="next_state", reward_likelihood="bernoulli",
                        reward_range=(-0.1, 1.0))
    assert model.reward_decoder[0].in_features == 3 + 2               # s' and m only
    torch.testing.assert_close(model.reward_target(torch.tensor([-0.1, 1.0, 0.45, 2.0])),
                               torch.tensor([0.0, 1.0, 0.5, 1.0]))
    # logit ln 3 -> p = 0.75 -> -0.1 + 0.75 * 1.1
    torch.testing.assert_close(model.expected_reward(torch.tensor([math.log(3.0)])), torch.tensor([0.725]))
    full = BeliefModel(3, 5, latent=2)
    assert full.reward_decoder[0].in_features == 3 + 5 + 3 + 2
    torch.testing.assert_close(full.expected_reward(torch.tensor([0.3])), torch.tensor([0.3]))
    with pytest.raises(UserError, match=r"reward_range=\[low,high\]"):
        VariBAD(reward_likelihood="bernoulli")
    with pytest.raises(UserError, match="reward_likelihood='poisson' is not valid"):
        VariBAD(reward_likelihood="poisson")
    with pytest.raises(UserError, match="reward_inputs='state' is not valid"):
        VariBAD(reward_inputs="state")
    with pytest.raises(UserError, match="plan_belief='thompson' is not valid"):
        VariBAD(plan_belief="thompson")


def test_varibad_plans_with_the_decoder_of_the_roots_belief():
    """agent=mpc gets VariBAD's reward decoder as its planning reward, under beliefs read from the
    root's appended [mu, logvar]: at the mean, averaged over samples, or one sample per environment,
    the same for every candidate of that environment."""
    import gymnasium as gym

    from metawm.agents.mpc import MPCAgent
    from metawm.agents.random import RandomAgent
    from metawm.meta.varibad import BeliefAgent, BeliefModel, augmented_spec
    from metawm.types import EnvSpec

    torch.manual_seed(0)
    base = EnvSpec(gym.spaces.Box(0, 4, (3,), np.float32), gym.spaces.Discrete(5))
    model = BeliefModel(3, 5, latent=2, decoder_hidden=8, decode_state=False, reward_inputs="next_state",
                        reward_likelihood="bernoulli", reward_range=(-0.1, 1.0))
    spec = augmented_spec(base, 2, "vae", False)
    mpc = MPCAgent(spec, torch.device("cpu"), size="tiny")
    assert mpc.reward_fn is None
    BeliefAgent(mpc, model, base, False, torch.device("cpu"), plan=("mean", 1))
    assert mpc.reward_fn is not None
    root = torch.tensor([[1.0, 2.0, 0.0, 0.5, -0.5, 0.0, 0.0]])       # s, mu, logvar; n = 1
    s_next = torch.tensor([[3.0, 1.0, 0.2, 9.0, 9.0, 9.0, 9.0]])     # its belief part is ignored
    a = torch.nn.functional.one_hot(torch.tensor([2]), 5).float()
    want = -0.1 + 1.1 * torch.sigmoid(model.reward_decoder(torch.tensor([[3.0, 1.0, 0.2, 0.5, -0.5]])))[:, 0]
    torch.testing.assert_close(mpc.reward_fn(root, 1)(root, a, s_next), want)
    # average / sample: a near-zero variance gives the mean's value; a wide one does not
    sharp, wide = root.clone(), root.clone()
    sharp[:, 5:], wide[:, 5:] = -30.0, 4.0
    for mode in ("average", "sample"):
        agent = BeliefAgent(mpc, model, base, False, torch.device("cpu"), plan=(mode, 16))
        torch.testing.assert_close(agent.planning_reward(sharp, 1)(sharp, a, s_next), want)
        assert not torch.allclose(agent.planning_reward(wide, 1)(wide, a, s_next), want)
    # sample: every candidate of one env is scored under the same belief draw (common random numbers),
    # and two envs get different draws
    two = torch.cat([wide, wide])
    r = BeliefAgent(mpc, model, base, False, torch.device("cpu"), plan=("sample", 1)).planning_reward(two, 3)(
        two.repeat_interleave(3, 0), a.expand(6, -1), s_next.expand(6, -1))
    torch.testing.assert_close(r[:3], r[:1].expand(3))
    torch.testing.assert_close(r[3:], r[3:4].expand(3))
    assert not torch.allclose(r[0], r[3])
    # an agent without an outside reward model is left alone
    other = RandomAgent(spec, torch.device("cpu"))
    BeliefAgent(other, model, base, False, torch.device("cpu"), plan=("average", 8))
    assert not hasattr(other, "reward_fn")


def test_varibad_explore_members_act_at_random_and_others_follow_the_policy():
    """meta.explore_members: the first members' actions are uniform draws (data for the belief
    model the policy would not collect); the others keep the inner agent's action."""
    import gymnasium as gym

    from metawm.infra.errors import UserError
    from metawm.meta.varibad import BeliefAgent, BeliefModel, VariBAD
    from metawm.types import EnvSpec

    class Zero:
        env_spec = None

        def initial_carry(self, n):
            return None

        def act(self, step, carry, *, explore):
            return np.zeros(len(step["is_first"]), np.int64), carry

    torch.manual_seed(0)
    base = EnvSpec(gym.spaces.Box(0, 4, (3,), np.float32), gym.spaces.Discrete(5))
    agent = BeliefAgent(Zero(), BeliefModel(3, 5, latent=2), base, False, torch.device("cpu"))
    agent.random_envs = np.array([True, False])
    carry, seen = agent.initial_carry(2), []
    for t in range(40):
        step = {"obs": np.zeros((2, 3), np.float32), "reward": np.zeros(2, np.float32),
                "is_first": np.array([t == 0, t == 0]), "is_last": np.array([False, False])}
        action, carry = agent.act(step, carry, explore=True)
        seen.append(action.copy())
    seen = np.stack(seen)
    assert set(seen[:, 0].tolist()) == {0, 1, 2, 3, 4} and set(seen[:, 1].tolist()) == {0}
    with pytest.raises(UserError, match="explore_members"):
        VariBAD(population=2, explore_members=2)


def test_varibad_explore_steps_make_every_member_random_at_the_start_only():
    """meta.explore_steps=N: during the first N env steps every member acts uniformly at random
    (a warm-up on covering data); afterwards only the explore_members do."""
    from metawm.infra.errors import UserError
    from metawm.meta.varibad import VariBAD

    vb = VariBAD(population=2, inner_steps=40, explore_steps=40, explore_members=0, vae_updates=1,
                 reward_likelihood="bernoulli", reward_range=[-0.1, 1.0], reward_inputs="next_state")
    vb.setup(_ctx("gridworld_goals"))
    vb.outer_step(0)
    assert vb.belief_agent.random_envs.tolist() == [True, True] and vb.env_steps == 40
    vb.outer_step(1)
    assert vb.belief_agent.random_envs.tolist() == [False, False]
    with pytest.raises(UserError, match="explore_steps"):
        VariBAD(explore_steps=-1)


def test_varibad_sample_episode_keeps_one_noise_draw_per_rollout():
    """plan_belief=sample_episode: m = mu + sigma * eps with eps drawn where a rollout starts and
    carried to its end, so the planned-for hypothesis changes only as the posterior moves."""
    import gymnasium as gym

    from metawm.agents.mpc import MPCAgent
    from metawm.meta.varibad import BeliefAgent, BeliefModel, augmented_spec
    from metawm.types import EnvSpec

    torch.manual_seed(0)
    base = EnvSpec(gym.spaces.Box(0, 4, (3,), np.float32), gym.spaces.Discrete(5))
    model = BeliefModel(3, 5, latent=2, decoder_hidden=8, decode_state=False)
    mpc = MPCAgent(augmented_spec(base, 2, "vae", False), torch.device("cpu"), size="tiny", candidates=4, horizon=2)
    agent = BeliefAgent(mpc, model, base, False, torch.device("cpu"), plan=("sample_episode", 1))
    mpc.updates = 1                                   # plan rather than act at random
    carry = agent.initial_carry(2)
    assert carry["noise"].shape == (2, 2)

    def step(first):
        return {"obs": np.zeros((2, 3), np.float32), "reward": np.zeros(2, np.float32),
                "is_first": np.array(first), "is_last": np.array([False, False])}

    _, c1 = agent.act(step([True, True]), carry, explore=False)
    _, c2 = agent.act(step([False, False]), c1, explore=False)
    torch.testing.assert_close(c2["noise"], c1["noise"])             # carried within a rollout
    _, c3 = agent.act(step([True, False]), c2, explore=False)
    assert not torch.allclose(c3["noise"][0], c2["noise"][0])         # env 0 starts a new rollout
    torch.testing.assert_close(c3["noise"][1], c2["noise"][1])
    # the planning reward uses exactly mu + exp(logvar / 2) * eps of the current rollout
    root = torch.tensor([[1.0, 2.0, 0.0, 0.5, -0.5, 0.0, 0.0], [1.0, 2.0, 0.0, 0.5, -0.5, 2.0, 2.0]])
    s_next, a = root.clone(), torch.nn.functional.one_hot(torch.tensor([2, 2]), 5).float()
    m = root[:, 3:5] + (0.5 * root[:, 5:7]).exp() * c3["noise"]
    want = model.reward_decoder(torch.cat([root[:, :3], a, s_next[:, :3], m], -1))[:, 0]
    torch.testing.assert_close(agent.planning_reward(root, 1)(root, a, s_next), want)
    from metawm.infra.errors import UserError
    from metawm.meta.varibad import VariBAD

    with pytest.raises(UserError, match="sample_episode"):
        VariBAD(plan_belief="thompson")


def test_varibad_carries_the_belief_across_episodes_of_one_task():
    """meta.episodes_per_task=2: each member meets its task for two episodes in a row; the VAE's
    trajectory runs across the reset through a boundary transition (zero action, zero reward, the new
    start state) that the decoders do not reconstruct, and the acting encoder steps on the same
    boundary transition instead of restarting from the prior."""
    from metawm.infra.errors import UserError
    from metawm.meta.varibad import VariBAD, pad_trajectories

    vb = VariBAD(population=2, inner_steps=500, episodes_per_task=2, vae_updates=1, decode_state=False)
    vb.setup(_ctx("point_nav"))
    out = vb.outer_step(0)
    ba = vb.belief_agent
    assert len(ba.trajectories) == 2                     # one 2-episode trajectory per member (100 steps each)
    for traj in ba.trajectories:
        assert traj["rew"].shape == (201,) and traj["obs"].shape == (202, 2) and traj["act"].shape == (201, 2)
        assert np.flatnonzero(traj["boundary"]).tolist() == [100]
        assert traj["rew"][100] == 0.0 and not traj["act"][100].any()
        np.testing.assert_array_equal(traj["obs"][101], np.zeros(2, np.float32))   # point_nav starts at the origin
    assert vb.episodes_started == 4  # each member's second task has begun
    assert {"train/return_task_ep1", "train/return_task_ep2"} <= set(out)
    batch = pad_trajectories(ba.trajectories, "cpu")
    assert batch["trans_mask"].sum() == 2 * 200 and batch["trans_mask"][:, 100].sum() == 0
    # acting: at the first step of a continued episode h = GRU(h, 0, 0, s_0); of a new task, h = 0
    h = torch.randn(2, vb.model.hidden)
    step = {"obs": np.ones((2, 2), np.float32), "reward": np.array([0.5, 0.5], np.float32),
            "is_first": np.array([True, True]), "is_last": np.array([False, False])}
    ba.persist = np.array([True, False])
    carry = {**ba.initial_carry(2), "h": h, "prev_action": torch.ones(2, 2)}
    _, h1 = ba.augment(step, carry)
    want = vb.model.step(h[:1], torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2))
    torch.testing.assert_close(h1[:1], want)
    torch.testing.assert_close(h1[1], torch.zeros(vb.model.hidden))
    with pytest.raises(UserError, match="episodes_per_task"):
        VariBAD(episodes_per_task=0)


def test_vae_loss_trains_the_belief_to_separate_tasks():
    from metawm.meta.varibad import BeliefModel, pad_trajectories, vae_loss
    from metawm.ops.adam import Adam

    torch.manual_seed(0)
    trajs = []
    for goal in (1.0, -1.0):   # two tasks: constant reward +1 or -1
        for length in (6, 4):
            trajs.append({"obs": np.zeros((length + 1, 2), np.float32), "act": np.zeros((length, 1), np.float32),
                          "rew": np.full(length, goal, np.float32)})
    model = BeliefModel(2, 1, latent=2, hidden=16, embed=8, decoder_hidden=16, decode_state=False)
    batch = pad_trajectories(trajs, "cpu")
    assert batch["belief_mask"].sum() == 7 + 5 + 7 + 5 and batch["trans_mask"].sum() == 20
    opt = Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(300):
        loss, m = vae_loss(model, batch, elbo_samples=None, decode_samples=None, kl_weight=0.1, rew_weight=1.0,
                           state_weight=1.0)
        first = first if first is not None else m["vae/rew_nll"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["vae/rew_nll"] < 0.5 * first  # the prior (t = 0) cannot know the task: ~0.42 is the floor
    with torch.no_grad():
        mu, _ = model.encode(batch["obs"], batch["act"], batch["rew"])
    # after one reward the two tasks' beliefs differ; before any transition they are the same prior
    torch.testing.assert_close(mu[0, 0], mu[2, 0])
    assert (mu[0, 1] - mu[2, 1]).abs().max() > 0.1


def test_learned_optimizer_starts_as_adam_and_applies_its_outputs():
    rule = RuleMLP(8)
    p = {"w": torch.tensor([1.0, -2.0, 0.5])}
    g = {"w": torch.tensor([0.1, -0.4, 0.0])}
    new, state = learned_step(rule, p, g, init_state(p), torch.tensor(1.0), base_lr=0.01)
    # zero-initialised last layer: d = 0, s = 0, so the first step is Adam's, sign(g) * |g| / (|g| + eps)
    adam = torch.tensor([1.0, -1.0, 0.0])
    torch.testing.assert_close(new["w"], p["w"] - 0.01 * adam, atol=1e-6, rtol=0)
    assert state["t"] == 1
    torch.testing.assert_close(state["m"]["w"][1], 0.1 * g["w"])  # momentum at decay 0.9
    torch.testing.assert_close(state["v"]["w"], 0.001 * g["w"] ** 2)
    with torch.no_grad():   # raw d = 0.5 everywhere, raw log-scale ln 2, each bounded by 3 tanh(x / 3)
        rule.net[-1].bias.copy_(torch.tensor([0.5, math.log(2.0)]))
    new2, _ = learned_step(rule, p, g, init_state(p), torch.tensor(1.0), base_lr=0.01)
    d, s = 3 * math.tanh(0.5 / 3), 3 * math.tanh(math.log(2.0) / 3)   # 0.4954, 0.6824
    torch.testing.assert_close(new2["w"], p["w"] - 0.01 * math.exp(s) * (adam + d), atol=1e-6, rtol=0)
    with torch.no_grad():   # an exploded output is capped: step at most e^3 ~ 20x base_lr, |d| < 3
        rule.net[-1].bias.copy_(torch.tensor([1e6, 1e6]))
    new3, _ = learned_step(rule, p, g, init_state(p), torch.tensor(1.0), base_lr=0.01)
    torch.testing.assert_close(new3["w"], p["w"] - 0.01 * math.exp(3) * (adam + 3), atol=1e-5, rtol=0)
    with torch.no_grad():
        rule.net[-1].bias.copy_(torch.tensor([0.5, math.log(2.0)]))
    # the update is differentiable w.r.t. the rule's parameters
    new2, _ = learned_step(rule, p, g, init_state(p), torch.tensor(1.0), base_lr=0.01)
    new2["w"].sum().backward()
    assert rule.net[-1].bias.grad is not None and rule.net[-1].bias.grad.abs().sum() > 0


def _ctx(suite="point_nav", seed=1, **agent_kw):
    from metawm.agents.mpc import MPCAgent
    from metawm.infra.seeding import Seeds
    from metawm.meta.base import Context
    from metawm.tasks import load_suite

    seeds = Seeds(seed)

    def make_agent(spec, init=None):
        seeds.seed_globals("init") if init is None else seeds.seed_globals("init", init)
        return MPCAgent(spec, size="tiny", candidates=16, horizon=3, **agent_kw)

    return Context(load_suite(suite), make_agent, torch.device("cpu"), seeds)


def test_population_members_give_the_same_result_inline_and_in_processes():
    from metawm.meta.population import InlineRunner, MemberJob, ProcessRunner, World, train_member

    ctx = _ctx()
    world = World(ctx.tasks, ctx.make_agent)
    state = ctx.make_agent(ctx.tasks.env_spec).state_dict()
    specs = ctx.tasks.sample("train", 2, np.random.default_rng(0))
    jobs = [MemberJob(s, state, 80, seed=11 + k) for k, s in enumerate(specs)]
    a = InlineRunner().map(train_member, jobs, world)
    b = ProcessRunner(2).map(train_member, jobs, world)
    for x, y in zip(a, b):
        assert x.env_steps == y.env_steps == 80 and x.task == y.task
        for n in x.params:
            torch.testing.assert_close(x.params[n], y.params[n], atol=0, rtol=0)
    assert any((a[0].params[n] - a[1].params[n]).abs().max() > 0 for n in a[0].params)  # members differ


def test_mpc_warm_start_keeps_the_shifted_best_plan():
    """With warm_start the carry is the chosen plan, and the next step's candidate 0 is that plan
    shifted by one: with a single candidate the agent follows its previous plan step by step."""
    from metawm.agents.mpc import MPCAgent
    from metawm.tasks import load_suite

    torch.manual_seed(0)
    spec = load_suite("gridworld_goals").env_spec
    agent = MPCAgent(spec, size="tiny", candidates=64, horizon=5, warm_start=True)
    agent.updates = 1                                   # plan with the (untrained) model, not at random
    agent.reward_fn = lambda obs, n: lambda s, a, s_next: a[:, 3]  # reward 1 for action 3 ("down"), else 0
    step = {"obs": np.zeros((1, 3), np.float32), "is_first": np.array([True])}
    carry = agent.initial_carry(1)
    assert carry.shape == (1, 0)
    action, carry = agent.act(step, carry, explore=False)
    assert carry.shape == (1, 5) and int(action[0]) == int(carry[0, 0])
    best = carry.clone()
    agent.candidates = 1
    for k in range(1, 5):
        action, carry = agent.act({**step, "is_first": np.array([False])}, carry, explore=False)
        assert int(action[0]) == int(best[0, k])
    # without warm_start there is no carry
    plain = MPCAgent(spec, size="tiny")
    assert plain.initial_carry(2) is None


def test_mpc_candidate_repeat_correlates_actions_in_time():
    """candidate_repeat = p: a sequence keeps its previous action with probability p (plus the 1/A
    chance that a fresh draw repeats it), i.i.d. sequences repeat with probability 1/A only."""
    from metawm.agents.mpc import MPCAgent
    from metawm.infra.errors import UserError
    from metawm.tasks import load_suite

    spec = load_suite("gridworld_goals").env_spec
    torch.manual_seed(0)
    for p in (0.0, 0.7):
        agent = MPCAgent(spec, size="tiny", candidates=4000, horizon=6, candidate_repeat=p)
        seqs = agent._candidates(2)
        assert seqs.shape == (2, 4000, 6) and int(seqs.min()) >= 0 and int(seqs.max()) < 5
        same = (seqs[..., 1:] == seqs[..., :-1]).float().mean().item()
        assert same == pytest.approx(p + (1 - p) / 5, abs=0.01)
    with pytest.raises(UserError, match="candidate_repeat"):
        MPCAgent(spec, size="tiny", candidate_repeat=1.0)


def test_mpc_context_dims_are_neither_predicted_nor_learned():
    """VariBAD's belief appended to the observation is context: the model's predicted change of
    those dims is zero (imagination holds them at the root's values) and the loss ignores them."""
    from metawm.agents.mpc import MPCAgent
    from metawm.meta.varibad import BeliefAgent, BeliefModel, augmented_spec
    from metawm.tasks import load_suite

    base = load_suite("gridworld_goals").env_spec
    spec = augmented_spec(base, 2, "vae", False)                 # 3 state dims + mu, logvar (2 each)
    torch.manual_seed(0)
    agent = MPCAgent(spec, size="tiny")
    batch = {"obs": torch.randn(8, 7), "action": torch.randint(5, (8,)).float(), "reward": torch.zeros(8),
             "next_obs": torch.randn(8, 7), "terminal": torch.zeros(8)}
    full = agent._terms(None, batch)["dyn"].detach()
    BeliefAgent(agent, BeliefModel(3, 5, latent=2), base, False, torch.device("cpu"))
    assert agent.context_dims == 4
    delta, _, _ = agent._predict(None, batch["obs"], batch["action"])
    assert torch.all(delta[:, 3:] == 0) and torch.all(delta[:, :3] != 0)
    expected = ((delta[:, :3] - (batch["next_obs"] - batch["obs"])[:, :3]) ** 2).sum(-1).mean()
    torch.testing.assert_close(agent._terms(None, batch)["dyn"], expected)
    assert float(expected.detach()) < float(full)
    # context_inputs=False: the model's prediction does not depend on the context dims at all
    blind = MPCAgent(spec, size="tiny", context_inputs=False)
    blind.set_context_dims(4)
    other = batch["obs"].clone()
    other[:, 3:] += 5.0
    torch.testing.assert_close(blind._predict(None, other, batch["action"])[0],
                               blind._predict(None, batch["obs"], batch["action"])[0])
    assert not torch.allclose(agent._predict(None, other, batch["action"])[0], delta)
    # the RL^2-style inputs are not a belief: nothing is declared context then
    plain = MPCAgent(augmented_spec(base, 2, "none", True), size="tiny")
    BeliefAgent(plain, None, base, True, torch.device("cpu"))
    assert plain.context_dims == 0


def test_mpc_agent_pairs_steps_into_transitions():
    from metawm.agents.mpc import MPCAgent
    from metawm.tasks import load_suite

    spec = load_suite("gridworld_goals").env_spec
    agent = MPCAgent(spec, size="tiny", train_after=1)
    def step(obs, r, first, last, a):
        return {"obs": np.array([obs], np.float32), "reward": np.array([r], np.float32), "is_first": np.array([first]),
                "is_last": np.array([last]), "is_terminal": np.array([False]), "action": np.array([a])}
    agent.observe(step([0, 0, 0], 0.0, True, False, 1))
    agent.observe(step([0, 1, 0.1], -0.1, False, True, 3))   # last: its action is ignored
    agent.observe(step([0, 0, 0], 0.0, True, False, 2))      # a new episode: no transition across
    assert agent.size_ == 1
    b = agent.sample_batch(torch.Generator().manual_seed(0))
    torch.testing.assert_close(b["obs"][0], torch.tensor([0.0, 0.0, 0.0]))
    torch.testing.assert_close(b["next_obs"][0], torch.tensor([0.0, 1.0, 0.1]))
    assert float(b["action"][0]) == 1 and float(b["reward"][0]) == pytest.approx(-0.1)


def test_mpc_a_fitted_model_trains_from_its_first_transition_a_fresh_one_waits():
    """train_after gates a fresh model only: a pretrained one (loaded state) fine-tunes, and MAML adapts,
    from a few short episodes (on cartpole_actuator a failing agent's 3 episodes of ~10 steps each never
    reached the 50 transitions, and fine-tuning took no step at all)."""
    from metawm.agents.mpc import MPCAgent
    from metawm.envs.rollout import Collector
    from metawm.tasks import load_suite

    tasks = load_suite("cartpole_actuator")
    spec = tasks.sample("train", 1, np.random.default_rng(0))[0]
    torch.manual_seed(0)
    trained = MPCAgent(tasks.env_spec, size="tiny", train_after=20)
    collector = Collector([tasks.make_env(spec)], tasks.env_spec, [0])
    n = 0
    while n < 60:
        n += collector.step(trained, explore=True)[0]
        trained.update(n)
    assert trained.updates > 0
    state = trained.state_dict(replay=False)
    for loaded in (True, False):
        torch.manual_seed(1)
        agent = MPCAgent(tasks.env_spec, size="tiny", train_after=20)
        if loaded:
            agent.load_state_dict(state)
        before = agent.updates
        collector = Collector([tasks.make_env(spec)], tasks.env_spec, [5])
        k = 0
        while k < 5:  # five transitions, far below train_after
            k += collector.step(agent, explore=True)[0]
            agent.update(state["counters"]["ratio_start"] + n + k if loaded else k)
        batch = agent.sample_batch(torch.Generator().manual_seed(0))
        if loaded:
            assert agent.updates > before and batch is not None and len(batch["obs"]) == agent.batch_size
        else:
            assert agent.updates == 0 and batch is None


class HparamAgent:
    """A tiny actor-critic whose loss is differentiable in discount, lambda and the entropy scale
    (the hook meta-gradient RL needs). Two-step windows: lambda-return target, REINFORCE + entropy."""

    name = "hparam_fake"

    def __init__(self, env_spec, device="cpu", **_):
        from torch import nn

        self.env_spec = env_spec
        d, n = int(env_spec.obs_space.shape[0]), env_spec.num_actions
        self.net = nn.Linear(d, n + 1)
        self.h = {"discount": 0.9, "lam": 0.5, "actent": 0.1}
        self.data = []
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.05)

    def initial_carry(self, n):
        return None

    @torch.no_grad()
    def act(self, step, carry, *, explore):
        logits = self.net(torch.as_tensor(step["obs"]))[:, :-1]
        return torch.distributions.Categorical(logits=logits).sample().numpy(), None

    def observe(self, step):
        self.data.append({k: np.asarray(step[k]).copy() for k in ("obs", "action", "reward")})

    def sample_batch(self, rng=None):
        if len(self.data) < 4:
            return None
        i = torch.randint(len(self.data) - 2, (8,), generator=rng).numpy()
        f = lambda k, o: torch.as_tensor(np.stack([self.data[j + o][k][0] for j in i])).float()  # noqa: E731
        return {"s0": f("obs", 0), "a": f("action", 0).long(), "r1": f("reward", 1), "s1": f("obs", 1),
                "r2": f("reward", 2), "s2": f("obs", 2)}

    def loss(self, params, batch, hparams=None):
        h = {k: torch.as_tensor(v) for k, v in {**self.h, **(hparams or {})}.items()}
        out = lambda s: torch.func.functional_call(self.net, dict(params), (s,), strict=False)  # noqa: E731
        o0, o1, o2 = out(batch["s0"]), out(batch["s1"]), out(batch["s2"])
        v1, v2 = o1[:, -1].detach(), o2[:, -1].detach()
        target = batch["r1"] + h["discount"] * ((1 - h["lam"]) * v1 + h["lam"] * (batch["r2"] + h["discount"] * v2))
        adv = target - o0[:, -1].detach()
        logp = torch.log_softmax(o0[:, :-1], -1)
        pg = -(logp.gather(1, batch["a"][:, None])[:, 0] * adv).mean()
        ent = -(logp.exp() * logp).sum(-1).mean()
        return pg - h["actent"] * ent + ((o0[:, -1] - target) ** 2).mean(), {}

    def update(self, env_steps):
        b = self.sample_batch()
        if b is None:
            return {}
        self.opt.zero_grad()
        self.loss(dict(self.net.named_parameters()), b)[0].backward()
        self.opt.step()
        return {}

    def hparams(self):
        return dict(self.h)

    def set_hparams(self, h):
        self.h.update(h)

    def parts(self):
        return {"all": [n for n, _ in self.net.named_parameters()]}

    def params(self, part="all"):
        return dict(self.net.named_parameters())

    def state_dict(self, *, replay=False):
        return {"agent": self.name, "net": {k: v.clone() for k, v in self.net.state_dict().items()}, "h": dict(self.h)}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        self.h = dict(state["h"])


def test_learned_optimizer_adapts_a_fresh_agent_initialised_like_scratch():
    """The ``meta`` row of learned_optimizer trains the same fresh agent as the ``scratch`` row (the
    adaptation run's own initialization), so the two differ only in the update rule."""
    from metawm.meta.base import fresh_agent
    from metawm.meta.learned_rule import LearnedRule

    trained = LearnedRule(population=1, inner_steps=120, updates_per_step=0.25, unroll=2, meta_lr=0.05)
    trained.setup(_ctx(seed=1))
    trained.outer_step(0)
    adapt_ctx = _ctx(seed=100)
    learner = LearnedRule(population=1, inner_steps=120, updates_per_step=0.25, unroll=2, meta_lr=0.05)
    learner.setup(adapt_ctx)
    learner.load_state_dict(trained.state_dict(replay=False))
    agent = learner.adaptation_agent(learner.agent().state_dict(replay=False), seed=3)
    scratch = fresh_agent(adapt_ctx.make_agent, adapt_ctx.tasks.env_spec, None, 3)
    for name, p in scratch.params().items():
        torch.testing.assert_close(agent.params()[name], p)
    init = trained._init_state["model"]
    assert any(not torch.equal(init[k], v) for k, v in scratch.model.state_dict().items())
    # the learned rule, not the agent's Adam, trains it: a shot changes its parameters
    rows = list(learner.adapt(agent, adapt_ctx.tasks.sample("test", 1, np.random.default_rng(0))[0], 1, seed=3))
    assert len(rows) == 2 and agent.updates == 0
    assert any(not torch.equal(agent.params()[n], p) for n, p in scratch.params().items())


def test_learned_optimizer_members_start_from_their_own_initial_weights():
    """vary_init (default): each member is a fresh draw of the agent's initial weights, reproducible
    from its seed; vary_init=false: every member starts from the learner's one initialization.
    (20 env steps: below the tiny MPC agent's train_after, so no update moves the weights.)"""
    from metawm.meta.learned_rule import LearnedRule

    spec = None
    for vary in (True, False):
        learner = LearnedRule(population=1, inner_steps=20, vary_init=vary)
        learner.setup(_ctx())
        spec = learner.ctx.tasks.sample("train", 1, np.random.default_rng(0))[0]
        w = [learner._train_with_rule(spec, seed, meta_train=False)[1].model[0].weight for seed in (1, 2, 1)]
        init = learner._init_state["model"]["0.weight"]
        if vary:
            assert not torch.equal(w[0], w[1]) and not torch.equal(w[0], init)
            torch.testing.assert_close(w[0], w[2])
        else:
            for x in w:
                torch.testing.assert_close(x, init)


def test_learned_optimizer_relative_meta_loss_divides_by_the_unrolls_starting_loss():
    """meta_loss=relative: the meta-gradient of an unroll is the absolute one divided by |L| at the
    unroll's start (same parameters, same batches)."""
    from metawm.envs.rollout import Collector
    from metawm.meta.learned_rule import LearnedRule, RuleTrainer

    ctx = _ctx()
    spec = ctx.tasks.sample("train", 1, np.random.default_rng(0))[0]
    agent = ctx.make_agent(ctx.tasks.env_spec)
    collector = Collector([ctx.tasks.make_env(spec)], ctx.tasks.env_spec, [0])
    while agent.sample_batch(torch.Generator().manual_seed(0)) is None:
        collector.step(agent, explore=True)
    from metawm.meta.base import load_params

    theta0 = {k: v.detach().clone() for k, v in agent.params().items()}
    grads, start = {}, {}
    for mode in ("absolute", "relative"):
        load_params(agent, theta0)   # the update writes the new parameters into the agent
        learner = LearnedRule(population=1, unroll=1, meta_loss=mode)
        learner.setup(ctx)
        learner.rule.net[-1].weight.data.fill_(0.01)   # a rule whose outputs depend on its inputs
        trainer = RuleTrainer(learner, agent, spec, seed=3, meta_train=True)
        assert trainer._update()
        grads[mode] = learner.rule.net[0].weight.grad.clone()
        start[mode] = trainer.losses[-1]
    assert start["absolute"] == pytest.approx(start["relative"]) and start["absolute"] > 0
    assert grads["absolute"].abs().sum() > 0
    torch.testing.assert_close(grads["relative"] * start["relative"], grads["absolute"], rtol=1e-4, atol=1e-7)
    with pytest.raises(Exception, match="meta.meta_loss"):
        LearnedRule(meta_loss="log")


def test_meta_gradient_rl_step():
    """Xu et al. eq. 1-4 on a small agent: the learner's gradient w.r.t. the (unconstrained)
    hyperparameters equals an independent autograd computation of d J'(theta - alpha grad L(theta; eta); eta_bar) / d eta,
    and, for the entropy scale (whose path has no stop-gradient), central finite differences."""
    from metawm.infra.seeding import Seeds
    from metawm.meta.base import Context
    from metawm.meta.learned_rule import HPARAM_TRANSFORMS, LearnedRule
    from metawm.ops.functional_sgd import grads_of
    from metawm.tasks import load_suite

    torch.manual_seed(0)
    ctx = Context(load_suite("gridworld_goals"), lambda spec: HparamAgent(spec), torch.device("cpu"), Seeds(0))
    learner = LearnedRule(rule="meta_gradient", population=1, inner_steps=30, meta_every=10, meta_lr=0.01,
                          inner_lr=0.5, meta_grad_clip=1e9)
    learner.setup(ctx)
    row = learner.outer_step(0)
    assert row["env_steps"] == 30 and "rule/meta_objective" in row
    moved = learner.hparams()
    assert any(abs(moved[k] - v) > 1e-6 for k, v in learner.reference.items())

    agent = learner.members[0]
    agent.net.double()
    theta0 = {n: p.detach().clone() for n, p in agent.params().items()}
    gen = torch.Generator().manual_seed(5)
    b1, b2 = agent.sample_batch(gen), agent.sample_batch(gen)
    b1, b2 = ({k: (v.double() if v.is_floating_point() else v) for k, v in b.items()} for b in (b1, b2))

    def objective(raw):
        theta = {n: v.clone().requires_grad_(True) for n, v in theta0.items()}
        eta = {k: HPARAM_TRANSFORMS[k][0](x) for k, x in raw.items()}
        g = grads_of(agent.loss(theta, b1, hparams=eta)[0], theta, create_graph=True)
        adapted = {n: theta[n] - 0.5 * g[n] for n in theta}
        ref = {k: torch.tensor(v, dtype=torch.float64) for k, v in learner.reference.items()}
        return agent.loss(adapted, b2, hparams=ref)[0]

    raw = {k: v.detach().double().requires_grad_(True) for k, v in learner.raw.items()}
    expected = dict(zip(raw, torch.autograd.grad(objective(raw), list(raw.values()))))

    batches = iter([b1, b2])
    agent.sample_batch = lambda gen=None: next(batches)
    learner.raw = raw
    learner.opt.step = lambda: None          # keep the gradient for inspection
    learner._meta_gradient_step(agent, gen)
    for k in raw:
        torch.testing.assert_close(raw[k].grad, expected[k], atol=1e-8, rtol=1e-5)  # the learner keeps eta_bar in float32
    e = 1e-6
    up = {k: v.detach() + (e if k == "actent" else 0) for k, v in raw.items()}
    dn = {k: v.detach() - (e if k == "actent" else 0) for k, v in raw.items()}
    fd = (objective(up) - objective(dn)) / (2 * e)
    assert float(expected["actent"].detach()) == pytest.approx(float(fd.detach()), rel=1e-5, abs=1e-9)


def test_varibad_refuses_image_suites_and_sizes_the_augmented_observation():
    import gymnasium as gym

    from metawm.infra.errors import UserError
    from metawm.meta.varibad import augmented_spec
    from metawm.types import EnvSpec

    image = EnvSpec(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.Discrete(18))
    with pytest.raises(UserError, match="Image suites are not supported by VariBAD"):
        augmented_spec(image, 5, "vae", False)
    vec = EnvSpec(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(5))
    assert augmented_spec(vec, 5, "vae", False).obs_space.shape == (3 + 10,)
    assert augmented_spec(vec, 5, "none", True).obs_space.shape == (3 + 5 + 1,)


def test_maml_out_of_memory_names_the_options_that_avoid_it(monkeypatch):
    from metawm.infra.errors import UserError
    from metawm.meta.maml import MAML

    maml = MAML(population=1, inner_steps=60, query="support")
    maml.setup(_ctx())
    spec = maml.ctx.tasks.sample("train", 1, np.random.default_rng(0))[0]
    member = maml._member_data(0, 0, spec, maml.agent().state_dict())

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(member["agent"], "loss", oom)
    with pytest.raises(UserError, match=r"meta.checkpoint_inner=true .* meta.first_order=true"):
        maml._meta_grad_member(member, 0, 0)


def test_multitask_moves_envs_to_a_new_population_only_at_episode_ends():
    """meta=none: a new population must not cut episodes short (real cartpole_physics episodes of
    an MPC agent outlast the 10 env steps per env of an outer step here). Each env runs its task
    until its episode ends, then starts its slot's new task; a checkpoint taken while switches are
    pending resumes to the same metrics and the same replay."""
    import copy

    from metawm.infra.seeding import global_rng_state, set_global_rng_state
    from metawm.meta.none import MultiTask

    def build():
        m = MultiTask(population=2, inner_steps=20)
        m.setup(_ctx("cartpole_physics"))
        return m

    m = build()
    rows, lengths, state = [], [], None
    for it in range(30):
        out = m.outer_step(it)
        rows.append(out)
        if state is None and m.pending:  # checkpoint where an env still runs a previous population's task
            state, rng, at = copy.deepcopy(m.state_dict()), global_rng_state(), it
    assert state is not None and at < 29, "no outer step ended with a switch pending: the resume check is empty"
    for out in rows:
        lengths += [v for k, v in out.items() if k == "train/length"]
    # rebuilding the envs at each new population (the old behaviour) ended every episode within 10 steps
    assert max(lengths) > 10, "some episodes outlast an outer step's 10 env steps per env"
    resumed = build()
    resumed.load_state_dict(state)
    set_global_rng_state(rng)  # the run loop checkpoints the global generators beside the learner
    again = [resumed.outer_step(it) for it in range(at + 1, 30)]
    assert again == rows[at + 1:]
    a, b = m.agent().replay, resumed.agent().replay
    assert all(np.array_equal(a[k][:m.agent().size_], b[k][:resumed.agent().size_]) for k in a)


def test_mpc_terminal_value_td_target_and_planning_by_hand():
    """agent.value=true: V's loss is the squared TD(0) error in symlog space against the EMA target,
    y = r + gamma (1 - terminal) symexp(V_bar(s')); planning adds gamma^H alive_H symexp(V(s_H))."""
    import gymnasium as gym

    from metawm.agents.mpc import MPCAgent
    from metawm.ops.symlog import symexp, symlog
    from metawm.types import EnvSpec

    torch.manual_seed(0)
    spec = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Discrete(2))
    agent = MPCAgent(spec, size="tiny", value=True, discount=0.9, horizon=2, candidates=64)
    with torch.no_grad():
        for net, c in ((agent.value, 1.0), (agent.value_target, 2.0)):  # V = symlog^-1 of a constant
            for p in net.parameters():
                p.zero_()
            net[-1].bias.fill_(c)
    batch = {"obs": torch.zeros(3, 2), "action": torch.zeros(3), "reward": torch.tensor([1.0, 0.5, 0.0]),
             "next_obs": torch.ones(3, 2), "terminal": torch.tensor([0.0, 1.0, 0.0])}
    y = batch["reward"] + 0.9 * (1 - batch["terminal"]) * symexp(torch.tensor(2.0))
    terms = agent._terms(None, batch)
    torch.testing.assert_close(terms["value"], ((1.0 - symlog(y)) ** 2).mean())
    assert set(agent.params("value")) == {f"value.{n}" for n, _ in agent.value.named_parameters()}
    total, _ = agent.loss(agent.params("all"), batch)
    torch.testing.assert_close(total, terms["dyn"] + terms["rew"] + terms["term"] + terms["value"])
    # planning: zero reward, no termination, action 1 moves x by ~+1 and V grows with x: only the terminal
    # value tells the candidates apart, so the plan's first action is 1
    with torch.no_grad():
        for net in (agent.model, agent.value):
            for p in net.parameters():
                p.zero_()
        agent.model[0].weight[0, 2 + 1] = 10.0      # hidden unit 0 ~ 10 * [action == 1]
        agent.model[2].weight[0, 0] = 1.0
        agent.model[-1].weight[0, 0] = 0.1          # delta x ~ [action == 1]
        agent.model[-1].bias[-1] = -1e4             # termination logit: never terminates
        agent.value[0].weight[0, 0] = 1.0           # V increases with symlog(x)
        agent.value[2].weight[0, 0] = 1.0
        agent.value[-1].weight[0, 0] = 1.0
    agent.updates = 1
    agent.reward_fn = lambda root, n: (lambda s, a, s2: torch.zeros(len(s)))
    firsts = [int(agent.act({"obs": np.zeros((1, 2), np.float32), "is_first": np.array([True])}, None,
                            explore=False)[0][0]) for _ in range(10)]
    assert firsts == [1] * 10
    state = agent.state_dict()
    with pytest.raises(Exception, match="agent.value"):
        MPCAgent(spec, size="tiny").load_state_dict(state)
