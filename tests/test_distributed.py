"""DistributedDataParallel under torchrun on CPU (Gloo, 2 processes), as CI runs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import main
from tests.conftest import EXAMPLE, REPO, assert_same_tensors, load, train
from tests.test_example import write_class_folders

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 args...``; asserts success unless ``ok=False``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert (result.returncode == 0) == ok, result.stderr[-4000:]
    return result


def test_run_sh_nproc_2_trains_and_checkpoints_move_between_1_and_2_processes(exps):
    # 638 random images: 384 to train on, 127 (an odd number, uneven over 2 ranks) to validate.
    args = [
        f"experiments_dir={exps}",
        "exp_name=ddp",
        "random_size=638",
        "image_size=16",
        "hidden=8",
        "batch_size=16",
        "max_valid_batches=null",
    ]
    train(EXAMPLE, exps, *args, "max_epoch=1")  # 1 process ...
    result = subprocess.run(
        ["./run.sh", "--nproc", "2", str(EXAMPLE), *args, "max_epoch=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-4000:]  # ... resumed by 2 ...
    run = exps / "ddp"
    state = load(run / "checkpoints" / "last.pth")
    assert state["epoch"] == 2 and state["global_step"] == 24 + 12  # 384 samples: 24 steps of 16, then 12 per rank
    log = (run / "logs" / "run.log").read_text()
    assert log.count("epoch 2:") == 1 and "x 2 process(es)" in log and "global batch 32" in log
    assert len(list((run / "summaries").glob("events.out.tfevents.*"))) == 2  # one per run, not per rank
    assert [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()] == ["epoch", "1", "2"]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    train(EXAMPLE, exps, *args, "max_epoch=3")  # ... and by 1 again
    assert load(run / "checkpoints" / "last.pth")["epoch"] == 3


def test_ddp_resume_is_exact(tmp_path, exps):
    """Each rank's RNG is in the checkpoint: the dropout of the template with dropout (DropoutAgent, which
    tests/ddp_worker.py registers) continues as if never stopped; so does the per-epoch LR decay."""
    args = [f"experiments_dir={exps}", "agent=DropoutAgent", "random_size=320", "image_size=16", "hidden=8"]
    args += ["batch_size=16", 'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.7}}']
    torchrun("tests/ddp_worker.py", str(tmp_path), str(EXAMPLE), *args, "exp_name=straight", "max_epoch=2")
    torchrun("tests/ddp_worker.py", str(tmp_path), str(EXAMPLE), *args, "exp_name=resumed", "max_epoch=1")
    torchrun("tests/ddp_worker.py", str(tmp_path), str(EXAMPLE), *args, "exp_name=resumed", "max_epoch=2")
    straight, resumed = (load(exps / name / "checkpoints" / "last.pth") for name in ("straight", "resumed"))
    assert len(resumed["rng_ranks"]) == 2
    assert_same_tensors(straight["models"], resumed["models"], "models")
    assert_same_tensors(straight["optimizers"], resumed["optimizers"], "optimizers")
    assert_same_tensors(straight["schedulers"], resumed["schedulers"], "schedulers")


def test_two_processes_equal_one_with_twice_the_batch(tmp_path, exps):
    """No dropout or BN: DDP with batch B per rank follows the same path as 1 process with 2B."""
    common = [
        "data_mode=random",
        "random_size=640",
        "max_epoch=1",
        "optimizer.type=SGD",
        "optimizer.args.lr=0.01",
        "hidden=16",
    ]
    torchrun(
        "tests/ddp_worker.py",
        str(tmp_path),
        str(EXAMPLE),
        f"experiments_dir={exps}",
        "exp_name=two",
        "batch_size=16",
        *common,
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == 2
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ in {k}"
    assert r0["metrics"] == r1["metrics"]  # reduced: both ranks see the whole validation set's value

    train(EXAMPLE, exps, "exp_name=one", "batch_size=32", *common)
    single = load(exps / "one" / "checkpoints" / "last.pth")["models"]["model"]
    for k, v in single.items():
        # Equal up to float summation order (convolution sums differ by ~1e-6); summed instead of averaged
        # gradients (lr x 2) are 1e-3 off. One epoch at a low lr keeps the order noise from growing.
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-4, atol=1e-5)

    # The validation metric over 2 ranks (uneven shards: 128 samples, 2 ranks, batch 16) equals 1 process's.
    config, cls = main.load_config(
        str(EXAMPLE), [f"experiments_dir={exps}", "exp_name=check", "batch_size=16", *common]
    )
    agent = cls(config)
    try:
        agent.model.load_state_dict(r0["state"])
        metrics = agent.validate()
    finally:
        agent.finalize()
    assert metrics["valid/accuracy"] == r0["metrics"]["valid/accuracy"]
    assert metrics["valid/loss"] == pytest.approx(r0["metrics"]["valid/loss"], rel=1e-6)


def test_accumulation_all_reduces_once_per_group_and_equals_one_process_with_the_whole_batch(tmp_path, exps):
    # 2 ranks x batch 8 x 2 accumulated batches = 32 samples an update, as 1 process with batch 32.
    common = ["data_mode=random", "random_size=640", "max_epoch=1", "optimizer.type=SGD", "optimizer.args.lr=0.01"]
    common += ["hidden=16"]
    torchrun(
        "tests/ddp_worker.py",
        str(tmp_path),
        str(EXAMPLE),
        f"experiments_dir={exps}",
        "exp_name=acc",
        "agent=CountingAgent",
        "batch_size=8",
        "accumulate_grad_batches=2",
        *common,
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert r0["global_step"] == 2 * r0["optimizer_steps"] == 24  # 384 training samples: 24 batches of 8 per rank
    assert r0["allreduces"] == r0["optimizer_steps"]  # no_sync on the first batch of each group
    train(EXAMPLE, exps, "exp_name=one", "batch_size=32", *common)
    single = load(exps / "one" / "checkpoints" / "last.pth")["models"]["model"]
    for k, v in single.items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-4, atol=1e-5)


def bn_config(tmp_path, exps):
    config = tmp_path / "bn.json"
    config.write_text(
        json.dumps(
            {
                "exp_name": "bn",
                "agent": "BatchNormAgent",
                "data_mode": "random",
                "experiments_dir": str(exps),
                "max_epoch": 1,
                "batch_size": 16,
            }
        )
    )
    return config


def test_without_sync_batchnorm_each_rank_keeps_its_own_statistics(tmp_path, exps):
    """The reason for the switch: plain BatchNorm under DDP sees only its rank's shard."""
    torchrun("tests/ddp_worker.py", str(tmp_path), str(bn_config(tmp_path, exps)), "sync_batchnorm=false")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not r0["sync_bn"]
    assert not torch.allclose(r0["state"]["1.running_mean"], r1["state"]["1.running_mean"])
    for k in ("0.weight", "1.weight", "5.weight"):  # the parameters still agree
        assert torch.equal(r0["state"][k], r1["state"][k])


