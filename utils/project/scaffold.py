"""``main.py new NAME`` (a model from the template agent) and ``main.py new-project DIR`` (a clean copy).

The template agent's own files are the source of a new model: its class names and module paths
are replaced by the new name's, and each file's first docstring line by one naming the new model.
``EXAMPLES`` is the one list of what belongs to each example, for ``new-project --without-examples``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import keyword
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from utils.config import REPO_ROOT, Key
from utils.errors import Parser, UserError
from utils.project.config_reference import REFERENCE, render


@dataclass(frozen=True)
class Example:
    """An example's files (globs under the repository root). Its registry line is the one pointing at
    its agent module; ``uses`` are the template's own tests, benchmarks and tutorials that run on it."""

    files: tuple[str, ...]
    uses: tuple[str, ...] = ()


EXAMPLES = {
    "mnist": Example(
        files=(
            "agents/mnist.py",
            "graphs/models/mnist.py",
            "graphs/losses/nll.py",
            "datasets/mnist.py",
            "configs/mnist_exp_0.json",
            "tests/test_mnist.py",
            "docs/examples/mnist.md",
            "benchmarks/mnist_digits.py",
        ),
        uses=(
            "benchmarks/data_path.py",
            "benchmarks/ddp_mnist.py",
            "benchmarks/loop_overhead.py",
            "benchmarks/loop_features.py",
            "benchmarks/sweep_overhead.py",
            "benchmarks/gpu_checks.sh",
            "sweeps/mnist_lr.json",
            "tutorials/images/sweep_mnist_lr_*.png",
            "tutorials/01_getting_started.md",
            "tutorials/02_port_a_script.md",
            "tutorials/06_sweeps.md",
            "tutorials/08_export.md",  # MNIST and DQN
            "tests/test_export.py",  # every example's export (the template's: tests/test_example.py)
            "tests/test_ddp_configs.py",  # every shipped config under --nproc 2
        ),
    ),
    "dqn": Example(
        files=(
            "agents/dqn.py",
            "graphs/models/dqn.py",
            "datasets/gym_env.py",
            "utils/examples/replay_memory.py",
            "configs/dqn_exp_0.json",
            "tests/test_dqn.py",
            "docs/examples/dqn.md",
            "benchmarks/dqn_cartpole.py",
        ),
    ),
    "condensenet": Example(
        files=(
            "agents/condensenet.py",
            "graphs/models/condensenet.py",
            "graphs/models/custom_layers/learned_group_conv.py",
            "datasets/cifar10.py",
            "configs/condensenet_exp_*.json",
            "tests/test_condensenet.py",
            "docs/examples/condensenet.md",
            "benchmarks/condensenet.py",
        ),
    ),
    "erfnet": Example(
        files=(
            "agents/erfnet.py",
            "graphs/models/erfnet.py",
            "graphs/models/custom_layers/erfnet_blocks.py",
            "datasets/voc.py",
            "utils/examples/palette.py",
            "configs/erfnet_exp_*.json",
            "tests/test_erfnet.py",
            "docs/examples/erfnet.md",
            "benchmarks/erfnet.py",
        ),
        uses=("benchmarks/image_paths.py",),  # and DCGAN's
    ),
    "dcgan": Example(
        files=(
            "agents/dcgan.py",
            "graphs/models/dcgan_generator.py",
            "graphs/models/dcgan_discriminator.py",
            "graphs/models/custom_layers/dcgan_init.py",
            "utils/examples/swd.py",
            "datasets/celeba.py",
            "configs/dcgan_exp_*.json",
            "tests/test_dcgan.py",
            "docs/examples/dcgan.md",
            "benchmarks/dcgan.py",
        ),
        uses=("benchmarks/image_paths.py",),  # and ERFNet's
    ),
}

# Pages about all the examples together (their figures, the tests behind each guarantee), and the package of
# their helpers: left out with them.
EXAMPLE_PAGES = ("benchmarks/README.md", "docs/guarantees.md", "utils/examples/__init__.py")

# What a new project leaves behind: run outputs, data, caches, environments, version control.
NOT_COPIED = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".mypy_cache",
    ".benchmarks",
}
NOT_COPIED_AT_TOP = {"data", "experiments"}

