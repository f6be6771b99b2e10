"""MAML's meta-gradients against ``higher`` (an independent implementation), and the options of
the inner loop (first order, Meta-SGD, checkpointing, vmap) against each other."""

from __future__ import annotations

import copy

import higher
import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)  # tiny tensors: one thread is several times faster on a shared 2-core machine

from metawm.agents.mpc import MPCAgent
from metawm.infra.seeding import Seeds
from metawm.meta.base import Context
from metawm.meta.maml import MAML
from metawm.ops.functional_sgd import grads_of, inner_loop, sgd_step
from metawm.tasks import load_suite


def make_ctx(suite="point_nav"):
    tasks = load_suite(suite)
    seeds = Seeds(3)

    def make_agent(spec):
        seeds.seed_globals("init")
        return MPCAgent(spec, size="tiny", train_after=20, batch_size=16, candidates=16, horizon=3)

    return Context(tasks=tasks, make_agent=make_agent, device=torch.device("cpu"), seeds=seeds)


def meta_grads(**kw):
    """theta's meta-gradient of one outer step's members (no optimizer step), plus the members."""
    maml = MAML(population=2, inner_steps=30, inner_lr=0.05, query="support", **kw)
    maml.setup(make_ctx())
    specs = maml.ctx.tasks.sample("train", 2, maml.ctx.seeds.numpy("tasks", 0))
    state = maml.agent().state_dict()
    members = [maml._member_data(0, k, s, state) for k, s in enumerate(specs)]
    if kw.get("vmap"):
        maml._meta_grad_vmapped(members, 0)
    else:
        for k, m in enumerate(members):
            maml._meta_grad_member(m, 0, k)
    grads = {n: p.grad.clone() for n, p in maml.theta.items()}
    if maml.lrs is not None:
        grads.update({f"lr/{n}": a.grad.clone() for n, a in maml.lrs.items()})
    return grads, members, maml


def higher_loss(fmodel, batch, act_dim, obs_dim):
    """The MPC agent's model loss written again against higher's functional module."""
    symlog = lambda v: torch.sign(v) * torch.log1p(v.abs())  # noqa: E731
    x = torch.cat([symlog(batch["obs"]), F.one_hot(batch["action"].long(), act_dim).float()
                   if batch["action"].dim() == 1 else batch["action"]], -1)
    out = fmodel(x)
    delta, rew, term = out[:, :obs_dim], out[:, obs_dim], out[:, obs_dim + 1]
    return (((delta - (batch["next_obs"] - batch["obs"])) ** 2).sum(-1).mean() + ((rew - symlog(batch["reward"])) ** 2).mean()
            + F.binary_cross_entropy_with_logits(term, batch["terminal"]))


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_equals_higher(steps):
    ours, members, maml = meta_grads(grad_steps=steps)
    agent = maml.agent()
    model = copy.deepcopy(agent.model)
    for p in model.parameters():
        p.grad = None
    for m in members:
        with higher.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=0.05),
                                  copy_initial_weights=False) as (fmodel, diffopt):
            for i in range(steps):
                diffopt.step(higher_loss(fmodel, m["support"][i], agent.act_dim, agent.obs_dim))
            (higher_loss(fmodel, m["query"], agent.act_dim, agent.obs_dim) / 2).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-5, rtol=1e-5)
    assert max(g.abs().max() for g in ours.values()) > 1e-3  # not trivially zero


