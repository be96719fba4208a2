"""DQN: replay memory, epsilon schedule, targets, learning, resume (exact and refilled), AMP, pixels, bad configs."""

import json
import math
import random
import signal

import gymnasium as gym
import pytest
import torch
from PIL import Image

import main
from agents.dqn import DQNAgent
from graphs.models.dqn import QConv
from tests.conftest import CONFIGS, assert_same_tensors, load, train
from tests.test_distributed import torchrun
from utils.errors import RunInterrupted, UserError
from utils.examples.replay_memory import ReplayMemory
from utils.training.seeding import derive_seed

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


def wrapped_memory() -> ReplayMemory:
    """Capacity 5 after 7 pushes: slots hold rewards [5, 6, 2, 3, 4], the oldest (2) at pos 2."""
    memory = ReplayMemory(5, (1,))
    for i in range(7):
        memory.push([i], 0, float(i), [i + 1], False)
    return memory


def test_wrapped_replay_memory_round_trip_into_the_same_capacity_is_slot_for_slot():
    memory = wrapped_memory()
    other = ReplayMemory(5, (1,))
    other.load_state_dict(memory.state_dict())
    assert other.rewards.tolist() == [5.0, 6.0, 2.0, 3.0, 4.0] and other.pos == 2 and len(other) == 5
    torch.manual_seed(0)
    a = memory.sample(16)
    torch.manual_seed(0)
    b = other.sample(16)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # a resume samples what a straight run does
    other.push([7], 0, 7.0, [8], False)
    assert other.rewards.tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]  # the oldest went first


@pytest.mark.parametrize(
    ("capacity", "kept", "next_overwritten"),
    [
        (8, [2.0, 3.0, 4.0, 5.0, 6.0], None),  # larger: oldest first, three free slots after them
        (3, [4.0, 5.0, 6.0], 4.0),  # smaller: the newest three, the next push replaces the oldest of them
    ],
)
def test_wrapped_replay_memory_loads_into_another_capacity_oldest_first(capacity, kept, next_overwritten):
    other = ReplayMemory(capacity, (1,))
    other.load_state_dict(wrapped_memory().state_dict())
    n = len(kept)
    assert len(other) == n and other.pos == n % capacity
    assert other.rewards[:n].tolist() == kept
    assert torch.equal(other.next_obs[:n, 0], other.obs[:n, 0] + 1)  # transitions kept whole
    rewards = other.sample(500)[2]
    assert set(rewards.tolist()) == set(kept)  # every stored one sampleable, never an empty slot's zero
    other.push([7], 0, 7.0, [8], False)
    if next_overwritten is None:
        assert other.rewards[: n + 1].tolist() == [*kept, 7.0] and len(other) == n + 1
    else:
        assert next_overwritten not in other.rewards.tolist() and len(other) == capacity


def test_unwrapped_replay_memory_loads_into_a_larger_capacity():
    memory = ReplayMemory(6, (1,))
    for i in range(4):
        memory.push([i], 0, float(i), [i + 1], False)
    other = ReplayMemory(10, (1,))
    other.load_state_dict(memory.state_dict())
    assert len(other) == 4 and other.pos == 4 and other.rewards[:4].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert set(other.sample(200)[2].tolist()) == {0.0, 1.0, 2.0, 3.0}


def n_step_by_first_obs(memory: ReplayMemory, n: int, gamma: float) -> dict[float, tuple]:
    """Each stored transition's n-step sample, keyed by its obs (a large batch draws every slot)."""
    obs, actions, returns, next_obs, dones, steps = memory.sample_n_step(500, n, gamma)
    assert len({float(o) for o in obs[:, 0]}) == len(memory)
    return {
        float(o): (float(r), float(x), float(d), float(k))
        for o, r, x, d, k in zip(obs[:, 0], returns, next_obs[:, 0], dones, steps, strict=True)
    }


