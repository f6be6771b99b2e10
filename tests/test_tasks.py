"""The task suites: files, sampling, splits, specs, and an env per suite that follows the conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metawm.envs.conventions import check_spaces, check_step
from metawm.infra.errors import UserError
from metawm.tasks import load_suite, suite_names
from metawm.tasks.base import sample_param
from metawm.types import TaskSpec

SUITES = ["atari_suite", "cartpole_actuator", "cartpole_physics", "cheetah_dir", "cheetah_vel", "gridworld_goals", "metaworld_ml1",
          "metaworld_ml10", "metaworld_ml45", "point_nav"]
METAWORLD = [s for s in SUITES if s.startswith("metaworld")]


pytestmark = pytest.mark.usefixtures("metaworld_cache")


@pytest.fixture
def no_benchmarks(monkeypatch):
    """Building a whole Meta-World benchmark (ML10 ~14 s, ML45 ~49 s) is a bug here."""
    import metaworld

    def refuse(*args, **kwargs):
        raise AssertionError("a Meta-World benchmark object was built")

    for name in ("ML10", "ML45", "ML25", "MT10", "MT50"):
        monkeypatch.setattr(metaworld, name, refuse)


@pytest.fixture
def fake_goals(monkeypatch):
    """Cheap stand-in goals, for tests of sampling rather than of Meta-World's goal generation."""
    from metawm.envs import meta_world as mw

    monkeypatch.setenv("METAWM_CACHE_DIR", "")
    monkeypatch.setattr(mw, "_generate_goals",
                        lambda env_name, seed: np.random.default_rng([seed, len(env_name)]).uniform(size=(50, 3)))
    mw._goals_cached.cache_clear()
    yield
    mw._goals_cached.cache_clear()


def _test_task(family, split: str) -> TaskSpec:
    """One task of ``split``; for Meta-World a fixed cheap one (sampling would generate goals for
    several classes, ~1.2 s each)."""
    if family.name in METAWORLD:
        env = {"train": "reach-v3", "test": family.ranges["test"]["env_name"]}[split]
        env = env["choices"][0] if isinstance(env, dict) else env
        return family.complete(TaskSpec.make(family.name, split, 7, {"env_name": env, "goal_set": split,
                                                                      "task_index": 5}))
    return family.sample(split, 1, np.random.default_rng(0))[0]


# -- suite files -----------------------------------------------------------------------------------

def test_all_suites_are_shipped():
    assert suite_names() == SUITES


def test_unknown_suite_lists_the_suites():
    with pytest.raises(UserError, match="cartpole_physics"):
        load_suite("cartpole")


@pytest.mark.parametrize("name", SUITES)
def test_suite_file_is_documented_and_has_train_and_test(name):
    from metawm import paths

    text = (paths.TASKS / f"{name}.yaml").read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert len(header) >= 5, "the suite file opens with a paragraph saying what varies and why"
    family = load_suite(name)
    assert family.name == name and family.splits == ("train", "test")
    assert set(family.default) <= set(family.param_names)


@pytest.mark.parametrize("name", SUITES)
def test_unknown_split_raises_user_error_listing_splits(name):
    family = load_suite(name)
    with pytest.raises(UserError, match=r"'validation'.*test, train"):
        family.sample("validation", 1, np.random.default_rng(0))


def test_misspelt_parameter_or_option_is_a_user_error():
    with pytest.raises(UserError, match="pole_length"):
        load_suite("cartpole_physics", splits={"train": {"pole_lenght": 0.5}, "test": {}})
    with pytest.raises(UserError, match="image_size"):
        load_suite("atari_suite", imagesize=84)
    with pytest.raises(UserError, match="Pong"):
        load_suite("atari_suite", default={"game": "NotAGame"})
    with pytest.raises(UserError, match="reach-v3"):
        load_suite("metaworld_ml1", env_name="reach-v9")
    with pytest.raises(UserError, match="metaworld_ml1"):
        load_suite("metaworld_ml10", env_name="push-v3")
    with pytest.raises(UserError, match="grid"):
        load_suite("gridworld_goals", default={"goal": [5, 0]})


# -- sampling --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SUITES)
def test_same_seed_same_tasks(name, fake_goals, no_benchmarks):
    family = load_suite(name)
    for split in family.splits:
        a = family.sample(split, 6, np.random.default_rng(123))
        b = family.sample(split, 6, np.random.default_rng(123))
        c = family.sample(split, 6, np.random.default_rng(124))
        assert a == b and a != c
        assert all(s.suite == name and s.split == split for s in a)
        assert [TaskSpec.from_dict(json.loads(s.to_json())) for s in a] == a  # JSON round trip


