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
    """The agent class registered under ``name``, or ``"package.module:ClassName"`` for one that lives outside
    this repository (imported only when named); an unknown name or a module that does not import is a UserError."""
    if ":" in name:
        return _external_agent(name, source)
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


def _external_agent(name: str, source: str) -> type:
    from agents.base import BaseAgent

    module_name, _, class_name = name.partition(":")
    where = f"{source}: key 'agent': {name!r}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = f"no module named '{e.name}'" if e.name else str(e)
        itself = e.name is None or module_name == e.name or module_name.startswith(e.name + ".")
        hint = " (is the folder holding it on PYTHONPATH?)" if itself else ""
        raise UserError(f"{where}: cannot import '{module_name}': {missing}{hint}") from None
    except ImportError as e:
        raise UserError(f"{where}: importing '{module_name}' failed: {e}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseAgent)):
        names = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, BaseAgent)]
        raise UserError(f"{where}: {module_name} has no agent class '{class_name}'{did_you_mean(class_name, names)}")
    return cls
