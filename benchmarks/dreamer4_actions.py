"""Does the dynamics use the actions? Action-conditioned vs "no action" prediction on held-out futures.

Dreamer 4 feeds each step's action as a token and uses a learned "no action" embedding where the
action is unknown (Hafner et al. 2025, sec. 3.2 and 4.3). If the model has learned action
conditioning, generating held-out futures with the true actions must beat generating them with
the "no action" embedding (the model then has to guess what the agent did). This script takes a
trained phase directory, records fresh held-out episodes with a random agent, and from
``--context`` real frames generates ``--horizon`` frames open loop both ways (same noise), with
K = 4 sampling steps; it reports latent and pixel MSE per horizon step and their ratio.

    python benchmarks/dreamer4_actions.py --run runs/point_nav/dreamer4/default-px16-s0 \\
        --out benchmarks/results/dreamer4_actions
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.dreamer4_sampling import copy_last_baseline, errors  # noqa: E402
from metawm.agents.dreamer4.plots import save_strip  # noqa: E402
from metawm.dreamer4 import heldout_windows, load_phase  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", nargs="+", required=True, help="pipeline directories (one per seed)")
    ap.add_argument("--phase", default="pretrain")
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=8)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--samples", type=int, default=3, help="noise seeds averaged per window")
    ap.add_argument("--out", default="benchmarks/results/dreamer4_actions")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.run:
        agent, tasks, specs, cfg = load_phase(Path(run) / args.phase)
        windows = heldout_windows(tasks, specs, tasks.env_spec, args.context + args.horizon, args.windows,
                                  seed=20_000 + int(cfg.seed))
        batch = agent._tensors(windows)
        res = {"run": run, "seed": int(cfg.seed), "task": cfg.task.name, "pixels": cfg.pixels, "k": args.k}
        for name, use in (("with_actions", True), ("no_action", False)):
            es = [errors(agent, batch, args.context, args.k, seed=s, use_actions=use) for s in range(args.samples)]
            res[name] = {m: sum(e[m] for e in es) / len(es) for m in ("latent_mse", "pixel_mse")}
            res[name]["pixel_mse_per_step"] = [sum(v) / len(es) for v in zip(*(e["pixel_mse_per_step"] for e in es))]
            res[name + "_frames"] = es[0]["frames"]
        res["copy_last_frame"] = copy_last_baseline(agent, batch, args.context)
        res["latent_mse_ratio_no_action_vs_actions"] = res["no_action"]["latent_mse"] / res["with_actions"]["latent_mse"]
        res["pixel_mse_ratio_no_action_vs_actions"] = res["no_action"]["pixel_mse"] / res["with_actions"]["pixel_mse"]
        real = batch["obs"][:, args.context:].float() / 255.0
        save_strip(out / f"strip_s{cfg.seed}.png", [("real", real[0]), ("with actions", res.pop("with_actions_frames")[0]),
                                                    ("no action", res.pop("no_action_frames")[0])],
                   title=f"held-out future, K={args.k}: true actions vs the learned 'no action' embedding")
        print(json.dumps({k: v for k, v in res.items() if "per_step" not in str(v)}, indent=1), flush=True)
        rows.append(res)
    summary = {"runs": rows,
               "mean_pixel_mse_ratio_no_action_vs_actions": sum(r["pixel_mse_ratio_no_action_vs_actions"] for r in rows)
               / len(rows),
               "mean_latent_mse_ratio_no_action_vs_actions": sum(r["latent_mse_ratio_no_action_vs_actions"]
                                                                 for r in rows) / len(rows)}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
