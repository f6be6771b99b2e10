"""Dreamer 4: the numbers of its math and the contracts of its parts (fast, CPU)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from metawm.agents.dreamer4.agent import Dreamer4Agent
from metawm.agents.dreamer4.dataset import Dataset
from metawm.agents.dreamer4.dynamics import Dynamics, sample_levels
from metawm.agents.dreamer4.heads import ActionCodec
from metawm.agents.dreamer4.losses import mtp_targets, pmpo_loss, ramp_weight, shortcut_forcing_loss
from metawm.agents.dreamer4.presets import PRESETS, get_preset
from metawm.agents.dreamer4.tokenizer import Tokenizer
from metawm.agents.dreamer4.transformer import Attention, Transformer, apply_rope, rope_angles
from metawm.infra.errors import UserError
from metawm.protocols import Agent
from metawm.types import EnvSpec

TINY = get_preset("tiny")
IMAGE = EnvSpec(gym.spaces.Box(0, 255, (16, 16, 3), np.uint8), gym.spaces.Discrete(3))
VECTOR = EnvSpec(gym.spaces.Box(-np.inf, np.inf, (5,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is many times faster on a busy 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


# -- transformer ------------------------------------------------------------------------------------------

def reference_mha(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention, head by head with an explicit softmax, from attn's weights
    (query head h reads key/value head h // (heads / kv_heads))."""
    n, length, _ = x.shape
    hd, heads, kvh = attn.head_dim, attn.heads, attn.kv_heads
    q = attn.q_norm(attn.q(x).view(n, length, heads, hd))
    k, v = attn.kv(x).view(n, length, 2, kvh, hd).unbind(2)
    k = attn.k_norm(k)
    cos, sin = rope_angles(torch.arange(length), hd)
    outs = []
    for h in range(heads):
        j = h // (heads // kvh)
        qh = apply_rope(q[:, :, h], cos, sin)
        kh = apply_rope(k[:, :, j], cos, sin)
        w = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(hd), -1)
        outs.append(w @ v[:, :, j])
    return attn.out(torch.cat(outs, -1))


def test_gqa_with_as_many_groups_as_heads_is_full_multi_head_attention():
    attn = Attention(32, heads=4, kv_heads=4)
    x = torch.randn(3, 7, 32)
    out, _ = attn(x, None)
    torch.testing.assert_close(out, reference_mha(attn, x), atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_whose_key_value_heads_are_repeated():
    gqa = Attention(32, heads=4, kv_heads=2)
    mha = Attention(32, heads=4, kv_heads=4)
    mha.load_state_dict({k: v for k, v in gqa.state_dict().items() if not k.startswith("kv.")}, strict=False)
    hd = gqa.head_dim
    k, v = gqa.kv.weight.view(2, 2, hd, 32).unbind(0)  # (kv_heads, hd, dim) each
    mha.kv.weight.data = torch.cat([k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)]).reshape(-1, 32)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(gqa(x, None)[0], mha(x, None)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gqa(x, None)[0], reference_mha(gqa, x), atol=1e-5, rtol=1e-5)


def test_soft_capped_path_matches_sdpa_when_the_cap_is_loose_and_caps_logits_otherwise():
    attn = Attention(16, heads=2, kv_heads=1)
    capped = Attention(16, heads=2, kv_heads=1, softcap=1e4)
    capped.load_state_dict(attn.state_dict())
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(attn(x, None)[0], capped(x, None)[0], atol=1e-5, rtol=1e-5)
    tight = Attention(16, heads=2, kv_heads=1, softcap=0.1)
    tight.load_state_dict(attn.state_dict())
    assert not torch.allclose(tight(x, None)[0], attn(x, None)[0], atol=1e-3)


