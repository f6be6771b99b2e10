"""Numbers of the shared return and two-hot math, checked by hand."""

import torch

from metawm.ops.returns import lambda_returns, n_step_returns
from metawm.ops.twohot import expectation, twohot


def test_twohot_weights_and_round_trip():
    bins = torch.tensor([-2.0, 0.0, 1.0, 5.0])
    enc = twohot(torch.tensor([0.25, 5.0, -7.0, 3.0]), bins)
    torch.testing.assert_close(enc[0], torch.tensor([0.0, 0.75, 0.25, 0.0]))
    torch.testing.assert_close(enc[1], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(enc[2], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # clipped below
    torch.testing.assert_close(enc[3], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    x = torch.linspace(-2, 5, 57)
    torch.testing.assert_close(expectation(twohot(x, bins), bins), x)
    assert torch.allclose(enc.sum(-1), torch.ones(4))


def test_twohot_exact_bin_values():
    bins = torch.linspace(-20, 20, 255)
    x = bins[[0, 17, 128, 254]]
    enc = twohot(x, bins)
    torch.testing.assert_close(expectation(enc, bins), x)
    assert (enc.max(-1).values == 1).all()


def test_lambda_returns_by_hand():
    # T = 3, gamma = 0.9, lambda = 0.5, values of next states 1, 2, 3, bootstrap 4
    r = torch.tensor([1.0, 0.0, 2.0])
    v = torch.tensor([1.0, 2.0, 3.0])
    R2 = 2.0 + 0.9 * (0.5 * 3.0 + 0.5 * 4.0)        # 5.15
    R1 = 0.0 + 0.9 * (0.5 * 2.0 + 0.5 * R2)         # 3.2175
    R0 = 1.0 + 0.9 * (0.5 * 1.0 + 0.5 * R1)         # 2.897875
    out = lambda_returns(r, v, 0.9, 0.5, torch.tensor(4.0))
    torch.testing.assert_close(out, torch.tensor([R0, R1, R2]))


def test_lambda_returns_limits():
    r, v = torch.rand(6, 2), torch.rand(6, 2)
    boot = torch.rand(2)
    # lambda = 0 -> one-step TD targets
    torch.testing.assert_close(lambda_returns(r, v, 0.9, 0.0, boot), r + 0.9 * v)
    # lambda = 1 -> discounted Monte-Carlo return with bootstrap at the end
    mc = lambda_returns(r, v, 0.9, 1.0, boot)
    expect = boot
    for t in reversed(range(6)):
        expect = r[t] + 0.9 * expect
    torch.testing.assert_close(mc[0], expect)


def test_n_step_returns_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    v = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    done = torch.tensor([0, 0, 1, 0, 0])  # the episode ends after transition 2 -> 3
    g = 0.5
    out = n_step_returns(r, v, done, g, n=2)
    expect = torch.tensor([
        1 + g * 2 + g**2 * 30,  # t=0: r0 + g r1 + g^2 v2
        2 + g * 3,              # t=1: r1 + g r2, terminal after step 2: no bootstrap
        3.0,                    # t=2: terminal transition
        4 + g * 5,              # t=3: r3 + g r4, t+n = 5 is past the data
        5.0,
    ])
    torch.testing.assert_close(out, expect)