# The template agent's files -> the new model's, with the first docstring line (a config: its
# description) that names the new model. {name}: my_net, {Model}: MyNet.
TEMPLATE = {
    "agents/example.py": (
        "agents/{name}.py",
        "{Model}Agent: trains {Model} on {Model}DataLoader's images.",
    ),
    "graphs/models/example.py": (
        "graphs/models/{name}.py",
        "{Model}: a small CNN classifier; change the layers, then this table.",
    ),
    "datasets/example.py": (
        "datasets/{name}.py",
        "{Model}DataLoader: your images (data/{name}/) or synthetic ones.",
    ),
    "configs/example_exp_0.json": (
        "configs/{name}_exp_0.json",
        "{Model}Agent on synthetic images (data_mode=folder: data/{name}/).",
    ),
    "tests/test_example.py": (
        "tests/test_{name}.py",
        "{Model}Agent's tests: it learns random images, trains on folders, tests.",
    ),
}
# "example" as a module, folder or file name (agents.example, "example", /example/, example_exp_0), not in prose.
_EXAMPLE_NAME = re.compile(r'(?<=[./"_])example\b|\bexample(?=[_./"])')
_LEFTOVER = re.compile(r"[Ee]xample|[Tt]emplate")
MAX_NAME = 30  # keeps every generated line within the 120-character limit


def class_prefix(name: str) -> str:
    """my_net -> MyNet."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def registry_entries(init_file: Path) -> dict[str, str]:
    """The AGENTS dict of an agents/__init__.py, read without importing it."""
    for node in ast.parse(init_file.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["AGENTS"]:
            return ast.literal_eval(node.value)
    raise UserError(f"{init_file}: no AGENTS dict found (the agent registry)")


def _imported_names(root: Path) -> set[str]:
    """Every name the template's files import (a generated class must not take one of them)."""
    names = set()
    for source in TEMPLATE:
        if source.endswith(".py") and (root / source).is_file():
            for node in ast.walk(ast.parse((root / source).read_text())):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return names


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name.endswith("_") or "__" in name:
        raise UserError(
            f"new: '{name}' is not a model name: expected a lowercase Python name such as my_net "
            "(letters, digits, single '_' between words)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise UserError(f"new: '{name}' is a Python keyword; choose another name (e.g. {name}_net)")
    if len(name) > MAX_NAME:
        raise UserError(f"new: '{name}' is {len(name)} characters; at most {MAX_NAME}")


def _generate(source: str, text: str, name: str, header: str) -> str:
    """The template file's text with the new model's names and first docstring line (or description)."""
    if source.endswith(".json"):
        text = text.replace(json.dumps(json.loads(text)["description"]), '"\0header\0"', 1)
    else:
        first, rest = text.split("\n", 1)
        if not first.startswith('"""'):
            raise RuntimeError(f"{source}: the template's first line must open its docstring")
        closing = '"""' if len(first) > 6 and first.endswith('"""') else ""  # a one-line docstring
        text = f'"""\0header\0{closing}\n{rest}'
    # Placeholders first, so that a leftover template word is found even when the new name contains one.
    text = _EXAMPLE_NAME.sub("\0name\0", re.sub(r"\bExample(?=Agent\b|DataLoader\b|\b)", "\0Model\0", text))
    leftover = _LEFTOVER.search(text)
    if leftover:  # a template word this code does not rename: the template changed, update TEMPLATE
        line = text[: leftover.start()].count("\n") + 1
        raise RuntimeError(f"{source}: line {line}: '{leftover.group()}' left in the file made for '{name}'")
    text = text.replace("\0header\0", json.dumps(header)[1:-1] if source.endswith(".json") else header)
    return text.replace("\0name\0", name).replace("\0Model\0", class_prefix(name))


def new_model(name: str, root: Path = REPO_ROOT) -> list[Path]:
    """Write the five files of model ``name`` and register its agent; returns the files written.

    Everything is checked first: on any error nothing is written.
    """
    _check_name(name)
    model = class_prefix(name)
    init_file = root / "agents" / "__init__.py"
    registry = registry_entries(init_file)
    if f"{model}Agent" in registry:
        raise UserError(
            f"new: {init_file}: agent '{model}Agent' is already registered (-> {registry[f'{model}Agent']})"
        )
    missing = [source for source in TEMPLATE if not (root / source).is_file()]
    if missing:
        raise UserError(f"new: the template agent's files are needed and missing: {', '.join(missing)}")
    targets = {source: root / target.format(name=name) for source, (target, _) in TEMPLATE.items()}
    existing = [str(path.relative_to(root)) for path in targets.values() if path.exists()]
    existing += [f"{d}/{name}/" for d in ("agents", "graphs/models", "datasets") if (root / d / name).is_dir()]
    if existing:
        raise UserError(f"new: {', '.join(existing)} already exist(s); choose another name or remove them")
    taken = _imported_names(root) & {model, f"{model}Agent", f"{model}DataLoader"}
    if taken:  # the generated files import these names already: the new class would shadow one
        raise UserError(
            f"new: '{name}' makes the class {sorted(taken)[0]}, a name the template imports; choose another"
        )
    texts = {
        source: _generate(source, (root / source).read_text(), name, header.format(name=name, Model=model))
        for source, (_, header) in TEMPLATE.items()
    }
    registry_text = _register(init_file.read_text(), f"{model}Agent", f"agents.{name}")
    for source, path in targets.items():
        path.write_text(texts[source])
    init_file.write_text(registry_text)
    return [*targets.values(), init_file]


def _register(text: str, agent: str, module: str) -> str:
    """agents/__init__.py's text with ``"agent": "module",`` added as the last AGENTS entry."""
    tree = ast.parse(text)
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "AGENTS")
    lines = text.splitlines(keepends=True)
    closing = node.value.end_lineno - 1  # the line holding AGENTS' closing brace
    lines.insert(closing, f'    "{agent}": "{module}",\n')
    return "".join(lines)