def test_first_order_drops_the_hessian_term():
    ours, members, maml = meta_grads(grad_steps=2, first_order=True)
    agent = maml.agent()
    theta = {n: p.detach() for n, p in maml.theta.items()}
    expected = {n: torch.zeros_like(p) for n, p in theta.items()}
    for m in members:
        p = dict(theta)
        for i in range(2):  # plain SGD with the gradients treated as constants
            p = {n: v.detach() for n, v in p.items()}
            q = {n: v.requires_grad_(True) for n, v in p.items()}
            g = grads_of(agent.loss(q, m["support"][i])[0], q, create_graph=False)
            p = sgd_step(p, g, 0.05)
        q = {n: v.detach().requires_grad_(True) for n, v in p.items()}
        g = grads_of(agent.loss(q, m["query"])[0] / 2, q, create_graph=False)
        expected = {n: expected[n] + g[n] for n in expected}
    for n in expected:
        torch.testing.assert_close(ours[n], expected[n], atol=1e-6, rtol=1e-5)


def test_checkpointed_inner_loop_and_vmap_give_the_same_meta_gradient():
    plain, _, _ = meta_grads(grad_steps=2, meta_sgd=True)
    ckpt, _, _ = meta_grads(grad_steps=2, meta_sgd=True, checkpoint_inner=True)
    vm, _, _ = meta_grads(grad_steps=2, meta_sgd=True, vmap=True)
    assert set(plain) == set(ckpt) == set(vm) and any(k.startswith("lr/") for k in plain)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(vm[n], plain[n], atol=1e-5, rtol=1e-4)