@pytest.mark.parametrize("name", SUITES)
def test_default_only_gives_the_default_task(name):
    family = load_suite(name, default_only=True)
    specs = family.sample("train", 3, np.random.default_rng(0))
    assert {s.params for s in specs} == {family.default_task().params}
    defaults = family.default_task().params
    for key, value in load_suite(name).default.items():
        assert dict(defaults)[key] == (tuple(value) if isinstance(value, list) else value)


def test_integer_ranges_are_uniform_over_the_integers():
    rng = np.random.default_rng(0)
    draws = [sample_param("i", {"low": 0, "high": 3, "int": True}, rng) for _ in range(4000)]
    counts = np.bincount(draws)
    assert len(counts) == 4 and counts.min() > 900  # the end points are as likely as the others


def _draw(family, split, key, n=300):
    return [s[key] for s in family.sample(split, n, np.random.default_rng(1))]


def test_cartpole_test_ranges_exceed_train_ranges():
    family = load_suite("cartpole_physics")
    assert family.default == {"pole_length": 0.5, "pole_mass": 0.1, "cart_mass": 1.0, "gravity": 9.8}
    assert set(family.ranges["train"]) == set(family.ranges["test"]) == set(family.default)
    for key in family.default:
        train, test = family.ranges["train"][key], family.ranges["test"][key]
        assert test["low"] < train["low"] < train["high"] < test["high"]
        values = np.array(_draw(family, "test", key))
        inside = (values >= train["low"]) & (values <= train["high"])
        assert 0.3 < inside.mean() < 0.8  # test tasks both inside and outside the train range
        assert all(train["low"] <= v <= train["high"] for v in _draw(family, "train", key))


def test_default_cartpole_task_is_cartpole_v1():
    family = load_suite("cartpole_physics", default_only=True)
    env = family.make_env(family.sample("train", 1, np.random.default_rng(0))[0])
    base = env.unwrapped
    assert (base.length, base.masspole, base.masscart, base.gravity, env._max_episode_steps) == (0.5, 0.1, 1.0, 9.8, 500)


def test_cartpole_actuator_flips_and_scales_the_push():
    """cartpole_actuator: tasks differ only in the actuator; with actuator_sign=-1 action 1 pushes the
    cart left, and the cart's acceleration from rest scales with the force. The test split's forces
    extend past the train range at both ends; both polarities are drawn in both splits."""
    family = load_suite("cartpole_actuator")
    assert {k: family.default[k] for k in ("pole_length", "pole_mass", "cart_mass", "gravity")} == \
        {"pole_length": 0.5, "pole_mass": 0.1, "cart_mass": 1.0, "gravity": 9.8}

    def cart_velocity_after_push(force, sign, action):
        env = family.make_env(TaskSpec.make("cartpole_actuator", "test", 0, {"force": force, "actuator_sign": sign}))
        env.reset(seed=0)
        env.unwrapped.state = np.zeros(4)  # at rest, upright: the push alone moves the cart
        return env.step(action)[0][1]

    # One Euler step of CartPole-v1 from rest (Barto et al. 1983, as gymnasium writes it), M = 1.1 kg, m = 0.1 kg:
    # x_acc = F / M * (1 + (m / M) / (4/3 - m / M)), x_dot = tau * x_acc with tau = 0.02 s; F = sign * force * (+-1)
    gain = 0.02 / 1.1 * (1 + (0.1 / 1.1) / (4 / 3 - 0.1 / 1.1))
    assert cart_velocity_after_push(10.0, 1, 1) == pytest.approx(10 * gain, rel=1e-5)
    assert cart_velocity_after_push(10.0, -1, 1) == pytest.approx(-10 * gain, rel=1e-5)
    assert cart_velocity_after_push(25.0, -1, 0) == pytest.approx(25 * gain, rel=1e-5)
    train, test = np.array(_draw(family, "train", "force")), np.array(_draw(family, "test", "force"))
    assert 5.0 <= train.min() and train.max() <= 15.0 and test.min() < 5.0 and test.max() > 15.0
    for split in ("train", "test"):
        assert set(_draw(family, split, "actuator_sign")) == {-1, 1}
    with pytest.raises(UserError, match="actuator_sign must be 1 or -1, got 0.5"):
        family.make_env(TaskSpec.make("cartpole_actuator", "test", 0, {"actuator_sign": 0.5}))
    with pytest.raises(UserError, match="test/0 of suite 'cartpole_actuator': CartPole force must be positive, got -2"):
        family.make_env(TaskSpec.make("cartpole_actuator", "test", 0, {"force": -2.0}))
    # cartpole_physics tasks do not carry the actuator's parameters
    assert "force" not in dict(load_suite("cartpole_physics").sample("train", 1, np.random.default_rng(0))[0].params)


