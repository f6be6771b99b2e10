"""The environment adapters: conventions, the papers' dynamics and rewards, exact snapshots."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

from metawm.envs import snapshot
from metawm.envs.atari import ATARI_100K, available_games, make_atari, rom_id
from metawm.envs.cartpole import make_cartpole
from metawm.envs.cheetah import make_cheetah
from metawm.envs.conventions import check_spaces, check_step
from metawm.envs.gridworld import GridNaviBAMDP, varibad_goals
from metawm.envs.point_nav import PointNavEnv


pytestmark = pytest.mark.usefixtures("metaworld_cache")


def _reach_env():
    from metawm.envs.meta_world import goals, make_metaworld

    return make_metaworld("reach-v3", goals("reach-v3", 0)[3])


def _actions(env: gym.Env, n: int, seed: int) -> list:
    space = env.action_space
    space.seed(seed)
    return [space.sample() for _ in range(n)]


# -- CartPole ------------------------------------------------------------------------------------

def test_default_cartpole_is_cartpole_v1():
    ours, ref = make_cartpole(), gym.make("CartPole-v1")
    assert ours._max_episode_steps == ref.spec.max_episode_steps == 500
    o1, _ = ours.reset(seed=3)
    o2, _ = ref.reset(seed=3)
    np.testing.assert_array_equal(o1, o2)
    for a in _actions(ref, 200, 0):
        s1, s2 = ours.step(a), ref.step(a)
        np.testing.assert_array_equal(s1[0], s2[0])
        assert s1[1:4] == s2[1:4]
        if s1[2] or s1[3]:
            break


def test_cartpole_physics_change_the_dynamics():
    base, heavy = make_cartpole(), make_cartpole(pole_length=1.0, pole_mass=0.5, gravity=15.0)
    assert heavy.unwrapped.total_mass == pytest.approx(1.5) and heavy.unwrapped.polemass_length == pytest.approx(0.5)
    base.reset(seed=0)
    heavy.reset(seed=0)
    assert not np.array_equal(base.step(1)[0], heavy.step(1)[0])


# -- point navigation ----------------------------------------------------------------------------

def test_point_nav_follows_maml():
    env = PointNavEnv(PointNavEnv.goal_on_circle(90.0, 0.5))
    check_spaces(env)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0, 0])
    obs, reward, terminated, truncated, _ = env.step(np.array([0.0, 5.0], np.float32))  # clipped to 0.1 per step
    np.testing.assert_allclose(obs, [0.0, 0.1], atol=1e-7)
    assert reward == pytest.approx(-0.4)
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(np.array([0.0, 1.0], np.float32))
    assert not terminated
    obs, reward, terminated, truncated, _ = env.step(np.array([0.0, 1.0], np.float32))
    assert terminated and not truncated and reward == pytest.approx(0.0, abs=1e-9)
    env.reset()
    for t in range(100):
        *_, terminated, truncated, _ = env.step(np.array([-1.0, 0.0], np.float32))
    assert truncated and not terminated


# -- VariBAD gridworld ---------------------------------------------------------------------------

def test_gridworld_goal_set_is_varibads():
    goals = varibad_goals()
    assert len(goals) == 21 and (0, 0) not in goals and (1, 1) not in goals and (4, 4) in goals


def test_gridworld_bamdp_resets_position_and_keeps_goal():
    env = GridNaviBAMDP((2, 1))
    check_spaces(env)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0, 0, 0])
    path = [2, 2, 1] + [0] * 12  # right, right, up to the goal, then stay there
    returns, rewards = [], []
    for episode in range(4):
        for t, a in enumerate(path):
            obs, r, terminated, truncated, info = env.step(a)
            rewards.append(r)
            assert info["episode_index"] == episode and not terminated
            if t == 0:  # every episode starts from the start cell: one step right of it
                np.testing.assert_allclose(obs, [1, 0, 1 / 15], rtol=1e-6)
            if t < 14:
                assert tuple(obs[:2]) != (0, 0) and obs[2] == pytest.approx((t + 1) / 15)
                assert not truncated and not info["episode_end"]
        assert info["episode_end"]
        # the 15th move's observation is the cell it reached (with its reward), t / 15 = 1; the
        # next move starts from the start cell again
        np.testing.assert_array_equal(obs, [2, 1, 1])
        returns.append(sum(rewards[-15:]))
    assert truncated and info["episode_returns"] == pytest.approx(returns)
    # the goal is the same cell in all four episodes: -0.1, -0.1, then +1 for the 13 steps on it
    assert returns == pytest.approx([-0.2 + 13.0] * 4)
    with pytest.raises(RuntimeError):
        env.step(0)


def test_gridworld_walls_and_reward():
    env = GridNaviBAMDP((4, 4), time_feature=False)
    obs, _ = env.reset()
    assert obs.shape == (2,)
    obs, r, *_ = env.step(4)  # left into the wall
    np.testing.assert_array_equal(obs, [0, 0])
    assert r == pytest.approx(-0.1)


# -- HalfCheetah ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task", [{"goal_velocity": 1.5}, {"direction": -1.0}])
def test_cheetah_rewards_follow_maml(task):
    env = make_cheetah(**task)
    check_spaces(env)
    obs, _ = env.reset(seed=0)
    check_step(env, obs)
    for t, a in enumerate(_actions(env, 200, 1)):
        obs, r, terminated, truncated, info = env.step(a)
        check_step(env, obs, r, terminated, truncated, info)
        v, ctrl = info["x_velocity"], 0.05 * float(np.sum(np.square(a)))
        expected = -abs(v - 1.5) - ctrl if "goal_velocity" in task else -v - ctrl
        assert r == pytest.approx(expected)
        assert truncated == (t == 199) and not terminated


# -- Atari ---------------------------------------------------------------------------------------

def test_atari_100k_roms_ship_with_ale():
    known = set(available_games())
    assert len(ATARI_100K) == 26 and all(rom_id(g) in known for g in ATARI_100K)
    assert rom_id("MsPacman") == "ms_pacman" and rom_id("UpNDown") == "up_n_down"


@pytest.mark.parametrize("grayscale,size", [(False, 64), (True, 64), (False, 84)])
def test_atari_observations_and_actions(grayscale, size):
    env = make_atari("Breakout", grayscale=grayscale, image_size=size)
    check_spaces(env)
    assert env.observation_space.shape == (size, size, 1 if grayscale else 3)
    assert env.action_space == gym.spaces.Discrete(18)
    obs, info = env.reset(seed=0)
    check_step(env, obs)
    for a in range(18):
        out = env.step(a)
        check_step(env, *out)


def test_atari_frame_limit_and_skip():
    env = make_atari("Pong", max_frames=40)  # 40 frames = 10 agent steps at frame skip 4
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(10)]
    assert flags == [False] * 9 + [True]
    assert env.unwrapped.ale.getEpisodeFrameNumber() == 40


def test_atari_max_pools_the_last_two_frames_then_resizes():
    import cv2
    from ale_py.env import AtariEnv

    raw = AtariEnv("breakout", frameskip=1, repeat_action_probability=0.25, full_action_space=True,
                   max_num_frames_per_episode=108_000)
    ours = make_atari("Breakout")
    raw.reset(seed=0)
    ours.reset(seed=0)
    for a in [1, 3, 3, 4, 0, 1]:  # same seed, same emulator calls: same sticky-action draws
        frames = [raw.step(a)[0] for _ in range(4)]
        expected = cv2.resize(np.maximum(frames[2], frames[3]), (64, 64), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(ours.step(a)[0], expected)


# -- Meta-World ----------------------------------------------------------------------------------

def test_metaworld_adapter_conventions_and_success():
    env = _reach_env()
    check_spaces(env)
    obs, _ = env.reset(seed=0)
    check_step(env, obs)
    assert not np.any(obs[-3:])  # goal hidden (partially observable, as in the ML benchmarks)
    for t, a in enumerate(_actions(env, 500, 0)):
        obs, r, terminated, truncated, info = env.step(a)
        check_step(env, obs, r, terminated, truncated, info, success=True)
        assert truncated == (t == 499) and not terminated


# -- snapshots -----------------------------------------------------------------------------------

def _roll(env, actions, *, reset_on_end=True):
    out = []
    for a in actions:
        obs, r, terminated, truncated, _ = env.step(a)
        out.append((np.array(obs), float(r), bool(terminated), bool(truncated)))
        if (terminated or truncated) and reset_on_end:
            obs, _ = env.reset()  # unseeded: continues the env's own np_random
            out.append((np.array(obs), 0.0, False, False))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b))


SNAPSHOT_CASES = {
    # name: (builder, steps before capture, steps after, expected backend)
    "cartpole": (lambda: make_cartpole(pole_length=0.3), 15, 200, "python"),
    "point_nav": (lambda: PointNavEnv((0.3, -0.2)), 40, 120, "python"),
    "gridworld": (lambda: GridNaviBAMDP((3, 2)), 20, 60, "python"),
    "cheetah": (lambda: make_cheetah(goal_velocity=1.0), 185, 40, "mujoco"),  # crosses the 200-step limit
    "metaworld": (_reach_env, 470, 40, "mujoco"),  # crosses max_path_length = 500
    "atari_rgb": (lambda: make_atari("Breakout"), 60, 60, "ale"),
    "atari_gray": (lambda: make_atari("Pong", grayscale=True, max_frames=400), 60, 60, "ale"),  # crosses the limit
}


@pytest.mark.parametrize("case", list(SNAPSHOT_CASES))
def test_snapshot_round_trip_is_exact(case):
    build, k, n, backend = SNAPSHOT_CASES[case]
    env = build()
    env.reset(seed=1)
    actions = _actions(env, k + n, seed=2)
    _roll(env, actions[:k])
    state = pickle.loads(pickle.dumps(snapshot.capture(env)))  # what a checkpoint does
    assert state["exact"] and state["backend"] == backend
    expected = _roll(env, actions[k:])
    expected_rng = env.unwrapped.np_random.random()
    expected_sample = env.action_space.sample()

    fresh = build()
    fresh.reset(seed=12345)
    restored = snapshot.restore(fresh, state)
    assert _same(_roll(restored, actions[k:]), expected)
    assert restored.unwrapped.np_random.random() == expected_rng
    assert np.array_equal(restored.action_space.sample(), expected_sample)

    # and the check has teeth: without the snapshot the fresh env does something else
    other = build()
    other.reset(seed=12345)
    assert not _same(_roll(other, actions[k:]), expected)


def test_snapshot_refuses_a_different_env():
    state = snapshot.capture(make_cartpole())
    with pytest.raises(ValueError):
        snapshot.restore(PointNavEnv((0.1, 0.1)), state)


class _HandleEnv(gym.Env):
    """An env holding a non-data handle, as an unknown C-backed env would."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        import threading

        self.handle = threading.Lock()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_snapshot_of_unknown_backend_is_marked_and_falls_back_to_reset():
    state = snapshot.capture(_HandleEnv())
    assert state["exact"] is False and "handle" in state["reason"]
    pickle.dumps(state)
    env = _HandleEnv()
    env.reset(seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert snapshot.restore(env, state) is env
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
