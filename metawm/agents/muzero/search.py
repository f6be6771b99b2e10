"""Monte-Carlo tree search over a learned model, batched over many roots in tensors.

The search sees the model only through :class:`SearchModel` (DESIGN.md, style 4): ``initial``
maps observations to a latent state, prior logits and a scalar value; ``recurrent`` maps a latent
state and an action to the next state, a scalar reward, prior logits and a value. States are
tuples of tensors, so a model can carry extra per-node state (EfficientZero's value-prefix LSTM).

Layout. All B trees live in flat preallocated tensors with B * M + 1 rows (M = simulations + 1
nodes per root, plus one scratch row that masked writes go to): a children index table
(row, action) -> row, visit counts, mean values, edge rewards, priors, raw network values, parent
pointers. Simulation s adds exactly one node to every tree, at local index s + 1, so a whole
simulation is: descend all trees at once (a Python loop over depth only, vectorized selection at
every level), expand all leaves with one batched ``recurrent`` call, back up all paths at once
(again a loop over depth only). Nothing loops over roots or nodes in Python.

Two root/interior rules:

* MuZero pUCT (Schrittwieser et al. 2020, appendix B, eq. 2): a = argmax Q_norm(s, a) +
  P(s, a) sqrt(N(s)) / (1 + N(s, a)) (c1 + log((N(s) + c2 + 1) / c2)), c1 = 1.25, c2 = 19652,
  Q min-max normalized with statistics over the whole tree (appendix B, "MinMaxStats"),
  unvisited children scored Q = 0 as in the paper's pseudocode, Dirichlet noise on the root
  prior (appendix C: alpha = 0.25, fraction 0.25 on Atari).
* Gumbel MuZero (Danihelka et al., ICLR 2022): at the root, Gumbel-top-k sampling of m actions
  and Sequential Halving over the budget (Algorithm 2; the visit schedule is mctx's
  ``get_table_of_considered_visits``); interior nodes pick argmax_a pi'(a) - N(a) / (1 + sum N)
  (eq. 14) with pi' = softmax(logits + sigma(completed Q)) (eq. 11), sigma(q) = (c_visit +
  max_b N(b)) c_scale q (eq. 8), Q completed (eq. 10) with v_mix (appendix D, eq. 33) and min-max
  rescaled per node as in mctx ``qtransform_completed_by_mix_value``. The policy target is pi'
  at the root (eq. 11), the action the Sequential Halving winner.

Node statistics follow mctx (and EfficientZero): expanding a node counts as its first visit
with the network's value, so a node's value is the mean of its raw value and every return
backed up through it, and the root value is (v_root + sum over simulations of the backed-up
return) / (1 + simulations). The min-max statistics are updated, as in the pseudocode, with
r + gamma * V of every node on the backed-up path (the root included).
Deviation: where the tree's minimum equals its maximum the normalized Q is 0 (the pseudocode
returns the raw Q there), so a constant-value tree falls back to the prior.

:func:`search_single` is the plain one-root-at-a-time implementation of the same rules with
Python node objects (the pseudocode's structure); tests check that both agree visit for visit
and ``benchmarks/mcts.py`` times one against the other.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol, Sequence

import torch

State = tuple[torch.Tensor, ...]


class SearchModel(Protocol):
    """The narrow interface MCTS sees. Shapes: obs (B, ...), action (B,) int64;
    logits (B, A); value, reward (B,) scalars (already decoded from categorical heads)."""

    def initial(self, obs: torch.Tensor) -> tuple[State, torch.Tensor, torch.Tensor]: ...

    def recurrent(self, state: State, action: torch.Tensor) -> tuple[State, torch.Tensor, torch.Tensor, torch.Tensor]: ...


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    num_simulations: int = 50
    discount: float = 0.997
    pb_c_init: float = 1.25            # c1
    pb_c_base: float = 19652.0         # c2
    dirichlet_alpha: float = 0.25
    dirichlet_fraction: float = 0.25
    gumbel: bool = False
    gumbel_max_considered: int = 16    # m
    gumbel_c_visit: float = 50.0
    gumbel_c_scale: float = 0.1        # mctx's default value_scale


@dataclasses.dataclass
class SearchResult:
    visits: torch.Tensor        # (B, A) root child visit counts
    policy: torch.Tensor        # (B, A) policy target: visit distribution (pUCT) or pi' (Gumbel)
    root_value: torch.Tensor    # (B,) mean value at the root after the search
    raw_value: torch.Tensor     # (B,) network value of the root
    prior: torch.Tensor         # (B, A) root prior actually used (with noise, if any)
    qvalues: torch.Tensor       # (B, A) r + gamma V of the root's children (0 where unvisited)
    action: torch.Tensor | None  # (B,) the Gumbel search's chosen action; None for pUCT
    considered: torch.Tensor | None  # (B, A) bool: Gumbel's top-m considered set
    max_depth: int


# -- helpers shared by both implementations ------------------------------------------------------

def considered_visit_sequence(m: int, num_simulations: int) -> tuple[int, ...]:
    """Sequential Halving as a visit schedule (Danihelka et al. 2022, Algorithm 2; mctx
    ``get_sequence_of_considered_visits``): entry s is the visit count an action must have to
    be eligible at simulation s. Each phase gives every remaining action
    max(1, floor(n / (ceil(log2 m) * remaining))) visits, then halves the remaining set."""
    if m <= 1:
        return tuple(range(num_simulations))
    log2max = int(math.ceil(math.log2(m)))
    sequence: list[int] = []
    visits = [0] * m
    num_considered = m
    while len(sequence) < num_simulations:
        extra = max(1, int(num_simulations / (log2max * num_considered)))
        for _ in range(extra):
            sequence.extend(visits[:num_considered])
            for i in range(num_considered):
                visits[i] += 1
        num_considered = max(2, num_considered // 2)
    return tuple(sequence[:num_simulations])


def dirichlet_noise(prior: torch.Tensor, alpha: float, fraction: float) -> torch.Tensor:
    """(1 - fraction) prior + fraction Dir(alpha) per row (MuZero appendix C). Global torch RNG."""
    conc = torch.full(prior.shape, float(alpha), dtype=torch.float64)
    noise = torch.distributions.Dirichlet(conc).sample().to(prior.dtype).to(prior.device)
    return (1 - fraction) * prior + fraction * noise


def gumbel_noise(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard Gumbel samples -log(E), E ~ Exp(1), from the global torch RNG."""
    e = torch.empty(tuple(shape), dtype=torch.float64).exponential_()
    return (-torch.log(e)).to(dtype).to(device)


