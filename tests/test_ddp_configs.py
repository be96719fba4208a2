"""Every shipped config under --nproc 2, in each data mode the test data allows, on machines without shared storage.

One torchrun launch per example runs, in the same two processes (tests/ddp_jobs.py): in random mode, 1 epoch,
a resume to epoch 2, mode=test and mode=predict; in folder mode and in download mode over a tree already present,
1 epoch and mode=test. Each rank has its own experiments_dir, so rank 1 never sees rank 0's checkpoints: it gets
rank 0's copy. A deadlock (a collective that one rank alone reaches) is a timeout, and a failure.
Not here: CIFAR-10's download mode (torchvision checks the real archive's md5, which test files cannot match)
and DQN (one process only; tests/test_dqn.py checks its refusal).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.celeba import TORCHVISION_FOLDER
from tests.conftest import REPO, load
from tests.test_condensenet import write_cifar
from tests.test_dcgan import write_faces
from tests.test_erfnet import voc_tree
from tests.test_example import write_class_folders
from tests.test_mnist import write_mnist

pytestmark = pytest.mark.slow
CONFIGS = REPO / "configs"
LIMITS = ["torch_threads=1", "max_train_batches=2", "max_valid_batches=2", "log_every=1"]
NO_PREDICT = "has no predict mode"


def images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((20, 24, 3), 60 * i, dtype=np.uint8)).save(folder / f"in{i}.png")
    return folder


def example(tmp: Path) -> tuple[list[str], dict, list[str], str | None]:
    write_class_folders(tmp / "data")
    tiny = ["image_size=12", "hidden=4", "batch_size=8", "random_size=64", "num_workers=0"]
    modes = {
        "random": ["data_mode=random"],
        "folder": ["data_mode=folder", f"data_root={tmp / 'data'}", "num_classes=3"],
    }
    return tiny, modes, [f"predict_input={images(tmp / 'inputs')}"], None


def mnist(tmp: Path) -> tuple[list[str], dict, list[str], str | None]:
    write_mnist(tmp / "mnist")
    tiny = ["batch_size=16", "random_size=64", "valid_size=20", "num_workers=0"]
    tree = [f"data_root={tmp / 'mnist'}"]
    modes = {
        "random": ["data_mode=random"],
        "folder": ["data_mode=folder", *tree],
        "download": ["data_mode=download", *tree],
    }
    return tiny, modes, [f"predict_input={images(tmp / 'inputs')}"], None


def condensenet(tmp: Path) -> tuple[list[str], dict, list[str], str | None]:
    write_cifar(tmp / "cifar", per_batch=8, n_test=8)
    tiny = ["random_size=64", "valid_size=16", "random_image_size=8", "stages=[2,2,2]", "growth=[4,4,4]"]
    tiny += ["batch_size=8", "num_workers=0"]
    modes = {"random": ["data_mode=random"], "folder": ["data_mode=folder", f"data_root={tmp / 'cifar'}"]}
    return tiny, modes, [], NO_PREDICT


def erfnet(tmp: Path) -> tuple[list[str], dict, list[str], str | None]:
    voc_tree(tmp / "voc")
    tiny = ["num_classes=21", "crop_size=32", "random_image_size=40", "random_size=16", "batch_size=2"]
    tiny += ["num_workers=0", "show_images=1"]
    tree = [f"data_root={tmp / 'voc'}", "class_weights=auto"]  # "auto": computed by rank 0 alone
    modes = {
        "random": ["data_mode=random", "class_weights=auto"],
        "folder": ["data_mode=folder", *tree],
        "download": ["data_mode=download", *tree],
    }
    return tiny, modes, [f"predict_input={images(tmp / 'inputs')}"], None


def dcgan(tmp: Path) -> tuple[list[str], dict, list[str], str | None]:
    write_faces(tmp / "faces")
    write_faces(tmp / "celeba_root")
    (tmp / "celeba_root" / TORCHVISION_FOLDER).parent.mkdir(parents=True)
    (tmp / "celeba_root" / "faces").rename(tmp / "celeba_root" / TORCHVISION_FOLDER)
    tiny = ["image_size=32", "ngf=4", "ndf=4", "batch_size=4", "random_size=32", "valid_fraction=0.25"]
    tiny += ["num_workers=0"]
    modes = {
        "random": ["data_mode=random"],
        "folder": ["data_mode=folder", f"data_root={tmp / 'faces'}", "image_folder=faces"],
        "download": ["data_mode=download", f"data_root={tmp / 'celeba_root'}"],
    }
    return tiny, modes, ["num_samples=3"], None


EXAMPLES = {
    "example": example,
    "mnist": mnist,
    "condensenet": condensenet,
    "erfnet": erfnet,
    "dcgan": dcgan,
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_shipped_config_under_two_processes_without_shared_storage(name, tmp_path):
    tiny, modes, predict, predict_refused = EXAMPLES[name](tmp_path)
    config = str(CONFIGS / f"{name}_exp_0.json")
    exps = tmp_path / "exps"
    jobs, expected = [], []
    for mode, data in modes.items():
        common = [*tiny, *LIMITS, *data, f"experiments_dir={exps}/rank{{rank}}", f"exp_name={mode}"]
        runs = [["max_epoch=1"], ["max_epoch=1", "mode=test"]]
        if mode == "random":  # the resume without shared storage, then test and predict from rank 0's copy
            runs = [["max_epoch=1"], ["max_epoch=2"], ["max_epoch=2", "mode=test"], ["mode=predict", *predict]]
        for extra in runs:
            jobs.append([config, [*common, *extra]])
            expected.append("ok")
    if predict_refused:
        expected[3] = predict_refused
    if name == "erfnet":  # a path from the user that rank 0 cannot read: one line on every rank, no traceback
        jobs.append(
            [
                config,
                [
                    *tiny,
                    *LIMITS,
                    "data_mode=random",
                    f"experiments_dir={exps}/rank{{rank}}",
                    "exp_name=enc",
                    "encoder_checkpoint=/nonexistent/encoder.pth",
                ],
            ]
        )
        expected.append("/nonexistent/encoder.pth: checkpoint not found")
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # Its own session: on a timeout the launcher and both workers are killed, none is left waiting.
    proc = subprocess.Popen(
        [*cmd, "tests/ddp_jobs.py", str(jobs_file), str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        done = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
        at = min(min((len(d) for d in done), default=0), len(jobs) - 1)  # the first run not done on every rank
        pytest.fail(f"deadlock: runs done per rank {[len(d) for d in done]} of {len(jobs)}; hung in {jobs[at]}")
    outcomes = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("rank*.json")}
    assert proc.returncode == 0, (err[-3000:], outcomes)
    for rank in (0, 1):
        outcomes = json.loads((tmp_path / f"rank{rank}.json").read_text())
        seen = [next((e for e in expected if e != "ok" and e in o), o) for o in outcomes]
        assert seen == expected, (rank, outcomes)
    assert load(exps / "rank0" / "random" / "checkpoints" / "last.pth")["epoch"] == 2
    assert not list((exps / "rank1").rglob("*.pth"))  # rank 1 had no checkpoint of its own: it got rank 0's
    summary = json.loads((exps / "rank0" / "random" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tested_checkpoint"].endswith(".pth")
