"""DQN on a gymnasium environment (CartPole-v1 by default), read top to bottom.

Training is counted in environment steps: one "epoch" of BaseAgent's loop is ``validate_every``
steps, after which a greedy evaluation runs on separately seeded environments and a checkpoint
is written. Device, seeding, logging, checkpoints, resume and Ctrl-C come from BaseAgent.

Resume: the checkpoint holds the actions of the episode in progress, which a resume replays from
the episode's seed. With ``checkpoint_replay`` it holds the replay memory too, and the run goes
on exactly as if never stopped; without it, the memory is refilled first (``refill``), and the
run differs from then on.

"Solved" is the environment's own definition: a mean return over 100 consecutive (greedy)
episodes of at least ``reward_threshold`` (475 for CartPole-v1). A short screen of
``eval_episodes`` runs first; only when it passes do the ``solve_episodes`` run.
"""

from __future__ import annotations

import math
import os
import random
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from agents.base import BaseAgent
from graphs.models.dqn import QConv, QMlp
from utils.config import Key, check_monitor, torch_object_key
from utils.errors import UserError
from utils.examples.replay_memory import ReplayMemory
from utils.run import summary
from utils.run.export import ExportInput
from utils.training import distributed
from utils.training.seeding import derive_seed

if TYPE_CHECKING:
    import gymnasium as gym


def make_env(env_id: str, observation: str = "state", render: bool = False) -> gym.Env:
    """datasets.gym_env.make_env, imported on first use: reading DQN's keys (``main.py keys``) imports no gymnasium."""
    from datasets.gym_env import make_env as make

    return make(env_id, observation, render)


# Keys of the supervised loop that mean nothing here (an agent learning by acting has no data loader,
# and its networks act on single observations between updates).
_UNUSED = {
    "data_mode",
    "data_root",
    "num_workers",
    "max_epoch",
    "max_train_batches",
    "max_valid_batches",
    "max_test_batches",
    "sync_batchnorm",
    "scheduler",
    "scheduler_interval",
    "accumulate_grad_batches",
    "ema_decay",
    "compile",
    "channels_last",
}


def _positive_ints(value: list, where: str, source: str) -> None:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in value):
        raise UserError(f"{source}: key '{where}': expected a non-empty list of integers in 1..65536, got {value!r}")


def _above_zero(value: float, where: str, source: str) -> None:
    if value <= 0:
        raise UserError(f"{source}: key '{where}': must be above 0 (0 would freeze the target network), got {value!r}")


# fused: one kernel for the whole Adam update, a third less time per gradient step on a small MLP.
ADAM = {"type": "Adam", "args": {"lr": 0.001, "fused": True}}

# The evaluation metrics validate reports: the screen every time, the 100-episode check when the screen passes.
SCREEN, SOLVE = "eval/mean_return", "eval/solve_mean_return"


