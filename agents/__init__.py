"""Agent registry: the config's "agent" string -> the class, imported only when asked for.

Importing this package imports no agent, so one agent's heavy dependencies (gymnasium for
DQN) are never loaded to run another. Add your agent here with one line.
"""

from __future__ import annotations

import importlib

from utils.config import did_you_mean
from utils.errors import UserError

AGENTS = {
    "ExampleAgent": "agents.example",
    "MnistAgent": "agents.mnist",
    "DQNAgent": "agents.dqn",
    "CondenseNetAgent": "agents.condensenet",
    "ERFNetAgent": "agents.erfnet",
    "DCGANAgent": "agents.dcgan",
}


def get_agent_class(name: str, source: str = "config") -> type:
    """The agent class registered under ``name``; an unknown name is a UserError."""
    if name not in AGENTS:
        raise UserError(
            f"{source}: key 'agent': unknown agent '{name}'{did_you_mean(name, list(AGENTS))}; "
            f"known: {', '.join(AGENTS)}"
        )
    try:
        module = importlib.import_module(AGENTS[name])
    except ImportError as e:  # a registry line whose file is gone, or a package the agent needs is missing
        raise UserError(f"agents/__init__.py: agent '{name}' -> '{AGENTS[name]}' cannot be imported: {e}") from None
    return getattr(module, name)


def config_schemas() -> dict[str, dict]:
    """BaseAgent's config_schema (the common keys), then every registered agent's (imports them all)."""
    from agents.base import BaseAgent

    return {"BaseAgent": BaseAgent.config_schema, **{name: get_agent_class(name).config_schema for name in AGENTS}}