def _unregister(text: str, modules: set[str]) -> str:
    """agents/__init__.py's text without the AGENTS lines that point at ``modules``."""
    pattern = re.compile(r'^\s*"\w+":\s*"([\w.]+)",?\s*$')
    kept = [
        line for line in text.splitlines(keepends=True) if (m := pattern.match(line)) is None or m[1] not in modules
    ]
    return "".join(kept)


def _copy_tree(source: Path, target: Path) -> None:
    """The template's own files: in a git checkout, the files git tracks (not run outputs, reports,
    environments or caches of any name); elsewhere, all but the NOT_COPIED names."""
    listed = _git_files(source)
    if listed is None:

        def ignore(folder: str, names: list[str]) -> set[str]:
            skip = {n for n in names if n in NOT_COPIED or n.endswith((".pyc", ".egg-info"))}
            return skip | (NOT_COPIED_AT_TOP & set(names) if Path(folder) == source else set())

        shutil.copytree(source, target, ignore=ignore, symlinks=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
        for relative in listed:
            parts = Path(relative).parts
            if set(parts) & NOT_COPIED or parts[0] in NOT_COPIED_AT_TOP or not (source / relative).exists():
                continue
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, target / relative, follow_symlinks=False)
    (target / "experiments").mkdir(exist_ok=True)
    (target / "experiments" / ".keep").touch()


def _git_files(source: Path) -> list[str] | None:
    """Files git tracks under ``source`` (a checkout's root), or None without git."""
    if not (source / ".git").exists() or shutil.which("git") is None:
        return None
    command = ["git", "-C", str(source), "ls-files", "--cached", "-z"]
    done = subprocess.run(command, capture_output=True, text=True)
    return [f for f in done.stdout.split("\0") if f] if done.returncode == 0 else None


def example_paths(root: Path) -> list[Path]:
    """The files of every example (and what only runs on them) present under ``root``."""
    patterns = [pattern for ex in EXAMPLES.values() for pattern in ex.files + ex.uses] + list(EXAMPLE_PAGES)
    return sorted({p for pattern in patterns for p in root.glob(pattern)})