def test_transformer_is_block_causal_segment_aware_and_caches_exactly():
    tr = Transformer(16, depth=4, heads=2, kv_heads=1, time_every=2)
    assert [b.kind for b in tr.blocks] == ["space", "time", "space", "time"]
    x = torch.randn(2, 6, 3, 16)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    y, _ = tr(x, None, seg)
    x2 = x.clone()
    x2[:, 4] += 1.0  # a future frame
    y2, _ = tr(x2, None, seg)
    assert torch.equal(y[:, :4], y2[:, :4]) and not torch.allclose(y[:, 4:], y2[:, 4:])
    x3 = x.clone()
    x3[:, 1] += 1.0  # a frame of an earlier episode in row 0
    y3, _ = tr(x3, None, seg)
    assert torch.equal(y[0, 3:], y3[0, 3:]) and not torch.allclose(y[1, 3:], y3[1, 3:])
    cache, outs = tr.empty_cache(2, 3, window=6), []
    for t in range(6):
        yt, kv = tr(x[:, t:t + 1], None, seg[:, t:t + 1], cache)
        cache = cache.appended(kv, seg[:, t:t + 1])
        outs.append(yt)
    torch.testing.assert_close(torch.cat(outs, 1), y, atol=1e-5, rtol=1e-5)


def test_space_mask_isolates_modalities():
    tr = Transformer(16, depth=2, heads=2, time_every=2)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:3, 3] = False  # nobody reads token 3 ...
    x = torch.randn(1, 2, 4, 16)
    y, _ = tr(x, mask, torch.zeros(1, 2, dtype=torch.long))
    x2 = x.clone()
    x2[..., 3, :] += 5.0
    y2, _ = tr(x2, mask, torch.zeros(1, 2, dtype=torch.long))
    assert torch.equal(y[..., :3, :], y2[..., :3, :]) and not torch.allclose(y[..., 3, :], y2[..., 3, :])


# -- tokenizer and dynamics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [IMAGE, VECTOR], ids=["image", "vector"])
def test_tokenizer_shapes_bottleneck_and_causality(spec):
    tok = Tokenizer(spec.obs_space.shape, TINY)
    obs = torch.as_tensor(np.stack([spec.obs_space.sample() for _ in range(2 * 5)])).view(2, 5, *spec.obs_space.shape)
    if not tok.is_image:
        obs = obs.clamp(-10, 10)
    seg = torch.zeros(2, 5, dtype=torch.long)
    z, _ = tok.encode(obs, seg)
    assert z.shape == (2, 5, TINY.latents, TINY.bottleneck) and z.abs().max() < 1
    rec = tok.unpatchify(tok.decode(z, seg)[0])
    assert rec.shape == (2, 5, *spec.obs_space.shape)
    torch.testing.assert_close(tok.unpatchify(tok.patchify(obs)),
                               obs.float() / 255 if tok.is_image else obs.float(), atol=1e-4, rtol=1e-4)
    obs2 = obs.clone()
    obs2[:, 3] = obs2[:, 3] // 2 if tok.is_image else obs2[:, 3] + 1
    z2, _ = tok.encode(obs2, seg)
    assert torch.equal(z[:, :3], z2[:, :3]) and not torch.equal(z[:, 3:], z2[:, 3:])
    z3 = z.clone()
    z3[:, 3] = 0.0
    p1, p2 = tok.decode(z, seg)[0], tok.decode(z3, seg)[0]
    assert torch.equal(p1[:, :3], p2[:, :3]) and not torch.equal(p1[:, 3:], p2[:, 3:])
    terms, _ = tok.loss(obs, seg, torch.rand(2, 5), torch.rand(2, 5, tok.num_patches))
    assert set(terms) == {"mse"} and terms["mse"] > 0  # no perceptual term unless one is plugged in


def test_dynamics_is_causal_and_agent_token_never_influences_predictions():
    dyn = Dynamics(ActionCodec.from_space(IMAGE.act_space, 5), TINY)
    b, t = 2, 6
    z = torch.randn(b, t, TINY.latents, TINY.bottleneck)
    tau = torch.rand(b, t)
    act = torch.randint(3, (b, t))
    has = torch.ones(b, t, dtype=torch.bool)
    seg = torch.zeros(b, t, dtype=torch.long)
    z_hat, h, _ = dyn(z, tau, 0.25, act, has, seg)
    assert z_hat.shape == z.shape and h.shape == (b, t, TINY.dyn_dim)
    z2, act2 = z.clone(), act.clone()
    z2[:, 4] += 1.0
    act2[:, 4] = (act2[:, 4] + 1) % 3
    z_hat2, h2, _ = dyn(z2, tau, 0.25, act2, has, seg)
    assert torch.equal(z_hat[:, :4], z_hat2[:, :4]) and torch.equal(h[:, :4], h2[:, :4])
    assert not torch.allclose(z_hat[:, 4:], z_hat2[:, 4:])
    with torch.no_grad():
        dyn.agent_token.add_(3.0)
    z_hat3, h3, _ = dyn(z, tau, 0.25, act, has, seg)
    assert torch.equal(z_hat3, z_hat) and not torch.allclose(h3, h)
    # the "no action" embedding: predictions change when the actions are hidden
    z_hat4, _, _ = dyn(z, tau, 0.25, act, torch.zeros_like(has), seg)
    assert not torch.allclose(z_hat4[:, 1:], z_hat[:, 1:])


