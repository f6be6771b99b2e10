"""Numbers of DreamerV3's math (metawm/ops), checked against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from metawm.agents.dreamerv3 import losses
from metawm.ops.distributions import (bounded_normal, categorical_kl, log_softmax, sample_index, sample_onehot,
                                      softmax, twohot_loss, twohot_mean, unimix_logprobs, unimix_probs)
from metawm.ops.kl import kl_balance
from metawm.ops.normalize import percentile_ema, percentile_scale
from metawm.ops.optim import LaProp, agc_, laprop_, warmup_lr
from metawm.ops.returns import lambda_returns
from metawm.ops.symlog import symexp, symexp_bins, symlog
from metawm.ops.twohot import expectation, twohot


# -- symlog / symexp (eq. 8) -----------------------------------------------------------------------
def test_symlog_symexp_numbers():
    x = torch.tensor([0.0, 1.0, -1.0, math.e - 1, 99.0, -1e6])
    expect = torch.tensor([0.0, math.log(2), -math.log(2), 1.0, math.log(100), -math.log(1e6 + 1)])
    torch.testing.assert_close(symlog(x), expect)
    torch.testing.assert_close(symexp(torch.tensor([0.0, 1.0, -2.0])), torch.tensor([0.0, math.e - 1, -(math.e ** 2 - 1)]))
    y = torch.linspace(-1e4, 1e4, 1001)
    torch.testing.assert_close(symexp(symlog(y)), y, rtol=1e-5, atol=1e-4)


def test_symexp_bins_are_antisymmetric():
    bins = symexp_bins(255)
    assert bins.shape == (255,) and bins[127] == 0
    assert torch.equal(bins, -bins.flip(0))
    torch.testing.assert_close(bins, symexp(torch.linspace(-20, 20, 255)), rtol=1e-5, atol=1e-6)
    assert torch.all(bins[1:] > bins[:-1])


# -- two-hot (eq. 9-10) via ops/twohot -------------------------------------------------------------
def test_twohot_round_trip_over_symexp_bins():
    bins = symexp_bins(255)
    x = torch.tensor([0.0, 0.3, -0.3, 1.0, -7.5, 123.0, -4567.0, 1e5])
    enc = twohot(x, bins)
    assert torch.allclose(enc.sum(-1), torch.ones(len(x)))
    assert ((enc > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(expectation(enc, bins), x, rtol=1e-5, atol=1e-5)
    # a head whose logits are the log of the encoding decodes to the same value
    logits = torch.log(enc.clamp_min(1e-30))
    torch.testing.assert_close(twohot_mean(logits, bins), x, rtol=1e-4, atol=1e-4)


def test_twohot_mean_is_exactly_zero_for_uniform_logits():
    bins = symexp_bins(255)
    assert twohot_mean(torch.zeros(3, 255), bins).abs().max() == 0.0
    # the naive left-to-right sum is off by orders of magnitude more
    assert expectation(torch.full((255,), 1 / 255), bins).abs() > 1e-3


def test_twohot_loss_is_cross_entropy_to_the_encoding():
    bins = torch.tensor([-2.0, 0.0, 1.0, 5.0])
    logits = torch.tensor([0.1, 0.2, -0.3, 0.4])
    target = torch.tensor(0.25)  # weights 0.75 on bin 1, 0.25 on bin 2
    logp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(twohot_loss(logits, target, bins), -(0.75 * logp[1] + 0.25 * logp[2]))


# -- lambda returns as DreamerV3 uses them (eq. 7) ---------------------------------------------------
def test_imagination_returns_by_hand():
    # one trajectory, H = 2: states 0, 1, 2; rewards/continuations on arriving at 1 and 2
    lam = 0.5
    rew = torch.tensor([[9.0, 1.0, 2.0]])   # rew[0] is never used
    cont = torch.tensor([[1.0, 0.9, 0.8]])
    val = torch.tensor([[0.5, 3.0, 4.0]])
    R1 = 2.0 + 0.8 * 4.0                                  # bootstrap with v_2
    R0 = 1.0 + 0.9 * ((1 - lam) * 3.0 + lam * R1)
    bins = symexp_bins(255)
    out = losses.imagination_loss(rew, cont, val, val, torch.zeros(1, 3, 255), torch.zeros(1, 3), torch.zeros(1, 3),
                                  torch.zeros(2), bins, lam=lam, retnorm_rate=1.0, retnorm_limit=1.0)
    torch.testing.assert_close(out.ret, torch.tensor([[R0, R1]]))
    torch.testing.assert_close(out.weight, torch.tensor([[1.0, 0.9, 0.72]]))
    # with the normalizer fully updated on these two returns: S = max(1, P95 - P5)
    s = max(1.0, float(np.percentile([R0, R1], 95) - np.percentile([R0, R1], 5)))
    torch.testing.assert_close(out.adv, torch.tensor([[(R0 - 0.5) / s, (R1 - 3.0) / s]]))


def test_replay_returns_restart_at_episode_ends():
    # T = 4, an episode ends at step 1 (is_last, terminal); step 2 starts a new one
    rew = torch.tensor([[0.0, 1.0, 0.0, 2.0]])
    last = torch.tensor([[False, True, False, False]])
    term = torch.tensor([[False, True, False, False]])
    boot = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    lam, h = 0.5, 4.0
    g = 1 - 1 / h
    R2 = 2.0 + g * 40.0                                   # last window step bootstraps
    R1 = 0.0 + g * (1.0 * 30.0)                           # lambda_2 = 1 - last_2... step 2 is not last
    R1 = 0.0 + g * ((1 - lam) * 30.0 + lam * R2)
    R0 = 1.0 + 0.0 * boot[0, 1]                           # arriving at a terminal step: no bootstrap
    loss, ret = losses.replay_value_loss(rew, last, term, boot, torch.zeros(1, 4), torch.zeros(1, 4, 255),
                                         symexp_bins(255), horizon=h, lam=lam)
    torch.testing.assert_close(ret, torch.tensor([[R0, R1, R2]]))
    assert loss[0, 1] == 0  # step 1 is the last of its episode: masked


def test_lambda_returns_accepts_per_step_lambda():
    r, v, boot = torch.rand(5, 3), torch.rand(5, 3), torch.rand(3)
    lam = torch.full((5, 3), 0.7)
    torch.testing.assert_close(lambda_returns(r, v, 0.9, lam, boot), lambda_returns(r, v, 0.9, 0.7, boot))
    cut = lam.clone()
    cut[2] = 0.0  # lambda 0 at step 2: R_2 = r_2 + gamma v_2, whatever comes later
    out = lambda_returns(r, v, 0.9, cut, boot)
    torch.testing.assert_close(out[2], r[2] + 0.9 * v[2])


def test_losses_are_differentiable_in_lambda_discount_and_entropy_scale():
    """Meta-gradient RL (Xu et al. 2018) needs d loss / d eta: with 0-d tensors for lambda, the
    entropy scale and the discount (inside the continuation), the imagination and replay critic
    losses equal central finite differences in float64; the model outputs stay constants."""
    g = torch.Generator().manual_seed(0)
    N, H, B, T, K = 6, 4, 2, 3, 255
    bins = symexp_bins(K).double()
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    reward, value, slow = rnd(N, H + 1), rnd(N, H + 1), rnd(N, H + 1)
    c = torch.rand(N, H + 1, generator=g, dtype=torch.float64) * 0.5 + 0.5   # continuation probabilities
    logits, logpi, entropy = rnd(N, H + 1, K).requires_grad_(), rnd(N, H + 1), rnd(N, H + 1).abs()
    rep_logits, rep_rew, rep_slow = rnd(B, T, K), rnd(B, T), rnd(B, T)
    last = torch.tensor([[False, True, False], [False, False, False]])
    retnorm = torch.tensor([0.0, 2.0], dtype=torch.float64)  # S = 2, held fixed (rate 0)

    def total(lam, actent, discount):
        imag = losses.imagination_loss(reward, c * discount, value, slow, logits, logpi, entropy, retnorm, bins,
                                       lam=lam, actent=actent, retnorm_rate=0.0)
        assert float(imag.scale) == 2.0
        rep, _ = losses.replay_value_loss(rep_rew, last, torch.zeros_like(last), imag.ret[:, 0].reshape(B, T),
                                          rep_slow, rep_logits, bins, lam=lam, discount=discount)
        return imag.policy.mean() + imag.value.mean() + 0.3 * rep.mean()

    point = {"lam": 0.9, "actent": 0.01, "discount": 0.97}
    eta = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in point.items()}
    got = dict(zip(eta, torch.autograd.grad(total(**eta), list(eta.values()))))
    for k in point:
        e = 1e-6
        fd = (total(**{**point, k: point[k] + e}) - total(**{**point, k: point[k] - e})) / (2 * e)
        assert float(got[k]) == pytest.approx(float(fd.detach()), rel=1e-6, abs=1e-10), k
        assert float(got[k]) != 0, k
    # with floats the losses are the same numbers, and the returns carry no graph
    torch.testing.assert_close(total(**point), total(**eta), rtol=0, atol=1e-12)
    plain = losses.imagination_loss(reward, c * 0.97, value, slow, logits, logpi, entropy, retnorm, bins, lam=0.9,
                                    retnorm_rate=0.0)
    assert not plain.ret.requires_grad and not plain.adv.requires_grad and not plain.weight.requires_grad


# -- KL balancing with free nats (eq. 5) ------------------------------------------------------------
def test_kl_balance_values_and_gradients():
    post_logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]], requires_grad=True)   # (1, S=2, K=2)
    prior_logits = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]], requires_grad=True)
    post, prior = log_softmax(post_logits), log_softmax(prior_logits)
    kl = float(categorical_kl(post, prior).sum().detach())
    p = torch.softmax(torch.tensor([2.0, 0.0]), -1)
    q = torch.softmax(torch.tensor([0.0, 3.0]), -1)
    expect = float((p * (p / 0.5).log()).sum() + (0.5 * (0.5 / q).log()).sum())
    assert abs(kl - expect) < 1e-5
    dyn, rep = kl_balance(post, prior, free_nats=0.0)
    torch.testing.assert_close(dyn, torch.tensor([expect]))
    torch.testing.assert_close(rep, torch.tensor([expect]))
    # dynamics loss trains only the prior, representation loss only the posterior
    def grads(loss):
        gs = torch.autograd.grad(loss, [post_logits, prior_logits], retain_graph=True, allow_unused=True)
        return [0.0 if g is None else float(g.abs().sum()) for g in gs]

    assert grads(dyn.sum())[0] == 0 and grads(dyn.sum())[1] > 0
    assert grads(rep.sum())[0] > 0 and grads(rep.sum())[1] == 0
    # free nats: a KL below the threshold is clipped to it and gives no gradient
    dyn, rep = kl_balance(post, prior, free_nats=10.0)
    assert float(dyn.detach()) == 10.0 and float(rep.detach()) == 10.0
    assert grads(dyn.sum() + rep.sum()) == [0.0, 0.0]


# -- percentile return normalization (eq. 11-12) ------------------------------------------------------
def test_percentile_normalizer_by_hand():
    x = torch.arange(101, dtype=torch.float32)  # P5 = 5, P95 = 95
    state = percentile_ema(torch.zeros(2), x, rate=0.01)
    torch.testing.assert_close(state, torch.tensor([0.05, 0.95]))
    offset, scale = percentile_scale(state, limit=1.0)
    assert abs(float(offset) - 0.05) < 1e-6 and float(scale) == 1.0  # range 0.9 < 1: never scaled up
    for _ in range(2000):
        state = percentile_ema(state, x, rate=0.01)
    torch.testing.assert_close(percentile_scale(state)[1], torch.tensor(90.0), rtol=1e-4, atol=1e-3)
    assert float(percentile_scale(torch.tensor([3.0, 3.2]), limit=1.0)[1]) == 1.0
    # quantiles interpolate like numpy's default
    y = torch.tensor([1.0, 7.0, 2.0, 10.0])
    state = percentile_ema(torch.zeros(2), y, rate=1.0)
    torch.testing.assert_close(state, torch.tensor(np.percentile(y.numpy(), [5, 95]), dtype=torch.float32))


# -- unimix (1% uniform) and sampling --------------------------------------------------------------------
def test_unimix_numbers():
    logits = torch.tensor([[100.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    probs = unimix_probs(logits, 0.01)
    torch.testing.assert_close(probs[0], torch.tensor([0.99 + 0.0025, 0.0025, 0.0025, 0.0025]))
    torch.testing.assert_close(probs[1], torch.full((4,), 0.25))
    torch.testing.assert_close(unimix_logprobs(logits, 0.01), probs.log())
    assert torch.isfinite(unimix_logprobs(torch.tensor([1e4, -1e4]), 0.01)).all()
    torch.testing.assert_close(unimix_logprobs(logits, 0.0), torch.log_softmax(logits, -1))


def test_small_k_softmax_matches_torch():
    x = torch.randn(5, 7, 4) * 10
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1))
    torch.testing.assert_close(log_softmax(x), torch.log_softmax(x, -1))


def test_sampling_frequencies_and_straight_through():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.3, 0.0]).expand(20000, 4)
    idx = sample_index(probs)
    freq = torch.bincount(idx, minlength=4).float() / len(idx)
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)
    logits = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(5)
    p = torch.softmax(logits, -1)
    s = sample_onehot(p)
    assert torch.equal(s.detach().sum(-1), torch.ones(3)) and set(s.detach().unique().tolist()) <= {0.0, 1.0}
    g1 = torch.autograd.grad((s * w).sum(), logits)[0]
    g2 = torch.autograd.grad((torch.softmax(logits, -1) * w).sum(), logits)[0]
    torch.testing.assert_close(g1, g2)


def test_bounded_normal_ranges():
    mean, std = bounded_normal(torch.tensor([-50.0, 0.0, 50.0]), torch.tensor([-50.0, 0.0, 50.0]), 0.1, 1.0)
    torch.testing.assert_close(mean, torch.tensor([-1.0, 0.0, 1.0]))
    assert std[0] >= 0.1 - 1e-6 and std[2] <= 1.0 + 1e-6
    torch.testing.assert_close(std[1], 0.9 * torch.sigmoid(torch.tensor(2.0)) + 0.1)


# -- LaProp and adaptive gradient clipping ---------------------------------------------------------------
def test_agc_by_hand():
    p = [torch.tensor([3.0, 4.0]), torch.tensor([1e-6, 0.0]), torch.tensor([1.0, 0.0])]
    g = [torch.tensor([6.0, 8.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.1, 0.0])]
    agc_(g, p, clip=0.3, pmin=1e-3)
    torch.testing.assert_close(g[0], torch.tensor([6.0, 8.0]) * (0.3 * 5 / 10))   # norm 10 -> 1.5
    torch.testing.assert_close(g[1], torch.tensor([0.0, 0.3e-3]))                 # pmin floor
    torch.testing.assert_close(g[2], torch.tensor([0.1, 0.0]))                     # below the limit: unchanged


def test_laprop_by_hand():
    b1, b2, lr, eps = 0.9, 0.999, 0.1, 1e-20
    p = torch.tensor([1.0, -2.0])
    mu, nu = torch.zeros(2), torch.zeros(2)
    g1, g2 = torch.tensor([0.5, -0.1]), torch.tensor([-1.0, 0.3])
    laprop_([p], [g1], [mu], [nu], 1, lr, b1, b2, eps)
    # step 1: nu_hat = g^2, so the normalized gradient is sign(g); mu_hat = that
    torch.testing.assert_close(p, torch.tensor([1.0 - 0.1, -2.0 + 0.1]))
    laprop_([p], [g2], [mu], [nu], 2, lr, b1, b2, eps)
    nu2 = b2 * (1 - b2) * g1 ** 2 + (1 - b2) * g2 ** 2
    u2 = g2 / (torch.sqrt(nu2 / (1 - b2 ** 2)) + eps)
    mu2 = b1 * (1 - b1) * torch.sign(g1) + (1 - b1) * u2
    expect = torch.tensor([0.9, -1.9]) - lr * mu2 / (1 - b1 ** 2)
    torch.testing.assert_close(p, expect)


def test_warmup_and_optimizer_class_match_the_functions():
    assert warmup_lr(1.0, 1, 1000) == 0.0 and warmup_lr(1.0, 501, 1000) == 0.5 and warmup_lr(1.0, 5000, 1000) == 1.0
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2))
    ref = w.detach().clone()
    opt = LaProp([w], lr=0.01, agc=0.3, warmup=2)
    mu, nu = torch.zeros_like(ref), torch.zeros_like(ref)
    for step in range(1, 5):
        g = torch.randn(3, 2)
        w.grad = g.clone()
        opt.step()
        gg = [g.clone()]
        agc_(gg, [ref], 0.3)
        laprop_([ref], gg, [mu], [nu], step, warmup_lr(0.01, step, 2))
        torch.testing.assert_close(w.detach(), ref)
    state = opt.state_dict()
    opt2 = LaProp([torch.nn.Parameter(w.detach().clone())], lr=0.01, agc=0.3, warmup=2)
    opt2.load_state_dict(state)
    assert int(opt2.state_dict()["state"][0]["step"]) == 4