def new_project(
    target: Path,
    without_examples: bool = False,
    schemas: Callable[[], dict[str, dict[str, Key]]] | None = None,
    source: Path = REPO_ROOT,
) -> None:
    """Copy the template to ``target`` (absent or empty); optionally without the examples.

    ``schemas`` gives every registered agent's config_schema (BaseAgent's first), to regenerate
    the config reference for the agents the new project registers.
    """
    target = target.resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"new-project: {target} exists and is not an empty folder; nothing was written")
    if target.is_relative_to(source.resolve()):
        raise UserError(f"new-project: {target} is inside the template ({source}); choose a folder outside it")
    every = schemas() if schemas is not None else None  # an agent that does not import: nothing written
    if target.exists():
        target.rmdir()
    _copy_tree(source, target)
    init_file = target / "agents" / "__init__.py"
    if init_file.is_file() and "AGENTS" in init_file.read_text():  # the registry of what was copied (not agents
        # made with `main.py new` and never committed: git does not list their files)
        absent = {m for m in registry_entries(init_file).values() if not _module_file(target, m).is_file()}
        init_file.write_text(_unregister(init_file.read_text(), absent))
    if without_examples:
        _remove_examples(target, source, init_file)
    # The reference copied has sections of agents the new project may not register: the examples, and those that
    # `main.py new` made (and wrote there) but git does not track.
    if every is not None and (target / REFERENCE).exists():
        registered = {"BaseAgent", *registry_entries(init_file)}
        (target / REFERENCE).write_text(render({name: schema for name, schema in every.items() if name in registered}))


def _remove_examples(target: Path, source: Path, init_file: Path) -> None:
    """The examples leave the new project ``target``: their files, registry lines and links, and README lines."""
    removed = example_paths(target)
    modules = {".".join(p.relative_to(target).with_suffix("").parts) for p in removed if p.suffix == ".py"}
    for path in removed:
        path.unlink()
    for folder in sorted({p.parent for p in removed}, reverse=True):  # folders the examples alone filled
        if folder != target and not any(folder.iterdir()):
            folder.rmdir()
    init_file.write_text(_unregister(init_file.read_text(), modules))
    _unlink_pages(target, {p.resolve() for p in removed})
    tutorials = {  # file name -> its title, without the number: "3. Your own model" -> "Your own model"
        p.name: re.sub(r"^#\s*\d+\.\s*", "", p.read_text().split("\n", 1)[0])
        for p in sorted(target.glob("tutorials/*.md"))
    }
    readme = clean_readme((source / "README.md").read_text(), target.name, tutorials)
    (target / "README.md").write_text(_without_absent_folders(readme, target))


def _unlink_pages(root: Path, removed: set[Path]) -> None:
    """Links to removed files leave the pages: "(see [tutorial 6](06_sweeps.md))" and images go whole, other links
    become their text (tutorial 9 links tutorial 6, an example's page)."""
    link = re.compile(r"( \()?(!?)\[([^\]]+)\]\(([^)#\s]+)(?:#[^)\s]*)?(?: \"[^\"]*\")?\)(\))?")

    def unlinked(m: re.Match, here: Path) -> str:
        if (here / m[4]).resolve() not in removed:
            return m[0]
        if m[2] or (m[1] and m[5]):  # an image, or a link alone in parentheses
            return ""
        return f"{m[1] or ''}{m[3]}{m[5] or ''}"

    for page in root.rglob("*.md"):
        text = page.read_text()
        kept = link.sub(lambda m, here=page.parent: unlinked(m, here), text)
        if kept != text:
            page.write_text(kept)


