"""DQN: replay memory, epsilon schedule, target updates, smoke, resume, pixels, bad env ids."""

import json
import math

import pytest
import torch

import main
from tests.conftest import CONFIGS, assert_same_tensors, load, train
from utils.errors import UserError
from utils.replay_memory import ReplayMemory

DQN = CONFIGS / "dqn_exp_0.json"
TINY = [
    "total_steps=400",
    "learning_starts=100",
    "validate_every=200",
    "eval_episodes=2",
    "solve_episodes=2",
    "buffer_size=1000",
    "hidden=[16]",
]


def agent(exps, *overrides):
    config, cls = main.load_config(str(DQN), [f"experiments_dir={exps}", "exp_name=unit", *overrides])
    return cls(config)


def test_replay_memory_wraps_around_and_keeps_dtypes():
    memory = ReplayMemory(5, (3,))
    for i in range(7):
        memory.push([i, i, i], action=i % 2, reward=float(i), next_obs=[i + 1] * 3, done=i == 6)
    assert len(memory) == 5 and memory.pos == 2
    # slots 0 and 1 were overwritten by transitions 5 and 6; 2..4 still hold 2..4
    assert memory.rewards.tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    assert memory.dones.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    obs, actions, rewards, next_obs, dones = memory.sample(32)
    assert obs.shape == (32, 3) and next_obs.shape == (32, 3) and actions.shape == rewards.shape == (32,)
    assert obs.dtype == torch.float32 and actions.dtype == torch.long and dones.dtype == torch.float32
    assert set(rewards.tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}
    assert torch.equal(next_obs, obs + 1)  # each sample keeps its own transition together


def test_replay_memory_state_round_trip():
    memory = ReplayMemory(4, (2,), torch.float16)
    for i in range(3):
        memory.push([i, i], 0, 1.0, [i, i], False)
    other = ReplayMemory(4, (2,), torch.float16)
    other.load_state_dict(memory.state_dict())
    assert len(other) == 3 and other.pos == 3 and torch.equal(other.obs, memory.obs)
    assert other.obs.dtype == torch.float16
    with pytest.raises(ValueError, match="empty"):
        ReplayMemory(2, (1,)).sample(1)


@pytest.mark.parametrize("schedule", ["linear", "exponential"])
def test_epsilon_schedule_endpoints(exps, schedule):
    a = agent(exps, f"eps_schedule={schedule}", "eps_start=1.0", "eps_end=0.05", "eps_decay_steps=1000")
    try:
        assert a.epsilon(0) == pytest.approx(1.0)
        assert a.epsilon(1000) == pytest.approx(0.05)
        assert a.epsilon(10**6) == pytest.approx(0.05)
        values = [a.epsilon(s) for s in range(0, 1001, 50)]
        assert all(x > y for x, y in zip(values, values[1:], strict=False))  # strictly decreasing
        assert 0.05 < a.epsilon(500) < 1.0
        if schedule == "exponential":
            assert a.epsilon(500) == pytest.approx(math.sqrt(0.05))  # geometric midpoint
    finally:
        a.finalize()


def test_hard_and_soft_target_updates(exps):
    a = agent(exps, "target_update=hard", "target_update_every=10", "learning_starts=0", "batch_size=8")
    try:
        for step in range(1, 10):
            a.train_step(step)
        q, target = a.q.state_dict(), a.target.state_dict()
        assert not torch.equal(q["net.0.weight"], target["net.0.weight"])  # learning moved q, not the target
        a.train_step(10)
        assert torch.equal(a.q.state_dict()["net.0.weight"], a.target.state_dict()["net.0.weight"])
        before = {k: v.clone() for k, v in a.target.state_dict().items()}
        with torch.no_grad():
            for p in a.q.parameters():
                p.add_(1.0)
        a.soft_update(0.25)
        for k, v in a.target.state_dict().items():
            expected = before[k] + 0.25 * (a.q.state_dict()[k] - before[k])
            assert torch.allclose(v, expected)
    finally:
        a.finalize()


