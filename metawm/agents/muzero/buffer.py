"""MuZero's replay: game histories with search statistics, prioritized sampling, unroll targets.

Storage. One ring per environment stream (``rows``), so every game is contiguous in its row and
"the step after t" is simply t + 1: arrays of shape (rows, row_capacity, ...) hold, per agent
step (Dreamer convention, :mod:`metawm.types`), the observation, the action taken there, the
reward received on arriving there, the episode flags, and the search statistics of the act call
at that step (root visit distribution / improved policy and root value). Positions are absolute
step counters per row (slot = position % row_capacity); every slot also remembers the absolute
first and last position of its episode (the last is unknown, ``OPEN``, while the episode runs).
An episode that stops without an ``is_last`` step (the population changed, or another caller
fed the row) is closed at its last stored step as a truncation.

Sampling (appendix G): a start position t is drawn with probability p_t^alpha / sum p^alpha
among the positions that are in the ring, are not the final observation of their game and, for
a running game, already have the K + n steps their targets need; importance weights
(N P(t))^-beta are normalized by their batch maximum. New positions get the maximum priority
seen so far; :meth:`update_priorities` writes |v - z| after a training step.

Targets at the unrolled positions t + k (k = 0..K), given the episode's last position E:

* action a_{t+k}: the stored action while t + k < E, else uniform random (pseudocode);
* reward u_{t+k} (k >= 1): the reward on arriving at t + k while t + k <= E, else 0 (absorbing);
* policy: the stored search policy while t + k < E (and at E if the game was truncated), else
  masked out;
* value: an n-step window (``metawm.ops.nstep``) with h = min(n, E - (t + k)) rewards and a
  bootstrap at t + k + h unless that is a terminal state; past E the target is 0 for terminated
  games and masked for truncated ones. The bootstrap values come from the caller (stored root
  values, or recomputed by reanalysis), so this module only returns where to bootstrap.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

OPEN = np.iinfo(np.int64).max // 4


class GameBuffer:
    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: Any, num_actions: int, *,
                 frame_stack: int = 1, unroll_steps: int = 5, n_step: int = 10, alpha: float = 1.0,
                 beta: float = 1.0, seed: int = 0):
        self.capacity = int(capacity)
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.A = int(num_actions)
        self.stack = int(frame_stack)
        self.K = int(unroll_steps)
        self.n = int(n_step)
        self.alpha, self.beta = float(alpha), float(beta)
        self.rng = np.random.default_rng(seed)
        self.rows = 0
        self.C = 0
        self.max_priority = 1.0

    # -- storage -------------------------------------------------------------------------------
    def _fields(self) -> dict[str, tuple[tuple[int, ...], Any, Any]]:
        return {"obs": (self.obs_shape, self.obs_dtype, 0), "action": ((), np.int64, 0),
                "reward": ((), np.float32, 0), "first": ((), bool, False), "last": ((), bool, False),
                "terminal": ((), bool, False), "policy": ((self.A,), np.float32, 0),
                "value": ((), np.float32, 0), "priority": ((), np.float64, 0), "stamp": ((), np.int64, 0),
                "pos": ((), np.int64, -1), "ep_start": ((), np.int64, 0), "ep_end": ((), np.int64, OPEN)}

    def _alloc(self, rows: int) -> None:
        """Allocate (or grow to) ``rows`` streams; the row capacity is fixed by the first call.
        Zero-filled arrays come from ``np.zeros``, whose pages the OS maps lazily, so a large
        image replay costs memory only as it fills."""
        if self.rows == 0:
            self.C = max(self.capacity // rows, self.K + self.n + 2)
        for name, (shape, dtype, fill) in self._fields().items():
            size = (rows - self.rows, self.C, *shape)
            new = np.zeros(size, dtype) if not fill else np.full(size, fill, dtype)
            setattr(self, name, new if self.rows == 0 else np.concatenate([getattr(self, name), new]))
        for name in ("head", "cur_start"):
            new = np.zeros(rows - self.rows, np.int64)
            setattr(self, name, new if self.rows == 0 else np.concatenate([getattr(self, name), new]))
        self.rows = rows

    def add(self, step: Mapping[str, np.ndarray], policy: np.ndarray, value: np.ndarray, stamp: int) -> None:
        """Append one agent step of N streams (rows 0..N-1) with its search statistics."""
        N = len(step["is_first"])
        if N > self.rows:
            self._alloc(N)
        for r in range(N):
            head = int(self.head[r])
            if step["is_first"][r]:
                if head > 0 and not self.last[r, (head - 1) % self.C]:
                    self._close(r, head - 1)               # cut without a final step: truncation
                self.cur_start[r] = head
            j = head % self.C
            self.obs[r, j] = step["obs"][r]
            self.action[r, j] = int(step["action"][r])
            self.reward[r, j] = float(step["reward"][r])
            self.first[r, j] = bool(step["is_first"][r])
            self.last[r, j] = bool(step["is_last"][r])
            self.terminal[r, j] = bool(step["is_terminal"][r])
            self.policy[r, j] = policy[r]
            self.value[r, j] = value[r]
            self.priority[r, j] = self.max_priority
            self.stamp[r, j] = stamp
            self.pos[r, j] = head
            self.ep_start[r, j] = self.cur_start[r]
            self.ep_end[r, j] = OPEN
            self.head[r] = head + 1
            if step["is_last"][r]:
                self._close(r, head)

    def _close(self, r: int, end: int) -> None:
        """Mark the episode of row ``r`` ending at absolute position ``end``."""
        lo = max(int(self.cur_start[r]), end - self.C + 1)
        slots = np.arange(lo, end + 1) % self.C
        self.ep_end[r, slots] = end
        self.last[r, end % self.C] = True

    def __len__(self) -> int:
        return int(np.minimum(self.head, self.C).sum()) if self.rows else 0

    def episodes(self) -> int:
        return int((self.last & (self.pos >= 0)).sum()) if self.rows else 0

    # -- sampling ------------------------------------------------------------------------------
    def _sampleable(self) -> np.ndarray:
        head = self.head[:, None]
        running = self.ep_end == OPEN
        return (self.pos >= 0) & (self.pos < self.ep_end) & (~running | (self.pos + self.K + self.n <= head - 1))

    def num_sampleable(self) -> int:
        return int(self._sampleable().sum()) if self.rows else 0

    def stacked_obs(self, r: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Observations at absolute positions ``p`` of rows ``r`` (any equal shapes) with the
        ``frame_stack`` - 1 previous frames of the same episode (the first frame repeated at the
        start), oldest first: vectors concatenated, images stacked on the channel axis."""
        start = np.maximum(self.ep_start[r, p % self.C], self.head[r] - self.C)
        frames = []
        for s in range(self.stack - 1, -1, -1):
            q = np.maximum(p - s, start)
            frames.append(self.obs[r, q % self.C])
        # vectors: (.., D * stack); images: (.., H, W, C * stack)
        return frames[0] if self.stack == 1 else np.concatenate(frames, axis=-1)

    def sample(self, batch_size: int, now: int = 0, offpolicy_n: Any = None) -> dict[str, np.ndarray] | None:
        """Draw ``batch_size`` start positions and build their unroll targets (module docstring).

        ``offpolicy_n`` (a function of the age in env steps -> horizon n, vectorized) implements
        EfficientZero's off-policy correction; None keeps n. Returns numpy arrays, or None while
        nothing is sampleable.
        """
        if self.rows == 0:
            return None
        ok = self._sampleable()
        total = int(ok.sum())
        if total == 0:
            return None
        pri = np.where(ok, self.priority, 0.0) ** self.alpha
        prob = (pri / pri.sum()).ravel()
        flat = self.rng.choice(prob.size, size=batch_size, p=prob)
        weight = (total * prob[flat]) ** (-self.beta)
        weight = weight / weight.max()
        r, j = np.divmod(flat, self.C)
        t = self.pos[r, j]
        K, n = self.K, self.n

        end = self.ep_end[r, j]
        closed = end != OPEN
        last_avail = np.where(closed, end, self.head[r] - 1)
        term_end = closed & self.terminal[r, np.where(closed, end, 0) % self.C]

        k = np.arange(K + 1)
        pk = t[:, None] + k[None, :]                              # (B, K+1)
        rr = r[:, None].repeat(K + 1, 1)
        inside = pk <= last_avail[:, None]
        pk_c = np.minimum(pk, last_avail[:, None])

        # actions a_{t..t+K-1}
        act = self.action[rr[:, :K], pk_c[:, :K] % self.C]
        random_act = self.rng.integers(self.A, size=act.shape)
        act = np.where(pk[:, :K] < last_avail[:, None], act, random_act)
        # rewards u_{t+1..t+K}
        reward = np.where(inside[:, 1:], self.reward[rr[:, 1:], pk_c[:, 1:] % self.C], 0.0).astype(np.float32)
        # policies
        at_end_ok = (pk == last_avail[:, None]) & ~term_end[:, None]
        policy_mask = (pk < last_avail[:, None]) | at_end_ok
        policy = self.policy[rr, pk_c % self.C]
        policy = np.where(policy_mask[..., None], policy, 1.0 / self.A).astype(np.float32)

        # n-step windows
        age = now - self.stamp[rr, pk_c % self.C]
        n_eff = np.full(pk.shape, n, np.int64) if offpolicy_n is None else np.asarray(offpolicy_n(age), np.int64)
        horizon = np.clip(np.minimum(n_eff, last_avail[:, None] - pk), 0, n)
        i = np.arange(n)
        win = pk[..., None] + 1 + i                               # (B, K+1, n)
        win_c = np.minimum(win, last_avail[:, None, None])
        win_r = self.reward[rr[..., None].repeat(n, -1), win_c % self.C]
        win_r = np.where(i < horizon[..., None], win_r, 0.0).astype(np.float32)
        boot_pos = pk_c + horizon
        boot_is_terminal = (boot_pos == last_avail[:, None]) & term_end[:, None]
        boot_mask = inside & ~boot_is_terminal
        value_mask = inside | term_end[:, None]                   # past a terminal: target 0

        cons_mask = inside[:, 1:]
        return {
            "rows": r, "pos": t, "slot": j, "weight": weight.astype(np.float32),
            "actions": act.astype(np.int64), "target_reward": reward, "target_policy": policy,
            "policy_mask": policy_mask.astype(np.float32), "value_mask": value_mask.astype(np.float32),
            "window_reward": win_r, "horizon": horizon, "boot_rows": rr, "boot_pos": boot_pos,
            "boot_mask": boot_mask.astype(np.float32), "stored_boot_value": self.value[rr, boot_pos % self.C],
            "unroll_pos": pk_c, "inside": inside, "consistency_mask": cons_mask.astype(np.float32),
        }

    def update_priorities(self, rows: np.ndarray, slots: np.ndarray, pos: np.ndarray, priority: np.ndarray) -> None:
        """Write new priorities, skipping slots overwritten since the batch was drawn."""
        same = self.pos[rows, slots] == pos
        p = np.asarray(priority, np.float64) + 1e-6
        self.priority[rows[same], slots[same]] = p[same]
        if p.size:
            self.max_priority = max(self.max_priority, float(p.max()))

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly; only the slots written so far are stored."""
        out = {"rows": self.rows, "C": self.C, "max_priority": self.max_priority,
               "rng": self.rng.bit_generator.state}
        if self.rows:
            used = int(min(self.C, self.head.max()))
            out.update({k: getattr(self, k)[:, :used].copy() for k in self._fields()})
            out.update(head=self.head.copy(), cur_start=self.cur_start.copy())
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rows, self.C, self.max_priority = 0, 0, float(state["max_priority"])
        self.rng.bit_generator.state = state["rng"]
        if int(state["rows"]):
            capacity = self.capacity
            self.capacity = int(state["C"]) * int(state["rows"])
            self._alloc(int(state["rows"]))
            self.capacity = capacity
            self.C = int(state["C"])
            for k in self._fields():
                used = np.asarray(state[k]).shape[1]
                getattr(self, k)[:, :used] = state[k]
            self.head, self.cur_start = np.array(state["head"]), np.array(state["cur_start"])

    def rng_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state