def test_sync_batchnorm_on_cpu_is_a_clear_error(tmp_path, exps):
    config = str(bn_config(tmp_path, exps))
    result = torchrun("tests/ddp_worker.py", str(tmp_path), config, "sync_batchnorm=true", ok=False)
    assert "SyncBatchNorm runs on CUDA devices only" in result.stderr


# 320 random images: 192 to train on (6 batches of 32), 64 to validate.
SMALL = ["random_size=320", "image_size=16", "hidden=8", "batch_size=32", "torch_threads=1", "log_every=1"]


def test_mid_epoch_resume_from_one_process_to_two_trains_the_rest_of_the_epoch_once(exps, monkeypatch):
    from agents.example import ExampleAgent
    from tests.test_resume_edges import interrupt_at
    from utils.errors import RunInterrupted

    interrupt_at(monkeypatch, epoch=0, batch=3, agent=ExampleAgent)  # 96 of 192 samples done
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, "exp_name=grow", "max_epoch=1", *SMALL)
    monkeypatch.undo()
    torchrun("main.py", str(EXAMPLE), f"experiments_dir={exps}", "exp_name=grow", "max_epoch=1", *SMALL)
    assert load(exps / "grow" / "checkpoints" / "last.pth")["global_step"] == 3 + 2  # 96 left: 48 per rank


