"""Config loading, validation and command-line overrides.

Every agent declares the keys it reads in a ``config_schema`` dict of ``Key`` entries; that dict
is the documentation of the config. Loading checks the JSON against it, so a typo, a wrong type
or a missing key is a one-line ``UserError`` instead of a traceback an hour into training.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easydict import EasyDict

from utils.errors import UserError

REQUIRED = object()
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class Key:
    """One config key: its default (or REQUIRED), accepted types and range."""

    default: Any = REQUIRED
    types: type | tuple[type, ...] | None = None  # inferred from the default when None
    doc: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    check: Callable[[Any, str, str], None] | None = None  # (value, where, source); raises UserError
    schema: dict[str, Key] | None = None  # nested keys of a dict value

    def accepted(self) -> tuple[type, ...]:
        if self.types is not None:
            types = self.types if isinstance(self.types, tuple) else (self.types,)
        elif self.schema is not None:
            types = (dict,)
        elif self.default is REQUIRED or self.default is None:
            types = (object,)
        else:
            types = (type(self.default),)
        return (*types, int) if float in types and int not in types else types


# Names from other frameworks that no spelling distance finds: a top-level key -> the key meant.
KEY_SYNONYMS = {"lr": "optimizer.args.lr", "learning_rate": "optimizer.args.lr", "epochs": "max_epoch"}
ARG_SYNONYMS = {"learning_rate": "lr", "wd": "weight_decay"}  # an optimizer argument -> torch's name


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when nothing is close."""
    lower = {str(o).lower(): str(o) for o in options}  # case aside: "leaves" is close to "LeavesAgent"
    close = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean '{lower[close[0]]}'?)" if close else ""


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    names.update({dict: "an object", list: "a list"})
    if float in types:
        types = tuple(t for t in types if t is not int)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_value(value: Any, spec: Key, where: str, source: str) -> Any:
    """Validate one value against its Key; return it (ints widened to float where declared)."""
    fail = f"{source}: key '{where}'"
    if value is None:
        if spec.nullable or spec.default is None:
            return None
        raise UserError(f"{fail}: expected {_type_name(spec.accepted())}, got null")
    types = spec.accepted()
    if object not in types:
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            got = type(value).__name__ if not isinstance(value, bool) else "a boolean"
            raise UserError(f"{fail}: expected {_type_name(types)}, got {got} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{fail}: expected a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float in types and value.bit_length() < 1024:
        value = float(value)
    if spec.choices is not None and value not in spec.choices:
        options = ", ".join(repr(c) for c in spec.choices)
        hint = did_you_mean(value, [c for c in spec.choices if isinstance(c, str)])
        raise UserError(f"{fail}: expected one of {options}, got {value!r}{hint}")
    if spec.min is not None and isinstance(value, (int, float)) and value < spec.min:
        raise UserError(f"{fail}: must be at least {spec.min}, got {value!r}")
    if spec.max is not None and isinstance(value, (int, float)) and value > spec.max:
        raise UserError(f"{fail}: must be at most {spec.max}, got {value!r}")
    if spec.schema is not None:
        value = validate(value, spec.schema, source, prefix=f"{where}.")
    if spec.check is not None:
        spec.check(value, where, source)
    return value


def validate(raw: dict, schema: dict[str, Key], source: str, prefix: str = "") -> dict:
    """Check ``raw`` against ``schema``; return a new dict with defaults filled in."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: key '{prefix.rstrip('.')}': expected an object")
    out = {}
    for key, value in raw.items():
        if key not in schema:
            synonym = KEY_SYNONYMS.get(key) if not prefix else None
            hint = f" (did you mean '{synonym}'?)" if synonym else did_you_mean(key, list(schema))
            if not hint and "args" in schema:  # {"type": "Adam", "lr": 0.01}: a class's arguments go under args
                hint = f" (did you mean '{prefix}args.{key}'?)"
            raise UserError(f"{source}: unknown key '{prefix}{key}'{hint}")
        out[key] = _check_value(value, schema[key], prefix + key, source)
    for key, spec in schema.items():
        if key in out:
            continue
        if spec.default is REQUIRED:
            raise UserError(f"{source}: missing required key '{prefix}{key}'")
        default = spec.default
        out[key] = json.loads(json.dumps(default)) if isinstance(default, (dict, list)) else default
    return out


def read_json(path: str | Path) -> dict:
    """Read a JSON config file; malformed JSON names the line and column."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        near = [str(p) for p in path.parent.glob("*.json")] if path.parent.is_dir() else []
        raise UserError(f"{path}: config file not found{did_you_mean(str(path), near)}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSON config file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object at the top level")
    return data


def read_config(
    path: str | Path, _seen: tuple[Path, ...] = (), _shown: str | None = None
) -> tuple[dict, dict[str, list[str]]]:
    """A config file with the chain of files its ``"base"`` names merged under it (dicts key by key, lists and
    other values replaced), and for each top-level key the files its value comes from (as written), base first."""
    raw, shown = read_json(path), _shown or str(path)
    if "base" not in raw:
        return raw, {key: [shown] for key in raw}
    base = raw.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"{path}: key 'base': expected the path of a config file (from the repository), got {base!r}")
    base_path, here = repo_path(base), Path(path).resolve()
    chain = (*_seen, here)
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise UserError(f"{path}: key 'base': the configs inherit from each other in a cycle ({cycle})")
    if not base_path.is_file():
        beside = (Path(path).parent / base).resolve()  # named from the config's folder, not the repository
        shown = beside.relative_to(REPO_ROOT) if beside.is_relative_to(REPO_ROOT) else beside
        hint = f" (did you mean '{shown}'?)" if beside.is_file() else ""
        raise UserError(
            f"{path}: key 'base': {base_path}: config file not found (a base is looked up from the repository){hint}"
        )
    merged, sources = read_config(base_path, chain, base)
    for key, value in raw.items():
        mixed = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if mixed else value
        mixed = mixed and merged[key] is not value
        sources[key] = [*sources.get(key, []), shown] if mixed else [shown]
    return merged, sources


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``, key by key; an object of another "type" (an optimizer) replaces the base's whole."""
    if "type" in child and child["type"] != base.get("type"):
        return child
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def run_config(path: str) -> str:
    """A run folder (experiments/<exp_name>) stands for its config.json: the config it ran with."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    if not (folder / "config.json").is_file():
        raise UserError(f"{path}: a folder without config.json; expected a JSON config or a run folder")
    return str(folder / "config.json")


def blame_override(error: UserError, source: str, overrides: list[str]) -> UserError:
    """``error`` (found validating ``source`` with ``overrides``) naming where its key was set: the override, or
    the base config the key came from (``source`` inherits it through ``"base"``)."""
    message = str(error)
    found = re.search(r"key '([^']+)'", message)
    if not message.startswith(f"{source}: ") or found is None:
        return error
    key = re.sub(r"\[(\d+)\]", r".\1", found[1])  # callbacks[0].type: as an override names it
    for text in reversed(overrides):  # the last override of a key is the one that counts
        dotted = re.sub(r"\[(\d+)\]", r".\1", text.partition("=")[0])
        if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return UserError(f"override '{text}': {message[len(source) + 2 :]}")
    with contextlib.suppress(UserError):
        chain = _chain(source)
        for path in reversed(chain):  # the nearest file that sets the key (or the part of it that is wrong)
            if _sets(read_json(path), key.split(".")):
                return error if path == chain[-1] else UserError(f"{path}: {message[len(source) + 2 :]}")
    return error


def _chain(path: str | Path) -> list[str]:
    """The config files ``path`` inherits from, base first, ``path`` last."""
    base = read_json(path).get("base")
    return [*(_chain(repo_path(base)) if isinstance(base, str) and repo_path(base).is_file() else []), str(path)]


def _sets(raw: Any, parts: list[str]) -> bool:
    """Whether the JSON ``raw`` holds the first of ``parts`` (and as much of the rest as it goes)."""
    if not parts or not isinstance(raw, (dict, list)):
        return True
    if isinstance(raw, list):
        return parts[0].isdigit() and int(parts[0]) < len(raw) and _sets(raw[int(parts[0])], parts[1:])
    return parts[0] in raw and _sets(raw[parts[0]], parts[1:])


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value); the value is JSON, bare words are strings."""
    key, sep, value = text.partition("=")
    parts = re.sub(r"\[(\d+)\]", r".\1", key).split(".")  # callbacks[0].args as error messages name it
    if not sep or not all(p.strip() for p in parts):
        raise UserError(f"override '{text}': expected key=value, e.g. max_epoch=3 or optimizer.args.lr=0.01")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        bare = value.strip()
        if bare.startswith("{") or (bare.startswith("[") and bare.endswith("]")):  # meant as an object or a list
            raise UserError(
                f"override '{text}': the value is not valid JSON ({e.msg} at character {e.pos}); "
                f"""a string that looks like one goes in double quotes: key='"..."'"""
            ) from None
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str], schema: dict[str, Key] | None = None) -> dict:
    """Return a copy of ``raw`` with each ``a.b=value`` override set (validated afterwards).

    With the agent's ``schema``: a key missing from the file starts from its default (so
    ``optimizer.args.lr=0.1`` works without an "optimizer" in the file), and a value given for a
    string key is kept as typed (``exp_name=2024`` is the name "2024", not a number).
    """
    raw = json.loads(json.dumps(raw))
    for text in overrides:
        parts, value = parse_override(text)
        node, specs = raw, schema
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # scheduler.0.steps: an index into a list (a schedule's phases)
                node, specs = _list_item(node, part, text, ".".join(parts[:i])), None
                continue
            spec = (specs or {}).get(part)
            if part not in node:  # start from the key's default (an object, or the non-object to complain about)
                default = spec.default if spec is not None else None
                node[part] = {} if default is None or default is REQUIRED else json.loads(json.dumps(default))
            child = node[part]
            if not isinstance(child, (dict, list)):
                dotted = ".".join(parts[: i + 1])
                raise UserError(f"override '{text}': key '{dotted}' holds {child!r}, not an object")
            node, specs = child, spec.schema if spec is not None else None
        if isinstance(node, list):
            _list_item(node, parts[-1], text, ".".join(parts[:-1]))
            node[int(parts[-1])] = value
            continue
        spec = (specs or {}).get(parts[-1])
        if spec is not None and _wants_text(spec, value):
            value = text.partition("=")[2]
        node[parts[-1]] = value
    return raw