# -- shortcut forcing -----------------------------------------------------------------------------------------

def test_shortcut_forcing_loss_weights_and_targets_match_a_hand_computed_case():
    """f(z, tau, d) = 0.5 z + tau + 2 d; z0 = 1, z1 = 3; K_max = 4 (d_min = 1/4). Three frames:
    A (tau=1/2, d=1/4, flow):      z~ = 2, z^ = 2, loss = w(.5) (2 - 3)^2 = 0.55
    B (tau=0, d=1/2, bootstrap):   b' = f(1,0,1/4) - 1 = 0, z' = 1, b'' = (f(1,1/4,1/4) - 1)/(3/4) = 1/3,
                                   v^ = f(1,0,1/2) - 1 = 1/2, loss = w(0) 1^2 (1/2 - 1/6)^2 = 0.1 / 9
    C (tau=1/2, d=1/2, bootstrap): b' = (f(2,1/2,1/4) - 2)/(1/2) = 0, z' = 2,
                                   b'' = (f(2,3/4,1/4) - 2)/(1/4) = 1, v^ = (f(2,1/2,1/2) - 2)/(1/2) = 1,
                                   loss = w(.5) (1/2)^2 (1 - 1/2)^2 = 0.55 / 16"""
    calls = []

    def f(z, tau, d):
        calls.append((tau.clone(), torch.as_tensor(d).clone()))
        return 0.5 * z + (tau + 2 * torch.as_tensor(d)).view(*tau.shape, 1)

    tau = torch.tensor([[0.5, 0.0, 0.5]])
    d = torch.tensor([[0.25, 0.5, 0.5]])
    z1, z0 = torch.full((1, 3, 1), 3.0), torch.full((1, 3, 1), 1.0)
    loss, info = shortcut_forcing_loss(f, z1, z0, tau, d, d_min=0.25)
    torch.testing.assert_close(loss, torch.tensor([[0.55, 0.1 / 9, 0.55 / 16]]))
    assert info["is_flow"].tolist() == [[True, False, False]]
    assert len(calls) == 3  # student, then two teacher half-steps
    torch.testing.assert_close(calls[1][1], torch.tensor([[0.25, 0.25, 0.25]]))  # d/2 (d_min frames: d)
    torch.testing.assert_close(calls[2][0], torch.tensor([[0.5, 0.25, 0.75]]))  # tau + d/2 where bootstrapping
    torch.testing.assert_close(ramp_weight(torch.tensor([0.0, 1.0])), torch.tensor([0.1, 1.0]))


def test_shortcut_targets_carry_no_gradient():
    w = torch.tensor(0.7, requires_grad=True)
    f = lambda z, tau, d: w * z + tau[..., None]  # noqa: E731
    loss, _ = shortcut_forcing_loss(f, torch.ones(1, 1, 1) * 2, torch.zeros(1, 1, 1), torch.tensor([[0.0]]),
                                    torch.tensor([[1.0]]), d_min=0.25)
    (g,) = torch.autograd.grad(loss.sum(), w)
    # by hand: z~ = 0; student v^ = w*0 + 0 = 0 -> z^ = 0; teacher constants; dL/dw = 2 (v^ - v) * z~ = 0
    assert float(g) == 0.0