class DQNAgent(BaseAgent):
    length_key = "total_steps"
    config_schema = {
        **{k: v for k, v in BaseAgent.config_schema.items() if k not in _UNUSED},
        "env_id": Key("CartPole-v1", str, "gymnasium environment id (Discrete actions)"),
        "observation": Key(
            "state", str, "state: the env's vector; pixels: rendered screen differences", choices=("state", "pixels")
        ),
        "hidden": Key([128, 128], list, "hidden layer widths of the state MLP", check=_positive_ints),
        "total_steps": Key(50_000, int, "environment steps to train for", min=1, max=10**9),
        "learning_starts": Key(
            1_000,
            int,
            "steps before the first update; a resume without the replay memory first refills this many",
            min=0,
        ),
        "train_frequency": Key(1, int, "environment steps per update", min=1),
        "gradient_steps": Key(1, int, "gradient steps per update", min=1),
        "batch_size": Key(64, int, "transitions per gradient step", min=1),
        "buffer_size": Key(50_000, int, "replay memory capacity (transitions)", min=1),
        "gamma": Key(0.99, float, "discount factor", min=0.0, max=1.0),
        "n_step": Key(1, int, "rewards summed per TD target (n-step returns; 1: one-step TD)", min=1, max=100),
        "eps_start": Key(1.0, float, "exploration rate at step 0", min=0.0, max=1.0),
        "eps_end": Key(0.05, float, "exploration rate from eps_decay_steps on", min=0.0, max=1.0),
        "eps_decay_steps": Key(5_000, int, "steps from eps_start to eps_end", min=1),
        "eps_schedule": Key("linear", str, "linear or exponential (geometric)", choices=("linear", "exponential")),
        "target_update": Key(
            "soft", str, "hard: copy every target_update_every steps; soft: Polyak with tau", choices=("hard", "soft")
        ),
        "target_update_every": Key(500, int, "steps between hard target updates", min=1),
        "tau": Key(0.01, float, "soft target update rate, in (0, 1]", max=1.0, check=_above_zero),
        "double_dqn": Key(True, bool, "choose the next action with the online net, value it with the target"),
        "loss": Key("huber", str, "huber (smooth L1) or mse TD loss", choices=("huber", "mse")),
        "grad_clip_norm": Key(10.0, float, "clip the gradient norm", min=1e-12, nullable=True),
        "optimizer": torch_object_key("torch.optim", "optimizer", ADAM, "a torch.optim class and its arguments"),
        "validate_every": Key(500, int, "training steps between greedy evaluations (and checkpoints)", min=1),
        "eval_episodes": Key(10, int, "greedy episodes of the screening evaluation", min=1, max=1000),
        "solve_episodes": Key(
            100, int, "greedy episodes that decide 'solved' (the env's definition: 100)", min=1, max=1000
        ),
        "stop_when_solved": Key(True, bool, "end training at the first evaluation that solves the env"),
        "checkpoint_replay": Key(
            False,
            bool,
            "also save the replay memory in checkpoints (large): the only exact resume; "
            "without it a resume refills learning_starts transitions first",
        ),
        "monitor": Key(
            "max eval/mean_return", str, "'max <metric>' or 'min <metric>' choosing best.pth", check=check_monitor
        ),
        "log_every": Key(500, int, "log the training loss every N steps", min=1),
        "num_episodes": Key(
            10,
            int,
            "mode=predict: greedy episodes to play (returns in out/predict/returns.csv, the first as episode.gif)",
            min=1,
            max=1000,
        ),
        "torch_threads": Key(1, int, "CPU threads for torch ops: 1 is fastest for a small MLP", min=1, nullable=True),
    }

    def __init__(self, config) -> None:
        if distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise UserError("config: key 'agent': DQNAgent runs in one process; run it without --nproc")
        if config.eps_schedule == "exponential" and config.eps_end <= 0:
            raise UserError("config: key 'eps_end': the exponential schedule needs eps_end > 0")
        super().__init__(config)
        self.env = make_env(config.env_id, config.observation)
        obs_shape = self.env.observation_space.shape
        num_actions = int(self.env.action_space.n)
        self.threshold = self.env.spec.reward_threshold if self.env.spec else None

        def q_network() -> torch.nn.Module:
            if config.observation == "pixels":
                return QConv(obs_shape, num_actions)
            return QMlp(obs_shape[0], num_actions, config.hidden)

        self.q = self.prepare_model(q_network(), name="q")
        self.target = self.prepare_model(q_network(), name="target")
        self.target.load_state_dict(self.q.state_dict())
        self.target.eval()
        self.optimizer = self.make_optimizer(self.q.parameters())
        obs_dtype = torch.float16 if config.observation == "pixels" else torch.float32
        need = 2 * config.buffer_size * math.prod(obs_shape) * obs_dtype.itemsize
        if self.device.type == "cuda":  # the replay memory lives on the agent's device
            have, where = torch.cuda.get_device_properties(self.device).total_memory, f"{self.device}'s"
        else:
            have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"
        if need > have // 2:
            raise UserError(
                f"config: key 'buffer_size': {config.buffer_size} transitions of shape {obs_shape} need "
                f"{need / 2**30:.1f} GiB, more than half of {where} {have / 2**30:.1f} GiB"
            )
        self.memory = ReplayMemory(config.buffer_size, obs_shape, obs_dtype, self.device)

        self.episodes = 0
        self.episode_return = 0.0
        self.episode_actions: list[int] = []  # of the episode in progress: a resume replays them
        self.refill_steps = 0  # environment steps that refilled a replay memory lost by a resume
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.last_loss: torch.Tensor | None = None  # on the device: read when validate reports it, not per step
        self.solved_at_step: int | None = None
        self.solved_at_seconds: float | None = None
        self.solve_mean: float | None = None
        self.obs = None  # set by the first reset
        self.eval_envs: list = []

    # ----- schedule -----------------------------------------------------------------------------

    def epsilon(self, step: int) -> float:
        """Exploration rate: eps_start at step 0, eps_end from eps_decay_steps on."""
        c = self.config
        frac = min(step / c.eps_decay_steps, 1.0)
        if c.eps_schedule == "linear":
            return c.eps_start + frac * (c.eps_end - c.eps_start)
        return c.eps_start * (c.eps_end / c.eps_start) ** frac if c.eps_start > 0 else c.eps_end

    # ----- acting and learning: one call per environment step ----------------------------------

    def reset_env(self) -> None:
        """Start training episode number ``episodes`` from its own seed: one seed, one learning curve."""
        self.obs, _ = self.env.reset(seed=derive_seed(self.config.seed, "episode", self.episodes))
        self.episode_return, self.episode_actions = 0.0, []

    def act(self, obs, eps: float) -> int:
        """Epsilon-greedy action for one observation."""
        if random.random() < eps:
            return random.randrange(self.env.action_space.n)
        self.q.eval()  # a single frame must not move BatchNorm's statistics (pixels network)
        with torch.no_grad():
            q = self.q(torch.as_tensor(obs, device=self.device).unsqueeze(0))
        self.q.train()
        return int(q.argmax(dim=1).item())

    def env_step(self, eps: float) -> tuple[int, float, bool]:
        """Act from ``obs`` and store the transition; returns the action, the reward, and whether the episode ended.

        A time-limit truncation is stored as not done, so the TD target still bootstraps from it.
        """
        action = self.act(self.obs, eps)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.memory.push(self.obs, action, reward, next_obs, terminated)
        self.obs = next_obs
        return action, float(reward), terminated or truncated

    def start_acting(self) -> None:
        """The first step in this process: refill a replay memory a resume lost, then go on with the episode."""
        lost = min(self.global_step, self.config.learning_starts, self.memory.capacity) - len(self.memory)
        if lost > 0:
            self.refill(lost)
        self.continue_episode(self.episode_actions)

    def refill(self, count: int) -> None:
        """Act ``count`` steps, not training steps, to refill a replay memory that the checkpoint did not hold.

        The current policy acts, with the exploration rate of the step training resumes at: what
        the lost memory held most recently. Episodes have their own seeds and count nowhere else.
        """
        self.recorder.info(
            f"refilling the replay memory: {count} transitions (the checkpoint has no replay memory: "
            "checkpoint_replay=false); training resumes after them"
        )
        eps, episode = self.epsilon(self.global_step), 0
        self.obs, _ = self.env.reset(seed=derive_seed(self.config.seed, "refill", self.global_step, episode))
        for _ in range(count):
            if self.env_step(eps)[2]:
                episode += 1
                self.obs, _ = self.env.reset(seed=derive_seed(self.config.seed, "refill", self.global_step, episode))
        self.refill_steps += count

    def continue_episode(self, actions: list[int]) -> None:
        """Bring the training env to where ``actions`` left the episode in progress: its seed, then the same actions.

        Exact for environments whose randomness comes from their reset seed (gymnasium's own). The
        replayed steps are not stored again and are no training steps.
        """
        self.reset_env()
        for action in actions:
            self.obs, reward, terminated, truncated, _ = self.env.step(action)
            self.episode_return += float(reward)
            self.episode_actions.append(action)
            if terminated or truncated:
                self.recorder.warning(
                    f"{self.config.env_id}: replaying the interrupted episode's {len(actions)} actions ended it "
                    "early (the environment is not reproducible from its seed); the episode restarts"
                )
                self.reset_env()
                return

    # ----- BaseAgent's loop, counted in environment steps: an "epoch" is validate_every steps, then an evaluation

    def max_epochs(self) -> int:
        return math.ceil(self.config.total_steps / self.config.validate_every)

    def should_validate(self) -> bool:
        return True

    def train_batches(self) -> tuple[range, int]:
        """This epoch's environment steps: up to the next evaluation, or the end of training."""
        # BaseAgent.train_one_epoch has just put every model in train mode; the target only ever
        # evaluates (its BatchNorm statistics come from the online network).
        self.target.eval()
        end = min((self.epoch + 1) * self.config.validate_every, self.config.total_steps)
        return range(self.global_step, end), max(0, end - self.global_step)

    def train_step(self, step: int) -> dict:
        c = self.config
        if self.obs is None:
            self.start_acting()
        eps = self.epsilon(step)
        action, reward, ended = self.env_step(eps)
        self.episode_actions.append(action)
        self.episode_return += reward
        logs = {"epsilon": eps}
        if ended:
            self.episodes += 1
            self.recent_returns.append(self.episode_return)
            self.recorder.scalars(
                {
                    "train/episode_return": self.episode_return,
                    "train/mean_return_100": float(np.mean(self.recent_returns)),
                },
                step,
            )
            self.reset_env()

        # The memory's size counts too: a resume that lost it refills it before updates go on.
        learning = step >= c.learning_starts and len(self.memory) >= min(c.learning_starts, self.memory.capacity)
        if learning and step % c.train_frequency == 0:
            for _ in range(c.gradient_steps):
                loss = self.learn()
            logs["loss"] = self.last_loss = loss  # BaseAgent reads losses on the host every log_every steps
        if c.target_update == "soft":
            if learning:
                self.soft_update(c.tau)
        elif step % c.target_update_every == 0:
            self.target.load_state_dict(self.q.state_dict())
        return logs

    def td_target(
        self, rewards: torch.Tensor, next_obs: torch.Tensor, dones: torch.Tensor, steps: torch.Tensor | int = 1
    ) -> torch.Tensor:
        """r + gamma**steps * (1 - done) * Q_target(s', a'), a' = argmax of the online net (Double DQN) or of the
        target; r sums ``steps`` discounted rewards (n-step returns)."""
        c = self.config
        with torch.no_grad():
            if c.double_dqn:  # the online net picks the action, the target net values it
                self.q.eval()  # BatchNorm's running statistics (pixels), as when acting; they stay untouched
                next_actions = self.q(next_obs).argmax(dim=1, keepdim=True)
                self.q.train()
                next_q = self.target(next_obs).gather(1, next_actions).squeeze(1)
            else:
                next_q = self.target(next_obs).max(dim=1).values
            return rewards + c.gamma**steps * (1.0 - dones) * next_q

    def learn(self) -> torch.Tensor:
        """One gradient step on a uniform batch from replay: n-step TD with a target network."""
        c = self.config
        obs, actions, rewards, next_obs, dones, steps = self.memory.sample_n_step(c.batch_size, c.n_step, c.gamma)
        target = self.td_target(rewards, next_obs, dones, steps)
        with self.autocast():
            q = self.q(obs).gather(1, actions.unsqueeze(1)).squeeze(1).float()
        loss = F.smooth_l1_loss(q, target) if c.loss == "huber" else F.mse_loss(q, target)
        self.optimize(loss, self.optimizer)
        return loss.detach()

    def soft_update(self, tau: float) -> None:
        """Polyak-average the parameters into the target; copy the buffers (BatchNorm's running statistics)."""
        with torch.no_grad():
            for t, p in zip(self.target.parameters(), self.q.parameters(), strict=True):
                t.lerp_(p, tau)
            for t, b in zip(self.target.buffers(), self.q.buffers(), strict=True):
                t.copy_(b)

    # ----- evaluation -----------------------------------------------------------------------------

    def evaluate(self, episodes: int) -> list[float]:
        """Greedy (eps = 0) returns of ``episodes`` episodes, stepped side by side on their own envs.

        Seeds differ from training's, and none of these steps counts as a training step.
        """
        while len(self.eval_envs) < episodes:
            self.eval_envs.append(make_env(self.config.env_id, self.config.observation))
        envs = self.eval_envs[:episodes]
        obs = [env.reset(seed=derive_seed(self.config.seed, "eval", i))[0] for i, env in enumerate(envs)]
        returns, alive = [0.0] * episodes, list(range(episodes))
        self.q.eval()
        with torch.no_grad():
            while alive:
                batch = torch.as_tensor(np.stack([obs[i] for i in alive]), device=self.device)
                actions = self.q(batch).argmax(dim=1).tolist()
                still = []
                for i, action in zip(alive, actions, strict=True):
                    obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                    returns[i] += float(reward)
                    if not (terminated or truncated):
                        still.append(i)
                alive = still
        self.q.train()
        return returns

    def test(self) -> None:
        """mode=test: greedy mean return of best.pth (or ``resume``) over solve_episodes episodes."""
        path = self.load_test_checkpoint()
        returns = self.evaluate(self.config.solve_episodes)
        metrics = {"test/mean_return": float(np.mean(returns)), "test/min_return": float(np.min(returns))}
        summary.record_test(self, metrics, path)

    def _last_loss(self) -> float | None:
        return None if self.last_loss is None else float(self.last_loss)

    def predict(self) -> None:
        """mode=predict: num_episodes greedy episodes of best.pth (or ``resume``), as evaluations play them: their
        returns in out/predict/returns.csv and the first episode, rendered, as out/predict/episode.gif."""
        out = self.run_dir / "out" / "predict"
        taken = [out / f for f in ("returns.csv", "episode.gif") if (out / f).exists()]
        if taken:
            raise UserError(f"{taken[0]}: written by an earlier mode=predict; move or delete it first")
        path = self.load_test_checkpoint()
        returns = self.evaluate(self.config.num_episodes)
        frames, shown = self.play_rendered(derive_seed(self.config.seed, "eval", 0))
        rows = "".join(f"{i},{r}\n" for i, r in enumerate(returns))
        self.recorder.text("predict/returns.csv", "episode,return\n" + rows)
        fps = self.env.metadata.get("render_fps") or 50
        self.recorder.gif("predict/episode.gif", frames, seconds_per_frame=1 / fps)
        self.status = "predicted"
        self.recorder.info(
            f"predict: {len(returns)} greedy episodes of {path}: mean return {np.mean(returns):.1f} "
            f"(min {min(returns):.0f}, max {max(returns):.0f}); the first ({shown:.0f}) as {out / 'episode.gif'}"
        )

    def play_rendered(self, seed: int) -> tuple[list[torch.Tensor], float]:
        """One greedy episode from ``seed``: its screens (uint8 (3, H, W), at half size) and its return."""
        env = make_env(self.config.env_id, self.config.observation, render=True)
        obs, _ = env.reset(seed=seed)
        frames, total, done = [], 0.0, False
        self.q.eval()
        with torch.no_grad():
            while not done:
                screen = torch.from_numpy(np.ascontiguousarray(env.render()[::2, ::2])).permute(2, 0, 1)
                frames.append(screen)
                action = int(self.q(torch.as_tensor(obs, device=self.device).unsqueeze(0)).argmax(dim=1))
                obs, reward, terminated, truncated, _ = env.step(action)
                total, done = total + float(reward), terminated or truncated
        env.close()
        return frames, total

    def export_input(self) -> ExportInput:
        """mode=export: the Q-network, observations (B, *observation shape) -> action values (act: the argmax)."""
        observations = []
        for i in range(5):
            obs, _ = self.env.reset(seed=derive_seed(self.config.seed, "export", i))
            for _ in range(3):  # a few steps in: a pixels observation (a screen difference) is zero at reset
                obs, *_ = self.env.step(i % self.env.action_space.n)
            observations.append(obs)
        observations = np.stack(observations)
        preprocessing = {"env_id": self.config.env_id, "observation": self.config.observation}
        return ExportInput(
            self.unwrap(self.q),
            torch.as_tensor(observations),
            "observation",
            "action_values",
            preprocessing=preprocessing,
        )

    def training_stats(self) -> dict[str, float]:
        """What validate reports about training itself (no evaluation needed)."""
        stats = {"train/epsilon": self.epsilon(self.global_step), "train/episodes": float(self.episodes)}
        # Nothing before there is something to report (no NaN in TensorBoard or metrics.csv): no episode
        # ended yet, no update made yet (learning_starts).
        if self.recent_returns:
            stats["train/mean_return_100"] = float(np.mean(self.recent_returns))
        if self.last_loss is not None:
            stats["train/loss"] = self._last_loss()
        return stats

    def metric_names(self) -> list[str]:
        return [SCREEN, SOLVE, "train/epsilon", "train/episodes", "train/mean_return_100", "train/loss"]

    def validate(self) -> dict[str, float]:
        c = self.config
        screen = float(np.mean(self.evaluate(c.eval_episodes)))
        metrics = {SCREEN: screen, **self.training_stats()}
        if self.threshold is not None and screen >= self.threshold:
            mean = float(np.mean(self.evaluate(c.solve_episodes)))
            metrics[SOLVE] = mean
            if mean >= self.threshold and self.solved_at_step is None:
                self.solved_at_step, self.solved_at_seconds, self.solve_mean = (
                    self.global_step,
                    self.wall_seconds(),
                    mean,
                )
                self.recorder.info(
                    f"solved at step {self.global_step}: greedy mean return {mean:.1f} over "
                    f"{c.solve_episodes} episodes (threshold {self.threshold})"
                )
        self.stop_training = c.stop_when_solved and self.solved_at_step is not None
        return metrics

    # ----- checkpoint and summary -------------------------------------------------------------------

    def extra_state(self) -> dict:
        state = {
            "episodes": self.episodes,
            "recent_returns": list(self.recent_returns),
            "last_loss": self._last_loss(),
            "solved_at_step": self.solved_at_step,
            "solved_at_seconds": self.solved_at_seconds,
            "solve_mean": self.solve_mean,
            "episode_actions": list(self.episode_actions),
            "refill_steps": self.refill_steps,
        }
        if self.config.checkpoint_replay:
            state["memory"] = self.memory.state_dict()
        return state

    def load_extra_state(self, state: dict) -> None:
        self.episodes = state["episodes"]
        self.recent_returns.extend(state["recent_returns"])
        self.last_loss = None if state["last_loss"] is None else torch.tensor(state["last_loss"])
        self.solved_at_step = state["solved_at_step"]
        self.solved_at_seconds, self.solve_mean = state["solved_at_seconds"], state["solve_mean"]
        self.episode_actions = list(state.get("episode_actions", []))
        self.refill_steps = state.get("refill_steps", 0)
        if "memory" in state:
            saved = len(state["memory"]["actions"])
            self.memory.load_state_dict(state["memory"])
            if saved > len(self.memory):
                self.recorder.info(
                    f"the checkpoint's replay memory holds {saved} transitions, more than buffer_size "
                    f"{self.memory.capacity}: kept the newest {len(self.memory)}"
                )
        self.stop_training = self.config.stop_when_solved and self.solved_at_step is not None

    def finalize(self) -> None:
        for env in [getattr(self, "env", None), *getattr(self, "eval_envs", [])]:
            if env is not None:
                env.close()
        super().finalize()

    def summary_extra(self) -> dict:
        return {
            "env_id": self.config.env_id,
            "solved": self.solved_at_step is not None,
            "solved_at_step": self.solved_at_step,
            "solved_at_seconds": self.solved_at_seconds,
            "solve_mean_return": self.solve_mean,
            "final_eval_mean_return": self.last_metrics.get(SCREEN),
            "episodes": self.episodes,
            "refill_steps": self.refill_steps,
        }