def test_n_step_returns_stop_at_termination_truncation_and_the_newest_transition():
    memory = ReplayMemory(8, (1,))
    for o, r, done in [(0, 1, False), (1, 2, False), (2, 4, True)]:  # an episode that terminates at 3
        memory.push([o], 0, r, [o + 1], done)
    for o, r in [(10, 8), (11, 16)]:  # one truncated at 12: the next slot starts another episode (20)
        memory.push([o], 0, r, [o + 1], False)
    memory.push([20], 0, 32, [0], False)  # the newest: nothing follows it yet, not even the empty slot's zeros
    # obs: (discounted return, next_obs, done, steps), gamma 0.5
    assert n_step_by_first_obs(memory, 3, 0.5) == {
        0: (1 + 0.5 * 2 + 0.25 * 4, 3, 1, 3),
        1: (2 + 0.5 * 4, 3, 1, 2),
        2: (4, 3, 1, 1),
        10: (8 + 0.5 * 16, 12, 0, 2),
        11: (16, 12, 0, 1),
        20: (32, 0, 0, 1),
    }


def test_n_step_returns_follow_the_ring_across_its_end_and_n_1_is_sample():
    memory = ReplayMemory(4, (1,))
    for o in range(6):  # one episode 0 -> 6; slots hold transitions 4, 5, 2, 3 and 5 is the newest
        memory.push([o], 0, float(o), [o + 1], False)
    assert n_step_by_first_obs(memory, 3, 1.0) == {
        2: (2 + 3 + 4, 5, 0, 3),
        3: (3 + 4 + 5, 6, 0, 3),
        4: (4 + 5, 6, 0, 2),
        5: (5, 6, 0, 1),
    }
    torch.manual_seed(0)
    one = memory.sample(16)
    torch.manual_seed(0)
    *same, steps = memory.sample_n_step(16, 1, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(one, same, strict=True)) and torch.equal(steps, torch.ones(16))


def test_replay_memory_samples_on_its_device():
    memory = ReplayMemory(3, (2,), device="cpu")
    memory.push([1, 2], 1, 1.0, [2, 3], True)
    assert all(t.device == memory.device for t in memory.sample(4))
    assert all(t.device.type == "cpu" for t in memory.state_dict().values() if isinstance(t, torch.Tensor))


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


PIXELS = ["observation=pixels", "buffer_size=100", "batch_size=8", "eval_episodes=1", "solve_episodes=1"]


def test_pixels_target_stays_in_eval_mode_and_soft_update_copies_batchnorm_statistics(exps):
    a = agent(exps, *PIXELS, "learning_starts=5", "validate_every=12", "total_steps=12", "target_update=soft")
    try:
        a.train_one_epoch()  # BaseAgent's: puts every registered model in train mode first
        assert a.global_step == 12
        assert not any(m.training for m in a.target.modules())
        assert all(m.training for m in a.q.modules())
        q, target = dict(a.q.named_buffers()), dict(a.target.named_buffers())
        assert q["features.1.running_mean"].abs().sum() > 0  # the online net's statistics did move
        for name, buffer in target.items():
            assert torch.equal(buffer, q[name]), name
    finally:
        a.finalize()


def test_pixels_network_is_built_without_touching_batchnorm_statistics():
    net = QConv((1, 40, 80), 2)
    assert net.head.in_features == 32 * 2 * 7  # the table in QConv's docstring
    assert net(torch.zeros(3, 1, 40, 80)).shape == (3, 2)
    fresh = QConv((1, 40, 80), 2)
    for name, buffer in fresh.named_buffers():
        expected = torch.ones_like(buffer) if name.endswith("running_var") else torch.zeros_like(buffer)
        assert torch.equal(buffer, expected), name