def _list_item(items: list, part: str, text: str, where: str) -> Any:
    """``items[int(part)]``, or one line saying which indices ``where`` has."""
    if not part.isdigit() or int(part) >= len(items):
        last = len(items) - 1
        raise UserError(f"override '{text}': key '{where}' is a list of {len(items)}: expected an index 0 to {last}")
    return items[int(part)]


def _wants_text(spec: Key, value: Any) -> bool:
    """Whether a number or true/false typed for a string-only key was meant as that text."""
    types = spec.accepted()
    return isinstance(value, (int, float, bool)) and str in types and not isinstance(value, types)


def to_easydict(config: dict) -> EasyDict:
    return EasyDict(config)


def to_plain(config: Any) -> Any:
    """EasyDict (or any nested dict/list) -> plain JSON-able dicts and lists."""
    if isinstance(config, dict):
        return {k: to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    return config


def plain_name(value: str, where: str, source: str) -> None:
    """Check for names used as directory names: no separators, no '..', not empty."""
    if not _PLAIN_NAME.match(value) or ".." in value:
        raise UserError(
            f"{source}: key '{where}': expected a plain name (letters, digits, '_', '-', '.'; "
            f"no '/' or '..'), got {value!r}"
        )


def torch_class(module: Any, kind: str, where: str, source: str, name: str) -> type:
    """The class ``name`` of ``module``; an unknown name is a UserError naming the nearest one."""
    options = [n for n in dir(module) if n[:1].isupper() and not n.startswith("_")]
    cls = getattr(module, name, None) if name in options else None
    if not inspect.isclass(cls):
        raise UserError(f"{source}: key '{where}.type': unknown {kind} '{name}'{did_you_mean(name, options)}")
    return cls


def check_device(value: str, where: str, source: str) -> None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return
    raise UserError(f"{source}: key '{where}': expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")


def check_monitor(value: str, where: str, source: str) -> None:
    parts = value.split()
    if len(parts) != 2 or parts[0] not in ("min", "max"):
        raise UserError(f"{source}: key '{where}': expected 'max <metric>' or 'min <metric>', got {value!r}")


def check_workers(value: int | str, where: str, source: str) -> None:
    if value != "auto" and (isinstance(value, str) or not 0 <= value <= 128):
        raise UserError(
            f"{source}: key '{where}': expected \"auto\" or a number of processes from 0 to 128, got {value!r}"
        )


def check_resume(value: Any, where: str, source: str) -> None:
    if value is True or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{source}: key '{where}': expected \"auto\", false or a checkpoint path, got {value!r}")


REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str) -> Path:
    """A path key's value as a Path: absolute as given, relative ones under the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def relative_path(value: str, where: str, source: str) -> None:
    """Check for directory keys: absolute paths are allowed (documented); relative ones stay inside."""
    if not value.strip() or (not value.startswith("/") and ".." in value.replace("\\", "/").split("/")):
        raise UserError(
            f"{source}: key '{where}': expected a folder inside the repository (no '..') "
            f"or an absolute path, got {value!r}"
        )


def check_args(cls: type, args: dict, where: str, source: str) -> None:
    """Reject arguments the constructor does not take (after its first), naming the nearest one,
    and true/false where its default is a number (torch would take ``lr: false`` as 0)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    defaults = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for arg, value in args.items():
        if arg not in defaults:
            synonym = ARG_SYNONYMS.get(arg)
            hint = f" (did you mean '{where}.args.{synonym}'?)" if synonym in defaults else ""
            raise UserError(f"{source}: unknown key '{where}.args.{arg}'{hint or did_you_mean(arg, list(defaults))}")
        default = defaults[arg]
        if isinstance(value, bool) and isinstance(default, (int, float, tuple)) and not isinstance(default, bool):
            got = "true" if value else "false"
            raise UserError(f"{source}: key '{where}.args.{arg}': expected a number like {default!r}, got {got}")


