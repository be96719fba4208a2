"""Runs a tutorial's steps in order inside a copy of the repository, for tests/test_tutorials.py.

A command that starts one training process (``./run.sh CONFIG ...`` or ``python main.py ...``)
runs here through ``main.main`` with the same arguments, so that torch is imported once per
tutorial; anything else runs in bash. Steps come as JSON on stdin; one result per command
(exit code and stderr) goes to stdout as JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))


def main_arguments(command: str) -> list[str] | None:
    """The arguments main.py gets from ``command``, when it is one plain training process."""
    if "\n" in command or any(c in command for c in "&|;<>$`"):
        return None
    words = shlex.split(command, comments=True)
    if words[:1] == ["./run.sh"] and "--nproc" not in words:
        return words[1:]
    if words[:2] in (["python", "main.py"], ["python3", "main.py"]):
        return words[2:]
    return None


def run_main(argv: list[str]) -> tuple[int, str]:
    """main.main(argv) with the project's modules imported afresh (an earlier step may have edited them)."""
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(ROOT)):
            del sys.modules[name]
    import main

    err = io.StringIO()
    out = os.dup(1)  # the results' stream: what the command's own children print (a sweep's trials) goes elsewhere
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main.main(argv)
    finally:
        os.dup2(out, 1)
        os.close(out)
    return code, err.getvalue()


def add_to(path: Path, code: str) -> None:
    """'Import it at the top and add these methods at the end of the class' (the class ends the file)."""
    imports = [line for line in code.splitlines() if line.startswith(("from ", "import "))]
    rest = "\n".join(line for line in code.splitlines() if line not in imports).strip("\n")
    lines = path.read_text().splitlines()
    last_import = max(i for i, line in enumerate(lines) if line.startswith(("from ", "import ")))
    lines[last_import + 1 : last_import + 1] = imports
    path.write_text("\n".join(lines) + "\n\n" + rest + "\n")


def main() -> None:
    results = []
    for step in json.load(sys.stdin):
        if "write" in step:
            (ROOT / step["write"]).write_text(step["text"])
        elif "add" in step:
            add_to(ROOT / step["add"], step["code"])
        else:
            argv = main_arguments(step["run"])
            if argv is not None:
                code, stderr = run_main(argv)
            else:
                done = subprocess.run(["bash", "-c", step["run"]], capture_output=True, text=True, timeout=300)
                code, stderr = done.returncode, done.stderr
            results.append({"command": step["run"], "code": code, "stderr": stderr[-2000:]})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
