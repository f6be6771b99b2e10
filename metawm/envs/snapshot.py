"""Capture an environment mid-episode and restore it so that it continues bit-identically.

The training loop checkpoints its environments with :func:`capture` and, after a requeue, builds a
fresh environment of the same spec (``make_env(spec)``), resets it once and hands it to
:func:`restore`; stepping the restored environment with the same actions then gives the same
observations, rewards and flags as the original would have.

Why not ``pickle.dumps(env)``: MuJoCo and ALE environments are ``EzPickle`` objects, which pickle
their *constructor arguments* and come back freshly built (checked here: an unpickled HalfCheetah or
Atari env diverges at once). So the state is taken apart layer by layer, outermost wrapper first:

* **Python state of every layer** (each wrapper and the base env): the attributes whose values are
  plain data (numbers, strings, numpy arrays, numpy Generators, and lists/tuples/dicts/deques of
  those), e.g. ``TimeLimit._elapsed_steps``, a frame buffer, the base env's ``np_random``,
  Meta-World's ``curr_path_length``/``_prev_obs``/``_last_rand_vec``, CartPole's ``state``; plus the
  RNG of every space a layer owns (``action_space.sample()`` continues identically). Handles such as
  ``model``/``data``/``ale``/renderers are skipped: they are rebuilt by ``make_env`` and their
  content is restored by the backend handler below. Everything is pickled in one go, so objects
  shared between layers stay shared.
* **Backend state**:

  - ``mujoco`` (any ``gymnasium.envs.mujoco.MujocoEnv``: HalfCheetah, Meta-World):
    ``mj_getState(..., mjSTATE_INTEGRATION)`` = time, qpos, qvel, act, plugin state, ctrl, applied
    forces, mocap poses, eq_active, userdata and the solver warm start, i.e. everything ``mj_step``
    reads; restored with ``mj_setState``, ``mj_forward`` (derived quantities) and ``mj_setState``
    again (``mj_forward`` rewrites the warm start, which shifts later steps in the last bits). Model
    fields that an env edits in ``reset`` (Meta-World moves a few bodies per task) are *not*
    captured: they are the same in the fresh env because its task is the same and Meta-World's
    reset is deterministic for a fixed task.
  - ``ale`` (``ale_py.env.AtariEnv``): ``ale.cloneState(include_rng=True)``, which carries the
    emulator, the frame counters (so the 108k-frame limit) and the sticky-action RNG.
  - ``python`` (a pure-Python base env: CartPole, point navigation, gridworld): nothing beyond the
    Python state.

If the base env is of an unknown kind *and* holds attributes that are not plain data, its state
cannot be known to be complete: :func:`capture` then returns a marker with ``exact=False`` and
:func:`restore` warns loudly and returns the env as the caller reset it (a fresh episode). None of
metawm's suites hits this case; ``tests/test_envs.py`` checks the round trip for each backend.
"""

from __future__ import annotations

import collections
import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

FORMAT = "metawm.snapshot/1"
_MAX_DEPTH = 6
_ATOMS = (type(None), bool, int, float, complex, str, bytes, np.generic, np.ndarray,
          np.random.Generator, np.random.BitGenerator, np.random.RandomState)


def capture(env: gym.Env) -> dict:
    """Everything needed to continue ``env`` exactly, as a picklable dict (see module docstring)."""
    layers = _layers(env)
    base = layers[-1]
    backend = _backend(base)
    types = [_qualname(layer) for layer in layers]
    if backend is None:
        return {"format": FORMAT, "exact": False, "backend": "unknown", "types": types,
                "reason": f"{types[-1]} holds non-data attributes {_skipped(base)}"}
    states = [_python_state(layer) for layer in layers]
    payload = {"layers": states, "backend": _BACKENDS[backend][0](base)}
    return {"format": FORMAT, "exact": True, "backend": backend, "types": types,
            "payload": pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)}