def _completed_q(q: torch.Tensor, visits: torch.Tensor, prior: torch.Tensor, raw: torch.Tensor,
                 c_visit: float, c_scale: float) -> torch.Tensor:
    """sigma(completed Q) over the children of a batch of nodes (Danihelka et al. eqs. 8, 33).
    q, visits, prior (B, A); raw (B,) the node's network value. Returns (B, A)."""
    visited = visits > 0
    sum_n = visits.sum(-1)
    p = prior.clamp_min(torch.finfo(prior.dtype).tiny)
    sum_p = torch.where(visited, p, 0).sum(-1)
    wq = torch.where(visited, p * q, 0).sum(-1) / torch.where(sum_p > 0, sum_p, 1)
    v_mix = (raw + sum_n * wq) / (sum_n + 1)
    completed = torch.where(visited, q, v_mix.unsqueeze(-1))
    lo = completed.min(-1, keepdim=True).values
    hi = completed.max(-1, keepdim=True).values
    completed = (completed - lo) / (hi - lo).clamp_min(1e-8)
    return (c_visit + visits.max(-1, keepdim=True).values) * c_scale * completed


# -- the batched search -------------------------------------------------------------------------

# channels of the per-node edge statistics table (6, R, A)
_N1, _Q, _VISITED, _PC, _PRIOR, _LOGIT = range(6)
_CHANNELS = 6


