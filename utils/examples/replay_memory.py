"""Experience replay as a ring buffer of preallocated tensors (no Python list of tuples)."""

from __future__ import annotations

import torch


class ReplayMemory:
    """Holds the last ``capacity`` transitions (obs, action, reward, next_obs, done).

    ``done`` marks a true end of episode (terminated), not a time-limit truncation, so that the
    target still bootstraps from states where the episode was merely cut off.

    The buffer lives on ``device`` (the agent's): a sampled batch is gathered where the network
    runs, with no host-to-device copy per gradient step, and each step's transition (48 bytes for
    CartPole's state, 12.5 KiB for two screen differences) is copied once as it arrives. A pinned
    host buffer would not help: indexing it makes a new, pageable tensor to copy from.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.capacity = capacity
        self.device = torch.device(device)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype, device=device)
        self.next_obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype, device=device)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.dones = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.pos = 0  # where the next transition goes (the oldest one once full)
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

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """A uniform random batch (with replacement) on the memory's device: obs, actions, rewards, next_obs, dones."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay memory")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx]

    def sample_n_step(self, batch_size: int, n: int, gamma: float) -> tuple[torch.Tensor, ...]:
        """A uniform random batch of n-step transitions: obs, actions, returns, next_obs, dones, steps.

        From each sampled transition on, up to ``n`` rewards are summed, discounted by ``gamma``; the sum
        stops early at the episode's end: a termination, or a next slot that does not continue this one
        (its obs is not this one's next_obs: a truncated episode, or a memory refilled after a resume) or
        that is not filled yet. ``next_obs`` and ``dones`` are those of the last transition summed and
        ``steps`` (float) counts the rewards summed, so the target is returns + gamma**steps (1 - dones) Q(next_obs).
        With n = 1 it is ``sample`` (the same draws), with steps all 1.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay memory")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        k = torch.arange(n, device=self.device)
        slots = (idx.unsqueeze(1) + k) % self.capacity  # (batch, n): the transitions that may follow
        after = (self.pos - 1 - idx) % self.capacity  # filled slots after each sampled one (the newest is pos - 1)
        prev, this = slots[:, :-1], slots[:, 1:]
        same = (self.obs[this] == self.next_obs[prev]).flatten(2).all(dim=2)
        follows = (k[1:] <= after.unsqueeze(1)) & (self.dones[prev] == 0) & same
        alive = torch.cat([torch.ones_like(idx, dtype=torch.bool).unsqueeze(1), follows], dim=1).long().cumprod(dim=1)
        returns = (self.rewards[slots] * alive * gamma ** k.float()).sum(dim=1)
        steps = alive.sum(dim=1)
        last = slots.gather(1, (steps - 1).unsqueeze(1)).squeeze(1)
        return self.obs[idx], self.actions[idx], returns, self.next_obs[last], self.dones[last], steps.float()

    def state_dict(self) -> dict:
        """The filled slots as CPU tensors in slot order, and ``pos`` (where the oldest is, once full)."""
        n = self.size
        names = ("obs", "next_obs", "actions", "rewards", "dones")
        return {**{k: getattr(self, k)[:n].to("cpu", copy=True) for k in names}, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved memory, of this capacity or another one.

        The same capacity gets the same slots (sampling then repeats a straight run's exactly).
        Another capacity gets the transitions oldest first from slot 0, so no empty slot is ever
        sampled and the next push overwrites the oldest; a smaller one keeps the newest ``capacity``.
        """
        n, pos = len(state["actions"]), state["pos"]
        names = ("obs", "next_obs", "actions", "rewards", "dones")
        if n == self.capacity:
            order = torch.arange(n)
        else:
            # Saved full (pos < n), the oldest sits at pos; saved not full, pos == n and slot 0 is the oldest.
            oldest = pos if pos < n else 0
            order = ((torch.arange(n) + oldest) % n)[-self.capacity :]
        for name in names:
            getattr(self, name)[: len(order)] = state[name][order].to(self.device)
        self.size = len(order)
        self.pos = pos % self.capacity if n == self.capacity else self.size % self.capacity
