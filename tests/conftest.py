"""Shared helpers: run an agent in-process (fast) or main.py in a subprocess (exit codes, signals)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import main
from agents import AGENTS
from agents.example import ExampleAgent
from graphs.models.example import Example

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
EXAMPLE = CONFIGS / "example_exp_0.json"
# ``python main.py ARGS...`` in a subprocess, with the tests' agents (TEST_AGENTS) registered.
MAIN_WITH_TEST_AGENTS = [
    sys.executable,
    "-c",
    "import sys, main, tests.conftest as c; c.AGENTS.update(c.TEST_AGENTS); sys.exit(main.main())",
]


class DropoutAgent(ExampleAgent):
    """The template agent with dropout before its classifier: training draws random numbers, so a resumed
    run equals a straight one only when the checkpoint restores the RNG state too."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.models.clear()
        net = Example(config.channels, config.hidden, self.data_loader.num_classes, config.image_size)
        net.classifier = nn.Sequential(nn.Dropout(0.5), net.classifier)
        self.model = self.prepare_model(net)
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.make_scheduler(self.optimizer)


# Agents of the tests' own: registered only where a test asks for them (the registry lists the template's).
TEST_AGENTS = {"DropoutAgent": __name__}


@pytest.fixture
def test_agents_registered():
    """TEST_AGENTS in the agent registry for the test (in this process; subprocesses: MAIN_WITH_TEST_AGENTS)."""
    AGENTS.update(TEST_AGENTS)
    yield
    for name in TEST_AGENTS:
        del AGENTS[name]


@pytest.fixture
def exps(tmp_path: Path) -> Path:
    """An experiments directory of the test's own."""
    path = tmp_path / "experiments"
    path.mkdir()
    return path


@pytest.fixture
def one_thread():
    """One torch thread: small models run faster so, and on a shared CPU much more steadily."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(config: str | Path, exps: Path, *overrides: str) -> None:
    """Run the agent of ``config`` in this process, writing under ``exps``."""
    main.run(str(config), [f"experiments_dir={exps}", *overrides])


def cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python main.py args...`` in a subprocess from the repository root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b, path: str = "") -> None:
    """Recursively compare two checkpoint sub-trees for exact equality."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"tensors differ at {path}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {path}"
        for k in a:
            assert_same_tensors(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {path}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {path}"