def test_point_nav_test_goals_lie_on_a_held_out_arc():
    family = load_suite("point_nav")
    train, test = _draw(family, "train", "goal_angle"), _draw(family, "test", "goal_angle")
    assert all(0 <= a < 270 for a in train) and all(270 <= a <= 360 for a in test)
    env = family.make_env(family.sample("test", 1, np.random.default_rng(0))[0])
    assert np.linalg.norm(env.unwrapped.goal) == pytest.approx(0.5) and env.unwrapped.goal[1] < 0


def test_gridworld_splits_partition_varibads_goals():
    from metawm.envs.gridworld import varibad_goals

    family = load_suite("gridworld_goals")
    train = {tuple(g) for g in family.ranges["train"]["goal"]["choices"]}
    test = {tuple(g) for g in family.ranges["test"]["goal"]["choices"]}
    assert not train & test and train | test == set(varibad_goals()) and len(test) == 5
    assert set(_draw(family, "test", "goal")) == test
    spec = family.sample("test", 1, np.random.default_rng(0))[0]
    assert family.make_env(spec).unwrapped.goal == spec["goal"]


def test_cheetah_splits():
    vel = load_suite("cheetah_vel")
    assert max(_draw(vel, "train", "goal_velocity")) <= 2.0 < max(_draw(vel, "test", "goal_velocity"))
    direction = load_suite("cheetah_dir")
    assert set(_draw(direction, "train", "direction")) == set(_draw(direction, "test", "direction")) == {-1.0, 1.0}


def test_atari_splits_are_disjoint_atari_100k_games():
    from metawm.envs.atari import ATARI_100K

    family = load_suite("atari_suite")
    train, test = (set(family.ranges[s]["game"]["choices"]) for s in ("train", "test"))
    assert not train & test and train | test == set(ATARI_100K) and len(test) == 5
    small = load_suite("atari_suite", image_size=32, grayscale=True)
    assert small.env_spec.obs_space.shape == (32, 32, 1) and small.env_spec.num_actions == 18


# -- Meta-World --------------------------------------------------------------------------------------

def test_metaworld_class_lists_are_metaworlds():
    from metaworld import env_dict

    for name, table in (("metaworld_ml10", env_dict.ML10_V3), ("metaworld_ml45", env_dict.ML45_V3)):
        family = load_suite(name)
        for split in ("train", "test"):
            assert family.ranges[split]["env_name"]["choices"] == list(table[split])


def test_metaworld_ml1_goals_are_ml1s():
    """Our per-class goals are exactly metaworld.ML1(env, seed)'s train and test tasks."""
    import pickle

    import metaworld

    from metawm.envs.meta_world import goals, goal_seed

    ml1 = metaworld.ML1("reach-v3", seed=0)
    for goal_set, tasks in (("train", ml1.train_tasks), ("test", ml1.test_tasks)):
        expected = np.stack([pickle.loads(t.data)["rand_vec"] for t in tasks])
        np.testing.assert_array_equal(goals("reach-v3", goal_seed(0, goal_set)), expected)


def test_metaworld_spec_pins_the_task(no_benchmarks):
    family = load_suite("metaworld_ml1", env_name="reach-v3")
    spec = family.sample("test", 1, np.random.default_rng(3))[0]
    for key in ("env_name", "goal_set", "task_index", "benchmark_seed", "reward_function_version", "rand_vec"):
        assert spec.get(key) is not None, key
    assert spec["env_name"] == "reach-v3" and spec["goal_set"] == "test" and spec["reward_function_version"] == "v2"
    # a spec read back from JSON rebuilds the very same task
    again = TaskSpec.from_dict(json.loads(spec.to_json()))
    env_a, env_b = family.make_env(spec), family.make_env(again)
    obs_a, _ = env_a.reset(seed=0)
    obs_b, _ = env_b.reset(seed=0)
    np.testing.assert_array_equal(obs_a, obs_b)
    a = env_a.action_space.sample()
    np.testing.assert_array_equal(env_a.step(a)[0], env_b.step(a)[0])
    np.testing.assert_array_equal(env_a.unwrapped._target_pos, np.asarray(spec["rand_vec"])[-3:])