def test_a_run_folder_that_is_a_file_is_one_line_on_every_rank(exps):
    (exps / "taken").write_text("a user's file")
    result = torchrun("main.py", str(EXAMPLE), f"experiments_dir={exps}", "exp_name=taken", *SMALL, ok=False)
    assert result.stderr.count(f"key 'exp_name': {exps / 'taken'} is a file") == 2  # one line per rank, no hang
    assert (exps / "taken").read_text() == "a user's file"


def test_init_weights_under_two_processes_starts_every_rank_from_the_checkpoints_weights(exps):
    train(EXAMPLE, exps, "exp_name=pre", "max_epoch=1", *SMALL)
    path = exps / "pre" / "checkpoints" / "last.pth"
    args = [f"experiments_dir={exps}", "exp_name=ft2", "max_epoch=1", f"init_weights={path}", *SMALL]
    torchrun("main.py", str(EXAMPLE), *args, "optimizer.args.lr=0")  # lr 0: the weights stay the start's
    assert_same_tensors(load(exps / "ft2" / "checkpoints" / "last.pth")["models"], load(path)["models"])
    missing = torchrun("main.py", str(EXAMPLE), *args[:1], "exp_name=ft3", f"init_weights={exps}/nope.pth", ok=False)
    assert missing.stderr.count("key 'init_weights': checkpoint") == 2  # one line per rank, no hang