def test_levels_follow_eq_4_and_shortcut_sampling_reaches_the_prediction():
    g = torch.Generator().manual_seed(0)
    tau, d = sample_levels((4000,), 16, g)
    assert set(torch.unique(d).tolist()) == {1.0, 0.5, 0.25, 0.125, 0.0625}
    assert bool(((tau / d).round() == tau / d).all()) and bool((tau <= 1 - d + 1e-9).all())
    tau, d = sample_levels((4000,), 16, g, bootstrap_fraction=0.25)  # Frans et al.'s split
    assert abs(float((d == 1 / 16).float().mean()) - 0.75) < 0.03 and set(torch.unique(d[d > 1 / 16]).tolist()) == \
        {1.0, 0.5, 0.25, 0.125}
    assert bool(((tau / d).round() == tau / d).all()) and bool((tau <= 1 - d + 1e-9).all())
    dyn = Dynamics(ActionCodec.from_space(IMAGE.act_space, 5), TINY)
    target = torch.randn(2, 1, TINY.latents, TINY.bottleneck)
    dyn.forward = lambda z, tau, d, *a, **k: (target, None, [])  # a perfect x-predictor
    for steps in (1, 2, 4):
        out = dyn.generate(torch.randn_like(target), torch.zeros(2, 1, dtype=torch.long),
                           torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, 1, dtype=torch.long), None, steps)
        torch.testing.assert_close(out, target)


# -- agent heads ------------------------------------------------------------------------------------------------

def test_pmpo_loss_on_a_hand_built_batch():
    """D+ = {0, 2} (A >= 0), D- = {1, 3}: L = 0.5 * mean(-2, -3) - 0.5 * mean(-1, -0.5) + 0.3 * mean(kl)
    = -1.25 + 0.375 + 0.075 = -0.8; dL/dlogp = -0.25 on D+, +0.25 on D-, dL/dkl = 0.075 each."""
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    kl = torch.tensor([0.1, 0.2, 0.3, 0.4], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.0, -2.0])
    loss, info = pmpo_loss(logp, adv, kl, alpha=0.5, beta=0.3)
    torch.testing.assert_close(loss, torch.tensor(-0.8))
    g_logp, g_kl = torch.autograd.grad(loss, [logp, kl])
    torch.testing.assert_close(g_logp, torch.tensor([-0.25, 0.25, -0.25, 0.25]))
    torch.testing.assert_close(g_kl, torch.full((4,), 0.075))
    assert float(info["pos_frac"]) == 0.5
    # advantage magnitudes do not matter, only signs
    loss2, _ = pmpo_loss(logp, adv * 100, kl, alpha=0.5, beta=0.3)
    torch.testing.assert_close(loss2, loss)
    # weighted states: state 3 weighs nothing -> D- = {1}
    loss3, _ = pmpo_loss(logp, adv, kl, torch.tensor([1.0, 1.0, 1.0, 0.0]), alpha=0.5, beta=0.3)
    torch.testing.assert_close(loss3, torch.tensor(0.5 * -2.0 - 0.5 * -0.75 + 0.3 * 0.2))


def test_mtp_targets_stop_at_window_and_episode_ends():
    x = torch.arange(5.0)[None]
    seg = torch.tensor([[0, 0, 0, 1, 1]])
    valid = torch.tensor([[True, True, False, True, True]])
    tgt, mask = mtp_targets(x, valid, seg, 2)
    assert tgt[0, 0].tolist() == [0.0, 1.0, 2.0] and mask[0, 0].tolist() == [True, True, False]
    assert mask[0, 1].tolist() == [True, False, False]  # step 2 unlabeled, step 3 another episode
    assert mask[0, 3].tolist() == [True, True, False] and mask[0, 4].tolist() == [True, False, False]


def test_continuous_actions_are_binned_categoricals():
    codec = ActionCodec.from_space(gym.spaces.Box(np.array([-2.0, 0.0]), np.array([2.0, 1.0])), 5)
    assert codec.logits_shape == (2, 5)
    idx = torch.tensor([[0, 4], [2, 1]])
    env = codec.index_to_env(idx)
    np.testing.assert_allclose(env, [[-2.0, 1.0], [0.0, 0.25]])
    np.testing.assert_allclose(codec.normalize(env), codec.index_to_input(idx).numpy(), atol=1e-6)
    logits = torch.zeros(2, 2, 5)
    torch.testing.assert_close(codec.log_prob(logits, idx), torch.full((2,), 2 * math.log(0.2)))
    assert float(codec.log_prob(torch.randn(3, 2, 5) * 10, torch.randint(5, (3, 2))).max()) <= 0  # bounded


