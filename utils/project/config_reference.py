"""The config reference (tutorials/04_config_reference.md), rendered from the agents' ``config_schema``.

``python main.py keys`` prints it, ``python main.py keys --write`` rewrites the tutorial; a test
fails when the file differs from what the schemas give.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from utils.config import REPO_ROOT, REQUIRED, Key, did_you_mean
from utils.errors import Parser, UserError

REFERENCE = "tutorials/04_config_reference.md"
_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "list", object: "any"}

INTRO = """\
# 4. Config reference

Every key each agent reads: its type, default and meaning. This page is generated from the
agents' `config_schema` by `python main.py keys --write`; `tests/test_tutorials.py` fails when
it is out of date, so edit the schema, not this page.

Set a key in the JSON config (`"max_epoch": 3`) or on the command line, where nested keys are
dotted: `./run.sh configs/example_exp_0.json max_epoch=3 optimizer.args.lr=0.05`.
`python main.py CONFIG --keys` lists the values one config resolves to.
"""


def _type(spec: Key) -> str:
    types = spec.accepted()
    if float in types:
        types = tuple(t for t in types if t is not int)
    text = " or ".join(_TYPES.get(t, t.__name__) for t in types)
    return f"{text} or null" if spec.nullable or spec.default is None else text


def _default(spec: Key) -> str:
    return "required" if spec.default is REQUIRED else f"`{json.dumps(spec.default)}`"


def _meaning(spec: Key) -> str:
    parts = [spec.doc]
    if spec.choices is not None:
        parts.append("one of " + ", ".join(f"`{json.dumps(c)}`" for c in spec.choices))
    if spec.min is not None or spec.max is not None:
        low = "" if spec.min is None else f"{_number(spec.min)} ≤ "
        high = "" if spec.max is None else f" ≤ {_number(spec.max)}"
        parts.append(f"{low}value{high}")
    return "; ".join(p for p in parts if p).replace("|", "\\|")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _rows(schema: dict[str, Key], prefix: str = "") -> list[str]:
    rows = []
    for key, spec in schema.items():
        rows.append(f"| `{prefix}{key}` | {_type(spec)} | {_default(spec)} | {_meaning(spec)} |")
        if spec.schema is not None:
            rows += _rows(spec.schema, f"{prefix}{key}.")
    return rows


def _table(schema: dict[str, Key]) -> str:
    return "\n".join(["| key | type | default | meaning |", "|---|---|---|---|", *_rows(schema)])


def render(schemas: dict[str, dict[str, Key]]) -> str:
    """The reference page: the first schema's keys (BaseAgent's, common to all), then each agent's own."""
    (base_name, base), *agents = schemas.items()
    common = f"## Common keys ({base_name})\n\nEvery agent reads these, except those it names below.\n\n"
    parts = [INTRO, f"{common}{_table(base)}\n"]
    for name, schema in agents:
        own = {k: spec for k, spec in schema.items() if base.get(k) is not spec}
        dropped = [k for k in base if k not in schema]
        text = f"## {name}\n\n"
        text += f"Its own keys, and common keys it declares differently:\n\n{_table(own)}\n" if own else ""
        text += "Reads no key of its own.\n" if not own else ""
        if dropped:
            text += "\nCommon keys it does not read: " + ", ".join(f"`{k}`" for k in dropped) + ".\n"
        parts.append(text)
    return "\n".join(parts)


def keys_command(schemas: Callable[[], dict[str, dict[str, Key]]], argv: list[str]) -> int:
    parser = Parser(
        prog="main.py keys",
        description=f"Print every config key of every registered agent (type, default, meaning) as Markdown; "
        f"--write puts it in {REFERENCE}.",
    )
    parser.add_argument("agents", nargs="*", help="only these agents (default: all registered)")
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE} (all agents) instead of printing")
    args = parser.parse_args(argv)
    every = schemas()
    base = next(iter(every))
    for name in args.agents:
        if name not in every:
            raise UserError(f"keys: unknown agent '{name}'{did_you_mean(name, list(every))}; known: {', '.join(every)}")
    if args.write and args.agents:
        raise UserError(f"keys: --write renders every agent into {REFERENCE}; leave out the agent names")
    chosen = {name: every[name] for name in (base, *args.agents)} if args.agents else every
    text = render(chosen)
    if args.write:
        (REPO_ROOT / REFERENCE).write_text(text)
        sys.stdout.write(f"wrote {REFERENCE}\n")
    else:
        sys.stdout.write(text)
    return 0