def _module_file(root: Path, module: str) -> Path:
    """agents.my_net -> root/agents/my_net.py."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _without_absent_folders(readme: str, root: Path) -> str:
    """The README without layout lines for top-level folders that are missing or empty in ``root``."""

    def present(line: str) -> bool:
        folder = re.match(r"([\w-]+)/ ", line)
        if folder is None or folder[1] == "experiments":  # run output: empty in a new project by design
            return True
        path = root / folder[1]
        return path.is_dir() and any(path.iterdir())

    return "".join(line for line in readme.splitlines(keepends=True) if present(line))


def clean_readme(readme: str, project: str, tutorials: dict[str, str]) -> str:
    """A new project's README: the template's introduction, its install steps, a run of the template
    agent, the layout, and links to the tutorials it kept."""
    sections = {s.split("\n", 1)[0]: s for s in readme.split("\n## ")}
    intro = readme.split("\n## ", 1)[0].split("\n\n", 1)[1].split("\n\n", 1)[0].strip()
    first = sections["First five minutes"]
    install = re.search(r"^(<!--[^\n]*-->\n)?```bash\n.*?```\n", first, flags=re.S | re.M)
    layout = re.search(r"```\n.*?```\n", sections["Layout: what goes where"], flags=re.S)
    links = "\n".join(f"{i}. [{title}](tutorials/{name})" for i, (name, title) in enumerate(tutorials.items(), 1))
    # The template's headings, so that a clean project's README can be cleaned again and tested the same way.
    return (
        f"# {project}\n\n{intro}\n\n## First five minutes\n\n"
        "Install (the first line), then the test tools and the tests (the second):\n\n"
        f"{install.group()}\n"
        "Train the template agent on synthetic images (add `max_train_batches=2 max_valid_batches=2` "
        "to try it in seconds):\n\n```bash\n./run.sh configs/example_exp_0.json\n```\n\n"
        "Add a model: `python main.py new NAME` (see the tutorials).\n\n"
        f"## Layout: what goes where\n\n{layout.group()}\n## Tutorials\n\n{links}\n"
    )


def new_command(schemas: Callable[[], dict[str, dict[str, Key]]], argv: list[str]) -> int:
    """``main.py new NAME``; ``schemas()`` (the registry with the new agent) renders the config reference anew."""
    parser = Parser(
        prog="main.py new",
        description=(
            "Make a model from the template agent: agents/NAME.py (NameAgent), graphs/models/NAME.py (Name), "
            "datasets/NAME.py (NameDataLoader), configs/NAME_exp_0.json and tests/test_NAME.py, and register "
            "the agent in agents/__init__.py. It trains at once on random data: ./run.sh configs/NAME_exp_0.json"
        ),
    )
    parser.add_argument(
        "name", help="a lowercase Python name, e.g. my_net (classes MyNetAgent, MyNet, MyNetDataLoader)"
    )
    args = parser.parse_args(argv)
    written = new_model(args.name)
    (REPO_ROOT / REFERENCE).write_text(render(schemas()))  # with the new agent's keys (its test checks it)
    for path in [*written, REPO_ROOT / REFERENCE]:
        sys.stdout.write(f"wrote {path.relative_to(REPO_ROOT)}\n")
    sys.stdout.write(
        f"train it: ./run.sh configs/{args.name}_exp_0.json    "
        f"test it: {_python()} -m pytest -q tests/test_{args.name}.py" + pytest_hint() + "\n"
    )
    return 0


def _python() -> str:
    """This Python as the user types it: .venv/bin/python when it is the repository's own environment's."""
    exe = Path(sys.executable)
    return str(exe.relative_to(REPO_ROOT)) if exe.is_relative_to(REPO_ROOT) else "python"


def pytest_hint() -> str:
    """Where pytest comes from, when this Python lacks it (requirements.txt alone does not install it)."""
    if importlib.util.find_spec("pytest") is not None:
        return ""
    return " (pytest is a test tool: .venv/bin/pip install -r requirements-dev.txt)"


def new_project_command(schemas: Callable[[], dict[str, dict[str, Key]]], argv: list[str]) -> int:
    parser = Parser(
        prog="main.py new-project",
        description="Copy this template into DIR (a new or empty folder), without experiments/, data/, "
        "caches, virtual environments or version-control metadata.",
    )
    parser.add_argument("dir", type=Path, help="the new project's folder")
    parser.add_argument(
        "--without-examples",
        action="store_true",
        help=f"leave out the examples ({', '.join(EXAMPLES)}): their agents, networks, data, configs, tests "
        "and registry lines; the template agent stays",
    )
    args = parser.parse_args(argv)
    new_project(args.dir, args.without_examples, schemas)
    sys.stdout.write(f"made {args.dir.resolve()}; next: cd {args.dir} and run the two commands of its README.md\n")
    return 0
