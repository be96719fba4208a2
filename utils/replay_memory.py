"""Experience replay as a ring buffer of preallocated tensors (no Python list of tuples)."""

from __future__ import annotations

import torch


class ReplayMemory:
    """Holds the last ``capacity`` transitions (obs, action, reward, next_obs, done).

    ``done`` marks a true end of episode (terminated), not a time-limit truncation, so that the
    target still bootstraps from states where the episode was merely cut off.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype = torch.float32) -> None:
        self.capacity = capacity
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.actions = torch.zeros(capacity, dtype=torch.long)
        self.rewards = torch.zeros(capacity, dtype=torch.float32)
        self.dones = torch.zeros(capacity, dtype=torch.float32)
        self.pos = 0  # where the next transition goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, obs, action: int, reward: float, next_obs, done: bool) -> None:
        """Store one transition, overwriting the oldest once full."""
        i = self.pos
        self.obs[i] = torch.as_tensor(obs)
        self.next_obs[i] = torch.as_tensor(next_obs)
        self.actions[i] = action
        self.rewards[i] = reward
        self.dones[i] = float(done)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """A uniform random batch (with replacement): obs, actions, rewards, next_obs, dones."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay memory")
        idx = torch.randint(0, self.size, (batch_size,))
        batch = (self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx])
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def state_dict(self) -> dict:
        n = self.size
        return {
            "obs": self.obs[:n].clone(),
            "next_obs": self.next_obs[:n].clone(),
            "actions": self.actions[:n].clone(),
            "rewards": self.rewards[:n].clone(),
            "dones": self.dones[:n].clone(),
            "pos": self.pos,
        }

    def load_state_dict(self, state: dict) -> None:
        n = len(state["actions"])
        if n > self.capacity:
            raise ValueError(f"checkpoint holds {n} transitions, more than buffer_size {self.capacity}")
        for name in ("obs", "next_obs", "actions", "rewards", "dones"):
            getattr(self, name)[:n] = state[name]
        self.size, self.pos = n, state["pos"] % self.capacity
