"""Numbers of MuZero's pure math: the value transform and windowed n-step targets."""

import torch

from metawm.ops.nstep import windowed_n_step
from metawm.ops.returns import n_step_returns
from metawm.ops.twohot import expectation
from metawm.ops.value_transform import (EPS, categorical_to_scalar, h, h_inv, scalar_to_categorical,
                                        support)


def test_value_transform_by_hand():
    x = torch.tensor([0.0, 3.0, -3.0, 8.0, 99.0], dtype=torch.float64)
    expect = torch.tensor([0.0, 1 + 3 * EPS, -1 - 3 * EPS, 2 + 8 * EPS, 9 + 99 * EPS], dtype=torch.float64)
    torch.testing.assert_close(h(x), expect)


def test_value_transform_round_trip():
    x64 = torch.cat([torch.linspace(-1e4, 1e4, 2001, dtype=torch.float64),
                     torch.logspace(-6, 5, 200, dtype=torch.float64), -torch.logspace(-6, 5, 200, dtype=torch.float64)])
    torch.testing.assert_close(h_inv(h(x64)), x64, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(h(h_inv(x64[:500] / 100)), x64[:500] / 100, rtol=1e-12, atol=1e-10)
    x32 = x64.float()
    torch.testing.assert_close(h_inv(h(x32)), x32, rtol=1e-5, atol=1e-4)
    assert torch.all(torch.diff(h(torch.linspace(-50, 50, 1001))) > 0)


def test_categorical_round_trip_through_the_support():
    bins = support(300)
    assert bins.shape == (601,) and bins[0] == -300 and bins[-1] == 300
    x = torch.tensor([0.0, 1.0, -2.5, 17.3, 500.0, -12345.0])
    probs = scalar_to_categorical(x, bins)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    torch.testing.assert_close(expectation(probs, bins), h(x))
    # logits = log(probs) decode to x again (softmax(log p) = p)
    torch.testing.assert_close(categorical_to_scalar(torch.log(probs.clamp_min(1e-30)), bins), x, rtol=1e-4, atol=1e-3)


def test_windowed_n_step_matches_the_hand_example_of_n_step_returns():
    # The same episode as tests/test_ops_returns.py: rewards r_t of t -> t+1, values v_t,
    # termination after transition 2 -> 3, n = 2, gamma = 0.5.
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    v = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    done = torch.tensor([0, 0, 1, 0, 0])
    g, n = 0.5, 2
    expect = n_step_returns(r, v, done, g, n)
    # windows gathered by hand: position t, h = transitions available, bootstrap state t + h
    rewards = torch.tensor([[1.0, 2.0], [2.0, 3.0], [3.0, 0.0], [4.0, 5.0], [5.0, 0.0]])
    horizon = torch.tensor([2, 2, 1, 2, 1])
    boot = torch.tensor([30.0, 0.0, 0.0, 0.0, 0.0])  # v_2 for t=0; the rest end at a terminal / the data's end
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    out = windowed_n_step(rewards, horizon, boot, mask, g)
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(out, torch.tensor([1 + g * 2 + g**2 * 30, 2 + g * 3, 3.0, 4 + g * 5, 5.0]))


def test_windowed_n_step_truncation_bootstraps_at_the_last_state():
    # 3 rewards of 1 then a time-limit truncation at a state valued 7: gamma = 0.9, n = 5
    out = windowed_n_step(torch.tensor([[1.0, 1.0, 1.0, 9.0, 9.0]]), torch.tensor([3]), torch.tensor([7.0]),
                          torch.tensor([1.0]), 0.9)
    torch.testing.assert_close(out, torch.tensor([1 + 0.9 + 0.81 + 0.729 * 7]))