def test_metaworld_ml1_env_name_option():
    family = load_suite("metaworld_ml1", env_name="push-v3", default_only=True)
    assert family.default_task()["env_name"] == "push-v3"
    assert {r["env_name"] for r in family.ranges.values()} == {"push-v3"}


def test_metaworld_train_and_test_goals_differ(fake_goals):
    family = load_suite("metaworld_ml1")
    train = {s["rand_vec"] for s in family.sample("train", 20, np.random.default_rng(0))}
    test = {s["rand_vec"] for s in family.sample("test", 20, np.random.default_rng(0))}
    assert not train & test


@pytest.mark.parametrize("name", ["metaworld_ml10", "metaworld_ml45"])
def test_metaworld_ml10_ml45_split_classes(name, fake_goals, no_benchmarks):
    family = load_suite(name)
    train = {s["env_name"] for s in family.sample("train", 40, np.random.default_rng(0))}
    test = {s["env_name"] for s in family.sample("test", 40, np.random.default_rng(0))}
    assert not train & test and len(test) == 5


# -- every suite builds envs that follow the conventions --------------------------------------------

@pytest.mark.parametrize("name", SUITES)
def test_every_suite_builds_conforming_envs(name, no_benchmarks):
    family = load_suite(name)
    for split in ("train", "test"):
        spec = _test_task(family, split)
        env = family.make_env(spec)
        check_spaces(env, family.env_spec)
        obs, info = env.reset(seed=0)
        check_step(env, obs, info=info)
        env.action_space.seed(0)
        for _ in range(10):
            out = env.step(env.action_space.sample())
            check_step(env, *out, success=family.success_metric)
            if out[2] or out[3]:
                env.reset()


def test_make_env_checks_the_suite():
    family = load_suite("point_nav")
    with pytest.raises(UserError, match="cartpole_physics"):
        family.make_env(TaskSpec.make("cartpole_physics", "train", 0, {}))


@pytest.mark.parametrize("name", SUITES)
def test_max_episode_steps_cuts_any_suite_short(name, no_benchmarks):
    """``task.max_episode_steps=N`` (e.g. the smoke preset) truncates every suite's episodes at N."""
    family = load_suite(name, max_episode_steps=7)
    env = family.make_env(_test_task(family, "train"))
    env.reset(seed=0)
    env.action_space.seed(0)
    for t in range(7):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated:
            return
    assert truncated


def test_observe_params_appends_the_tasks_parameters_scaled_over_the_train_range():
    """task.observe_params=true (the oracle): [-1, 1] at the ends of a train range, log scale for a
    log range, beyond +-1 where the test split extrapolates; per coordinate over a choice list."""
    import math

    suite = load_suite("cartpole_physics", observe_params=True)
    assert suite.env_spec.obs_space.shape == (8,) and load_suite("cartpole_physics").env_spec.obs_space.shape == (4,)
    # train: cart_mass 0.5-2.0 (log), gravity 4.9-14.7, pole_length 0.25-1.0 (log), pole_mass 0.05-0.4 (log)
    spec = TaskSpec.make("cartpole_physics", "test", 0,
                         {"cart_mass": 1.0, "gravity": 14.7, "pole_length": 0.25, "pole_mass": 0.8})
    want = [2 * math.log(2.0) / math.log(4.0) - 1, 1.0, -1.0, 2 * math.log(16.0) / math.log(8.0) - 1]
    np.testing.assert_allclose(suite.encode_params(spec), want, rtol=1e-6)  # [0, 1, -1, 5/3]
    env = suite.make_env(spec)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[4:], want, rtol=1e-6)
    obs2 = env.step(0)[0]
    assert obs2.shape == (8,) and np.allclose(obs2[4:], want) and not np.allclose(obs2[:4], obs[:4])
    check_spaces(env, suite.env_spec)

    grid = load_suite("gridworld_goals", observe_params=True)  # train goals: x in 0..4, y in 0..4
    code = grid.encode_params(TaskSpec.make("gridworld_goals", "test", 0, {"goal": [4, 1]}))
    np.testing.assert_allclose(code, [1.0, -0.5])
    assert grid.env_spec.obs_space.shape == (5,)
    # point_nav: goal_radius is fixed in every split, so only goal_angle (train 0-270) is observed
    nav = load_suite("point_nav", observe_params=True)
    np.testing.assert_allclose(nav.encode_params(TaskSpec.make("point_nav", "test", 0, {"goal_angle": 315.0})),
                               [4 / 3])
    with pytest.raises(UserError, match="parameter 'game' of suite 'atari_suite'.*not numbers"):
        load_suite("atari_suite", observe_params=True)