def _puct_coef(n: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """sqrt(N) (c1 + log((N + c2 + 1) / c2)): the exploration factor of a node with N visits."""
    return torch.sqrt(n) * (c1 + torch.log1p((n + 1) / c2))


@torch.inference_mode()
def search(model: SearchModel, obs: torch.Tensor, cfg: SearchConfig, *, explore: bool) -> SearchResult:
    """Run ``cfg.num_simulations`` simulations from B roots at once (see module docstring).

    ``explore``: Dirichlet root noise (pUCT) or Gumbel noise (Gumbel MuZero); without it the
    search is deterministic given the model.

    Per node the tree keeps its visit count, mean value, edge reward, raw value and depth; an
    edge table ``edge`` (6, R, A) packs what selection reads about a node's children: 1 + visit
    count, Q = r + gamma V, a visited flag, prior x sqrt(N)(c1 + log((N + c2 + 1) / c2)) (the
    node's pUCT factor, refreshed when N changes), prior and logits. One gather per tree level
    serves the whole selection, and since children are allocated after their parents, the next
    node of a descent is max(child index, current index) (-1 = unexpanded). Backup is closed
    form over the recorded path: the return seen from depth j is
    gamma^-j (sum_{i>j} gamma^(i-1) r_i + gamma^L v_leaf), one reverse cumulative sum for every
    depth of every tree.
    """
    state, logits, value = model.initial(obs)
    B, A = logits.shape
    S = int(cfg.num_simulations)
    M = S + 1
    dev, dt = logits.device, value.dtype
    R = B * M + 1                       # + one scratch row that masked writes go to
    scratch = B * M
    base = torch.arange(B, device=dev) * M
    gamma, c1, c2 = float(cfg.discount), float(cfg.pb_c_init), float(cfg.pb_c_base)

    children = torch.full((R * A,), -1, dtype=torch.long, device=dev)   # flat: node * A + action
    edge = torch.zeros(_CHANNELS, R, A, dtype=dt, device=dev)
    edge[_N1] = 1
    edge_flat = edge.view(-1)
    visits = torch.zeros(R, dtype=dt, device=dev)
    values = torch.zeros(R, dtype=dt, device=dev)
    rewards = torch.zeros(R, dtype=dt, device=dev)
    raws = torch.zeros(R, dtype=dt, device=dev)
    depths = torch.zeros(R, dtype=torch.long, device=dev)
    states = tuple(torch.zeros((R, *x.shape[1:]), dtype=x.dtype, device=dev) for x in state)
    lo = torch.full((B, 1), math.inf, dtype=dt, device=dev)
    hi = torch.full((B, 1), -math.inf, dtype=dt, device=dev)
    coef1 = float(_puct_coef(torch.tensor(1.0, dtype=torch.float64), c1, c2))

    # root expansion
    root_logits = logits.to(dt)
    prior = torch.softmax(root_logits, -1)
    if explore and not cfg.gumbel and cfg.dirichlet_fraction > 0:
        prior = dirichlet_noise(prior, cfg.dirichlet_alpha, cfg.dirichlet_fraction)
    for buf, x in zip(states, state):
        buf[base] = x
    edge[_PRIOR, base], edge[_LOGIT, base], edge[_PC, base] = prior, root_logits, prior * coef1
    values[base], raws[base], visits[base] = value.to(dt), value.to(dt), 1

    if cfg.gumbel:
        m = min(int(cfg.gumbel_max_considered), A)
        schedule = considered_visit_sequence(m, S)
        g = gumbel_noise((B, A), dt, dev) if explore else torch.zeros(B, A, dtype=dt, device=dev)
        centered = root_logits - root_logits.max(-1, keepdim=True).values
        considered = torch.zeros(B, A, dtype=torch.bool, device=dev)
        considered.scatter_(1, torch.topk(g + centered, m, dim=-1).indices, True)

        def root_scores(n: torch.Tensor, q: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
            sigma = _completed_q(q, n, prior, raws[base], cfg.gumbel_c_visit, cfg.gumbel_c_scale)
            return torch.where(eligible, (g + centered + sigma).clamp_min(-1e9), -math.inf)

    def select(idx: torch.Tensor, at_root: bool, s: int) -> torch.Tensor:
        n1, q, visited, pc, pr, lg = edge.index_select(1, idx).unbind(0)   # each (B, A)
        if cfg.gumbel:
            n = n1 - 1
            if at_root:
                return torch.argmax(root_scores(n, q, n == schedule[s]), -1)
            sigma = _completed_q(q, n, pr, raws.index_select(0, idx), cfg.gumbel_c_visit, cfg.gumbel_c_scale)
            pi = torch.softmax(lg + sigma, -1)
            return torch.argmax(pi - n / (1 + n.sum(-1, keepdim=True)), -1)
        qn = torch.addcmul(offset, q, inv_span) * visited            # min-max Q; unvisited: 0 (pseudocode)
        return torch.argmax(torch.addcdiv(qn, pc, n1), -1)           # + P sqrt(N)(c1 + ...) / (1 + n)

    gpow = torch.pow(torch.tensor(gamma, dtype=torch.float64, device=dev),
                     torch.arange(S + 2, dtype=torch.float64, device=dev)).to(dt)
    gpow_shift = torch.cat([gpow[:1], gpow[:-1]])                   # gamma^(i-1), i >= 1
    coef_table = _puct_coef(torch.arange(S + 3, dtype=torch.float64, device=dev), c1, c2).to(dt)
    positions = torch.arange(S + 2, device=dev).unsqueeze(0)
    scratch_col = torch.full((B, 1), scratch, dtype=torch.long, device=dev)
    zero_col = torch.zeros(B, 1, dtype=dt, device=dev)
    check_early_exit = dev.type == "cpu"     # a host sync per level is free on CPU, not on GPU
    max_depth = 0
    for s in range(S):
        span = hi - lo
        ok_span = span > 0                                          # lo == hi: normalized Q = 0
        inv_span = torch.where(ok_span, 1 / span, 0)
        offset = torch.where(ok_span, -lo * inv_span, 0)
        # 1. selection down all trees at once; a loop over depth only
        idx = base
        act = select(idx, True, s)
        path, acts = [idx], [act]
        for _ in range(max_depth):
            nxt = torch.maximum(children.index_select(0, torch.add(act, idx, alpha=A)), idx)
            if check_early_exit and torch.equal(nxt, idx):
                break
            if cfg.gumbel:   # rows that stopped keep their action (the root rule differs from the interior's)
                act = torch.where(nxt != idx, select(nxt, False, s), act)
            else:            # pUCT is deterministic given the node, so a row that stopped reselects the same
                act = select(nxt, False, s)
            idx = nxt
            path.append(idx)
            acts.append(act)
        # 2. expansion: one batched model call for every tree
        new = base + (s + 1)
        nstate, r, lg, v = model.recurrent(tuple(buf.index_select(0, idx) for buf in states), act)
        r, v, lg = r.to(dt), v.to(dt), lg.to(dt)
        for buf, x in zip(states, nstate):
            buf[new] = x
        children[torch.add(act, idx, alpha=A)] = new
        leaf_depth = depths.index_select(0, idx) + 1
        depths[new] = leaf_depth
        rewards[new], raws[new], values[new], visits[new] = r, v, v, 1
        p_new = torch.softmax(lg, -1)
        edge[_PRIOR, new], edge[_LOGIT, new], edge[_PC, new] = p_new, lg, p_new * coef1
        # 3. backup along the recorded paths, closed form (docstring)
        D = len(path)                                               # path positions 0..D-1
        L = leaf_depth.unsqueeze(1)                                 # (B, 1): the leaf's position, <= D
        P = torch.cat([torch.stack(path, 1), scratch_col], 1)
        P.scatter_(1, L, new.unsqueeze(1))
        pos = positions[:, :D + 1]
        on_path = pos <= L
        anc = pos < L                                               # strict ancestors of the leaf
        rw = torch.where(on_path & (pos > 0), rewards[P], 0) * gpow_shift[:D + 1]
        tail = torch.flip(torch.cumsum(torch.flip(rw, [1]), 1), [1])  # sum_{i >= j}
        tail = torch.cat([tail[:, 1:], zero_col], 1)
        ret = (tail + gpow[L] * v.unsqueeze(1)) / gpow[:D + 1]
        Pa = torch.where(anc, P, scratch)
        n_new = visits[Pa] + 1
        v_old = values[Pa]
        values[Pa] = v_old + (ret - v_old) / n_new
        visits[Pa] = n_new
        edge[_PC, Pa] = edge[_PRIOR, Pa] * coef_table[n_new.long()].unsqueeze(-1)
        q = rewards[P] + gamma * values[P]                          # after the update; root: gamma V
        lo = torch.minimum(lo, torch.where(on_path, q, math.inf).min(1, keepdim=True).values)
        hi = torch.maximum(hi, torch.where(on_path, q, -math.inf).max(1, keepdim=True).values)
        e_idx = torch.add(torch.stack(acts, 1), Pa[:, :D], alpha=A)   # (parent, action) of each path edge
        edge_flat[e_idx + _Q * R * A] = q[:, 1:]
        edge_flat[e_idx + _N1 * R * A] = visits[P[:, 1:]] + 1
        edge_flat[e_idx + _VISITED * R * A] = 1
        max_depth = max(max_depth, int(leaf_depth.max()))

    e = edge.index_select(1, base)
    n, q = e[_N1] - 1, e[_Q]
    if cfg.gumbel:
        action = torch.argmax(root_scores(n, q, n == n.max(-1, keepdim=True).values), -1)
        sigma = _completed_q(q, n, prior, raws[base], cfg.gumbel_c_visit, cfg.gumbel_c_scale)
        policy = torch.softmax(root_logits + sigma, -1)
    else:
        action, considered = None, None
        policy = n / n.sum(-1, keepdim=True).clamp_min(1)
    return SearchResult(visits=n, policy=policy, root_value=values[base], raw_value=raws[base],
                        prior=prior, qvalues=torch.where(n > 0, q, 0), action=action, considered=considered,
                        max_depth=max_depth)


# -- the plain reference: one root at a time, Python node objects ---------------------------------

class _Node:
    __slots__ = ("state", "prior", "logits", "raw", "reward", "visits", "value_sum", "children")

    def __init__(self, state, prior: list[float], logits: list[float], raw: float, reward: float):
        self.state, self.prior, self.logits, self.raw, self.reward = state, prior, logits, raw, reward
        self.visits, self.value_sum = 1, raw
        self.children: dict[int, "_Node"] = {}

    @property
    def value(self) -> float:
        return self.value_sum / self.visits


@torch.no_grad()
def search_single(model: SearchModel, obs: torch.Tensor, cfg: SearchConfig, *, explore: bool,
                  prior_override: torch.Tensor | None = None, gumbel_override: torch.Tensor | None = None) -> SearchResult:
    """The same search for ONE root (obs with a leading batch dimension of 1), written like the
    MuZero pseudocode: Python nodes, one ``recurrent`` call of batch 1 per simulation.
    ``prior_override`` / ``gumbel_override`` inject the root noise (so tests can compare with
    the batched search on identical noise)."""
    state, logits, value = model.initial(obs)
    A = logits.shape[-1]
    gamma = float(cfg.discount)
    root_logits = logits[0].double().tolist()
    prior = torch.softmax(logits[0].double(), -1)
    if prior_override is not None:
        prior = prior_override.double().reshape(-1)
    elif explore and not cfg.gumbel and cfg.dirichlet_fraction > 0:
        prior = dirichlet_noise(prior.unsqueeze(0), cfg.dirichlet_alpha, cfg.dirichlet_fraction)[0]
    root = _Node(state, prior.tolist(), root_logits, float(value[0]), 0.0)
    lo, hi = math.inf, -math.inf

    def q_of(node: _Node, a: int) -> float:
        c = node.children[a]
        return c.reward + gamma * c.value

    def puct(node: _Node) -> int:
        best, best_a = -math.inf, 0
        pb_c = cfg.pb_c_init + math.log((node.visits + cfg.pb_c_base + 1) / cfg.pb_c_base)
        for a in range(A):
            c = node.children.get(a)
            n = c.visits if c is not None else 0
            qn = (q_of(node, a) - lo) / (hi - lo) if (c is not None and hi > lo) else 0.0
            score = qn + node.prior[a] * math.sqrt(node.visits) * pb_c / (1 + n)
            if score > best:
                best, best_a = score, a
        return best_a

    def sigma_of(node: _Node, prior_vec: torch.Tensor) -> torch.Tensor:
        n = torch.tensor([[node.children[a].visits if a in node.children else 0 for a in range(A)]], dtype=torch.float64)
        q = torch.tensor([[q_of(node, a) if a in node.children else 0.0 for a in range(A)]], dtype=torch.float64)
        return _completed_q(q, n, prior_vec.reshape(1, -1), torch.tensor([node.raw], dtype=torch.float64),
                            cfg.gumbel_c_visit, cfg.gumbel_c_scale)[0], n[0]

    if cfg.gumbel:
        m = min(int(cfg.gumbel_max_considered), A)
        schedule = considered_visit_sequence(m, cfg.num_simulations)
        if gumbel_override is not None:
            g = gumbel_override.double().reshape(-1)
        else:
            g = gumbel_noise((1, A), torch.float64, torch.device("cpu"))[0] if explore else torch.zeros(A, dtype=torch.float64)
        lg = torch.tensor(root_logits, dtype=torch.float64)
        centered = lg - lg.max()

    def gumbel_interior(node: _Node) -> int:
        sigma, n = sigma_of(node, torch.tensor(node.prior, dtype=torch.float64))
        pi = torch.softmax(torch.tensor(node.logits, dtype=torch.float64) + sigma, -1)
        return int(torch.argmax(pi - n / (1 + n.sum())))

    def gumbel_root(target_visit: int | None) -> int:
        sigma, n = sigma_of(root, torch.tensor(root.prior, dtype=torch.float64))
        target = n.max() if target_visit is None else target_visit
        score = torch.where(n == target, (g + centered + sigma).clamp_min(-1e9), -math.inf)
        return int(torch.argmax(score))

    max_depth = 0
    for s in range(cfg.num_simulations):
        node, path = root, [root]
        while True:
            if cfg.gumbel:
                a = gumbel_root(schedule[s]) if node is root else gumbel_interior(node)
            else:
                a = puct(node)
            if a not in node.children:
                break
            node = node.children[a]
            path.append(node)
        nstate, r, lg_new, v = model.recurrent(node.state, torch.tensor([a]))
        child = _Node(nstate, torch.softmax(lg_new[0].double(), -1).tolist(), lg_new[0].double().tolist(),
                      float(v[0]), float(r[0]))
        node.children[a] = child
        path.append(child)
        max_depth = max(max_depth, len(path) - 1)
        # backup: the leaf already counts its own value; walk up
        ret = child.raw
        lo, hi = min(lo, child.reward + gamma * child.value), max(hi, child.reward + gamma * child.value)
        for i in range(len(path) - 2, -1, -1):
            ret = path[i + 1].reward + gamma * ret
            p = path[i]
            p.value_sum += ret
            p.visits += 1
            qp = p.reward + gamma * p.value
            lo, hi = min(lo, qp), max(hi, qp)

    n = torch.tensor([root.children[a].visits if a in root.children else 0 for a in range(A)], dtype=torch.float64)
    q = torch.tensor([q_of(root, a) if a in root.children else 0.0 for a in range(A)], dtype=torch.float64)
    if cfg.gumbel:
        action = torch.tensor([gumbel_root(None)])
        sigma, _ = sigma_of(root, torch.tensor(root.prior, dtype=torch.float64))
        policy = torch.softmax(torch.tensor(root_logits, dtype=torch.float64) + sigma, -1)
        considered = torch.zeros(A, dtype=torch.bool)
        considered[torch.topk(g + centered, m).indices] = True
        considered = considered.unsqueeze(0)
    else:
        action, considered = None, None
        policy = n / n.sum().clamp_min(1)
    return SearchResult(visits=n.unsqueeze(0), policy=policy.unsqueeze(0), root_value=torch.tensor([root.value], dtype=torch.float64),
                        raw_value=torch.tensor([root.raw], dtype=torch.float64), prior=torch.tensor([root.prior], dtype=torch.float64), qvalues=q.unsqueeze(0),
                        action=action, considered=considered, max_depth=max_depth)
