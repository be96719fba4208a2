"""The agent registry imports lazily: one agent's heavy dependencies never load for another."""

import subprocess
import sys

import pytest

from agents import AGENTS, get_agent_class
from agents.base import BaseAgent
from tests.conftest import REPO
from utils.errors import UserError


def test_every_registered_agent_resolves_to_a_base_agent():
    for name in AGENTS:
        cls = get_agent_class(name)
        assert issubclass(cls, BaseAgent) and cls.__name__ == name


def test_unknown_agent_suggests_the_nearest():
    with pytest.raises(UserError, match=r"did you mean 'ExampleAgent'"):
        get_agent_class("ExampleAgnt")


def test_importing_an_agent_loads_no_other_agents_dependencies():
    code = (
        "import sys, agents; assert 'torch' not in sys.modules; "
        "agents.get_agent_class('ExampleAgent'); "
        "others = [m for m in agents.AGENTS.values() if m in sys.modules and m != 'agents.example']; "
        "assert 'gymnasium' not in sys.modules and not others, others"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
