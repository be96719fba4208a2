"""Start-up cost: what every run pays before it trains (benchmarks/startup.py measures it)."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

import main
from tests.conftest import CONFIGS, REPO, train

# Libraries a run of most agents never uses: each is imported inside the function that needs it (plots, sweeps,
# DQN's environments, export, SLURM), never at the top of a module the CLI or an agent imports.
OPTIONAL = (
    "matplotlib",
    "optuna",
    "sqlalchemy",
    "gymnasium",
    "pygame",
    "tensorboardX",
    "tensorboard",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "submitit",
)

IMPORT_ALL = f"""
import glob, importlib, sys
import main
from agents import AGENTS
for module in AGENTS.values():
    importlib.import_module(module)
for path in sorted(glob.glob("configs/*_exp_0.json")):  # validating a config imports the agent's key checks
    main.load_config(path, ["experiments_dir=/nonexistent"])
optional = {OPTIONAL!r}
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set(optional))))
"""


def test_importing_main_every_agent_and_config_imports_no_optional_library():
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"imported at start-up: {done.stdout.strip()} (import it where it is used)"


def test_a_run_moves_the_imports_objects_out_of_the_collectors_way(exps, one_thread):
    """After the first run in a process, the objects the imports made (torch's: over 100,000) are frozen: a full
    garbage collection, and the several at the process's exit, skip them."""
    train(CONFIGS / "example_exp_0.json", exps, "max_epoch=1", "random_size=3", "batch_size=1")
    assert gc.get_freeze_count() > 100_000


def test_a_python_without_the_requirements_gets_one_line_and_exit_2():
    """main.py run by a Python the install has not reached (-S: no site-packages): one line, not a traceback."""
    done = subprocess.run(
        [sys.executable, "-S", "main.py", str(CONFIGS / "example_exp_0.json")], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "lacks the requirements; install them (the README's install lines)" in done.stderr


def test_a_command_line_mistake_is_one_line_and_exit_2(capsys):
    for argv, says in [
        ([str(CONFIGS / "example_exp_0.json"), "--max_epoch=3"], "config keys go without '--': max_epoch=3"),
        (["--nproc", "x"], "argument --nproc: invalid int value: 'x'"),
        (["report"], "main.py report: the following arguments are required: runs"),
        (["new"], "main.py new: the following arguments are required: name"),
        (["keys", "--wirte"], "main.py keys: unrecognized arguments: --wirte; see main.py keys --help"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and says in err, err