def restore(env: gym.Env, state: dict) -> gym.Env:
    """Put ``state`` (from :func:`capture`) into ``env``, a fresh env of the same spec that was
    reset once, and return the env to continue with (here always ``env`` itself, mutated)."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not an environment snapshot of format {FORMAT!r}")
    layers = _layers(env)
    types = [_qualname(layer) for layer in layers]
    if types != list(state["types"]):
        raise ValueError(f"snapshot of env {state['types']} cannot be restored into {types}")
    if not state["exact"]:
        warnings.warn(f"environment snapshot is not exact ({state.get('reason')}); the env continues "
                      "from a fresh reset instead of mid-episode", RuntimeWarning, stacklevel=2)
        return env
    payload = pickle.loads(state["payload"])
    for layer, layer_state in zip(layers, payload["layers"]):
        _set_python_state(layer, layer_state)
    _BACKENDS[state["backend"]][1](layers[-1], payload["backend"])
    return env


# -- layers and their Python state ------------------------------------------------------------

def _layers(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_data(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _ATOMS):
        return not (isinstance(value, np.ndarray) and value.dtype == object)
    if depth >= _MAX_DEPTH:
        return False
    if isinstance(value, (list, tuple, set, frozenset, collections.deque)):
        return all(_is_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_is_data(k, depth + 1) and _is_data(v, depth + 1) for k, v in value.items())
    return False


def _python_state(layer: Any) -> dict[str, Any]:
    attrs, space_rngs = {}, {}
    for key, value in vars(layer).items():
        if key == "env":
            continue
        if isinstance(value, gym.spaces.Space):
            space_rngs[key] = value._np_random
        elif _is_data(value):
            attrs[key] = value
    return {"attrs": attrs, "space_rngs": space_rngs}


def _set_python_state(layer: Any, state: dict[str, Any]) -> None:
    vars(layer).update(state["attrs"])
    for key, rng in state["space_rngs"].items():
        space = vars(layer).get(key)
        if isinstance(space, gym.spaces.Space):
            space._np_random = rng


def _skipped(layer: Any) -> list[str]:
    return sorted(k for k, v in vars(layer).items()
                  if k != "env" and not isinstance(v, gym.spaces.Space) and not _is_data(v))


# -- backends ---------------------------------------------------------------------------------

def _backend(base: gym.Env) -> str | None:
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    if isinstance(base, MujocoEnv):
        return "mujoco"
    try:
        from ale_py.env import AtariEnv
    except ImportError:  # pragma: no cover - ale-py is a dependency
        AtariEnv = ()
    if AtariEnv and isinstance(base, AtariEnv):
        return "ale"
    return "python" if not _skipped(base) else None


def _mujoco_capture(base: Any) -> dict[str, Any]:
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    buf = np.empty(mujoco.mj_stateSize(base.model, spec), dtype=np.float64)
    mujoco.mj_getState(base.model, base.data, buf, spec)
    return {"state": buf, "nq": int(base.model.nq), "nv": int(base.model.nv)}


def _mujoco_restore(base: Any, state: dict[str, Any]) -> None:
    import mujoco

    if (state["nq"], state["nv"]) != (base.model.nq, base.model.nv):
        raise ValueError(f"MuJoCo snapshot of a model with nq={state['nq']}, nv={state['nv']} does not "
                         f"fit a model with nq={base.model.nq}, nv={base.model.nv}")
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(base.model, base.data, state["state"], spec)
    # Recompute derived quantities (positions, contacts, sensors) for anything that reads them
    # before the next step, e.g. render. mj_forward also overwrites the solver warm start, which
    # changes later steps in the last bits (seen with Meta-World), so the state is set once more.
    mujoco.mj_forward(base.model, base.data)
    mujoco.mj_setState(base.model, base.data, state["state"], spec)


def _ale_capture(base: Any) -> Any:
    return base.ale.cloneState(include_rng=True)


def _ale_restore(base: Any, state: Any) -> None:
    base.ale.restoreState(state)


_BACKENDS = {
    "mujoco": (_mujoco_capture, _mujoco_restore),
    "ale": (_ale_capture, _ale_restore),
    "python": (lambda base: None, lambda base, state: None),
}