def test_smoke_run_writes_dqn_summary(exps):
    train(DQN, exps, "exp_name=smoke", *TINY)
    summary = json.loads((exps / "smoke" / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["status"] == "finished"
    assert summary["solved"] is False and summary["solved_at_step"] is None
    assert summary["final_eval_mean_return"] > 0 and summary["episodes"] > 0
    header = (exps / "smoke" / "metrics.csv").read_text().splitlines()[0]
    for column in ("eval/mean_return", "train/mean_return_100", "train/epsilon", "train/loss"):
        assert column in header
    state = load(exps / "smoke" / "checkpoints" / "last.pth")
    assert set(state["models"]) == {"q", "target"} and "memory" not in state["extra"]


def test_same_seed_same_learning_curve(exps):
    train(DQN, exps, "exp_name=a", *TINY)
    train(DQN, exps, "exp_name=b", *TINY)
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("a", "b"))
    assert_same_tensors(a["models"], b["models"], "models")
    assert (exps / "a" / "metrics.csv").read_text() == (exps / "b" / "metrics.csv").read_text()


def test_resume_continues_counters_and_replay(exps):
    train(DQN, exps, "exp_name=r", *TINY[:-1], "total_steps=200", "checkpoint_replay=true", "hidden=[16]")
    first = load(exps / "r" / "checkpoints" / "last.pth")
    assert first["global_step"] == 200 and len(first["extra"]["memory"]["actions"]) == 200
    train(DQN, exps, "exp_name=r", *TINY, "checkpoint_replay=true")
    second = load(exps / "r" / "checkpoints" / "last.pth")
    assert second["global_step"] == 400 and second["epoch"] == 2
    assert second["extra"]["episodes"] > first["extra"]["episodes"]
    assert len(second["extra"]["memory"]["actions"]) == 400
    rows = (exps / "r" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3
    summary = (exps / "r" / "summary.json").read_bytes()
    train(DQN, exps, "exp_name=r", *TINY, "checkpoint_replay=true")  # done: says how to go on, rewrites nothing
    log = (exps / "r" / "logs" / "run.log").read_text()
    assert "already trained (2 epochs, step 400): raise total_steps to continue" in log
    assert (exps / "r" / "summary.json").read_bytes() == summary


def test_test_mode_evaluates_best(exps):
    train(DQN, exps, "exp_name=t", *TINY)
    train(DQN, exps, "exp_name=t", *TINY, "mode=test")
    summary = json.loads((exps / "t" / "summary.json").read_text())
    assert summary["test/mean_return"] > 0 and summary["tested_checkpoint"].endswith("best.pth")


def test_pixels_mode_smoke(exps):
    train(
        DQN,
        exps,
        "exp_name=px",
        "observation=pixels",
        "total_steps=60",
        "learning_starts=30",
        "validate_every=60",
        "eval_episodes=1",
        "solve_episodes=1",
        "buffer_size=100",
        "batch_size=8",
    )
    state = load(exps / "px" / "checkpoints" / "last.pth")
    assert "features.0.weight" in state["models"]["q"] and state["global_step"] == 60


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env_id=CartPole-v9"], "unknown environment 'CartPole-v9' (did you mean 'CartPole-v1'?)"),
        (["env_id=Pendulum-v1"], "Box action space; DQN needs a Discrete one"),
        (["hidden=[0]"], "key 'hidden': expected a non-empty list of integers in 1..65536"),
        (["eps_schedule=exponential", "eps_end=0"], "exponential schedule needs eps_end > 0"),
        (["max_epoch=3"], "unknown key 'max_epoch'"),
    ],
)
def test_bad_env_or_config_is_a_user_error(exps, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        train(DQN, exps, *TINY, *overrides)


@pytest.mark.slow
def test_default_config_learns_cartpole(exps):
    """The shipped config, 10000 steps at most: the greedy policy must do far better than chance (~22)."""
    train(DQN, exps, "exp_name=learn", "total_steps=10000")
    summary = json.loads((exps / "learn" / "summary.json").read_text())
    assert summary["best"]["value"] >= 195, summary  # CartPole-v0's own "solved" bar


def test_pixels_without_pygame_names_it(exps, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pygame", None)  # as if it were not installed
    with pytest.raises(UserError, match="pip install pygame"):
        train(DQN, exps, "observation=pixels", *TINY)