def _torch_module(path: str) -> Any:
    import importlib

    return importlib.import_module(path)


def torch_object_key(module: str, kind: str, default: dict | None, doc: str = "") -> Key:
    """A ``{"type": ..., "args": {...}}`` key naming a class in a torch module (``torch.optim``, ...).

    Loading builds one on a throw-away parameter, so a bad name, argument or value (a negative
    learning rate) is reported before any run starts.
    """

    def check(value: dict, where: str, source: str) -> None:
        import torch

        cls = torch_class(_torch_module(module), kind, where, source, value["type"])
        check_args(cls, value["args"], where, source)
        param = torch.nn.Parameter(torch.zeros(1))
        param.grad = torch.ones(1)
        optimizer = torch.optim.SGD([param], lr=0.1) if module != "torch.optim" else None
        built = build_torch_object(module, value, optimizer or [param], where, source)
        try:  # one step: some bad values (a string step_size) only fail when used
            if optimizer is None:
                built.step()
            else:
                optimizer.step()
                built.step(1.0) if isinstance(built, torch.optim.lr_scheduler.ReduceLROnPlateau) else built.step()
        except Exception as e:  # noqa: BLE001 (any failure here comes from the user's args)
            raise UserError(f"{source}: key '{where}.args': {cls.__name__} fails with {value['args']}: {e}") from None

    schema = {"type": Key(REQUIRED, str, f"{kind} class name"), "args": Key({}, dict, "constructor arguments")}
    return Key(default, dict, doc, schema=schema, nullable=default is None, check=check)


def build_torch_object(module: str, spec: dict, first: Any, where: str, source: str = "config") -> Any:
    """``module.<spec.type>(first, **spec.args)``; a value the class rejects is a UserError."""
    cls = getattr(_torch_module(module), spec["type"])
    try:
        return cls(first, **spec["args"])
    except Exception as e:  # noqa: BLE001 (the args are the user's: any rejection is theirs to fix)
        raise UserError(f"{source}: key '{where}.args': {cls.__name__} rejected {spec['args']}: {e}") from None
