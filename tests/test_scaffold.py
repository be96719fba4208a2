"""main.py new NAME and main.py new-project DIR [--without-examples], checked in copies of the template."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents import config_schemas
from tests.conftest import REPO
from utils.errors import UserError
from utils.project.config_reference import REFERENCE, render
from utils.project.scaffold import EXAMPLES, class_prefix, new_model, new_project, registry_entries

PACKAGES = {"agents", "datasets", "graphs", "utils", "tests", "main"}
# The template's own tests, on the template agent: a project without the examples keeps them all.
FRAMEWORK_TESTS = {
    "tests/conftest.py",
    "tests/ddp_worker.py",
    "tests/test_checkpoint.py",
    "tests/test_resume_edges.py",
    "tests/test_faults.py",
    "tests/test_distributed.py",
    "tests/test_loop_features.py",
    "tests/test_sweep.py",
    "tests/test_sweep_processes.py",
    "tests/test_config.py",
    "tests/test_registry.py",
    "tests/test_example.py",
}
# A quick sample of them (the whole set takes minutes), run inside the new project.
FRAMEWORK_SAMPLE = [
    "tests/test_checkpoint.py::test_checkpoint_is_plain_and_complete",
    "tests/test_checkpoint.py::test_resume_is_exact",
    "tests/test_resume_edges.py::test_an_interrupt_then_resume_trains_every_remaining_epoch_exactly",
    "tests/test_faults.py::test_damaged_checkpoint_exits_2_naming_the_file[crafted-pickle-auto]",
    "tests/test_loop_features.py::test_ema_weights_serve_validation_best_and_test_and_resume_exactly",
    "tests/test_sweep.py::test_grid_sweep_runs_every_trial_as_a_run_records_a_failure_and_writes_results",
]


def run(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # This interpreter's bin folder first: ruff and python3 are the test environment's, whatever the shell's PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}
    return subprocess.run([*args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unresolved_imports(root: Path) -> list[str]:
    """Imports of project modules (and benchmark siblings) that no file under ``root`` provides."""
    missing = []
    for file in root.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                local = file.parent / f"{parts[0]}.py"
                if parts[0] not in PACKAGES and not (file.parent.name == "benchmarks" and parts[0] == "common"):
                    continue
                base = root.joinpath(*parts) if not local.exists() else local.with_suffix("")
                if not (base.with_suffix(".py").exists() or (base / "__init__.py").exists()):
                    missing.append(f"{file.relative_to(root)}: import {name}")
    return missing


def test_new_project_without_examples_leaves_no_trace_and_its_tests_pass(tmp_path):
    target = tmp_path / "clean"
    new_project(target, without_examples=True, schemas=config_schemas)
    removed = [p.relative_to(REPO) for ex in EXAMPLES.values() for g in ex.files + ex.uses for p in REPO.glob(g)]
    assert not [p for p in removed if (target / p).exists()]  # (none here when this is itself a clean project)
    assert registry_entries(target / "agents" / "__init__.py") == {"ExampleAgent": "agents.example"}
    kept_tests = {str(p.relative_to(target)) for p in (target / "tests").glob("*.py")}
    assert kept_tests >= FRAMEWORK_TESTS, FRAMEWORK_TESTS - kept_tests
    assert kept_tests == {str(p.relative_to(REPO)) for p in (REPO / "tests").glob("*.py")} - {str(p) for p in removed}
    assert unresolved_imports(target) == []
    # No remaining file names a removed file or module (the manifest itself excepted).
    names = {str(p) for p in removed} | {".".join(p.with_suffix("").parts) for p in removed if p.suffix == ".py"}
    names |= {f"import {p.stem}" for p in removed if p.parts[0] == "benchmarks"}  # benchmarks import siblings
    names |= {f'CONFIGS / "{p.name}"' for p in removed if p.parts[0] == "configs"}  # the tests' way to name one
    suffixes = {".py", ".md", ".json", ".sh", ".toml", ".txt"}
    texts = {f: f.read_text() for f in target.rglob("*") if f.suffix in suffixes and f.name != "scaffold.py"}
    assert not {
        str(f.relative_to(target)): [n for n in names if n in t] for f, t in texts.items() if any(n in t for n in names)
    }
    gone = [f"tutorial {int(p.name[:2])}" for p in removed if p.parts[0] == "tutorials" and p.name[:2].isdigit()]
    for page in target.rglob("*.md"):  # every link between the pages left resolves; no page names a removed one
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            assert "://" in link or (page.parent / link).exists(), (str(page.relative_to(target)), link)
        assert not [t for t in gone if re.search(rf"\b{t}\b", page.read_text())], page
    readme = (target / "README.md").read_text()
    assert readme.startswith("# clean\n") and "./run.sh configs/example_exp_0.json" in readme
    assert "](tutorials/03_your_own_model.md)" in readme
    schemas = config_schemas()
    expected = render({"BaseAgent": schemas["BaseAgent"], "ExampleAgent": schemas["ExampleAgent"]})
    assert (target / REFERENCE).read_text() == expected
    # In the new project: a model made there trains and its test passes, with the template's tests.
    made = run(target, sys.executable, "main.py", "new", "my_net")
    assert made.returncode == 0, made.stderr
    assert "MyNetAgent" in (target / REFERENCE).read_text()  # new rewrote the reference with its keys
    tests = ["tests/test_my_net.py", "tests/test_config.py", "tests/test_registry.py", *FRAMEWORK_SAMPLE]
    tests.append("tests/test_tutorials.py::test_config_reference_is_current")
    result = run(target, sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" in result.stdout and "skipped" not in result.stdout


@pytest.mark.parametrize("name", ["my_net", "a", "a_very_long_network_name_of_30"])
def test_new_model_is_ruff_clean_named_and_registered(tmp_path, name):
    target = tmp_path / "project"
    new_project(target)
    written = new_model(name, root=target)
    model = class_prefix(name)
    expected = ["agents", "graphs/models", "datasets", "configs", "tests"]
    assert [str(p.relative_to(target).parent) for p in written[:5]] == expected
    assert registry_entries(target / "agents" / "__init__.py")[f"{model}Agent"] == f"agents.{name}"
    for path in written[:5]:
        text = path.read_text()
        assert "xample" not in text and "emplate" not in text, path
        if path.suffix == ".py":
            assert text.startswith(f'"""{model}'), text[:80]
    config = json.loads(written[3].read_text())
    assert config["exp_name"] == f"{name}_exp_0" and config["agent"] == f"{model}Agent"
    assert config["description"].startswith(f"{model}Agent")
    agent = (target / "agents" / f"{name}.py").read_text()
    assert f"class {model}Agent(BaseAgent):" in agent and f"from graphs.models.{name} import {model}\n" in agent
    assert f'data_root(config) / "{name}"' in (target / "datasets" / f"{name}.py").read_text()
    python = [str(p) for p in written if p.suffix == ".py"]
    lint, fmt = run(target, "ruff", "check", *python), run(target, "ruff", "format", "--check", *python)
    assert lint.returncode == 0 and fmt.returncode == 0, lint.stdout + fmt.stdout


