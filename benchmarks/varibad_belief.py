"""How informative is a VariBAD belief model on gridworld_goals? Its decoded goal map against the exact
Bayes posterior.

    python benchmarks/varibad_belief.py --run RUN_DIR              # score a trained run's belief model
    python benchmarks/varibad_belief.py --offline 1000 2000 4000   # train one on random trajectories

On the 5x5 grid with a goal drawn uniformly from the train cells, the Bayes posterior after a
trajectory prefix is the goal itself once a +1 was seen, else uniform over the train cells not yet
visited. For held-out random trajectories (uniform actions, train goals) and every third step t,
the score is the share of the decoded goal map p(cell) = E_m[P(r = high | cell, m)], m ~ q(m | tau_:t),
normalised over the 25 cells, that falls on the true goal; the script prints it next to the same
average for the Bayes posterior (the best possible) and for a uniform map (0.04).

``--offline N ...`` trains a fresh model with the settings of ``benchmarks/meta_adaptation.py``'s
gridworld VariBAD (Bernoulli next-state reward decoder, 25 trajectories x 20 beliefs x 20 decoded
steps per update) on ``--trajectories`` random trajectories and scores it after each N updates: a
reference for what the same model reaches when its data covers the grid. Session 4 measured, with
266 trajectories (an earlier draft of this check, other test draws): 0.061 / 0.207 / 0.257 after
1k / 2k / 4k updates (Bayes 0.31), against 0.06-0.11 for models trained inside meta-training runs
on the planner's own trajectories.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metawm.envs.gridworld import GridNaviBAMDP  # noqa: E402
from metawm.meta.varibad import BeliefModel, pad_trajectories, vae_loss  # noqa: E402
from metawm.ops.adam import Adam  # noqa: E402
from metawm.tasks import load_suite  # noqa: E402

# the suite's train goals (tasks/gridworld_goals.yaml), the prior the Bayes posterior starts from
TRAIN = [tuple(c) for c in load_suite("gridworld_goals").ranges["train"]["goal"]["choices"]]


def random_trajectory(goal, rng: np.random.Generator) -> dict:
    env = GridNaviBAMDP(goal)
    o, _ = env.reset(seed=int(rng.integers(1 << 30)))
    obs, act, rew = [o], [], []
    while True:
        a = int(rng.integers(5))
        o, r, _, truncated, _ = env.step(a)
        obs.append(o)
        act.append(np.eye(5, dtype=np.float32)[a])
        rew.append(r)
        if truncated:
            break
    return {"obs": np.stack(obs).astype(np.float32), "act": np.stack(act), "rew": np.asarray(rew, np.float32),
            "goal": goal}


def new_model() -> BeliefModel:
    return BeliefModel(3, 5, latent=5, hidden=64, embed=16, decoder_hidden=64, decode_state=False,
                       reward_inputs="next_state", reward_likelihood="bernoulli", reward_range=[-0.1, 1.0])


@torch.no_grad()
def score(model: BeliefModel, test: list[dict], samples: int = 32) -> tuple[float, float]:
    """(mean share of the normalised decoded goal map on the true goal, the same for Bayes)."""
    cells = torch.tensor([[x, y, 0.5] for y in range(5) for x in range(5)], dtype=torch.float32)
    b = pad_trajectories(test, "cpu")
    mu, logvar = model.encode(b["obs"], b["act"], b["rew"])
    got, bayes = [], []
    for i, tr in enumerate(test):
        for t in range(0, len(tr["rew"]) + 1, 3):
            m = mu[i, t] + (0.5 * logvar[i, t]).exp() * torch.randn(samples, model.latent)
            x = torch.cat([cells[None].expand(samples, -1, -1), m[:, None].expand(-1, 25, -1)], -1)
            p = torch.sigmoid(model.reward_decoder(x)[..., 0]).mean(0)
            gx, gy = tr["goal"]
            got.append(float(p[gy * 5 + gx] / p.sum()))
            found = bool((tr["rew"][:t] > 0).any())
            seen = {tuple(int(v) for v in o[:2]) for o in tr["obs"][1:t + 1]}
            bayes.append(1.0 if found else 1.0 / len([c for c in TRAIN if c not in seen]))
    return float(np.mean(got)), float(np.mean(bayes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a meta=varibad run directory or checkpoint on gridworld_goals")
    p.add_argument("--offline", nargs="*", type=int, default=[], help="update counts to score a fresh model at")
    p.add_argument("--trajectories", type=int, default=266, help="random training trajectories (--offline)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    test = [random_trajectory(TRAIN[rng.integers(len(TRAIN))], rng) for _ in range(100)]
    torch.manual_seed(args.seed)
    if args.run:
        from metawm.adapt import locate

        payload, _ = locate(args.run)
        model = new_model()
        model.load_state_dict(payload["state"]["meta"]["model"])
        got, bayes = score(model, test)
        print(f"{payload['path']}: share on the true goal {got:.3f} (Bayes {bayes:.3f}, uniform 0.040)")
    if args.offline:
        buf = [random_trajectory(TRAIN[rng.integers(len(TRAIN))], rng) for _ in range(args.trajectories)]
        model = new_model()
        opt = Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.time()
        for u in range(1, max(args.offline) + 1):
            idx = torch.randint(len(buf), (25,), generator=gen).tolist()
            loss, _ = vae_loss(model, pad_trajectories([buf[i] for i in idx], "cpu"), elbo_samples=20,
                               decode_samples=20, kl_weight=1.0, rew_weight=1.0, state_weight=1.0, gen=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if u in args.offline:
                got, bayes = score(model, test)
                print(f"offline, {args.trajectories} random trajectories, {u} updates ({time.time() - t0:.0f} s): "
                      f"share on the true goal {got:.3f} (Bayes {bayes:.3f}, uniform 0.040)", flush=True)


if __name__ == "__main__":
    main()
