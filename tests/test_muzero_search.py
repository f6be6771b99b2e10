"""The batched MCTS: agreement with the plain one-root search, a hand-built model with a known
best action, Gumbel's considered set and the Sequential Halving schedule."""

import math

import pytest
import torch
from torch.nn import functional as F

from metawm.agents.muzero.search import (SearchConfig, considered_visit_sequence, gumbel_noise, search,
                                         search_single)


class RandomModel:
    """A fixed random tanh network in float64 (so the two searches see identical numbers)."""

    def __init__(self, dim: int = 6, actions: int = 4, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.A = actions
        self.wr = torch.randn(dim, dim, generator=g, dtype=torch.float64) / 2
        self.wd = torch.randn(dim + actions, dim, generator=g, dtype=torch.float64) / 2
        self.wp = torch.randn(dim, actions + 2, generator=g, dtype=torch.float64)

    def initial(self, obs):
        z = torch.tanh(obs @ self.wr)
        out = z @ self.wp
        return (z,), out[:, :self.A], out[:, self.A]

    def recurrent(self, state, action):
        z = torch.tanh(torch.cat([state[0], F.one_hot(action, self.A).double()], -1) @ self.wd)
        out = z @ self.wp
        return (z,), out[:, self.A + 1], out[:, :self.A], out[:, self.A]


@pytest.mark.parametrize("gumbel", [False, True])
def test_batched_search_equals_one_root_at_a_time(gumbel):
    model = RandomModel()
    obs = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cfg = SearchConfig(num_simulations=16, gumbel=gumbel, gumbel_max_considered=3, discount=0.9)
    torch.manual_seed(3)
    res = search(model, obs, cfg, explore=gumbel)   # Gumbel noise is drawn first, (B, A) at once
    torch.manual_seed(3)
    g = gumbel_noise((5, 4), torch.float64, torch.device("cpu")) if gumbel else None
    for b in range(5):
        one = search_single(model, obs[b:b + 1], cfg, explore=gumbel,
                            gumbel_override=None if g is None else g[b])
        torch.testing.assert_close(one.visits[0], res.visits[b])
        torch.testing.assert_close(one.root_value[0], res.root_value[b])
        torch.testing.assert_close(one.policy[0], res.policy[b])
        torch.testing.assert_close(one.qvalues[0], res.qvalues[b])
        if gumbel:
            assert int(one.action) == int(res.action[b])
    assert res.visits.sum(-1).eq(16).all()


class ChainModel:
    """Three states: the root (0), a good absorbing state (1) paying 1 per step and a bad absorbing
    state (2) paying 0. From the root, action 1 leads to the good state and action 0 to the bad
    one; the prior prefers the bad action 4:1. The value head is exact: V(good) = V(root) =
    1 / (1 - gamma), V(bad) = 0; so Q(root, good) = 1 + gamma V(good) = 1 / (1 - gamma) on every
    path and Q(root, bad) = 0."""

    def __init__(self, gamma: float):
        self.v = torch.tensor([1 / (1 - gamma), 1 / (1 - gamma), 0.0], dtype=torch.float64)
        self.logits = torch.log(torch.tensor([0.8, 0.2], dtype=torch.float64))

    def initial(self, obs):
        s = torch.zeros(len(obs), dtype=torch.long)
        return (s,), self.logits.expand(len(obs), 2), self.v[s]

    def recurrent(self, state, action):
        s = state[0]
        nxt = torch.where(s == 0, torch.where(action == 1, 1, 2), s)
        reward = (nxt == 1).double()
        return (nxt,), reward, self.logits.expand(len(s), 2), self.v[nxt]


@pytest.mark.parametrize("sims", [20, 60])
def test_visits_concentrate_on_the_best_action_and_root_value_is_exact(sims):
    gamma = 0.9
    model = ChainModel(gamma)
    res = search(model, torch.zeros(3, 1), SearchConfig(num_simulations=sims, discount=gamma), explore=False)
    n_bad, n_good = res.visits[0].tolist()
    assert n_good + n_bad == sims
    assert n_good / sims >= 0.75, res.visits   # the search overrides a prior that favours the bad action
    assert n_good > n_bad
    q_good = 1 / (1 - gamma)
    torch.testing.assert_close(res.qvalues[0], torch.tensor([0.0, q_good], dtype=torch.float64))
    # The root value is the mean of its own network value and every backed-up return:
    # exactly (V(root) + N_good * Q_good + N_bad * 0) / (1 + N).
    exact = (1 / (1 - gamma) + n_good * q_good) / (1 + sims)
    torch.testing.assert_close(res.root_value, torch.full((3,), exact, dtype=torch.float64))


def test_gumbel_picks_the_best_action_of_the_chain_with_few_simulations():
    gamma = 0.9
    res = search(ChainModel(gamma), torch.zeros(2, 1), SearchConfig(num_simulations=2, discount=gamma, gumbel=True,
                                                                    gumbel_max_considered=2), explore=False)
    assert res.action.tolist() == [1, 1]
    assert (res.policy[:, 1] > 0.5).all()   # the improved policy moves mass to the good action


def test_sequential_halving_schedule_by_hand():
    # m = 4, n = 16: phase 1 gives each of 4 actions floor(16 / (2 * 4)) = 2 visits, phase 2 gives
    # each of the 2 survivors floor(16 / (2 * 2)) = 4 more.
    assert considered_visit_sequence(4, 16) == (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5)
    assert considered_visit_sequence(1, 3) == (0, 1, 2)


def test_gumbel_never_selects_outside_the_considered_set():
    A, m, B = 8, 3, 32
    model = RandomModel(dim=5, actions=A, seed=2)
    cfg = SearchConfig(num_simulations=12, gumbel=True, gumbel_max_considered=m)
    for seed in range(2):
        obs = torch.randn(B, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.manual_seed(seed)
        res = search(model, obs, cfg, explore=True)
        torch.manual_seed(seed)
        g = gumbel_noise((B, A), torch.float64, torch.device("cpu"))
        _, logits, _ = model.initial(obs)
        top = torch.topk(g + logits, m, -1).indices           # Gumbel-top-m, computed independently
        considered = torch.zeros(B, A, dtype=torch.bool).scatter_(1, top, True)
        assert torch.equal(considered, res.considered)
        assert (res.visits[~considered] == 0).all()
        assert considered.gather(1, res.action[:, None]).all()
        assert (res.visits[considered] > 0).all()


def test_dirichlet_noise_changes_the_root_prior_only_when_exploring():
    model = RandomModel()
    obs = torch.randn(4, 6, dtype=torch.float64)
    cfg = SearchConfig(num_simulations=4, dirichlet_alpha=0.3, dirichlet_fraction=0.25)
    quiet = search(model, obs, cfg, explore=False)
    noisy = search(model, obs, cfg, explore=True)
    _, logits, _ = model.initial(obs)
    torch.testing.assert_close(quiet.prior, torch.softmax(logits, -1))
    assert not torch.allclose(noisy.prior, quiet.prior)
    torch.testing.assert_close(noisy.prior.sum(-1), torch.ones(4, dtype=torch.float64))
    assert math.isclose(float((noisy.prior - 0.75 * quiet.prior).min()), 0.0, abs_tol=0.25)