# -- the agent ------------------------------------------------------------------------------------------------

def fill(agent: Dreamer4Agent, steps: int = 40, n: int = 2) -> None:
    spec = agent.env_spec
    rng = np.random.default_rng(0)
    for i in range(steps):
        if spec.is_image:
            obs = rng.integers(0, 256, (n, *spec.obs_space.shape), dtype=np.uint8)
        else:
            obs = rng.normal(size=(n, *spec.obs_space.shape)).astype(np.float32)
        action = (rng.integers(0, spec.num_actions, n) if spec.is_discrete
                  else rng.uniform(-1, 1, (n, spec.num_actions)).astype(np.float32))
        step = {"obs": obs, "reward": rng.normal(size=n).astype(np.float32), "is_first": np.full(n, i % 15 == 0),
                "is_last": np.full(n, i % 15 == 14), "is_terminal": np.full(n, i % 15 == 14), "action": action}
        agent.observe(step)


@pytest.mark.parametrize("spec", [IMAGE, VECTOR], ids=["image-discrete", "vector-continuous"])
def test_agent_contract_functional_loss_and_checkpoint_roundtrip(spec):
    agent = Dreamer4Agent(spec, size="tiny")
    assert isinstance(agent, Agent)
    assert agent.sample_batch() is None
    fill(agent)
    parts = agent.parts()
    assert set(parts) == {"tokenizer", "dynamics", "agent_heads"}
    names = [n for names in parts.values() for n in names]
    assert sorted(names) == sorted(agent.params()) and len(names) == len(set(names))
    phases = ("tokenizer", "dynamics", "agent", "imagination")
    batch = agent.sample_batch(torch.Generator().manual_seed(1), phases)
    params = agent.params()
    l1, m1 = agent.loss(params, batch)
    l2, _ = agent.loss(params, batch)
    assert torch.equal(l1, l2)  # a pure function of (params, batch)
    assert {"raw/tok_mse", "raw/dynamics", "raw/bc", "raw/reward", "raw/cont", "imagine/policy_loss"} <= set(m1)
    grads = torch.autograd.grad(l1, list(params.values()), allow_unused=True)
    got = {n for n, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
    for part in ("tokenizer", "dynamics", "agent_heads"):
        assert got & set(parts[part]), part
    shifted = {n: p + 0.01 for n, p in agent.params("agent_heads").items()}
    l3, _ = agent.loss({**params, **shifted}, batch)
    assert not torch.equal(l3, l1)  # substituted parameters are used
    g = torch.func.grad(lambda ps: agent.loss({**params, **ps}, batch)[0])(agent.params("agent_heads"))
    assert set(g) == set(parts["agent_heads"])
    for _ in range(2):
        agent.train_step(phases)
    state = agent.state_dict(replay=True)
    other = Dreamer4Agent(spec, size="tiny")
    other.load_state_dict(state)
    torch.testing.assert_close(other.loss(other.params(), batch)[0], agent.loss(agent.params(), batch)[0])
    assert len(other.dataset) == len(agent.dataset) and other.imagining
    carry = agent.initial_carry(2)
    step = {"obs": np.stack([spec.obs_space.sample() for _ in range(2)]).clip(-5, 5), "is_first": np.ones(2, bool)}
    action, carry = agent.act(step, carry, explore=True)
    assert spec.act_space.contains(action[0])
    info = agent.info()
    assert info["preset"] == "tiny" and info["params"] == sum(p.numel() for p in agent.params().values())


def test_value_warmup_freezes_the_policy_then_releases_it():
    agent = Dreamer4Agent(VECTOR, size="tiny", overrides={"value_warmup": 2})
    fill(agent)
    torch.manual_seed(0)
    phases = ("imagination",)
    agent.train_step(("tokenizer", "dynamics", "agent"))
    agent.start_imagination()

    def heads(name):
        return {n: p.detach().clone() for n, p in agent.model.named_parameters() if n.startswith(f"heads.{name}.")}

    pol0, val0 = heads("policy"), heads("value")
    for _ in range(2):
        agent.train_step(phases)
    assert all(torch.equal(pol0[n], p) for n, p in heads("policy").items())  # warm-up: the policy waits
    assert any(not torch.equal(val0[n], p) for n, p in heads("value").items())
    assert agent.imag_steps == 2
    agent.train_step(phases)
    assert any(not torch.equal(pol0[n], p) for n, p in heads("policy").items())
    other = Dreamer4Agent(VECTOR, size="tiny", overrides={"value_warmup": 2})
    other.load_state_dict(agent.state_dict())
    assert other.imag_steps == 3


def test_loaded_optimizer_state_keeps_the_new_presets_learning_rates():
    """A later phase may change a learning rate (agent.overrides.lr_value=...): loading the earlier
    phase's optimizer state must not bring its learning rate back."""
    agent = Dreamer4Agent(VECTOR, size="tiny")
    other = Dreamer4Agent(VECTOR, size="tiny", overrides={"lr_value": 0.0123})
    other.load_state_dict(agent.state_dict())
    assert other.optims["value"].param_groups[0]["lr"] == 0.0123
    assert other.optims["policy"].param_groups[0]["lr"] == agent.preset.lr_policy


def test_imagination_loss_is_differentiable_in_discount_and_lambda():
    """meta.rule=meta_gradient hook: d loss / d (discount, lambda) of the imagination phase equals a
    central finite difference, hparams=None is the loss at the agent's own values, and
    set_hparams changes the loss and survives a checkpoint."""
    torch.manual_seed(0)
    agent = Dreamer4Agent(VECTOR, size="tiny")
    fill(agent)
    agent.train_step(("tokenizer", "dynamics", "agent", "imagination"))
    with torch.no_grad():  # rewards and values of order 1 (the two-hot heads start at exactly 0)
        for lin in [*agent.model.heads.reward.outs, *agent.model.heads.value.outs]:
            lin.weight.normal_(0, 0.3)
    batch = agent.sample_batch(torch.Generator().manual_seed(2), ("imagination",))
    params = agent.params()
    own = agent.hparams()
    assert set(own) == {"discount", "lam"} and own["discount"] == agent.preset.gamma
    base, _ = agent.loss(params, batch)
    same, _ = agent.loss(params, batch, hparams={k: torch.tensor(v) for k, v in own.items()})
    torch.testing.assert_close(base, same)
    for name in ("discount", "lam"):
        x = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        loss, _ = agent.loss(params, batch, hparams={name: x})
        (grad,) = torch.autograd.grad(loss, [x])
        eps = 1e-2
        up = agent.loss(params, batch, hparams={name: 0.9 + eps})[0]
        down = agent.loss(params, batch, hparams={name: 0.9 - eps})[0]
        fd = (up - down).detach() / (2 * eps)
        assert abs(float(grad)) > 0, name
        assert abs(float(grad) - float(fd)) < 0.05 * abs(float(fd)) + 1e-6, (name, float(grad), float(fd))
    agent.set_hparams({"discount": 0.8})
    assert not torch.equal(agent.loss(params, batch)[0], base)
    other = Dreamer4Agent(VECTOR, size="tiny")
    other.load_state_dict(agent.state_dict())
    assert other.hparams()["discount"] == 0.8
    with pytest.raises(UserError, match="no hyperparameter"):
        agent.set_hparams({"actent": 0.1})


def test_same_seed_same_training():
    def run():
        torch.manual_seed(3)
        agent = Dreamer4Agent(VECTOR, size="tiny", overrides={"learn_start": 10})
        fill(agent, 30)
        return [agent.update(30) for _ in range(1)][0]

    assert run() == run()


def test_dataset_marks_unlabeled_steps_and_roundtrips_on_disk(tmp_path):
    ds = Dataset(IMAGE.obs_space, IMAGE.act_space, capacity=100)
    for i in range(30):
        ds.add({"obs": np.full((2, 16, 16, 3), i, np.uint8), "reward": np.zeros(2, np.float32),
                "is_first": np.full(2, i == 0), "is_last": np.full(2, i == 29), "is_terminal": np.zeros(2, bool),
                "action": np.array([1, 2])}, keep_actions=[True, False])
    s0, s1 = ds.streams[0].view(), ds.streams[1].view()
    assert s0["obs"].dtype == np.uint8 and s0["has_action"][:29].all() and not s0["has_action"][29]
    assert not s1["has_action"].any()
    win = ds.sample(5, 8, torch.Generator().manual_seed(0))
    assert win["obs"].shape == (5, 8, 16, 16, 3)
    assert (np.diff(win["obs"][:, :, 0, 0, 0].astype(int), axis=1) == 1).all()  # consecutive steps
    ds.save(tmp_path / "ds", {"task": "x"})
    back = Dataset.load(tmp_path / "ds", IMAGE)
    assert len(back) == 60 and np.array_equal(back.streams[1].view()["obs"], s1["obs"])
    with pytest.raises(UserError, match="holds observations"):
        Dataset.load(tmp_path / "ds", VECTOR)
    for _ in range(50):
        ds.add({"obs": np.zeros((2, 16, 16, 3), np.uint8), "reward": np.zeros(2, np.float32),
                "is_first": np.zeros(2, bool), "is_last": np.zeros(2, bool), "is_terminal": np.zeros(2, bool)})
    assert len(ds) <= 100  # FIFO capacity


@pytest.mark.parametrize("kwargs, spec, message", [
    ({"size": "huge"}, IMAGE, r"Unknown dreamer4 size preset 'huge'\. Valid choices: .*paper.*tiny"),
    ({"size": "tiny", "overrides": {"k_max": 6}}, IMAGE, r"k_max=6 must be a power of two"),
    ({"size": "tiny", "overrides": {"nope": 1}}, IMAGE, r"Unknown dreamer4 preset field\(s\) nope"),
    ({"size": "tiny", "colour": 1}, IMAGE, r"Unknown dreamer4 option\(s\) colour"),
    ({"size": "tiny"}, EnvSpec(gym.spaces.Box(0, 255, (8, 8, 2), np.uint8), gym.spaces.Discrete(2)), r"C = 1 or 3"),
    ({"size": "tiny"}, EnvSpec(gym.spaces.Box(0, 1, (4, 4), np.float32), gym.spaces.Discrete(2)), r"vector \(D,\)"),
    ({"size": "tiny"}, EnvSpec(VECTOR.obs_space, gym.spaces.MultiDiscrete([2, 2])), r"Discrete\(n\) or 1-D Box"),
    ({"size": "tiny"}, EnvSpec(VECTOR.obs_space, gym.spaces.Box(-np.inf, np.inf, (2,))), r"bounded Box"),
])
def test_bad_input_is_a_user_error(kwargs, spec, message):
    with pytest.raises(UserError, match=message):
        Dreamer4Agent(spec, **kwargs)


def test_unknown_part_is_a_user_error():
    with pytest.raises(UserError, match="Valid parts: all, tokenizer, dynamics, agent_heads"):
        Dreamer4Agent(VECTOR, size="tiny").params("critic")


def test_presets_reach_the_papers_sizes():
    from metawm.agents.dreamer4.agent import Dreamer4Model

    counts = {}
    with torch.device("meta"):
        for name in ("tiny", "paper"):
            model = Dreamer4Model(EnvSpec(gym.spaces.Box(0, 255, (384, 640, 3), np.uint8), gym.spaces.Discrete(121)),
                                  PRESETS[name])
            counts[name] = {k: sum(p.numel() for n, p in model.named_parameters() if n.startswith(k))
                            for k in ("tokenizer", "dynamics")}
    assert 0.3e9 < counts["paper"]["tokenizer"] < 0.5e9 and 1.3e9 < counts["paper"]["dynamics"] < 1.9e9
    assert counts["tiny"]["tokenizer"] + counts["tiny"]["dynamics"] < 5e5


def test_pixel_renderings_put_the_state_where_it_belongs():
    from metawm.agents.dreamer4.pixels import render_cartpole, render_point

    img = render_point(np.array([0.5, 0.0]), 16)
    assert img.shape == (16, 16, 1) and img.dtype == np.uint8
    i, j = np.unravel_index(img[..., 0].argmax(), (16, 16))
    assert (i, j) in {(7, 11), (8, 11), (7, 12), (8, 12)}  # right of centre, mid height
    left, right = render_cartpole(np.array([-2.0, 0, 0, 0]), 32), render_cartpole(np.array([2.0, 0, 0, 0]), 32)
    assert left.shape == (32, 32, 1) and left[..., 0].argmax() % 32 < right[..., 0].argmax() % 32
