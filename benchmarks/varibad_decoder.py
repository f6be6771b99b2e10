"""How well VariBAD's belief model locates point_nav goals, trained offline on covering data.

The VAE alone (metawm.meta.varibad.BeliefModel, vae_loss, pad_trajectories), no agent: trajectories of
smoothed random walks on ``n_tasks`` point_nav goals drawn on the whole circle, then on fresh goals
the belief after t steps of a fresh walk and the reward decoder's E[r | s', m = mu] on a grid over
the disc. Printed per variant: the distance from the decoder's argmax to the true goal (0 = located;
goals are 0.5 from the start, so ~0.5-0.7 means no information), and E[r] at the goal (truth 0).
This is the cheap test bench for the reward decoder that the MPC planner plans on
(benchmarks/meta_adaptation.py, point_nav_paper).

    python benchmarks/varibad_decoder.py --updates 3000 --variant default hidden=128,embed=32,lr=0.003
    python benchmarks/varibad_decoder.py --runs runs/bench/pn_v8/point_nav_paper/varibad_enc128/s0   # a trained run's VAE
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from metawm.meta.varibad import BeliefModel, pad_trajectories, vae_loss


def walks(goals: np.ndarray, horizon: int, rng: np.random.Generator, smooth: float = 0.8) -> list[dict]:
    """One smoothed random walk per goal, with point_nav's dynamics and reward (metawm/envs/point_nav.py)."""
    out = []
    for g in goals:
        s, a = np.zeros(2), rng.uniform(-1, 1, 2)
        obs, act, rew = [s.copy()], [], []
        for _ in range(horizon):
            a = np.clip(smooth * a + (1 - smooth) * rng.uniform(-1, 1, 2) * 3, -1, 1)
            s = s + a * 0.1
            obs.append(s.copy()), act.append(a.copy()), rew.append(-np.linalg.norm(s - g))
        out.append({"obs": np.asarray(obs, np.float32), "act": np.asarray(act, np.float32),
                    "rew": np.asarray(rew, np.float32)})
    return out


def on_circle(n: int, rng: np.random.Generator) -> np.ndarray:
    ang = rng.uniform(0, 2 * math.pi, n)
    return 0.5 * np.stack([np.cos(ang), np.sin(ang)], -1)


def run(variant: dict, updates: int, n_tasks: int, seed: int, horizon: int = 100, data: list | None = None) -> dict:
    """Train a fresh belief model on ``data`` (default: walks on ``n_tasks`` goals) and evaluate it."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if data is None:
        data = walks(on_circle(n_tasks, rng), horizon, rng)
    dims = {k: variant[k] for k in ("decoder_hidden", "reward_inputs", "hidden", "embed", "latent") if k in variant}
    model = BeliefModel(2, 2, decode_state=False, **dims)
    opt = torch.optim.Adam(model.parameters(), lr=variant.get("lr", 1e-3))
    gen = torch.Generator().manual_seed(seed)
    w = {"kl_weight": variant.get("kl_weight", 1.0), "rew_weight": variant.get("rew_weight", 1.0), "state_weight": 0.0}
    t0 = time.time()
    for _ in range(updates):
        idx = torch.randint(len(data), (16,), generator=gen).tolist()
        loss, _ = vae_loss(model, pad_trajectories([data[i] for i in idx], "cpu"), elbo_samples=25, decode_samples=50,
                           gen=gen, **w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"train_s": time.time() - t0, **evaluate(model, seed, horizon)}


_XS = torch.linspace(-0.7, 0.7, 29)
GRID = torch.stack(torch.meshgrid(_XS, _XS, indexing="ij"), -1).reshape(-1, 2)   # 29x29 points over the disc


@torch.no_grad()
def reward_at(model: BeliefModel, points: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The decoder's E[r] for arriving at each of ``points`` (B, P, 2) (a zero-action transition s -> s), under
    beliefs ``m`` (B, Z): (B, P)."""
    return model.expected_reward(model.decode_reward(points, torch.zeros_like(points), points, m[:, None]))[:, 0]


def evaluate(model: BeliefModel, seed: int, horizon: int = 100) -> dict:
    """On 20 fresh goals: the belief after t steps of a fresh walk, the decoder on the grid."""
    test_goals = on_circle(20, np.random.default_rng(seed + 1000))
    test = pad_trajectories(walks(test_goals, horizon, np.random.default_rng(seed + 2000)), "cpu")
    goals = torch.as_tensor(test_goals, dtype=torch.float32)
    res = {}
    with torch.no_grad():
        mu, logvar = model.encode(test["obs"], test["act"], test["rew"])
        for t in (0, 25, 50, 99):
            er = reward_at(model, GRID[None].expand(20, -1, -1), mu[:, t])                   # (20, G)
            dist = (GRID[er.argmax(-1)] - goals).norm(dim=-1)
            at_goal = reward_at(model, goals[:, None], mu[:, t])[:, 0]
            res[f"t{t}"] = (float(dist.mean()), float(at_goal.mean()), float((0.5 * logvar[:, t]).exp().mean()))
    return res


def from_run(run_dir: str) -> BeliefModel:
    """The belief model of a ``meta=varibad`` run (its latest checkpoint), built as the run built it."""
    from omegaconf import OmegaConf

    from metawm.infra import checkpoint

    m = OmegaConf.load(f"{run_dir}/config.yaml").meta
    dims = {k: m[k] for k in ("latent", "hidden", "embed", "decoder_hidden", "decode_state", "reward_inputs",
                              "reward_likelihood", "reward_range")}
    model = BeliefModel(2, 2, **dims)
    model.load_state_dict(checkpoint.load(run_dir)["state"]["meta"]["model"])
    return model.eval()


def buffer_of(run_dir: str) -> list[dict]:
    """The VAE's trajectory buffer saved in a run's latest checkpoint (a run with ``keep_replay=true``)."""
    from metawm.infra import checkpoint

    buf = checkpoint.load(run_dir)["state"]["meta"]["buffer"]
    if not buf:
        raise SystemExit(f"{run_dir}: the checkpoint holds no VAE buffer (train with keep_replay=true)")
    return list(buf)


def parse(spec: str) -> dict:
    out = {}
    for part in spec.split(",") if spec != "default" else []:
        k, v = part.split("=")
        out[k] = v if k == "reward_inputs" else (int(v) if k in ("decoder_hidden", "hidden", "embed", "latent") else float(v))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", nargs="+", default=["default"],
                   help="comma-separated k=v (rew_weight, kl_weight, lr, latent, hidden, embed, decoder_hidden, "
                        "reward_inputs) or 'default'")
    p.add_argument("--updates", type=int, default=3000)
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="*", default=[],
                   help="instead of training: evaluate the belief models of these meta=varibad point_nav run dirs")
    p.add_argument("--buffer", default=None,
                   help="train on the VAE buffer of this meta=varibad point_nav run (keep_replay=true) instead of walks")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'variant':32s} {'t':>3s} {'argmax->goal':>12s} {'E[r] at goal':>12s} {'belief std':>10s}")
    data = buffer_of(a.buffer) if a.buffer else None
    for v in a.runs or a.variant:
        r = evaluate(from_run(v), a.seed) if a.runs else run(parse(v), a.updates, a.tasks, a.seed, data=data)
        v = v[-32:]
        for t in (0, 25, 50, 99):
            d, g, s = r[f"t{t}"]
            print(f"{v:32s} {t:3d} {d:12.3f} {g:12.3f} {s:10.3f}")
        if not a.runs:
            print(f"{v:32s} trained {a.updates} updates in {r['train_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