@pytest.mark.parametrize(("double_dqn", "expected"), [(True, [2.0, 3.0]), (False, [3.5, 3.0])])
def test_double_dqn_target_on_a_hand_made_batch(exps, double_dqn, expected):
    """Q(s') = (s'0, s'1) online and (5 s'0, s'1) target, through one ReLU layer of width 2.

    s' = (1, 2, 0, 0): the online net picks action 1; the target values it 2 (Double DQN), its own max is 5.
    Target = r + gamma * (1 - done) * next value, with r = 1 and 3, gamma = 0.5, done = 0 and 1.
    """
    a = agent(exps, "hidden=[2]", "gamma=0.5", f"double_dqn={str(double_dqn).lower()}")
    try:
        pick = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
        with torch.no_grad():
            for net, head in ((a.q, [[1.0, 0.0], [0.0, 1.0]]), (a.target, [[5.0, 0.0], [0.0, 1.0]])):
                net.net[0].weight.copy_(pick)
                net.net[0].bias.zero_()
                net.net[2].weight.copy_(torch.tensor(head))
                net.net[2].bias.zero_()
        next_obs = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
        target = a.td_target(torch.tensor([1.0, 3.0]), next_obs, torch.tensor([0.0, 1.0]))
        assert target.tolist() == expected
    finally:
        a.finalize()


def test_time_limit_truncation_is_stored_not_done_and_termination_done(exps):
    a = agent(exps, "learning_starts=100000", "eps_start=1.0")  # random actions, no updates
    try:
        a.env = gym.make("CartPole-v1", max_episode_steps=15)  # random episodes end both ways around 15 steps
        seen = []
        step_env = a.env.step

        def step(action):
            result = step_env(action)
            seen.append(result)
            return result

        a.env.step = step
        for i in range(300):
            a.train_step(i)
        terminated = [bool(r[2]) for r in seen]
        truncated_only = [bool(r[3]) and not r[2] for r in seen]
        assert sum(terminated) >= 3 and sum(truncated_only) >= 3
        assert a.memory.dones[:300].tolist() == [float(t) for t in terminated]
        for i in (i for i, cut in enumerate(truncated_only) if cut):
            assert torch.equal(a.memory.next_obs[i], torch.as_tensor(seen[i][0]))  # the last state, not the reset's
            assert not torch.equal(a.memory.obs[i + 1], a.memory.next_obs[i])  # a new episode starts after it
        assert a.episodes == sum(terminated) + sum(truncated_only)
    finally:
        a.finalize()


def test_no_update_before_the_memory_holds_learning_starts_transitions(exps):
    a = agent(exps, "learning_starts=50", "batch_size=8")
    try:
        assert "loss" not in a.train_step(500)  # the step count alone (as after a resume) is not enough
        for step in range(501, 549):
            assert "loss" not in a.train_step(step)
        assert len(a.memory) == 49
        assert "loss" in a.train_step(549)
    finally:
        a.finalize()


def test_validate_reports_the_metric_names(exps):
    a = agent(exps, "eval_episodes=2", "solve_episodes=2", "hidden=[8]")
    try:
        a.threshold = 0.0  # every screen passes: the solve evaluation runs too
        # Before an update and an ended episode there is no loss and no mean return to report (no NaN).
        early = {"train/loss", "train/mean_return_100"}
        assert set(a.validate()) == set(a.metric_names()) - early and a.solved_at_step == 0
        a.threshold = 10**6
        assert set(a.validate()) == set(a.metric_names()) - {"eval/solve_mean_return"} - early
    finally:
        a.finalize()


def random_policy_mean_return(seed: int, episodes: int) -> float:
    """CartPole-v1 with uniformly random actions, on the evaluation's own episode seeds."""
    env, rng, total = gym.make("CartPole-v1"), random.Random(0), 0.0
    for i in range(episodes):
        env.reset(seed=derive_seed(seed, "eval", i))
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.randrange(2))
            total, done = total + float(reward), terminated or truncated
    env.close()
    return total / episodes


