"""Shortcut forcing at inference: prediction error and speed of K = 4 sampling steps against K = 64.

Hafner et al. (2025, sec. 3.2, Fig. 8, Table 2): shortcut forcing lets the dynamics generate each
frame in K = 4 steps with quality close to K = 64 (16x fewer forward passes). This script takes a
dynamics model trained by ``python -m metawm.dreamer4 pretrain`` (or finetune) on a pixel task,
records fresh held-out episodes with a random agent (a seed the training data never used), and
from ``--context`` real frames generates the next ``--horizon`` frames open loop, with the
episodes' own actions, for K in {1, 2, 4, ..., 64} (same noise seed for every K). It reports

* the latent MSE to the tokenizer's encoding of the real future and the pixel MSE of the decoded
  frames to the real frames, per K, with the "copy the last context frame" baseline for scale;
* generated frames per second at K = 4 and K = 64 (generation with the KV cache, no decoding),
  for one rollout and for a batch of 16, best of ``--repeats`` on this (shared) CPU;
* a PNG strip: real frames, tokenizer reconstruction, K = 4 and K = 64 generations.

    python benchmarks/dreamer4_sampling.py --run runs/point_nav/dreamer4/default-px16-s0 \\
        --out benchmarks/results/dreamer4_sampling
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metawm.agents.dreamer4.plots import save_strip  # noqa: E402
from metawm.dreamer4 import heldout_windows, load_phase  # noqa: E402


def batch_of(agent, windows):
    return agent._tensors(windows)


def errors(agent, batch, context: int, k: int, seed: int, use_actions: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = agent.model.predict_open_loop(batch["obs"], batch["action"], batch["has_action"], batch["is_first"],
                                        context, k, g, use_actions=use_actions)
    real = batch["obs"][:, context:].float() / 255.0
    lat = (out["z_gen"] - out["z_real"]).pow(2).flatten(2).mean(-1)  # (B, H)
    pix = (out["frames_gen"] - real).pow(2).flatten(2).mean(-1)
    return {"latent_mse": float(lat.mean()), "pixel_mse": float(pix.mean()),
            "latent_mse_per_step": lat.mean(0).tolist(), "pixel_mse_per_step": pix.mean(0).tolist(),
            "frames": out["frames_gen"], "recon": out["frames_rec"]}


def copy_last_baseline(agent, batch, context: int) -> dict:
    with torch.no_grad():
        seg = agent.model.segments(batch["is_first"])
        z = agent.model.encode(batch["obs"], seg)
    real = batch["obs"][:, context:].float() / 255.0
    last = batch["obs"][:, context - 1:context].float() / 255.0
    return {"latent_mse": float((z[:, context:] - z[:, context - 1:context]).pow(2).mean()),
            "pixel_mse": float((real - last).pow(2).mean())}


def frames_per_second(agent, batch, context: int, horizon: int, k: int, repeats: int) -> float:
    """Best-of-``repeats`` rate of generating ``horizon`` frames for the whole batch (KV cache)."""
    model, dyn = agent.model, agent.model.dynamics
    b = batch["obs"].shape[0]
    best = float("inf")
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        h, cache, seg = model.start_context(batch["obs"][:, :context], batch["action"][:, :context],
                                            batch["has_action"][:, :context], batch["is_first"][:, :context], g)
        ones = torch.ones(b, 1, dtype=torch.bool)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(horizon):
                a = batch["action"][:, context + i - 1:context + i]
                noise = torch.randn(b, 1, dyn.latents, dyn.bottleneck, generator=g)
                z = dyn.generate(noise, a, ones, seg, cache, k)
                _, cache = model.step_model(z, a, ones, seg, cache, g)
        best = min(best, time.perf_counter() - t0)
    return b * horizon / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="pipeline directory (holds pretrain/ or finetune/)")
    ap.add_argument("--phase", default="pretrain")
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=8)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/dreamer4_sampling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    agent, tasks, specs, cfg = load_phase(Path(args.run) / args.phase)
    if not agent.model.tokenizer.is_image:
        raise SystemExit("this benchmark wants a pixel task (e.g. pixels=16 or atari_suite)")
    windows = heldout_windows(tasks, specs, tasks.env_spec, args.context + args.horizon, args.windows,
                              seed=10_000 + int(cfg.seed))
    batch = batch_of(agent, windows)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= agent.preset.k_max]
    res: dict = {"run": str(args.run), "phase": args.phase, "task": cfg.task.name, "pixels": cfg.pixels,
                 "preset": agent.preset.name, "params": agent.info()["params"], "context": args.context,
                 "horizon": args.horizon, "windows": args.windows, "threads": args.threads, "by_k": {}}
    frames = {}
    for k in ks:
        e = errors(agent, batch, args.context, k, seed=1)
        frames[k] = e.pop("frames")
        recon = e.pop("recon")
        res["by_k"][k] = e
        print(f"K={k:3d}  latent MSE {e['latent_mse']:.5f}  pixel MSE {e['pixel_mse']:.5f}", flush=True)
    res["copy_last_frame"] = copy_last_baseline(agent, batch, args.context)
    kmax = max(ks)
    res["latent_mse_ratio_k4_vs_kmax"] = res["by_k"][4]["latent_mse"] / res["by_k"][kmax]["latent_mse"]
    res["pixel_mse_ratio_k4_vs_kmax"] = res["by_k"][4]["pixel_mse"] / res["by_k"][kmax]["pixel_mse"]
    speed = {}
    for bsz in (1, 16):
        sub = {k: v[:bsz] for k, v in batch.items()}
        for k in (4, kmax):
            speed[f"batch{bsz}_K{k}"] = frames_per_second(agent, sub, args.context, args.horizon, k, args.repeats)
        speed[f"batch{bsz}_speedup_K4_vs_K{kmax}"] = speed[f"batch{bsz}_K4"] / speed[f"batch{bsz}_K{kmax}"]
    res["frames_per_second"] = speed
    print(json.dumps(speed, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real = batch["obs"][:, args.context:].float() / 255.0
    save_strip(out / "strip.png", [("real", real[0]), ("tokenizer recon", recon[0]), ("K=4", frames[4][0]),
                                   (f"K={kmax}", frames[kmax][0])],
               title=f"{cfg.task.name} ({cfg.pixels}px), held-out episode: {args.context} context frames, "
                     f"then {args.horizon} generated open loop with the episode's actions")
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
