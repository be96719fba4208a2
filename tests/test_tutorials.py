"""Every shell block of every tutorial runs, in order, in a fresh copy of the repository.

What a block means to this test is written next to it in the tutorial:
- a ```bash block runs command by command; a `# error: ...` line after a command means that
  command must exit 2 printing that line; other commands must succeed;
- training commands get the debug limits each tutorial tells its reader to add to try a command
  in seconds (the test checks that the tutorial says so);
- `<!-- not run: why -->` before a block: not run (it needs GPUs, the internet, a keyboard or
  minutes); the programs and files it names must exist;
- `<!-- offline: text -->`: without internet its commands may exit 2 printing that text;
- `<!-- the file PATH ... -->` before a python block: the file's content (written when the
  reader creates it, compared when the tutorial quotes an existing file); `<!-- add to PATH -->`:
  its imports go after PATH's imports, the rest at its end; other python blocks must parse.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents import config_schemas
from tests import slurm_cluster
from tests.conftest import REPO
from utils.project.config_reference import REFERENCE, render
from utils.project.scaffold import new_project

TUTORIALS = sorted((REPO / "tutorials").glob("[0-9][0-9]_*.md"))
README_PATH = "README.md#first-five-minutes"  # the README's first section, run as a tutorial
MAX_README_LINES = 150
QUICK_DEFAULT = "max_train_batches=2 max_valid_batches=2"
QUICK = {
    "dqn_exp_0.json": "total_steps=600 learning_starts=100 validate_every=300 eval_episodes=2 solve_episodes=2",
    "mnist_lr.json": f"max_epoch=1 {QUICK_DEFAULT}",  # a sweep: every trial one short epoch
    "mnist_kfold.json": f"max_epoch=1 {QUICK_DEFAULT}",
}
BLOCK = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^( *)```(\w*)\n(.*?)^\2```$", re.M | re.S)


def blocks(markdown: str) -> list[tuple[str | None, str, str]]:
    """(marker comment or None, language, text) of each fenced block, indentation removed."""
    found = []
    for marker, indent, lang, body in BLOCK.findall(markdown):
        text = "".join(line[len(indent) :] if line.startswith(indent) else line for line in body.splitlines(True))
        found.append((marker[4:-3].strip() if marker else None, lang, text))
    return found


def commands(text: str) -> list[tuple[str, str | None]]:
    """Shell commands (continuation lines and here-documents joined) and the error line each must print."""
    lines, out = text.splitlines(), []
    while lines:
        line = lines.pop(0)
        if line.startswith("# error: ") and out:
            out[-1] = (out[-1][0], line[2:])
        if not line.strip() or line.startswith(("#", "^")):
            continue
        while line.endswith("\\"):
            line = line[:-1] + lines.pop(0).strip()
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            end = lines.index(heredoc[1])
            line = "\n".join([line, *lines[: end + 1]])
            del lines[: end + 1]
        out.append((line, None))
    return out


def with_limits(command: str) -> tuple[str, str | None]:
    """A training command with the debug limits added (before any trailing comment), and the limits."""
    words = shlex.split(command.split("\n")[0], comments=True)
    runs = words[:1] == ["./run.sh"] or words[:2] in (["python", "main.py"], ["python3", "main.py"])
    config = next((w for w in words if w.startswith(("configs/", "sweeps/")) and w.endswith(".json")), None)
    if not runs or config is None:
        return command, None
    limits = QUICK.get(Path(config).name, QUICK_DEFAULT)
    head, sep, comment = command.partition("  #")
    return f"{head.rstrip()} {limits}{sep}{comment}", limits


def check_not_run(text: str, root: Path, env: dict) -> None:
    for command, _ in commands(text):
        words = shlex.split(command, comments=True)
        program = words[0]
        if program.startswith(".venv/"):  # made by the install command itself
            continue
        if program.startswith("./"):
            assert (root / program).exists(), command
        elif program not in ("source", "cd"):  # shell builtins
            assert shutil.which(program, path=env["PATH"]), command
        for word in words:
            if word.endswith((".py", ".json")) and "/" in word or word == "main.py":
                assert (root / word).exists(), (command, word)


def readme_section(readme: str, heading: str) -> str:
    """One ``## heading`` section of a markdown page, up to the next."""
    return readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("tutorial", [README_PATH] + [t.name for t in TUTORIALS])