def test_meta_sgd_rate_gradient_matches_finite_differences():
    torch.manual_seed(0)
    w = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    x, y, xq, yq = (torch.randn(5, 3, dtype=torch.float64) for _ in range(4))

    def loss(p, X, Y):
        return ((torch.tanh(X @ p["w"]) - Y[:, :2]) ** 2).mean()

    def outer(a):
        ad, _ = inner_loop(lambda p, i: loss(p, x, y), {"w": w}, 2, {"w": a})
        return loss(ad, xq, yq)

    a = torch.full((3, 2), 0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(outer, (a,))


def test_outer_step_learns_and_state_round_trips():
    maml = MAML(population=2, inner_steps=30, inner_lr=0.05, meta_lr=1e-2, meta_sgd=True)
    maml.setup(make_ctx())
    before = {n: p.detach().clone() for n, p in maml.theta.items()}
    row = maml.outer_step(0)
    assert row["env_steps"] == 2 * 60  # support + query (query_steps = inner_steps)
    assert row["maml/query_loss"] < row["maml/query_loss_pre"] or row["maml/query_loss"] < 10
    assert any((p - before[n]).abs().max() > 0 for n, p in maml.theta.items())
    state = maml.state_dict()
    other = MAML(population=2, inner_steps=30, inner_lr=0.05, meta_lr=1e-2, meta_sgd=True)
    other.setup(make_ctx())
    other.load_state_dict(state)
    a, b = maml.outer_step(1), other.outer_step(1)
    assert a == b


@pytest.mark.parametrize("query", ["support", "adapted"])
def test_meta_updates_reuse_the_collected_data(query):
    """meta_updates=k takes k outer steps per population on fresh batches of the same data: the
    env-step count is that of one step (query=adapted collects its query data once), the optimizer
    steps k times."""
    one = MAML(population=2, inner_steps=30, inner_lr=0.05, meta_lr=1e-2, query=query)
    one.setup(make_ctx())
    three = MAML(population=2, inner_steps=30, inner_lr=0.05, meta_lr=1e-2, query=query, meta_updates=3)
    three.setup(make_ctx())
    a, b = one.outer_step(0), three.outer_step(0)
    assert a["env_steps"] == b["env_steps"] == 2 * (30 if query == "support" else 60)
    assert (one.opt.t, three.opt.t) == (1, 3)
    assert all(torch.isfinite(p).all() for p in three.theta.values())
    assert any((p - one.theta[n]).abs().max() > 0 for n, p in three.theta.items())
    with pytest.raises(Exception, match="meta_updates"):
        MAML(meta_updates=0)


def test_random_support_actions_fill_the_agents_replay(monkeypatch):
    """support_actions=random: the support episodes (meta-training, and a test task's first shot)
    are uniformly random actions stored in the agent's replay; the agent never plans for them."""
    maml = MAML(population=2, inner_steps=30, inner_lr=0.05, query="support", support_actions="random")
    maml.setup(make_ctx())

    def no_planning(*a, **k):
        raise AssertionError("the agent planned a support action")

    with monkeypatch.context() as m:
        m.setattr(MPCAgent, "act", no_planning)
        row = maml.outer_step(0)
    assert row["env_steps"] == 60 and row["maml/query_loss"] < 1e3
    spec = maml.ctx.tasks.sample("test", 1, maml.ctx.seeds.numpy("tasks", 1))[0]
    agent = maml.adaptation_agent(maml.agent().state_dict(replay=False), 0)
    rows = list(maml.adapt(agent, spec, 1, seed=0))
    assert [r["adapted"] for r in rows] == [0.0, 1.0] and agent.size_ >= 99  # one 100-step random episode
    with pytest.raises(Exception, match="support_actions"):
        MAML(support_actions="greedy")


@pytest.mark.parametrize("meta_sgd", [False, True])
def test_inner_part_head_adapts_only_the_head_and_meta_learns_all(meta_sgd):
    """inner_part=head (ANIL): the inner loop changes only the output layer, the outer step still
    moves every parameter (the body through the second-order meta-gradient)."""
    maml = MAML(population=2, inner_steps=30, inner_lr=0.05, meta_lr=1e-2, query="support", grad_steps=2,
                inner_part="head", meta_sgd=meta_sgd)
    maml.setup(make_ctx())
    head = set(maml.agent().parts()["head"])
    assert head == {"4.weight", "4.bias"} and maml.fast == head
    before = {n: p.detach().clone() for n, p in maml.theta.items()}
    maml.outer_step(0)
    assert all((p - before[n]).abs().max() > 0 for n, p in maml.theta.items())
    spec = maml.ctx.tasks.sample("test", 1, maml.ctx.seeds.numpy("tasks", 1))[0]
    agent = maml.adaptation_agent(maml.agent().state_dict(replay=False), 0)
    theta0 = {n: p.detach().clone() for n, p in agent.params().items()}
    rows = list(maml.adapt(agent, spec, 1, seed=0))
    assert rows[-1]["adapted"] == 1.0
    changed = {n for n, p in agent.params().items() if (p - theta0[n]).abs().max() > 0}
    assert changed == head


def test_dataset_keeps_members_for_later_meta_updates_and_round_trips():
    """meta.dataset=D (GrBAL's dataset): the last D members stay, later meta-updates of an outer
    step draw their meta-batch from them and this step's, and a checkpoint holds them, so a
    restored learner continues identically."""
    maml = MAML(population=2, inner_steps=30, inner_lr=0.05, meta_lr=1e-2, query="support", meta_updates=4,
                dataset=5)
    maml.setup(make_ctx())
    for it in range(3):
        maml.outer_step(it)
    assert len(maml.kept) == 5 and [m["spec"] for m in maml.kept][-2:] == \
        maml.ctx.tasks.sample("train", 2, maml.ctx.seeds.numpy("tasks", 2))
    drawn = {id(m) for u in range(1, 4) for m in maml._meta_batch([], 3, u)}
    assert len(drawn) > 2, "later meta-updates draw kept members, not only this step's"
    state = copy.deepcopy(maml.state_dict())
    other = MAML(population=2, inner_steps=30, inner_lr=0.05, meta_lr=1e-2, query="support", meta_updates=4,
                 dataset=5)
    other.setup(make_ctx())
    other.load_state_dict(state)
    torch.manual_seed(0)
    a = maml.outer_step(3)
    torch.manual_seed(0)
    b = other.outer_step(3)
    assert a == b and all(torch.equal(p, other.theta[n]) for n, p in maml.theta.items())
    with pytest.raises(Exception, match="dataset"):
        MAML(dataset=-1)
