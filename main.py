"""Command line: ``python main.py CONFIG [key=value ...]`` (``./run.sh`` does the same).

Loads and validates the config, looks up the agent by name, runs it and finalizes it.
Other commands (``python main.py COMMAND --help``): ``new NAME`` makes a model from the template
agent, ``new-project DIR`` copies the template, ``keys`` prints the config reference.
Exit codes: 0 success, 2 a user mistake (one line, no traceback), 1 anything else,
130 stopped by Ctrl-C/SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from easydict import EasyDict

from agents import config_schemas, get_agent_class
from utils.config import apply_overrides, read_json, to_easydict, validate
from utils.config_reference import keys_command
from utils.errors import RunInterrupted, TrainingStopped, UserError
from utils.scaffold import new_command, new_project_command


def load_config(path: str, overrides: list[str] = ()) -> tuple[EasyDict, type]:
    """Read CONFIG, apply overrides, validate against the agent's schema; returns (config, agent class)."""
    raw = read_json(path)
    agent = apply_overrides(raw, list(overrides)).get("agent")
    if not isinstance(agent, str):
        raise UserError(f"{path}: missing required key 'agent' (a string naming the agent class)")
    agent_class = get_agent_class(agent, source=path)
    # Overrides apply on top of the defaults, so optimizer.args.lr=0.1 works without an "optimizer" in the file.
    config = validate(raw, agent_class.config_schema, source=path)
    config = validate(apply_overrides(config, list(overrides)), agent_class.config_schema, source=path)
    return to_easydict(config), agent_class


def run(path: str, overrides: list[str] = ()) -> None:
    """Load the config and run its agent to the end (what main does, minus exit codes)."""
    config, agent_class = load_config(path, overrides)
    # Created in two steps so that finalize (which releases the run's lock and log files) runs even
    # when the agent's own __init__ fails, e.g. on missing data.
    agent = agent_class.__new__(agent_class)
    try:
        try:
            agent.__init__(config)
            agent.run()
        finally:
            agent.finalize()
    except UserError as e:
        # Agents report config problems found at build time as "config: key ..."; name the file instead.
        if str(e).startswith("config: "):
            raise UserError(f"{path}: {str(e)[len('config: ') :]}") from None
        raise


def one_line(text: str) -> str:
    """The message with control characters (newlines included) escaped, so it stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(message + "\n")
    return code


def describe_keys(path: str, overrides: list[str] = ()) -> str:
    """Every key the config's agent reads: its value in this config, and what it means."""
    config, agent_class = load_config(path, overrides)
    lines = [f"{agent_class.__name__} ({path}): key = value  # meaning"]
    for key, spec in agent_class.config_schema.items():
        lines.append(f"  {key} = {json.dumps(config[key])}  # {spec.doc}")
    return "\n".join(lines)


# python main.py COMMAND ...: each takes the rest of the arguments and returns an exit code.
COMMANDS = {
    "new": new_command,
    "new-project": partial(new_project_command, config_schemas),
    "keys": partial(keys_command, config_schemas),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        description="Train or test the agent a JSON config names. "
        f"Other commands: {', '.join(COMMANDS)} (python main.py COMMAND --help)."
    )
    parser.add_argument("config", help="path to a JSON config, e.g. configs/example_exp_0.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_epoch=3 optimizer.args.lr=0.05")
    parser.add_argument("--keys", action="store_true", help="list the config's keys, values and meanings, then exit")
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        args = parser.parse_intermixed_args(argv)
        if args.keys:
            sys.stdout.write(describe_keys(args.config, args.overrides) + "\n")
            return 0
        run(args.config, args.overrides)
    except UserError as e:
        return _fail(f"error: {one_line(str(e))}", 2)
    except TrainingStopped as e:
        return _fail(f"error: {one_line(str(e))}", 1)
    except RunInterrupted as e:
        return _fail(str(e), 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