def test_a_short_run_learns_far_better_than_a_random_policy(exps):
    """1500 steps (a few seconds): the greedy policy's mean return is several times a random policy's (~22)."""
    train(
        DQN,
        exps,
        "exp_name=learn_short",
        "total_steps=1500",
        "validate_every=1500",
        "learning_starts=300",
        "eps_decay_steps=800",
        "hidden=[64,64]",
        "target_update=hard",
        "target_update_every=100",
        "optimizer.args.lr=0.002",
        "n_step=1",  # settings for a few seconds of one-step TD; the shipped 3-step config: the slow test below
        "eval_episodes=10",
        "solve_episodes=10",
        "stop_when_solved=false",
    )
    summary = json.loads((exps / "learn_short" / "summary.json").read_text())
    baseline = random_policy_mean_return(seed=1, episodes=10)
    assert 10 < baseline < 40
    assert summary["final_eval_mean_return"] > 4 * baseline, (summary, baseline)


def test_smoke_run_writes_dqn_summary(exps):
    train(DQN, exps, "exp_name=smoke", *TINY)
    summary = json.loads((exps / "smoke" / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["status"] == "finished"
    assert summary["solved"] is False and summary["solved_at_step"] is None
    assert summary["episodes"] > 0 and summary["refill_steps"] == 0
    header = (exps / "smoke" / "metrics.csv").read_text().splitlines()[0]
    for column in ("eval/mean_return", "train/mean_return_100", "train/epsilon", "train/loss"):
        assert column in header
    state = load(exps / "smoke" / "checkpoints" / "last.pth")
    assert set(state["models"]) == {"q", "target"} and len(state["extra"]["memory"]["actions"]) == 400


def test_loss_is_read_on_the_host_every_log_every_steps_not_at_every_update(exps, monkeypatch):
    """300 updates, log_every=100: a handful of host reads of floating tensors (each one waits for the device)."""
    reads = []

    def counted(original):
        def counting(self, *args, **kwargs):
            if self.is_floating_point():
                reads.append(self.numel())
            return original(self, *args, **kwargs)

        return counting

    for name in ("__float__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    train(DQN, exps, "exp_name=reads", *TINY, "log_every=100")
    assert 0 < len(reads) <= 20, len(reads)  # was 309: one per update (300) and the checks


def test_same_seed_same_learning_curve(exps):
    train(DQN, exps, "exp_name=a", *TINY)
    train(DQN, exps, "exp_name=b", *TINY)
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("a", "b"))
    assert_same_tensors(a["models"], b["models"], "models")
    assert (exps / "a" / "metrics.csv").read_text() == (exps / "b" / "metrics.csv").read_text()


def stop_after(monkeypatch, step: int) -> None:
    """Deliver a stop (as Ctrl-C's handler does) during training step ``step``: saved after it, then exit."""
    train_step = DQNAgent.train_step

    def stopping(self, s):
        if s == step:
            self.signals.received = signal.SIGINT
        return train_step(self, s)

    monkeypatch.setattr(DQNAgent, "train_step", stopping)


@pytest.mark.parametrize("stop", ["epoch_end", "mid_epoch"])
def test_resume_with_replay_is_exact(exps, monkeypatch, stop):
    """Stopped (at an evaluation, or mid-epoch inside an episode) and resumed = a straight run, exactly."""
    args = [*TINY, "checkpoint_replay=true", "torch_threads=1", "target_update=hard", "target_update_every=50"]
    args.append("log_every=1")  # a stop is honoured at the next check, every log_every steps
    train(DQN, exps, "exp_name=straight", *args)
    if stop == "epoch_end":
        train(DQN, exps, "exp_name=r", *args, "total_steps=200")
    else:
        stop_after(monkeypatch, 149)
        with pytest.raises(RunInterrupted):
            train(DQN, exps, "exp_name=r", *args)
        monkeypatch.undo()
    first = load(exps / "r" / "checkpoints" / "last.pth")
    assert first["global_step"] == (200 if stop == "epoch_end" else 150)
    assert len(first["extra"]["memory"]["actions"]) == first["global_step"]
    assert first["extra"]["episode_actions"], "the stop must fall inside an episode for this test to mean anything"
    train(DQN, exps, "exp_name=r", *args)
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("r", "straight"))
    assert a["global_step"] == b["global_step"] == 400 and a["epoch"] == b["epoch"] == 2
    for part in ("models", "optimizers", "extra", "rng"):
        assert_same_tensors(a[part], b[part], part)
    assert a["extra"]["refill_steps"] == 0 and len(a["extra"]["memory"]["actions"]) == 400
    straight_rows = (exps / "straight" / "metrics.csv").read_text().splitlines()
    assert (exps / "r" / "metrics.csv").read_text().splitlines() == straight_rows and len(straight_rows) == 3


@pytest.mark.parametrize(("first_steps", "refill"), [(200, 100), (60, 60)])
def test_resume_without_replay_refills_the_memory_before_updates(exps, first_steps, refill):
    """Without checkpoint_replay, min(steps done, learning_starts) transitions come back first; no step is counted."""
    args = [*TINY, "checkpoint_replay=false", f"validate_every={first_steps}"]
    train(DQN, exps, "exp_name=r", *args, f"total_steps={first_steps}")
    path = exps / "r" / "checkpoints" / "last.pth"
    assert "memory" not in load(path)["extra"]
    a = agent(exps, *args)
    try:
        a.load_checkpoint(path)
        a.train_batches()
        logs = a.train_step(a.global_step)
        assert a.global_step == first_steps and a.refill_steps == refill
        assert len(a.memory) == refill + 1
        assert ("loss" in logs) == (first_steps >= 100)  # learning_starts=100: updates go on at once when due
    finally:
        a.finalize()
    train(DQN, exps, "exp_name=r", *args)
    log = (exps / "r" / "logs" / "run.log").read_text()
    assert f"refilling the replay memory: {refill} transitions" in log
    summary = json.loads((exps / "r" / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["refill_steps"] == refill


def test_resume_into_a_smaller_buffer_size_keeps_the_newest_and_says_so(exps):
    train(DQN, exps, "exp_name=r", *TINY, "total_steps=200", "checkpoint_replay=true")
    path = exps / "r" / "checkpoints" / "last.pth"
    saved = load(path)["extra"]["memory"]
    a = agent(exps, *TINY, "checkpoint_replay=true", "buffer_size=50")
    try:
        a.load_checkpoint(path)
        assert len(a.memory) == 50 and a.memory.pos == 0
        assert torch.equal(a.memory.obs, saved["obs"][150:])  # steps 150..199, oldest first
        log = (exps / "unit" / "logs" / "run.log").read_text()
        assert "replay memory holds 200 transitions, more than buffer_size 50: kept the newest 50" in log
    finally:
        a.finalize()


def test_an_episode_that_cannot_be_replayed_restarts_with_a_warning(exps):
    a = agent(exps, *TINY)
    try:
        a.episode_actions = [0] * 100  # always left: CartPole ends long before 100 steps
        a.start_acting()
        assert a.episode_actions == [] and a.episode_return == 0.0
        assert "the episode restarts" in (exps / "unit" / "logs" / "run.log").read_text()
    finally:
        a.finalize()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_with_zero_or_two_gradient_steps_per_step(exps, monkeypatch, amp):
    """Steps before learning_starts make no optimizer step, later ones two (gradient_steps=2).

    fp16 fails until BaseAgent updates the grad scaler after each optimizer step, not after each train_step.
    """
    calls = []
    optimize = DQNAgent.optimize
    monkeypatch.setattr(DQNAgent, "optimize", lambda self, *a: calls.append(self.global_step) or optimize(self, *a))
    train(DQN, exps, "exp_name=amp", *TINY, f"amp={amp}", "gradient_steps=2", "total_steps=200")
    state = load(exps / "amp" / "checkpoints" / "last.pth")
    assert state["global_step"] == 200 and math.isfinite(state["extra"]["last_loss"])
    assert calls == [s for s in range(100, 200) for _ in range(2)]  # steps 100..199, two each
    assert (state["scaler"] is not None) == (amp == "fp16")


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
        (["max_epoch=3"], "key 'max_epoch' does not apply to DQNAgent"),
        (["monitor=eval/mean_return"], "key 'monitor': expected 'max <metric>' or 'min <metric>'"),
        (["monitor=foo x"], "key 'monitor': expected 'max <metric>' or 'min <metric>'"),
        (["monitor=max eval/mean_retrun"], "no metric 'eval/mean_retrun' .* (did you mean 'eval/mean_return'?)"),
        (["tau=0"], "key 'tau': must be above 0 (0 would freeze the target network), got 0"),
        (["tau=-0.5"], "key 'tau': must be above 0"),
        (["tau=1.5"], "key 'tau': must be at most 1.0"),
    ],
)
def test_bad_env_or_config_is_a_user_error(exps, overrides, message):
    pattern = message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    with pytest.raises(UserError, match=f"^(override '[^']*'|command line|{DQN}): .*{pattern}"):
        train(DQN, exps, *TINY, *overrides)


@pytest.mark.parametrize("seed", [0, 2_200_000, 2**31 - 1])
def test_any_seed_gives_valid_episode_and_evaluation_seeds(exps, seed):
    train(DQN, exps, f"exp_name=s{seed}", *TINY, f"seed={seed}", "total_steps=200")
    summary = json.loads((exps / f"s{seed}" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["episodes"] > 0


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


@pytest.mark.slow
def test_dqn_refuses_several_processes(exps):
    result = torchrun("main.py", str(CONFIGS / "dqn_exp_0.json"), f"experiments_dir={exps}", ok=False)
    assert "DQNAgent runs in one process; run it without --nproc" in result.stderr


def test_pixels_double_dqn_picks_next_actions_with_the_online_nets_running_statistics(exps):
    """The action choice of the TD target is an evaluation, as when acting: BatchNorm's batch statistics would
    make it depend on the rest of the batch, and its forward would move the running statistics."""
    a = agent(exps, *PIXELS, "double_dqn=true")
    try:
        a.q.train()
        before = {k: v.clone() for k, v in a.q.named_buffers()}
        next_obs = torch.rand(4, *a.env.observation_space.shape)
        a.td_target(torch.zeros(4), next_obs, torch.zeros(4))
        assert all(torch.equal(v, before[k]) for k, v in a.q.named_buffers())
        assert a.q.training  # back in train mode for its own update
    finally:
        a.finalize()


def test_no_loss_is_reported_before_the_first_update(exps):
    """Before learning_starts there is no loss: no NaN in metrics.csv or TensorBoard, and one appears after."""
    train(DQN, exps, "exp_name=late", *TINY, "learning_starts=300")
    rows = (exps / "late" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    first, second = (dict(zip(header, row.split(","), strict=True)) for row in rows[1:3])
    assert first["train/loss"] == "" and float(second["train/loss"]) >= 0
    assert "nan" not in (exps / "late" / "metrics.csv").read_text().lower()


def test_predict_plays_greedy_episodes_and_writes_returns_and_a_gif_of_the_first(exps):
    train(DQN, exps, "exp_name=play", *TINY, "total_steps=200")
    train(DQN, exps, "exp_name=play", *TINY, "total_steps=200", "mode=predict", "num_episodes=3")
    out = exps / "play" / "out" / "predict"
    lines = (out / "returns.csv").read_text().splitlines()
    assert lines[0] == "episode,return" and len(lines) == 4
    first = float(lines[1].split(",")[1])
    with Image.open(out / "episode.gif") as gif:
        # CartPole pays 1 per step: the GIF lasts as many frames of 1/50 s as the first episode has steps (PIL
        # merges identical neighbours into one longer frame), rendered at half size.
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert sum(durations) == 20 * first and gif.size == (300, 200)
    with pytest.raises(UserError, match="returns.csv: written by an earlier mode=predict"):
        train(DQN, exps, "exp_name=play", *TINY, "total_steps=200", "mode=predict")