def test_every_command_of_the_tutorial_works(tutorial, tmp_path):
    if tutorial == README_PATH:
        markdown = readme_section((REPO / "README.md").read_text(), "First five minutes")
    else:
        markdown = (REPO / "tutorials" / tutorial).read_text()
    root = tmp_path / "repo"
    new_project(root)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYTHONUNBUFFERED="1")
    steps, expected = [], []  # what the runner does in order; per command: (error line, offline text)
    for marker, lang, text in blocks(markdown):
        if lang == "python":
            target = re.match(r"(?:the file|add to) (\S+)", marker or "")
            if target is None:
                ast.parse(text)
            elif marker.startswith("add to"):
                steps.append({"add": target[1], "code": text})
            elif (root / target[1]).exists():
                assert (root / target[1]).read_text() == text, f"{tutorial} quotes {target[1]} and it differs"
            else:
                steps.append({"write": target[1], "text": text})
        elif lang == "bash" and marker and marker.startswith("not run:"):
            check_not_run(text, root, env)
        elif lang == "bash":
            offline = marker[len("offline:") :].strip() if marker and marker.startswith("offline:") else None
            for command, error in commands(text):
                command, limits = with_limits(command)
                assert limits is None or f"`{limits}`" in markdown, f"{tutorial} never says to add {limits}"
                steps.append({"run": command})
                expected.append((error, offline))
    runner = [sys.executable, "tests/tutorial_runner.py"]
    # A tutorial of SLURM jobs runs against a one-node cluster of its own.
    cluster = slurm_cluster.cluster(tmp_path / "slurm") if "--slurm" in markdown else contextlib.nullcontext({})
    with cluster as cluster_env:
        done = subprocess.run(
            runner, cwd=root, env={**env, **cluster_env}, input=json.dumps(steps), capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for result, (error, offline) in zip(json.loads(done.stdout), expected, strict=True):
        where = f"{tutorial}: {result['command']}\n{result['stderr']}"
        if error is not None:
            assert result["code"] == 2 and error in result["stderr"], where
        elif offline is not None and result["code"] == 2:
            assert offline in result["stderr"], where
        else:
            assert result["code"] == 0, where


def test_config_reference_is_current():
    assert (REPO / REFERENCE).read_text() == render(config_schemas()), (
        f"{REFERENCE} is stale: run python main.py keys --write"
    )


def test_links_between_tutorials_resolve():
    for tutorial in TUTORIALS:
        for link in re.findall(r"\]\(([\w.]+\.md)\)", tutorial.read_text()):
            assert (tutorial.parent / link).exists(), (tutorial.name, link)


def test_readme_links_the_tutorials_in_order_and_ci_runs_its_install_steps():
    readme = (REPO / "README.md").read_text()
    linked = re.findall(r"^\d\. \[[^]]+\]\(tutorials/([^)]+)\)", readme, re.M)
    assert linked == [t.name for t in TUTORIALS]
    install = blocks(readme_section(readme, "First five minutes"))[0][2].strip().splitlines()
    assert len(install) == 2 and "requirements-dev.txt" in install[1]  # step 1, then the test tools
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert all(line in ci for line in install), (install, ci)
    assert len(readme.splitlines()) <= MAX_README_LINES


def test_links_of_the_readme_and_docs_resolve():
    pages = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    for page in (p for p in pages if p.exists()):
        text = page.read_text()
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in link:
                assert (page.parent / link).exists(), (str(page.relative_to(REPO)), link)
        for anchor_page, anchor in re.findall(r"\]\(([^)#\s]+)#([^)]+)\)", text):
            target = (page.parent / anchor_page).read_text()
            headings = {
                re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                for h in re.findall(r"^#+ (.*)", target, re.M)
            }
            assert anchor in headings, (str(page.relative_to(REPO)), anchor_page, anchor)