def test_new_refuses_with_one_line_exit_2_and_writes_nothing(tmp_path):
    target = tmp_path / "project"
    new_project(target)
    (target / "tests" / "test_taken.py").write_text("")
    init = target / "agents" / "__init__.py"
    init.write_text(
        init.read_text().replace(
            '"ExampleAgent": "agents.example",',
            '"ExampleAgent": "agents.example",\n    "KnownAgent": "agents.elsewhere",',
        )
    )
    before = snapshot(target)
    cases = {
        "My-Net": "not a model name",
        "9net": "not a model name",
        "my__net": "not a model name",
        "class": "is a Python keyword",
        "x" * 31: "at most 30",
        "example": "'ExampleAgent' is already registered",
        "known": "'KnownAgent' is already registered",
        "taken": "tests/test_taken.py already exist",
        "key": "the class Key, a name the template imports",  # would shadow utils.config.Key
        "base_agent": "the class BaseAgent, a name the template imports",
        "custom_layers": "graphs/models/custom_layers/ already exist",  # a package wins over a module
    }
    for name, message in cases.items():
        result = run(target, sys.executable, "main.py", "new", name)
        assert result.returncode == 2 and message in result.stderr, (name, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert snapshot(target) == before


def test_new_help_says_what_it_makes():
    result = run(REPO, sys.executable, "main.py", "new", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for made in ["agents/NAME.py", "graphs/models/NAME.py", "datasets/NAME.py", "configs/NAME_exp_0.json"]:
        assert made in text
    assert "tests/test_NAME.py" in text and "agents/__init__.py" in text and "MyNetAgent" in text


def test_new_project_copies_no_outputs_caches_or_version_control(tmp_path):
    source = tmp_path / "template"
    for path in [
        "main.py",
        "agents/__init__.py",
        ".git/HEAD",
        ".venv/bin/python",
        "data/MNIST/raw/x",
        "experiments/run/checkpoints/last.pth",
        "experiments/.keep",
        "agents/__pycache__/base.cpython-311.pyc",
        ".pytest_cache/v",
        "tests/data/keep.txt",
    ]:
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(path)
    new_project(tmp_path / "copy", source=source)
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == ["agents/__init__.py", "experiments/.keep", "main.py", "tests/data/keep.txt"]
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        new_project(tmp_path / "copy", source=source)
    with pytest.raises(UserError, match="is inside the template"):
        new_project(source / "sub", source=source)


def test_new_project_of_a_git_checkout_copies_only_what_git_tracks(tmp_path):
    source = tmp_path / "template"
    for path in ["main.py", "agents/__init__.py", "compare/curves.png", ".coverage", "env/bin/python"]:
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(path)
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "main.py", "agents/__init__.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "template"], check=True)
    new_project(tmp_path / "copy", source=source)  # report folders, coverage, environments: not the template's
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == ["agents/__init__.py", "experiments/.keep", "main.py"]


def test_new_project_registers_only_copied_agents_and_a_broken_registry_line_is_one_line(tmp_path):
    """An agent made with `main.py new` and never committed is not copied: neither is its registry line, nor its
    section of the config reference (which `main.py new` rewrote)."""
    source = tmp_path / "template"
    new_project(source)
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "template"], check=True)
    new_model("scratch", root=source)  # untracked files, but a tracked (edited) agents/__init__.py
    schemas = config_schemas()
    with_scratch = {**schemas, "ScratchAgent": schemas["ExampleAgent"]}  # the registry that `main.py new` sees
    (source / REFERENCE).write_text(render(with_scratch))  # as `main.py new` leaves it (tracked, edited)
    for without_examples, kept in ((False, schemas), (True, {k: schemas[k] for k in ("BaseAgent", "ExampleAgent")})):
        target = tmp_path / f"copy_{without_examples}"
        new_project(target, without_examples=without_examples, schemas=lambda: with_scratch, source=source)
        registry = registry_entries(target / "agents" / "__init__.py")
        assert "ScratchAgent" not in registry and "ExampleAgent" in registry
        assert not (target / "agents" / "scratch.py").exists()
        assert (target / REFERENCE).read_text() == render(kept)  # what the new project's reference test expects
    clean = tmp_path / "copy_True"
    keys = run(clean, sys.executable, "main.py", "keys")
    assert keys.returncode == 0, keys.stderr
    assert not (clean / "sweeps").exists() and not (clean / "tutorials" / "images").exists()
    assert "sweeps/" not in (clean / "README.md").read_text()
    # A registry line whose module is gone: one line, exit 2.
    init = clean / "agents" / "__init__.py"
    init.write_text(
        init.read_text().replace(
            '"ExampleAgent": "agents.example",', '"ExampleAgent": "agents.example",\n    "GoneAgent": "agents.gone",'
        )
    )
    broken = run(clean, sys.executable, "main.py", "keys")
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1, broken.stderr
    assert "agent 'GoneAgent' -> 'agents.gone' cannot be imported" in broken.stderr


def test_new_says_where_pytest_comes_from_when_it_is_missing(tmp_path, monkeypatch, capsys):
    import importlib.util

    import utils.project.scaffold

    target = tmp_path / "project"
    new_project(target)
    monkeypatch.setattr(utils.project.scaffold, "REPO_ROOT", target)
    monkeypatch.setattr(utils.project.scaffold, "new_model", lambda name: new_model(name, root=target))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "pytest" else find_spec(name))
    assert utils.project.scaffold.new_command(config_schemas, ["tulips"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "wrote tutorials/04_config_reference.md" in out  # before the next steps: they are the last line
    assert out[-1].startswith("train it:") and "pip install -r requirements-dev.txt" in out[-1]