@pytest.mark.parametrize("rank1", ["no file", "a stale file"])
def test_ranks_without_rank_0s_checkpoint_follow_rank_0(tmp_path, exps, rank1):
    """Several machines, no shared storage: only rank 0 has the latest last.pth; rank 1 gets its copy."""
    train(EXAMPLE, exps / "rank0", "exp_name=ns", "max_epoch=2", *SMALL)
    if rank1 == "a stale file":  # rank 1's machine held rank 0 in an earlier launch
        train(EXAMPLE, exps / "rank1", "exp_name=ns", "max_epoch=1", *SMALL)
    torchrun(
        "tests/ddp_worker.py",
        str(tmp_path),
        str(EXAMPLE),
        f"experiments_dir={exps}/rank{{rank}}",
        "exp_name=ns",
        "max_epoch=3",
        *SMALL,
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["global_step"] == r1["global_step"] == 12 + 3  # both resumed at step 12
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ in {k}"
    log = (exps / "rank0" / "ns" / "logs" / "run.log").read_text()
    assert "not the same on every machine; rank 0 sends its copy" in log


def test_a_mistake_rank_0_finds_is_one_line_on_every_rank(exps):
    train(EXAMPLE, exps, "exp_name=rf", "max_epoch=1", *SMALL)
    cmd = ["./run.sh", "--nproc", "2", str(EXAMPLE), f"experiments_dir={exps}", "exp_name=rf", "resume=false", *SMALL]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("already has checkpoints and resume is false") == 2  # one line per rank
    log = (exps / "rf" / "logs" / "run.log").read_text().splitlines()  # the run's log says why, once: rank 0's
    assert "failed: " in log[-1] and "already has checkpoints and resume is false" in log[-1]
    assert sum("failed: " in line for line in log) == 1


def test_renamed_class_folders_are_refused_on_every_rank(exps, tmp_path):
    write_class_folders(tmp_path / "data", classes=("birch", "maple", "oak"))
    args = [f"data_root={tmp_path / 'data'}", "data_mode=folder", "exp_name=trees", "image_size=12", "torch_threads=1"]
    train(EXAMPLE, exps, *args, "max_epoch=1")
    for split in ("train", "valid", "test"):
        (tmp_path / "data" / "example" / split / "oak").rename(tmp_path / "data" / "example" / split / "alder")
    cmd = ["./run.sh", "--nproc", "2", str(EXAMPLE), f"experiments_dir={exps}", *args, "max_epoch=2"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("learnt the classes birch, maple, oak") == 2  # one line per rank
    assert load(exps / "trees" / "checkpoints" / "last.pth")["epoch"] == 1


@pytest.mark.parametrize("how", ["ctrl-c to the terminal's process group", "SIGTERM to the launcher"])
def test_signal_under_run_sh_nproc_saves_exits_130_and_resumes_in_one_process(exps, how):
    import signal
    import time

    # 20000 random images: 12000 to train on, 375 steps per rank.
    args = [f"experiments_dir={exps}", "exp_name=sig", "random_size=20000"]
    args += ["batch_size=16", "max_epoch=1", "max_valid_batches=2", "torch_threads=1"]
    proc = subprocess.Popen(
        ["./run.sh", "--nproc", "2", str(EXAMPLE), *args],
        cwd=REPO,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    log = exps / "sig" / "logs" / "run.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "run directory" in log.read_text()):
        time.sleep(0.1)
    time.sleep(1.0)
    if how.startswith("ctrl-c"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "failed: " not in log.read_text()  # an interrupt is no failure: the log says it saved, nothing more
    state = load(exps / "sig" / "checkpoints" / "last.pth")
    done, samples = state["batch_in_epoch"], state["samples_in_epoch"]
    assert 0 < done < 375 and samples == done * 16 * 2
    train(EXAMPLE, exps, *args[1:])  # one process now: the rest of the epoch's order, in batches of 16
    assert load(exps / "sig" / "checkpoints" / "last.pth")["global_step"] == done + -(-(12000 - samples) // 16)


def test_a_signal_whose_save_torchrun_cuts_short_is_an_error_not_exit_130(exps):
    import signal
    import time

    # torchrun kills the workers at once (no wait): they cannot save, and the launcher must not say they did.
    args = [str(EXAMPLE), f"experiments_dir={exps}", "exp_name=cut", "random_size=20000"]
    env = {**ENV, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--nproc", "2", *args, "batch_size=16", "torch_threads=1", "log_every=100000"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = exps / "cut" / "logs" / "run.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "run directory" in log.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    assert "torchrun ended the processes before they saved a checkpoint" in err
    assert not (exps / "cut" / "checkpoints" / "last.pth").exists()


def test_erfnet_predict_stopped_by_an_unreadable_image_under_two_processes_leaves_nothing(tmp_path, exps):
    """Both ranks predict, rank 0 writes: the rank that meets the image cut short first stops the run, and no
    file of it is left, so the advised rerun with skip_bad_files=true is not refused."""
    erfnet = str(REPO / "configs" / "erfnet_exp_0.json")
    tiny = ["data_mode=random", "num_classes=4", "crop_size=32", "random_image_size=40", "random_size=8"]
    args = [erfnet, f"experiments_dir={exps}", "exp_name=run", *tiny, "batch_size=4", "torch_threads=1"]
    train(erfnet, exps, *args[1:], "max_epoch=1", "num_workers=0")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        pixels = np.random.default_rng(i).integers(0, 256, (192, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"img{i:02d}.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
        photos / "z_cut.jpg", quality=95
    )
    (photos / "z_cut.jpg").write_bytes((photos / "z_cut.jpg").read_bytes()[:1500])  # found when decoded, last
    predict = ["./run.sh", "--nproc", "2", *args, "mode=predict", f"predict_input={photos}"]
    stopped = subprocess.run(predict, cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert stopped.returncode == 2 and "z_cut.jpg" in stopped.stderr, stopped.stderr[-3000:]
    assert not list((exps / "run" / "out" / "predict").glob("*.png"))
    rerun = subprocess.run(
        [*predict, "skip_bad_files=true"], cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(list((exps / "run" / "out" / "predict").glob("*.png"))) == 80
