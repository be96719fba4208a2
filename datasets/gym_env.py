"""Gymnasium environments for the RL agents: the data source of an agent that learns by acting.

Only agents that need gymnasium import this module (it imports gymnasium, and pygame for
``observation="pixels"``).
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from utils.config import did_you_mean
from utils.errors import UserError

SCREEN = (40, 80)  # height, width of the downsampled screen


class ScreenDifference(gym.ObservationWrapper):
    """Observation = current screen minus the previous one (grayscale, 1 x 40 x 80, float16).

    A single frame does not show velocity; the difference of two does, as in the seed's DQN.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1, *SCREEN), np.float16)
        self.previous: torch.Tensor | None = None

    def screen(self) -> torch.Tensor:
        frame = torch.from_numpy(self.env.render())  # (400, 600, 3) uint8 for CartPole
        h = frame.shape[0]
        band = frame[int(h * 0.4) : int(h * 0.8)]  # the strip the cart and pole move in
        gray = band.float().mean(dim=2, keepdim=True).permute(2, 0, 1).unsqueeze(0) / 255
        return F.interpolate(gray, size=SCREEN, mode="area")[0]

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.previous = self.screen()
        return self.observation(obs), info

    def observation(self, observation) -> np.ndarray:
        current = self.screen()
        diff = current - self.previous
        self.previous = current
        return diff.to(torch.float16).numpy()


def make_env(env_id: str, observation: str = "state", render: bool = False) -> gym.Env:
    """Build ``env_id`` (``render``: its ``render()`` returns the screen); an unknown id, a missing renderer or a
    non-discrete action space is a UserError."""
    render_mode = "rgb_array" if observation == "pixels" or render else None
    if observation == "pixels":
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # render off-screen, no window
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as e:
        raise UserError(
            f"config: key 'observation': {env_id} cannot render without pygame ({e}); "
            "pip install pygame (it is in requirements.txt)"
        ) from None
    except gym.error.Error as e:
        hint = did_you_mean(env_id, list(gym.registry))
        raise UserError(f"config: key 'env_id': unknown environment '{env_id}'{hint} ({e})") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise UserError(
            f"config: key 'env_id': {env_id} has a {type(env.action_space).__name__} action space; "
            "DQN needs a Discrete one (e.g. CartPole-v1, Acrobot-v1, LunarLander-v3)"
        )
    if observation == "pixels":
        try:
            env.reset(seed=0)
            env.render()  # fails here, not mid-training, when pygame is missing
            return ScreenDifference(env)
        except gym.error.DependencyNotInstalled as e:
            raise UserError(f"config: key 'observation': pixels need pygame ({e}); pip install pygame") from None
    if len(env.observation_space.shape or ()) != 1:
        raise UserError(
            f"config: key 'observation': {env_id} observations have shape "
            f"{env.observation_space.shape}; the state MLP needs a vector (try observation=pixels)"
        )
    return env
