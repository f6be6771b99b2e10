"""MAML meta-gradient throughput (tasks/s) and peak memory: metawm's torch.func/autograd inner loop
against ``higher`` on the same model and the same task batches, for 1, 5 and 10 inner steps.

The model is the MPC agent's world model (``agent=mpc``, ``--size``), the tasks are point_nav
goals with support and query batches of real transitions (random policy). One "task" is one
member's full meta-gradient: k differentiable inner SGD steps on its support batch and the
backward pass of its query loss into the initialization. Variants:

* ``metawm``            - :func:`metawm.ops.functional_sgd.inner_loop` (second order), tasks looped
* ``metawm-ckpt``       - the same with ``checkpoint_inner`` (activations recomputed in backward)
* ``metawm-vmap``       - all tasks of the meta-batch in one ``torch.func.vmap``
* ``metawm-fo``         - first-order MAML (for reference; not comparable to higher's second order)
* ``higher``            - ``higher.innerloop_ctx`` with a differentiable SGD, tasks looped

Memory, two measures: (1) ``graph``: the bytes autograd saves for the backward pass of one task
(unique storages, via ``saved_tensors_hooks``) - exactly the memory that second-order MAML holds
and that grows with k (not measured for vmap, whose batched tensors are not inspectable this way);
(2) ``peak``: on CUDA ``torch.cuda.max_memory_allocated``, on CPU the growth of the process's peak
resident set size over a k=1 warm-up (each measurement in its own process; coarse: the allocator
caches). Each point is the best of
``--repeats`` timings (the machine is shared).

    python benchmarks/maml.py                    # CPU, prints a table, writes runs/bench/maml.json
    python benchmarks/maml.py --device cuda --size medium --batch 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ["metawm", "metawm-ckpt", "metawm-vmap", "metawm-fo", "higher"]


def setup(args):
    import numpy as np
    import torch

    from metawm.agents.mpc import MPCAgent
    from metawm.meta.base import collect
    from metawm.tasks import load_suite

    torch.manual_seed(0)
    device = torch.device(args.device)
    tasks = load_suite("point_nav")
    agent = MPCAgent(tasks.env_spec, device=device, size=args.size, batch_size=args.batch, train_after=1)
    specs = tasks.sample("train", args.tasks, np.random.default_rng(0))
    gen = torch.Generator().manual_seed(0)
    support, query = [], []
    for k, spec in enumerate(specs):
        member = MPCAgent(tasks.env_spec, device=device, size=args.size, batch_size=args.batch, train_after=1)
        collect(member, tasks, spec, 200, seed=k, train=False)
        support.append(member.sample_batch(gen))
        query.append(member.sample_batch(gen))
    return agent, support, query


def meta_gradient(variant: str, agent, support, query, k: int, lr: float = 0.05):
    import torch

    from metawm.ops.functional_sgd import inner_loop, sgd_step, stack_batches

    theta = dict(agent.model.named_parameters())
    for p in theta.values():
        p.grad = None
    n = len(support)
    if variant.startswith("metawm") and variant != "metawm-vmap":
        for s, q in zip(support, query):
            adapted, _ = inner_loop(lambda p, i: agent.loss(p, s)[0], theta, k, lr,
                                    first_order=variant == "metawm-fo", checkpoint=variant == "metawm-ckpt")
            (agent.loss(adapted, q)[0] / n).backward()
    elif variant == "metawm-vmap":
        from torch.func import grad, vmap

        def loss_of(p, b):
            return agent.loss(p, b)[0]

        def task_loss(s, q):
            p = theta
            for _ in range(k):
                p = sgd_step(p, grad(loss_of)(p, s), lr)
            return loss_of(p, q)

        vmap(task_loss)(stack_batches(support), stack_batches(query)).mean().backward()
    elif variant == "higher":
        import higher

        for s, q in zip(support, query):
            with higher.innerloop_ctx(agent.model, torch.optim.SGD(agent.model.parameters(), lr=lr),
                                      copy_initial_weights=False) as (fmodel, diffopt):
                params_of = lambda: dict(zip(theta, fmodel.parameters()))  # noqa: E731
                for _ in range(k):
                    diffopt.step(agent.loss(params_of(), s)[0])
                (agent.loss(params_of(), q)[0] / n).backward()
    else:
        raise ValueError(variant)
    return {n_: p.grad.clone() for n_, p in theta.items()}


class GraphMemory:
    """Bytes of the tensors autograd saves for the backward pass (unique storages), while the
    meta-gradient's forward runs: the memory second-order MAML holds per task, which grows with k.
    Tensors saved inside a checkpointed region are not held (the checkpoint's own hooks drop them)."""

    def __init__(self):
        self.live: dict[int, int] = {}
        self.peak = 0

    def pack(self, t):
        try:
            key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # functorch-wrapped tensors
            key, size = id(t), t.numel() * t.element_size()
        self.live[key] = size
        self.peak = max(self.peak, sum(self.live.values()))
        return t

    @staticmethod
    def unpack(t):
        return t


def graph_peak(variant, agent, support, query, k) -> float:
    import torch

    mem = GraphMemory()
    with torch.autograd.graph.saved_tensors_hooks(mem.pack, mem.unpack):
        meta_gradient(variant, agent, support[:1], query[:1], k)  # one task: what each task holds
    return mem.peak / 2 ** 20


def measure(args) -> dict:
    """One (variant, k) in this process: time and peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    agent, support, query = setup(args)
    cuda = args.device.startswith("cuda")
    meta_gradient(args.variant, agent, support, query, 1)  # warm-up (lazy imports, allocator)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        meta_gradient(args.variant, agent, support, query, args.k)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda else \
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    graph = graph_peak(args.variant, agent, support, query, args.k) if args.variant != "metawm-vmap" else float("nan")
    return {"variant": args.variant, "k": args.k, "tasks_per_s": args.tasks / best, "seconds": best,
            "peak_mib": peak, "memory": "cuda max_memory_allocated" if cuda else "CPU peak RSS growth",
            "graph_mib_per_task": graph}


def check_equal(args) -> float:
    """Largest difference between metawm's and higher's second-order meta-gradients."""
    import torch

    torch.set_num_threads(args.threads)
    agent, support, query = setup(args)
    a = meta_gradient("metawm", agent, support, query, 5)
    b = meta_gradient("higher", agent, support, query, 5)
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="small", help="MPC preset: tiny | small | medium")
    p.add_argument("--batch", type=int, default=256, help="transitions per support / query batch")
    p.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch")
    p.add_argument("--ks", type=int, nargs="*", default=[1, 5, 10])
    p.add_argument("--variants", nargs="*", default=VARIANTS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "runs" / "bench" / "maml.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return
    diff = check_equal(args)
    print(f"max |metawm - higher| of the second-order meta-gradient (k=5): {diff:.2e}")
    rows = []
    for k in args.ks:
        for v in args.variants:
            cmd = [sys.executable, __file__, "--worker", "--variant", v, "--k", str(k), "--device", args.device,
                   "--size", args.size, "--batch", str(args.batch), "--tasks", str(args.tasks),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)})
            if out.returncode != 0:
                rows.append({"variant": v, "k": k, "error": out.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"k={k:2d} {v:12s} " + (f"{r['tasks_per_s']:8.1f} tasks/s  peak {r['peak_mib']:7.1f} MiB  "
                                          f"graph {r['graph_mib_per_task']:.2f} MiB/task"
                                         if "error" not in r else r["error"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "max_diff_vs_higher": diff, "rows": rows}, indent=2))
    print(f"\n| k | " + " | ".join(args.variants) + " |\n|---|" + "---|" * len(args.variants))
    for k in args.ks:
        cells = []
        for v in args.variants:
            r = next(r for r in rows if r["variant"] == v and r["k"] == k)
            cells.append("error" if "error" in r else
                         f"{r['tasks_per_s']:.1f}/s, graph {r['graph_mib_per_task']:.2f} MiB, rss +{r['peak_mib']:.0f} MiB")
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
