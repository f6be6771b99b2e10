"""Functional gradient steps: the inner loop of MAML and Meta-SGD, as pure functions of tensors.

MAML (Finn, Abbeel, Levine, ICML 2017, eq. 1) adapts parameters theta to a task with k plain
gradient steps on the task's support loss,

    theta_{i+1} = theta_i - alpha * grad L_support(theta_i),

and Meta-SGD (Li, Zhou, Chen, Lu 2017, eq. 3) makes alpha a learned tensor of theta's shape
(element-wise product). The outer objective (MAML eq. 2) differentiates the query loss of
theta_k through these steps: second order, because each step's gradient is itself a function of
theta (``create_graph=True``). First-order MAML drops those terms by treating each inner gradient
as a constant (the adapted parameters still depend on theta through the identity, and on alpha).

Parameters are ``dict[str, Tensor]`` (the shape :meth:`metawm.protocols.Agent.params` uses).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]


def sgd_step(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
             lr: float | torch.Tensor | Mapping[str, torch.Tensor]) -> Params:
    """theta - alpha * g for every name. ``lr`` is a float / 0-d tensor (MAML) or a per-name
    dict of tensors broadcastable to each parameter (Meta-SGD). Shapes: params[n] == grads[n]."""
    out = {}
    for name, p in params.items():
        a = lr[name] if isinstance(lr, Mapping) else lr
        out[name] = p - a * grads[name]
    return out


def grads_of(loss: torch.Tensor, params: Mapping[str, torch.Tensor], *, create_graph: bool) -> Params:
    """d loss / d params by name; parameters the loss does not use get zeros (not None)."""
    names = [n for n, p in params.items() if p.requires_grad]
    if not names or not loss.requires_grad:
        return {n: torch.zeros_like(p) for n, p in params.items()}
    gs = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True)
    by_name = dict(zip(names, gs))
    return {n: (by_name.get(n) if by_name.get(n) is not None else torch.zeros_like(p)) for n, p in params.items()}


def inner_loop(loss_fn: Callable[[Params, int], torch.Tensor], params: Mapping[str, torch.Tensor], steps: int,
               lr: float | torch.Tensor | Mapping[str, torch.Tensor], *, first_order: bool = False,
               checkpoint: bool = False) -> tuple[Params, list[torch.Tensor]]:
    """k = ``steps`` functional SGD steps from ``params``; ``loss_fn(params, i)`` is the support
    loss at step i (its own batch per step, or the same one). Returns the adapted parameters,
    differentiable w.r.t. ``params`` (second order unless ``first_order``) and ``lr``, and the
    support losses before each step.

    ``checkpoint=True`` recomputes each inner step's forward pass during the outer backward
    instead of keeping its activations (``torch.utils.checkpoint``, non-reentrant), so the memory
    of second-order MAML grows with the parameters, not with the activations, of k steps.
    """
    current: Params = dict(params)
    losses: list[torch.Tensor] = []
    for i in range(steps):
        if checkpoint and not first_order:
            current, loss = _checkpointed_step(loss_fn, current, i, lr)
        else:
            loss = loss_fn(current, i)
            grads = grads_of(loss, current, create_graph=not first_order)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            current = sgd_step(current, grads, lr)
        losses.append(loss.detach())
    return current, losses


def _checkpointed_step(loss_fn, current: Params, i: int, lr) -> tuple[Params, torch.Tensor]:
    from torch.utils.checkpoint import checkpoint

    names = list(current)
    lr_names = list(lr) if isinstance(lr, Mapping) else None
    lr_values = [lr[n] for n in lr_names] if lr_names else ([lr] if torch.is_tensor(lr) else [])

    def step(*flat):
        p = dict(zip(names, flat[:len(names)]))
        rate = dict(zip(lr_names, flat[len(names):])) if lr_names else (flat[len(names)] if lr_values else lr)
        with torch.enable_grad():
            loss = loss_fn(p, i)
            grads = grads_of(loss, p, create_graph=True)
        new = sgd_step(p, grads, rate)
        return (*[new[n] for n in names], loss)

    out = checkpoint(step, *[current[n] for n in names], *lr_values, use_reentrant=False)
    return dict(zip(names, out[:len(names)])), out[len(names)]


def stack_batches(batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack same-shaped batches along a new leading (task) dimension, for ``torch.func.vmap``."""
    keys = list(batches[0])
    for b in batches[1:]:
        if list(b) != keys or any(b[k].shape != batches[0][k].shape for k in keys):
            raise ValueError("batches differ in keys or shapes; they cannot be stacked for vmap")
    return {k: torch.stack([b[k] for b in batches]) for k in keys}
